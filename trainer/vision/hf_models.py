"""The Hugging Face transformers provider: a vision transformer from a local model folder.

Names are ``hf:FOLDER``: a folder as ``save_pretrained`` writes it (``config.json``, the
weights, ``preprocessor_config.json``), e.g. a hub snapshot downloaded once.  Nothing is
fetched from the network.  Supported are transformer vision towers whose config has
``num_hidden_layers``: a vision model itself (InternViT through its own code, InternVL's,
DINOv2, ViT, SigLIP, CLIP's vision model...) or a model with one (CLIP, SigLIP, InternVL:
its ``vision_model`` / ``vision_tower``; the rest of the model, e.g. a text tower, is
dropped after loading).

Layers
    Index ``k`` is the output of the tower's ``k``-th encoder layer (0-based), as the
    layer outputs it (before any final norm), read by a forward hook; a pass that needs no
    final embedding stops after the deepest layer asked for.  ``"final"`` is the model's
    pooled output (``pooler_output``, through the model's visual projection when it has
    one, as CLIP's image embedding), or the mean of the last layer's patch tokens for a
    model without one.

A folder that ships its own model code (``auto_map`` in ``config.json``; InternViT-6B's
does) is loaded only with ``trust_remote_code=True`` (``--trust-remote-code``): that code
runs with the user's rights.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._checks import check_type
from ..errors import BCIError, UsageError
from .backbone import HF_PREFIX, Backbone, check_memory, feature_dtype, file_digest, resolve_device, short_hash

__all__ = ["HFBackbone", "check_hf_name", "hf_data_config", "load_hf_backbone"]

logger = logging.getLogger("trainer")

_INSTALL = "pip install 'shallow-bci[hf]' (or: pip install transformers)"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# PIL's resampling filters by number, as transformers' image processors store them
_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class _Stop(Exception):
    """Raised by the hook of the deepest layer asked for: the rest of the pass is not needed."""


class _VisionPart(torch.nn.Module):
    """The vision tower of a larger model (and its visual projection, if any)."""

    def __init__(self, tower: torch.nn.Module, projection: torch.nn.Module | None):
        super().__init__()
        self.tower = tower
        self.projection = projection


@dataclass(repr=False)
class HFBackbone(Backbone):
    """A transformers vision tower (see :class:`~trainer.vision.backbone.Backbone`)."""

    folder: Path = field(default_factory=Path)
    config_hash: str = ""
    tower: torch.nn.Module | None = None
    projection: torch.nn.Module | None = None
    blocks: torch.nn.ModuleList | None = None
    prefix_tokens: int = 0

    @property
    def num_prefix_tokens(self) -> int:
        return self.prefix_tokens

    @property
    def cache_name(self) -> str:
        # the folder's name and its config, not its place: a moved folder keeps its cache
        return f"hf-{self.folder.name}-{self.config_hash}"

    def _final(self, out) -> torch.Tensor:
        pooled = getattr(out, "pooler_output", None)
        if pooled is None:
            pooled = out.last_hidden_state[:, self.prefix_tokens:].mean(dim=1)
        if self.projection is not None:
            pooled = self.projection(pooled)
        return pooled.flatten(1).float()

    def features_forward(self, x):
        return self.tower(pixel_values=x)

    def forward_layers(self, x, indices, want_final):
        x = x.to(dtype=self.dtype)
        caught: dict[int, torch.Tensor] = {}
        deepest = max(indices) if indices else -1

        def hook(k: int):
            def grab(_module, _args, output):
                caught[k] = output[0] if isinstance(output, (tuple, list)) else output
                if k == deepest and not want_final:
                    raise _Stop
            return grab

        handles = [self.blocks[k].register_forward_hook(hook(k)) for k in indices]
        try:
            out = self.tower(pixel_values=x)
        except _Stop:
            out = None
        finally:
            for h in handles:
                h.remove()
        inters = []
        for k in indices:
            tokens = caught[k].float()
            p = self.prefix_tokens
            inters.append((tokens[:, p:], tokens[:, :p]) if p else tokens)
        return inters, (self._final(out) if want_final else None)


def _version(text: str) -> tuple[int, int]:
    parts = (text.split(".") + ["0"])[:2]
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in parts)


def _folder_of(name: str) -> Path:
    return Path(name[len(HF_PREFIX):]).expanduser()


def _require_transformers():
    try:
        import transformers
    except ImportError as err:
        raise BCIError(f"hf: backbones need the transformers package, which is not installed: {_INSTALL}") from err
    return transformers


def _read_config(folder: Path) -> dict:
    path = folder / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BCIError(f"{path}: cannot read the model's config.json ({type(err).__name__}: {err})") from err
    if not isinstance(config, dict):
        raise BCIError(f"{path}: not a transformers config (a JSON object)")
    return config


def check_hf_name(name: str) -> None:
    """Raise a BCIError unless ``hf:FOLDER`` names a folder with a ``config.json``."""
    check_type(name, str, "backbone")
    folder = _folder_of(name)
    if not str(folder):
        raise BCIError(f"backbone {name!r}: give the model folder after 'hf:', e.g. hf:/models/InternViT-6B-448px-V2_5")
    if not folder.is_dir():
        raise BCIError(f"backbone {name!r}: folder {folder} not found (hf: backbones load from a local folder, "
                       f"as save_pretrained or a hub snapshot writes it)")
    if not (folder / "config.json").is_file():
        raise BCIError(f"backbone {name!r}: {folder} has no config.json; it is not a transformers model folder")


def _weights_hash(folder: Path) -> str:
    """SHA-256 over the names and contents of the folder's weight files (and its config)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix in _WEIGHT_SUFFIXES or p.name == "config.json"))
    size = sum(p.stat().st_size for p in files)
    if size > 1 << 30:
        logger.info("the weights in %s (%.1f GB): their SHA-256 for the feature cache key (remembered)", folder, size / 1e9)
    return short_hash("\n".join(f"{p.name} {file_digest(p)}" for p in files), 64)


