"""Vision targets: a frozen timm backbone and pooled features of its intermediate layers.

Shallow alignment trains the EEG encoder against a pooled *intermediate* layer ``h^(l)``
of a frozen vision model instead of its final embedding.  This module

* builds the backbone (:func:`load_backbone`) with random weights (tests, offline work),
  weights from the Hugging Face hub cache, or weights from a local file;
* computes, in **one** forward pass per image batch, every requested intermediate layer
  and the model's own final embedding (:func:`extract_features`);
* caches each (backbone, weights, layer, pooling, preprocessing, image set) result as one
  safetensors file (:func:`cached_features`), so a layer sweep pays for the images once.

Layers
    Index ``k`` is the ``k``-th output :meth:`forward_intermediates` can return (0-based,
    negative indices count from the end): a transformer block for ViT-like models, a
    stage for CNNs.  For most CNNs (ResNet, EfficientNet, RegNet, ...) timm counts the stem
    as index 0, so a ResNet has 5 layers (stem + 4 stages).  ``"final"`` is the model's
    pooled pre-logits embedding (``forward_head(..., pre_logits=True)``), whatever the
    model's own head pooling is; it does not depend on ``pooling``.

Pooling (:data:`POOLINGS`)
    ViT-like models (``kind == "vit"``, intermediates are token sequences):
    ``"mean"`` averages the patch tokens (class/register/distillation tokens excluded),
    ``"cls"`` takes the class token, ``"mean+cls"`` concatenates both (``2 * D`` features).
    CNN-like models (``kind == "cnn"``, intermediates are NCHW maps; this includes
    hierarchical transformers such as Swin and ViTs that timm returns as maps): the only
    pooling is global average pooling, spelled ``"mean"``; ``"cls"`` and ``"mean+cls"``
    raise a UsageError (a ValueError) because there is no class token.
    Intermediates are taken as the blocks output them (timm's ``norm=False``).
"""

from __future__ import annotations

import difflib
import hashlib
import inspect
import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from ._checks import check_option, check_path, check_positive, check_type
from .config import FINAL, POOLINGS, layer_key, layer_of_key
from .data.images import open_rgb
from .errors import BCIError, UsageError, UsageTypeError
from .files import atomic_path, sha256_file

__all__ = [
    "Backbone",
    "POOLINGS",
    "cached_features",
    "check_model_name",
    "check_pooling",
    "create_model",
    "extract_features",
    "feature_cache_key",
    "load_backbone",
    "resolve_device",
]

logger = logging.getLogger("trainer")

_CACHE_FORMAT = "v1"  # bump when the meaning of a cached file changes
# how to list timm's names, for a command-line user and a Python user alike
_LIST_MODELS = "python -c \"import timm; print(timm.list_models('*pattern*'))\""
_TENSOR_NAME = "features"


# --------------------------------------------------------------------------- device

