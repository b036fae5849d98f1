"""The timm provider: any timm model with ``forward_intermediates``.

Layers
    Index ``k`` is the ``k``-th output :meth:`forward_intermediates` can return (0-based,
    negative indices count from the end): a transformer block for ViT-like models, a
    stage for CNNs.  For most CNNs (ResNet, EfficientNet, RegNet, ...) timm counts the stem
    as index 0, so a ResNet has 5 layers (stem + 4 stages).  ``"final"`` is the model's
    pooled pre-logits embedding (``forward_head(..., pre_logits=True)``), whatever the
    model's own head pooling is.  Intermediates are taken as the blocks output them
    (timm's ``norm=False``).

Kinds
    ViT-like models (intermediates are token sequences) are ``"vit"``; models whose
    intermediates are NCHW maps (CNNs, and hierarchical transformers such as Swin that
    timm returns as maps) are ``"cnn"``.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from .._checks import check_type
from ..errors import BCIError, UsageError
from .backbone import Backbone, check_memory, dtype_name, feature_dtype, file_digest, resolve_device

__all__ = ["TimmBackbone", "check_timm_name", "create_model", "load_timm_backbone"]

logger = logging.getLogger("trainer")

# how to list timm's names, for a command-line user and a Python user alike
_LIST_MODELS = "python -c \"import timm; print(timm.list_models('*pattern*'))\""


@dataclass(repr=False)
class TimmBackbone(Backbone):
    """A timm model (see :class:`~trainer.vision.backbone.Backbone`)."""

    # parameter names of the model's own forward_intermediates, read once at creation
    # (so that a wrapped/patched method later cannot change which options are passed)
    _fi_params: frozenset | None = None

    def __post_init__(self) -> None:
        if self._fi_params is None:
            self._fi_params = frozenset(inspect.signature(self.model.forward_intermediates).parameters)

    @property
    def num_prefix_tokens(self) -> int:
        if self.kind != "vit":
            return 0
        return int(getattr(self.model, "num_prefix_tokens", 0) or 0)

    def _forward_kwargs(self, indices: list[int], want_final: bool) -> dict:
        params = self._fi_params
        kw: dict[str, Any] = {"indices": list(indices), "intermediates_only": not want_final}
        if "norm" in params:
            kw["norm"] = False
        if "stop_early" in params:
            # must be explicit: some models default to True, which breaks the final output
            kw["stop_early"] = not want_final
        if self.kind == "vit":
            kw["output_fmt"] = "NLC"
            kw["return_prefix_tokens"] = True
        return kw

    def features_forward(self, x):
        return self.model.forward_features(x)

    def forward_layers(self, x, indices, want_final):
        model = self.model
        x = x.to(dtype=self.dtype)
        if not indices:  # only the final embedding asked for
            return [], model.forward_head(model.forward_features(x), pre_logits=True).flatten(1)
        result = model.forward_intermediates(x, **self._forward_kwargs(indices, want_final))
        if not want_final:
            return list(result), None
        final, inters = result
        return list(inters), model.forward_head(final, pre_logits=True).flatten(1)


def _close_model_names(arch: str, all_names: list[str]) -> list[str]:
    close = difflib.get_close_matches(arch, all_names, n=6, cutoff=0.6)
    if not close:
        import timm

        stem = arch.split("_")[0]
        if len(stem) >= 2:
            close = timm.list_models(f"*{stem}*")[:6]
    return close


def check_timm_name(name: str) -> None:
    """Raise a BCIError naming close matches unless ``name`` (optionally ``arch.tag``) is a
    timm model; ``hf-hub:`` / ``local-dir:`` names are left to timm."""
    import timm

    check_type(name, str, "backbone")

    if name.startswith(("hf-hub:", "hf_hub:", "local-dir:")):
        return  # resolved by timm itself
    arch = name.split(".", 1)[0]
    if timm.is_model(arch):
        return
    close = _close_model_names(arch, timm.list_models())
    hint = f" Close names: {', '.join(close)}." if close else ""
    raise BCIError(f"unknown timm backbone {name!r}.{hint} {_LIST_MODELS} lists them all.")


def _count_layers(model: torch.nn.Module, data_config: dict) -> int:
    """Number of indices ``forward_intermediates`` accepts.

    ``model.feature_info`` (one entry per returnable intermediate) matches the range of
    ``forward_intermediates`` for every timm family checked (ViT, DeiT, EVA, BEiT, CaiT,
    XCiT, Mixer, ResNet, ConvNeXt, EfficientNet, RegNet, Swin, Hiera, MaxViT, LeViT, ...).
    When a model has no such list, ask the model itself with a one-image probe.
    """
    info = getattr(model, "feature_info", None)
    if isinstance(info, (list, tuple)) and len(info) > 0:
        return len(info)
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    x = torch.zeros(1, *data_config["input_size"], device=device)
    with torch.inference_mode():
        out = model.forward_intermediates(x, indices=None, intermediates_only=True)
    return len(out)


def load_timm_backbone(
    name: str,
    weights: str = "random",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    model_kwargs: dict | None = None,
    precision: str = "fp32",
    lazy: bool = False,
) -> TimmBackbone:
    """A frozen timm backbone; see :func:`trainer.vision.load_backbone` for the arguments."""
    check_type(name, str, "name")
    check_type(weights, (str, os.PathLike), "weights")
    check_type(seed, int, "seed")
    model_kwargs = dict(model_kwargs or {})
    for reserved in ("pretrained", "pretrained_cfg_overlay", "pretrained_cfg"):
        if reserved in model_kwargs:
            raise UsageError(f"model_kwargs must not set {reserved!r}; use the weights argument")
    torch_device = resolve_device(device)
    weights = os.fspath(weights)
    check_timm_name(name)
    if lazy:
        return _lazy(name, weights, torch_device, seed, model_kwargs, precision)

    if weights == "random":
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(name, pretrained=False, **model_kwargs)
        weights_id = f"random-seed{seed}"
    elif weights == "hub":
        try:
            model = create_model(name, pretrained=True, **model_kwargs)
        except BCIError:
            raise
        except Exception as err:  # offline, not cached, no pretrained weights for the tag...
            raise BCIError(
                f"could not load pretrained weights for {name!r} from the Hugging Face hub "
                f"({type(err).__name__}: {err}). Offline, or weights not in the hub cache: download "
                f"them once and pass the local file instead: --weights /path/to/model.safetensors "
                f"(weights='/path/to/model.safetensors' in Python)."
            ) from err
        weights_id = _hub_id(model)
    else:
        path, weights_id = _weights_file(weights)
        # custom_load makes timm hand the file to model.load_pretrained(), which for ViTs
        # expects a JAX .npz; a state-dict file must go through the normal loader.
        overlay = dict(file=str(path), custom_load=path.suffix.lower() == ".npz")
        try:
            with _quiet_timm_file_loading():  # timm logs "Loaded  from checkpoint" (no name): say it ourselves
                model = create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **model_kwargs)
        except BCIError:
            raise
        except Exception as err:
            raise BCIError(f"could not load weights file {path} into {name!r} "
                           f"({type(err).__name__}: {err})") from err
        logger.info("backbone %s: weights loaded from %s", name, path)

    _check_api(name, model)
    model.eval()
    model.requires_grad_(False)
    dtype = feature_dtype(precision, torch_device)
    check_memory(name, sum(p.numel() for p in model.parameters()), dtype, torch_device)
    model.to(device=torch_device, dtype=dtype)

    data_config, kind, n_layers, n_params, params = _anatomy(model, model_kwargs)
    backbone = TimmBackbone(
        name=name, weights=weights, weights_id=weights_id, model=model, device=torch_device,
        data_config=data_config, n_layers=n_layers, kind=kind, n_params=n_params,
        model_kwargs=model_kwargs, provider="timm", dtype=dtype, _fi_params=params,
    )
    logger.info("backbone %s (%s): %s, %d layers, %.1fM parameters, on %s%s",
                name, weights_id, kind, n_layers, n_params / 1e6, torch_device,
                "" if dtype == torch.float32 else f" in {dtype_name(dtype)}")
    return backbone


def _check_api(name: str, model: torch.nn.Module) -> None:
    """A BCIError unless the model has what extraction calls."""
    if not callable(getattr(model, "forward_intermediates", None)):
        raise BCIError(f"timm model {name!r} has no forward_intermediates(); intermediate layers cannot "
                       f"be extracted from it. Choose another backbone.")
    if not callable(getattr(model, "forward_head", None)):
        raise BCIError(f"timm model {name!r} has no forward_head(); its final embedding cannot be computed")


def _hub_id(model: torch.nn.Module) -> str:
    return f"hub-{model.pretrained_cfg.get('tag') or 'default'}"


def _weights_file(weights: str) -> tuple[Path, str]:
    """(the path, the weights id) of a local weights file; a BCIError when it is missing."""
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BCIError(f"weights file not found: {path} (weights must be 'random', 'hub' or a path "
                       f"to a local .safetensors/.bin/.pth file)")
    return path, f"file-{file_digest(path)[:16]}"


def _lazy(name: str, weights: str, device: torch.device, seed: int, model_kwargs: dict, precision: str) -> TimmBackbone:
    """The backbone built on the meta device, its weights id named as loading would name it,
    and a loader of the real one."""
    with torch.device("meta"):
        model = create_model(name, pretrained=False, **model_kwargs)
    if weights == "random":
        weights_id = f"random-seed{seed}"
    else:
        weights_id = _hub_id(model) if weights == "hub" else _weights_file(weights)[1]
    _check_api(name, model)
    data_config, kind, n_layers, n_params, params = _anatomy(model, model_kwargs)
    loader = functools.partial(load_timm_backbone, name, weights, device=device, seed=seed, model_kwargs=model_kwargs,
                               precision=precision)
    return TimmBackbone(name=name, weights=weights, weights_id=weights_id, model=model, device=device,
                        data_config=data_config, n_layers=n_layers, kind=kind, n_params=n_params, model_kwargs=model_kwargs,
                        provider="timm", dtype=feature_dtype(precision, device), _loader=loader, _fi_params=params)


def _anatomy(model: torch.nn.Module, model_kwargs: dict) -> tuple[dict, str, int, int, frozenset]:
    """(data config, kind, number of layers, number of parameters, forward_intermediates'
    parameter names) of a timm model."""
    from timm.data import resolve_model_data_config

    data_config = dict(resolve_model_data_config(model))
    if "img_size" in model_kwargs:  # timm keeps the pretrained cfg's size otherwise
        size = model_kwargs["img_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        data_config["input_size"] = (data_config["input_size"][0], int(h), int(w))
    params = frozenset(inspect.signature(model.forward_intermediates).parameters)
    kind = "vit" if ("return_prefix_tokens" in params and "output_fmt" in params) else "cnn"
    return data_config, kind, _count_layers(model, data_config), int(sum(p.numel() for p in model.parameters())), params


class _DropTimmFileLoadInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


@contextmanager
def _quiet_timm_file_loading() -> Iterator[None]:
    """Drop timm's INFO lines about loading a local weights file ("Loading pretrained
    weights from file", "Loaded  from checkpoint '...'" with an empty name) while the
    block runs; :func:`load_backbone` logs what it loaded instead.  Warnings pass."""
    loggers = [logging.getLogger(n) for n in ("timm.models._builder", "timm.models._helpers")]
    drop = _DropTimmFileLoadInfo()
    for lg in loggers:
        lg.addFilter(drop)
    try:
        yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


def create_model(name: str, **kwargs) -> torch.nn.Module:
    """``timm.create_model(name, **kwargs)``, with an ``img_size`` a convolutional net does
    not take dropped (it takes any input size) and timm's errors about unknown names or
    pretrained tags turned into BCIErrors that say where to look.  Check the name first
    with :func:`check_timm_name` for close-match suggestions."""
    import timm

    try:
        return timm.create_model(name, **kwargs)
    except TypeError as err:
        if "img_size" in kwargs and "img_size" in str(err):
            # convolutional nets take any input size: only the transform's size changes
            return create_model(name, **{k: v for k, v in kwargs.items() if k != "img_size"})
        raise
    except RuntimeError as err:
        msg = str(err).rstrip(".")
        if "Invalid pretrained tag" in msg:
            tags = timm.list_pretrained(name.split(".", 1)[0] + ".*")
            known = f" Known tags: {', '.join(tags[:8])}." if tags else ""
            raise BCIError(f"timm backbone {name!r}: {msg}.{known} python -c \"import timm; "
                           f"print(timm.list_pretrained('{name.split('.', 1)[0]}.*'))\" lists them all.") from err
        if "Unknown model" in msg:
            raise BCIError(f"timm backbone {name!r}: {msg}. {_LIST_MODELS} lists the valid names.") from err
        raise


# --------------------------------------------------------------------------- layers / pooling