def _size(value, what: str, path: Path) -> tuple[int, int] | int:
    """(h, w) for an int or {"height", "width"}; an int for {"shortest_edge"}."""
    if isinstance(value, int):
        return value, value
    if isinstance(value, dict):
        if "height" in value and "width" in value:
            return int(value["height"]), int(value["width"])
        if "shortest_edge" in value:
            return int(value["shortest_edge"])
    raise BCIError(f"{path}: {what} {value!r} is not a size this tool reads (an int, height/width or shortest_edge)")


def hf_data_config(folder: Path, config) -> dict:
    """timm's data config keys for the folder's image processor (``preprocessor_config.json``):
    resize (shortest edge, or to a fixed size), centre crop, 1/255 rescale, mean and std.
    Without that file: the config's ``image_size``, bicubic, ImageNet mean and std (logged)."""
    path = folder / "preprocessor_config.json"
    if not path.is_file():
        size = getattr(config, "image_size", None)
        if size is None:
            raise BCIError(f"{folder}: no preprocessor_config.json and no image_size in config.json: "
                           f"the input size of the model is unknown")
        h, w = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        logger.warning("%s has no preprocessor_config.json: images are resized to %dx%d (bicubic) with ImageNet "
                       "mean and std", folder, h, w)
        return {"input_size": (3, h, w), "interpolation": "bicubic", "mean": _IMAGENET_MEAN, "std": _IMAGENET_STD,
                "crop_pct": 1.0, "crop_mode": "squash"}
    try:
        proc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BCIError(f"{path}: cannot read it ({type(err).__name__}: {err})") from err
    if proc.get("do_rescale", True) and abs(float(proc.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise BCIError(f"{path}: rescale_factor {proc.get('rescale_factor')} is not 1/255; this tool cannot "
                       f"reproduce that preprocessing")
    resample = proc.get("resample", 3)
    if resample not in _RESAMPLE:
        raise BCIError(f"{path}: resample {resample!r} is not one of PIL's filters {sorted(_RESAMPLE)}")
    mean = tuple(float(v) for v in proc.get("image_mean", _IMAGENET_MEAN)) if proc.get("do_normalize", True) else (0.0,) * 3
    std = tuple(float(v) for v in proc.get("image_std", _IMAGENET_STD)) if proc.get("do_normalize", True) else (1.0,) * 3
    resize = _size(proc.get("size", getattr(config, "image_size", 224)), "size", path)
    if proc.get("do_center_crop", False) and proc.get("crop_size") is not None:
        crop = _size(proc["crop_size"], "crop_size", path)
        if isinstance(crop, int):
            raise BCIError(f"{path}: crop_size {proc['crop_size']!r} must be a size (height and width)")
        if isinstance(resize, int):  # shortest edge to `resize`, then the centre crop
            mode, scale = "center", resize
        else:
            mode, scale = "squash", resize[0]
    elif isinstance(resize, int):
        raise BCIError(f"{path}: a shortest-edge resize without a centre crop gives images of varying size")
    else:
        crop, mode, scale = resize, "squash", resize[0]
    # timm resizes to floor(crop / crop_pct): make that exactly `scale`
    crop_pct = crop[0] / scale if scale == crop[0] else crop[0] / (scale + 1e-6)
    return {"input_size": (3, int(crop[0]), int(crop[1])), "interpolation": _RESAMPLE[resample], "mean": mean,
            "std": std, "crop_pct": crop_pct, "crop_mode": mode}


def _vision_parts(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """(the vision tower, its projection or None) of a loaded model."""
    tower = model
    for attr in ("vision_model", "vision_tower"):
        part = getattr(model, attr, None)
        if isinstance(part, torch.nn.Module):
            tower = part
            break
    projection = getattr(model, "visual_projection", None)
    return tower, projection if isinstance(projection, torch.nn.Module) else None


def _tower_config(tower: torch.nn.Module, model: torch.nn.Module):
    config = getattr(tower, "config", None)
    if config is None or not hasattr(config, "num_hidden_layers"):
        config = getattr(model.config, "vision_config", model.config)
    return config


def _blocks(tower: torch.nn.Module, n_layers: int, name: str) -> torch.nn.ModuleList:
    """The tower's list of encoder layers: the ModuleList of ``n_layers`` modules (the
    encoder's own when there are several)."""
    found = [(path, m) for path, m in tower.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) == n_layers]
    found.sort(key=lambda pm: (not pm[0].split(".")[-1].startswith("layer"), "encoder" not in pm[0], pm[0].count(".")))
    if not found:
        raise BCIError(f"backbone {name!r}: no list of {n_layers} encoder layers (num_hidden_layers) in the model; "
                       f"hf: backbones must be transformer vision towers")
    return found[0][1]


def _prefix_tokens(tower: torch.nn.Module) -> int:
    """Class and register tokens in front of the patch tokens, from the embedding's parameters."""
    embeddings = getattr(tower, "embeddings", None)
    if not isinstance(embeddings, torch.nn.Module):
        return 0
    n = 0
    for pname, param in embeddings.named_parameters(recurse=False):
        if pname in ("cls_token", "class_embedding"):
            n += 1
        elif pname == "register_tokens":
            n += int(param.shape[-2]) if param.ndim >= 2 else 0
    return n


def _check_remote_code(name: str, folder: Path, raw: dict, trust_remote_code: bool) -> None:
    if "auto_map" in raw and not trust_remote_code:
        code = ", ".join(sorted(set(map(str, raw["auto_map"].values()))))
        raise BCIError(f"backbone {name!r}: {folder} ships its own model code ({code}); "
                       f"it is loaded only with --trust-remote-code (trust_remote_code=True in Python), which runs "
                       f"that folder's Python code with your rights: read it first")


def _anatomy(model: torch.nn.Module, name: str):
    """(vision tower, its projection or None, the tower's config, its list of encoder layers)."""
    tower, projection = _vision_parts(model)
    tower_config = _tower_config(tower, model)
    n_layers = getattr(tower_config, "num_hidden_layers", None)
    if not isinstance(n_layers, int) or n_layers < 1:
        raise BCIError(f"backbone {name!r}: its config has no num_hidden_layers; hf: backbones must be transformer "
                       f"vision towers")
    return tower, projection, tower_config, _blocks(tower, n_layers, name)


def load_hf_backbone(
    name: str,
    weights: str = "hub",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
    precision: str = "fp32",
    lazy: bool = False,
) -> HFBackbone:
    """A frozen transformers vision tower from ``hf:FOLDER``; see
    :func:`trainer.vision.load_backbone` for the arguments.  ``weights``: ``"hub"`` (the
    folder's weights), ``"random"`` (the folder's config, weights from ``seed``) or the
    folder the model has moved to."""
    check_type(weights, (str, os.PathLike), "weights")
    check_type(seed, int, "seed")
    if model_kwargs:
        raise UsageError(f"backbone {name!r}: model arguments ({', '.join(model_kwargs)}; e.g. --image-size) apply to timm "
                         f"backbones; an hf: backbone takes its input size from its folder's preprocessor_config.json")
    weights = os.fspath(weights)
    check_hf_name(name)
    folder = _folder_of(name).resolve()
    if weights not in ("random", "hub"):
        moved = Path(weights).expanduser()
        if not moved.is_dir():
            raise BCIError(f"backbone {name!r}: weights {weights!r}: an hf: backbone's weights are its folder; give "
                           f"'hub' (the folder's weights), 'random', or the folder the model has moved to")
        check_hf_name(HF_PREFIX + str(moved))
        folder = moved.resolve()
    raw = _read_config(folder)
    _check_remote_code(name, folder, raw, trust_remote_code)
    torch_device = resolve_device(device)
    dtype = feature_dtype(precision, torch_device)
    transformers = _require_transformers()
    from transformers import AutoConfig, AutoModel
    from transformers.utils import logging as hf_logging

    remote = dict(trust_remote_code=trust_remote_code)
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a bar per weights file; this tool logs what it loaded
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, **remote)
        if lazy:  # the architecture only, on the meta device
            with torch.device("meta"):
                model = AutoModel.from_config(config, **remote)
            weights_id = f"random-seed{seed}" if weights == "random" else f"folder-{_weights_hash(folder)[:16]}"
        elif weights == "random":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModel.from_config(config, **remote)
            weights_id = f"random-seed{seed}"
        else:
            # loaded in its final dtype: a 6-billion-parameter model never exists in float32
            dtype_arg = "dtype" if _version(transformers.__version__) >= (4, 56) else "torch_dtype"
            model = AutoModel.from_pretrained(folder, config=config, local_files_only=True, **{dtype_arg: dtype}, **remote)
            weights_id = f"folder-{_weights_hash(folder)[:16]}"
    except BCIError:
        raise
    except Exception as err:
        raise BCIError(f"could not load the transformers model in {folder} ({type(err).__name__}: {err})") from err
    finally:
        if bars:
            hf_logging.enable_progress_bar()

    tower, projection, tower_config, blocks = _anatomy(model, name)
    n_layers = len(blocks)
    part = tower if projection is None else _VisionPart(tower, projection)
    del model  # a text tower or language model beside the vision tower is freed here
    part.eval()
    part.requires_grad_(False)
    loader = None
    if lazy:
        loader = functools.partial(load_hf_backbone, name, weights, device=torch_device, seed=seed,
                                   trust_remote_code=trust_remote_code, precision=precision)
    else:
        check_memory(name, sum(p.numel() for p in part.parameters()), dtype, torch_device)
        part.to(device=torch_device, dtype=dtype)
    backbone = HFBackbone(
        name=name, weights=weights, weights_id=weights_id, model=part, device=torch_device,
        data_config=hf_data_config(folder, tower_config), n_layers=n_layers, kind="vit",
        n_params=int(sum(p.numel() for p in part.parameters())), model_kwargs={}, provider="hf",
        folder=folder, config_hash=short_hash(json.dumps(raw, sort_keys=True), 10), tower=tower,
        projection=projection, blocks=blocks, prefix_tokens=_prefix_tokens(tower), dtype=dtype, _loader=loader,
    )
    if lazy:
        return backbone
    logger.info("backbone %s (%s): transformers %s, %d layers, %d prefix token(s), %.1fM parameters, on %s",
                name, weights_id, type(tower).__name__, n_layers, backbone.prefix_tokens, backbone.n_params / 1e6,
                torch_device)
    return backbone