def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; also ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    A malformed string is a :class:`~trainer.errors.UsageError` (a ValueError) naming it;
    asking for CUDA on a machine without it (or for a GPU index that does not exist) is a
    BCIError.
    """
    if isinstance(device, torch.device):
        device = str(device)
    check_type(device, str, "device")
    spec = device.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise UsageError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    if not torch.cuda.is_available():
        raise BCIError(f"device {device!r} was requested but CUDA is not available here; "
                       f"use --device cpu or auto (device='cpu' or 'auto' in Python)")
    index = int(m.group(1)) if m.group(1) is not None else None
    if index is not None and index >= torch.cuda.device_count():
        raise BCIError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda" if index is None else f"cuda:{index}")


# --------------------------------------------------------------------------- backbone

@dataclass(repr=False)
class Backbone:
    """A frozen timm model in eval mode plus what is needed to feed it and name its output.

    Attributes
    ----------
    name : str
        The timm model name as given (may carry a pretrained tag, ``arch.tag``).
    weights : str
        ``"random"``, ``"hub"`` or the local weights path, as given to :func:`load_backbone`.
    weights_id : str
        Stable identity of the weights: ``"random-seed0"``, ``"file-<sha256[:16]>"`` or
        ``"hub-<pretrained tag>"``.  Part of every feature cache key.
    model : torch.nn.Module
    device : torch.device
    data_config : dict
        ``timm.data.resolve_model_data_config(model)`` (input size, interpolation, mean,
        std, crop pct, crop mode), with the input size following an ``img_size`` model
        argument.
    n_layers : int
        How many intermediate outputs ``forward_intermediates`` can return.
    kind : 'vit' | 'cnn'
        ``'vit'`` when intermediates are token sequences with separable prefix (class)
        tokens, ``'cnn'`` when they are NCHW feature maps.
    n_params : int
    model_kwargs : dict
        Extra ``timm.create_model`` arguments (part of the cache key).
    """

    name: str
    weights: str
    weights_id: str
    model: torch.nn.Module
    device: torch.device
    data_config: dict
    n_layers: int
    kind: str
    n_params: int
    model_kwargs: dict = field(default_factory=dict)
    # parameter names of the model's own forward_intermediates, read once at creation
    # (so that a wrapped/patched method later cannot change which options are passed)
    _fi_params: frozenset | None = None

    def __post_init__(self) -> None:
        if self._fi_params is None:
            self._fi_params = frozenset(inspect.signature(self.model.forward_intermediates).parameters)

    def __repr__(self) -> str:
        return (f"Backbone(name={self.name!r}, weights_id={self.weights_id!r}, kind={self.kind!r}, "
                f"n_layers={self.n_layers}, n_params={self.n_params}, device={str(self.device)!r})")

    @property
    def num_prefix_tokens(self) -> int:
        """Class/register/distillation tokens in front of the patch tokens (0 for CNNs)."""
        if self.kind != "vit":
            return 0
        return int(getattr(self.model, "num_prefix_tokens", 0) or 0)

    def transform(self):
        """timm's evaluation transform for this model (PIL RGB image -> CHW float tensor)."""
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)

    def loader_transform(self) -> Callable[[Any], torch.Tensor]:
        """:meth:`transform` with its last two steps (to tensor, normalise) done in numpy:
        bitwise the same tensor, but without torch operations, so that the threads that
        prepare the next batch do not each start torch's intra-op thread pool beside the
        model's (on a busy 2-core machine that made the preparation ~10x dearer in CPU
        time than the numpy steps).  Falls back to :meth:`transform` for other shapes of
        timm transform and for images that are not 8-bit RGB."""
        from torchvision.transforms import Compose, Normalize, ToTensor

        full = self.transform()
        steps = list(full.transforms) if isinstance(full, Compose) else []
        if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
            return full
        head, norm = steps[:-2], steps[-1]
        mean = np.asarray(norm.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(norm.std, dtype=np.float32).reshape(-1, 1, 1)

        def transform(image) -> torch.Tensor:
            for step in head:
                image = step(image)
            if getattr(image, "mode", None) != "RGB":
                return steps[-1](steps[-2](image))
            x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
            return torch.from_numpy((x - mean) / std)

        return transform

    def layer_depths(self) -> list[float]:
        """Relative depth ``(k + 1) / n_layers`` of each layer index ``k``."""
        return [(k + 1) / self.n_layers for k in range(self.n_layers)]

    def preprocessing_id(self) -> str:
        """A stable string of the data config: input size, interpolation, mean, std, crop."""
        c = self.data_config

        def nums(values) -> str:
            return ",".join(f"{float(v):.6g}" for v in values)

        size = "x".join(str(int(v)) for v in c.get("input_size", ()))
        crop_pct = c.get("crop_pct")
        return (f"size{size}_{c.get('interpolation', '')}_mean{nums(c.get('mean', ()))}"
                f"_std{nums(c.get('std', ()))}_crop{'none' if crop_pct is None else f'{float(crop_pct):.6g}'}"
                f"_{c.get('crop_mode') or 'center'}")


def _close_model_names(arch: str, all_names: list[str]) -> list[str]:
    close = difflib.get_close_matches(arch, all_names, n=6, cutoff=0.6)
    if not close:
        import timm

        stem = arch.split("_")[0]
        if len(stem) >= 2:
            close = timm.list_models(f"*{stem}*")[:6]
    return close


def check_model_name(name: str) -> None:
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


def load_backbone(
    name: str,
    weights: str = "random",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    model_kwargs: dict | None = None,
) -> Backbone:
    """Create a frozen timm backbone.

    Parameters
    ----------
    name : str
        timm model name (``timm.list_models()``), optionally with a pretrained tag.
    weights : str
        ``"random"``: ``pretrained=False``, initialised deterministically from ``seed``
        (the caller's global torch RNG is left untouched).  ``"hub"``: timm's pretrained
        weights from the Hugging Face hub (or its local cache).  Anything else: a path to
        a local weights file (``.safetensors``, ``.bin``, ``.pth``; a timm ``.npz`` for
        models whose pretrained weights are JAX checkpoints).
    device : 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    seed : int
        Initialisation seed for ``weights="random"``.
    model_kwargs : dict, optional
        Extra ``timm.create_model`` arguments (e.g. ``img_size=64`` for a small ViT).

    Raises
    ------
    BCIError
        Unknown model name, missing or incompatible weights file, hub weights not
        available, or a model without ``forward_intermediates``.
    """
    from timm.data import resolve_model_data_config

    check_type(name, str, "name")
    check_type(weights, (str, os.PathLike), "weights")
    check_type(seed, int, "seed")
    model_kwargs = dict(model_kwargs or {})
    for reserved in ("pretrained", "pretrained_cfg_overlay", "pretrained_cfg"):
        if reserved in model_kwargs:
            raise UsageError(f"model_kwargs must not set {reserved!r}; use the weights argument")
    torch_device = resolve_device(device)
    weights = os.fspath(weights)
    check_model_name(name)

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
        weights_id = f"hub-{model.pretrained_cfg.get('tag') or 'default'}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BCIError(f"weights file not found: {path} (weights must be 'random', 'hub' or a path "
                           f"to a local .safetensors/.bin/.pth file)")
        weights_id = f"file-{sha256_file(path)[:16]}"
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

    if not callable(getattr(model, "forward_intermediates", None)):
        raise BCIError(f"timm model {name!r} has no forward_intermediates(); intermediate layers cannot "
                       f"be extracted from it. Choose another backbone.")
    if not callable(getattr(model, "forward_head", None)):
        raise BCIError(f"timm model {name!r} has no forward_head(); its final embedding cannot be computed")

    model.eval()
    model.requires_grad_(False)
    model.to(torch_device)

    data_config = dict(resolve_model_data_config(model))
    if "img_size" in model_kwargs:  # timm keeps the pretrained cfg's size otherwise
        size = model_kwargs["img_size"]
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        data_config["input_size"] = (data_config["input_size"][0], int(h), int(w))

    params = frozenset(inspect.signature(model.forward_intermediates).parameters)
    kind = "vit" if ("return_prefix_tokens" in params and "output_fmt" in params) else "cnn"
    n_layers = _count_layers(model, data_config)
    n_params = int(sum(p.numel() for p in model.parameters()))
    backbone = Backbone(
        name=name, weights=weights, weights_id=weights_id, model=model, device=torch_device,
        data_config=data_config, n_layers=n_layers, kind=kind, n_params=n_params,
        model_kwargs=model_kwargs, _fi_params=params,
    )
    logger.info("backbone %s (%s): %s, %d layers, %.1fM parameters, on %s",
                name, weights_id, kind, n_layers, n_params / 1e6, torch_device)
    return backbone


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
    with :func:`check_model_name` for close-match suggestions."""
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

def _parse_layers(backbone: Backbone, layers) -> tuple[list[str], list[int]]:
    """Return (result keys in request order without duplicates, sorted block indices)."""
    if isinstance(layers, (int, str)) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise UsageTypeError(f"layers must be a list of ints and/or 'final', got {type(layers).__name__} ({layers!r:.80})")
    if not layers:
        raise UsageError("layers must not be empty")
    n = backbone.n_layers
    keys: list[str] = []
    indices: set[int] = set()
    for item in layers:
        if isinstance(item, str):
            if item != FINAL:
                raise UsageError(f"layers: {item!r} is not a layer; use an int index or 'final'")
            key = FINAL
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            k = int(item)
            if not -n <= k < n:
                raise UsageError(f"layer {k} is out of range for {backbone.name} ({n} layers): "
                                 f"valid indices are 0..{n - 1} (or -{n}..-1 from the end), or 'final'")
            k %= n
            indices.add(k)
            key = layer_key(k)
        else:
            raise UsageTypeError(f"layers: each entry must be an int or 'final', got {type(item).__name__} ({item!r:.80})")
        if key not in keys:
            keys.append(key)
    return keys, sorted(indices)


def check_pooling(backbone: Backbone, pooling: str) -> None:
    """Raise a UsageError unless ``pooling`` (:data:`POOLINGS`) applies to ``backbone``'s layers."""
    check_option(pooling, POOLINGS, "pooling")
    if backbone.kind == "cnn" and pooling != "mean":
        raise UsageError(f"pooling {pooling!r} needs a class token, but {backbone.name} gives feature maps "
                         f"(kind 'cnn'); use --pooling mean (pooling='mean' in Python: global average pooling)")
    if backbone.kind == "vit" and pooling != "mean" and backbone.num_prefix_tokens == 0:
        raise UsageError(f"pooling {pooling!r} needs a class token, but {backbone.name} has none; "
                         f"use --pooling mean (pooling='mean' in Python)")


def _pool(item, pooling: str) -> torch.Tensor:
    """Pool one intermediate: a (tokens, prefix) pair / token tensor (ViT) or an NCHW map."""
    if isinstance(item, (tuple, list)):  # ViT with prefix tokens: (B, L, C), (B, P, C)
        tokens, prefix = item
    else:
        tokens, prefix = item, None
    if tokens.ndim == 4:
        mean = tokens.mean(dim=(2, 3))
    elif tokens.ndim == 3:
        mean = tokens.mean(dim=1)
    elif tokens.ndim == 2:
        mean = tokens
    else:
        raise RuntimeError(f"unexpected intermediate feature shape {tuple(tokens.shape)}")
    if pooling == "mean":
        return mean
    cls = prefix[:, 0]
    return cls if pooling == "cls" else torch.cat([mean, cls], dim=1)


# --------------------------------------------------------------------------- images

def _image_source(images) -> tuple[int, Callable[[int], Any]]:
    """(number of images, function index -> RGB PIL image) for the accepted inputs."""
    from PIL import Image

    if hasattr(images, "open") and hasattr(images, "__len__") and not isinstance(images, (str, os.PathLike)):
        return len(images), images.open
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        raise UsageTypeError("images must be an ImageSet or a sequence of PIL images or paths, "
                        f"got {type(images).__name__}")

    def load(i: int):
        item = images[i]
        if isinstance(item, Image.Image):
            return item if item.mode == "RGB" else item.convert("RGB")
        if isinstance(item, (str, os.PathLike)):
            return open_rgb(item, f"image {i}")
        raise UsageTypeError(f"images[{i}] must be a PIL image or a path, got {type(item).__name__}")

    return len(images), load


def _forward_kwargs(backbone: Backbone, indices: list[int], want_final: bool) -> dict:
    params = backbone._fi_params
    kw: dict[str, Any] = {"indices": list(indices), "intermediates_only": not want_final}
    if "norm" in params:
        kw["norm"] = False
    if "stop_early" in params:
        # must be explicit: some models default to True, which breaks the final output
        kw["stop_early"] = not want_final
    if backbone.kind == "vit":
        kw["output_fmt"] = "NLC"
        kw["return_prefix_tokens"] = True
    return kw


# --------------------------------------------------------------------------- extraction

def extract_features(
    backbone: Backbone,
    images,
    layers,
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    progress: Callable[[int, int], Any] | None = None,
    num_workers: int = 4,
) -> dict[str, np.ndarray]:
    """Pooled features of several layers (and the final embedding) in one pass per batch.

    Parameters
    ----------
    backbone : Backbone
    images : ImageSet | sequence of PIL images or paths
        Loaded and transformed batch by batch (at most two batches in memory).
    layers : list of int and/or 'final'
        Block/stage indices (negative from the end) and ``'final'``.
    pooling : 'mean' | 'cls' | 'mean+cls'
        For intermediate layers; see the module docstring.
    batch_size : int
    progress : callable(n_done, n_total), optional
        Called after every batch.
    num_workers : int
        Threads that decode and transform the next batch while the model runs (0: none).

    Returns
    -------
    dict
        ``"layer_{k}"`` (``k`` non-negative) and/or ``"final"`` -> float32 array (N, D).
    """
    check_type(backbone, Backbone, "backbone")
    keys, indices = _parse_layers(backbone, layers)
    want_final = FINAL in keys
    if indices:
        check_pooling(backbone, pooling)
    else:
        check_option(pooling, POOLINGS, "pooling")
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(num_workers, "num_workers", strict=False, integer=True)
    if progress is not None and not callable(progress):
        raise UsageTypeError(f"progress must be callable, got {type(progress).__name__}")
    n_total, load = _image_source(images)
    if n_total == 0:
        raise UsageError("images is empty")

    model = backbone.model
    transform = backbone.loader_transform()
    fwd_kwargs = _forward_kwargs(backbone, indices, want_final) if indices else None
    out: dict[str, np.ndarray] = {}

    def load_batch(start: int, pool: ThreadPoolExecutor | None):
        idx = range(start, min(start + batch_size, n_total))
        job = lambda i: transform(load(i))  # noqa: E731
        if pool is None:
            return [job(i) for i in idx]
        return [pool.submit(job, i) for i in idx]

    def gather(batch) -> torch.Tensor:
        tensors = [b.result() if hasattr(b, "result") else b for b in batch]
        return torch.stack(tensors).to(backbone.device, non_blocking=True)

    def store(key: str, start: int, values: torch.Tensor) -> None:
        arr = values.detach().float().cpu().numpy()
        if key not in out:
            out[key] = np.empty((n_total, arr.shape[1]), dtype=np.float32)
        out[key][start:start + len(arr)] = arr

    executor = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 0 else None
    try:
        with torch.inference_mode():
            pending = load_batch(0, executor)
            for start in range(0, n_total, batch_size):
                x = gather(pending)
                nxt = start + batch_size
                pending = load_batch(nxt, executor) if nxt < n_total else None  # prefetch
                if indices:
                    result = model.forward_intermediates(x, **fwd_kwargs)
                    final, inters = result if want_final else (None, result)
                    for k, item in zip(indices, inters):
                        store(layer_key(k), start, _pool(item, pooling))
                else:  # only the final embedding asked for
                    final = model.forward_features(x)
                if want_final:
                    store(FINAL, start, model.forward_head(final, pre_logits=True).flatten(1))
                done = min(nxt, n_total)
                if progress is not None:
                    progress(done, n_total)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return {key: out[key] for key in keys}


# --------------------------------------------------------------------------- cache

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _short_hash(text: str, n: int = 10) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def _slug(text: str, max_len: int = 40) -> str:
    """Filesystem-safe rendering; a hash of the original is appended whenever characters
    were replaced or the text was cut, so distinct inputs stay distinct."""
    safe = _SAFE.sub("_", text).strip(".")
    if safe == text and len(text) <= max_len:
        return text
    return f"{safe[:max_len]}-{_short_hash(text)}"


def feature_cache_key(backbone: Backbone, layer_key: str, pooling: str, image_ids: str) -> str:
    """Filesystem-safe cache key: backbone name, weights id, layer, pooling, a hash of the
    preprocessing (and model arguments), and the caller's image-set identity string.

    ``image_ids`` must change whenever the images or their order change (e.g. a hash of
    the file list).  The final embedding does not depend on ``pooling``; its key uses
    ``"pooled"`` so that all poolings share one file.
    """
    check_type(backbone, Backbone, "backbone")
    check_type(layer_key, str, "layer_key")
    check_type(image_ids, str, "image_ids")
    layer_of_key(layer_key)  # 'layer_K' or 'final'
    check_option(pooling, POOLINGS, "pooling")
    if not image_ids:
        raise UsageError("image_ids must be a non-empty string identifying the image set")
    pool_part = "pooled" if layer_key == FINAL else pooling
    config = backbone.preprocessing_id()
    if backbone.model_kwargs:
        config += "|" + repr(sorted(backbone.model_kwargs.items()))
    parts = [_slug(backbone.name, 60), _slug(backbone.weights_id, 40), layer_key, pool_part,
             "pre" + _short_hash(config, 12), _slug(image_ids, 40), _CACHE_FORMAT]
    return "__".join(parts)


def _read_cache(path: Path, n_images: int, expected_meta: dict[str, str]) -> np.ndarray | None:
    """The cached array, or None (with a warning) when the file is unusable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if _TENSOR_NAME not in f.keys():
                raise ValueError(f"no {_TENSOR_NAME!r} tensor")
            arr = f.get_tensor(_TENSOR_NAME)
    except Exception as err:  # corrupt or truncated file: safetensors raises various types
        logger.warning("ignoring unreadable feature cache %s (%s); recomputing", path, err)
        return None
    problem = None
    if arr.dtype != np.float32:
        problem = f"dtype {arr.dtype}, expected float32"
    elif arr.ndim != 2 or arr.shape[0] != n_images:
        problem = f"shape {arr.shape}, expected ({n_images}, D)"
    elif not np.isfinite(arr).all():
        problem = "non-finite values"
    else:
        for k, v in expected_meta.items():
            if meta.get(k) != v:
                problem = f"metadata {k}={meta.get(k)!r}, expected {v!r}"
                break
    if problem is not None:
        logger.warning("ignoring feature cache %s: %s; recomputing", path, problem)
        return None
    return arr


def _write_cache(path: Path, arr: np.ndarray, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({_TENSOR_NAME: np.ascontiguousarray(arr, dtype=np.float32)}, str(tmp), metadata=metadata)


def cached_features(
    backbone: Backbone,
    images,
    layers,
    *,
    pooling: str,
    cache_dir: str | os.PathLike,
    image_set_id: str,
    batch_size: int = 64,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`extract_features` with one safetensors file per layer under ``cache_dir``.

    Layers found in the cache (and valid: float32, one row per image, matching metadata)
    are loaded; all missing ones are computed together in a single
    :func:`extract_features` call and written atomically.  An unusable cache file is
    logged as a warning and recomputed.  ``image_set_id`` must identify the images and
    their order (see :func:`feature_cache_key`).
    """
    check_type(backbone, Backbone, "backbone")
    check_type(image_set_id, str, "image_set_id")
    keys, indices = _parse_layers(backbone, layers)
    if indices:
        check_pooling(backbone, pooling)
    else:
        check_option(pooling, POOLINGS, "pooling")
    cache_dir = check_path(cache_dir, "cache_dir")
    n_images, _ = _image_source(images)
    cache_dir.mkdir(parents=True, exist_ok=True)

    result: dict[str, np.ndarray] = {}
    missing: list[str] = []
    paths: dict[str, Path] = {}
    metas: dict[str, dict[str, str]] = {}
    for key in keys:
        paths[key] = cache_dir / f"{feature_cache_key(backbone, key, pooling, image_set_id)}.safetensors"
        metas[key] = {
            "backbone": backbone.name,
            "weights_id": backbone.weights_id,
            "layer": key,
            "pooling": "pooled" if key == FINAL else pooling,
            "preprocessing_id": backbone.preprocessing_id(),
            "n_images": str(n_images),
            "image_set_id": image_set_id,
        }
        arr = _read_cache(paths[key], n_images, metas[key]) if paths[key].is_file() else None
        if arr is None:
            missing.append(key)
        else:
            result[key] = arr
    if missing:
        logger.info("computing %s of %s for %d images (%d layer(s) cached)",
                    ", ".join(missing), backbone.name, n_images, len(keys) - len(missing))
        request = [layer_of_key(k) for k in missing]
        computed = extract_features(backbone, images, request, pooling=pooling, batch_size=batch_size,
                                    progress=progress)
        for key in missing:
            _write_cache(paths[key], computed[key], metas[key])
            result[key] = computed[key]
    else:
        logger.info("all %d layer(s) of %s loaded from %s", len(keys), backbone.name, cache_dir)
    return {key: result[key] for key in keys}
