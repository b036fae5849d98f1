"""The model bundle: the only thing that crosses from the trainer to the live app.

A folder, no pickles anywhere::

    bundle.json            format version, encoder name and arguments, backbone, layer,
                           pooling, sizes, temperature, preprocessing spec, provenance, metrics
    encoder.safetensors    brain encoder + projector ("brain.*"), image projector ("image_projector.*")
    gallery.safetensors    "embeddings" (N x D, L2-normalised) and "ids" (N, the stimulus codes)
    gallery.json           per gallery item: id, concept, source file, thumbnail
    thumbnails/            small JPEGs shown by the app

:func:`load_bundle` validates every field and names the bad one.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ._io import atomic_path, atomic_write_text
from .errors import DataFormatError
from .preprocessing import PreprocessingSpec

__all__ = ["BUNDLE_FORMAT", "Bundle", "GalleryItem", "load_bundle", "retarget_bundle", "save_bundle"]

BUNDLE_FORMAT = 1
THUMBNAIL_SIZE = 128


@dataclass(frozen=True)
class GalleryItem:
    """One candidate image: its stimulus id (the marker code), concept, file and thumbnail."""

    id: int
    concept: str
    file: str
    thumbnail: str


@dataclass
class Bundle:
    """A loaded, validated model bundle.

    Attributes
    ----------
    path : Path
    config : dict
        The contents of ``bundle.json``.
    spec : PreprocessingSpec
        How raw samples become the model's epochs (the live app applies it as is).
    brain : torch.nn.Module
        Epochs (B, C, T) -> embeddings (B, D), in eval mode on the CPU.
    gallery : np.ndarray (N, D) float32, L2-normalised
    gallery_ids : np.ndarray (N,) int64
    items : list of GalleryItem
    temperature : float
    """

    path: Path
    config: dict
    spec: PreprocessingSpec
    brain: torch.nn.Module
    gallery: np.ndarray
    gallery_ids: np.ndarray
    items: list[GalleryItem]
    temperature: float
    image_projector_state: dict = field(default_factory=dict, repr=False)

    @property
    def n_chans(self) -> int:
        return len(self.spec.channels)

    @property
    def n_times(self) -> int:
        return self.spec.n_times

    def thumbnail_path(self, index: int) -> Path:
        return self.path / self.items[index].thumbnail

    def embed(self, epochs: np.ndarray, *, device: str | torch.device = "cpu", batch_size: int = 1024) -> np.ndarray:
        """L2-normalised embeddings (n, D) of preprocessed epochs (n, C, T)."""
        epochs = np.asarray(epochs, dtype=np.float32)
        if epochs.ndim != 3 or epochs.shape[1:] != (self.n_chans, self.n_times):
            raise ValueError(
                f"epochs must be (n, {self.n_chans}, {self.n_times}) for this bundle, got {epochs.shape}"
            )
        if not np.isfinite(epochs).all():
            raise ValueError("epochs contain NaN or Inf")
        model = self.brain.to(device)
        out = []
        with torch.inference_mode():
            for i in range(0, len(epochs), batch_size):
                z = model(torch.from_numpy(epochs[i : i + batch_size]).to(device))
                out.append(torch.nn.functional.normalize(z, dim=1).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.gallery.shape[1]), np.float32)

    def similarity(self, epochs: np.ndarray, **kwargs) -> np.ndarray:
        """Cosine similarity (n, N) of epochs to the gallery."""
        return self.embed(epochs, **kwargs) @ self.gallery.T


def _write_gallery(out: Path, emb: torch.Tensor, ids: Sequence[int], concepts: Sequence[str], files: Sequence[str],
                   images: Sequence[Any] | None) -> None:
    """gallery.safetensors, gallery.json and thumbnails/ of a bundle folder."""
    from safetensors.torch import save_file

    with atomic_path(out / "gallery.safetensors") as tmp:
        save_file({"embeddings": emb.contiguous(), "ids": torch.as_tensor(np.asarray(ids, dtype=np.int64))}, str(tmp))
    thumbs = out / "thumbnails"
    if thumbs.exists():
        shutil.rmtree(thumbs)
    thumbs.mkdir()
    items = []
    for i in range(len(ids)):
        thumb = ""
        if images is not None:
            image = images[i]() if callable(images[i]) else images[i]
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            thumb = f"thumbnails/{int(ids[i]):05d}.jpg"
            image.save(out / thumb, quality=90)
        items.append({"id": int(ids[i]), "concept": str(concepts[i]), "file": str(files[i]), "thumbnail": thumb})
    atomic_write_text(out / "gallery.json", json.dumps({"items": items}, indent=1) + "\n")


def save_bundle(
    out: str | Path,
    *,
    model: torch.nn.Module,
    spec: PreprocessingSpec,
    gallery_features: np.ndarray,
    gallery_ids: Sequence[int],
    gallery_concepts: Sequence[str],
    gallery_files: Sequence[str],
    gallery_images: Sequence[Any] | None,
    backbone: dict,
    layer: int | str,
    pooling: str,
    provenance: dict,
    metrics: dict | None = None,
) -> Path:
    """Write a bundle folder from a trained :class:`trainer.model.AlignmentModel`.

    ``gallery_features`` are the pooled backbone features (N, feature_dim) of the gallery
    images; they are projected and normalised here.  ``gallery_images`` are PIL images
    (or callables returning one) for the thumbnails, or None to skip thumbnails.
    """
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    n = len(gallery_ids)
    if not (len(gallery_features) == len(gallery_concepts) == len(gallery_files) == n):
        raise ValueError("save_bundle: gallery features, ids, concepts and files must have the same length")
    with torch.inference_mode():
        emb = model.embed_images(torch.as_tensor(np.asarray(gallery_features), dtype=torch.float32))
        emb = torch.nn.functional.normalize(emb, dim=1).contiguous()
    tensors = {f"brain.{k}": v.detach().contiguous() for k, v in model.brain.state_dict().items()}
    tensors.update({f"image_projector.{k}": v.detach().contiguous() for k, v in model.image_projector.state_dict().items()})
    with atomic_path(out / "encoder.safetensors") as tmp:
        save_file(tensors, str(tmp))

    _write_gallery(out, emb, gallery_ids, gallery_concepts, gallery_files, gallery_images)

    temperature = float(model.logit_scale.temperature)
    config = {
        "format_version": BUNDLE_FORMAT,
        "encoder": dict(model.brain.encoder_config),
        "proj_dim": model.brain.proj_dim,
        "feature_dim": model.feature_dim,
        "backbone": dict(backbone),
        "layer": layer,
        "pooling": pooling,
        "temperature": temperature,
        "preprocessing": spec.to_dict(),
        "provenance": dict(provenance),
        "metrics": dict(metrics or {}),
    }
    atomic_write_text(out / "bundle.json", json.dumps(config, indent=2) + "\n")
    return out


def _need(config: dict, key: str, types: type | tuple, source: Path, *, check=None, problem: str = "") -> Any:
    if key not in config:
        raise DataFormatError(source, key, "missing")
    value = config[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise DataFormatError(source, key, f"must be {names}, got {type(value).__name__} ({value!r:.60})")
    if check is not None and not check(value):
        raise DataFormatError(source, key, problem or f"invalid value {value!r:.60}")
    return value


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DataFormatError(path, None, "missing") from None
    except (SafetensorError, OSError, ValueError) as err:
        raise DataFormatError(path, None, f"unreadable ({err})") from None


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle folder; errors name the file and the field at fault."""
    from .encoders import list_encoders
    from .model import BrainEmbedder

    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataFormatError(path, None, "bundle folder not found")
    cfg_path = path / "bundle.json"
    try:
        config = json.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise DataFormatError(cfg_path, None, "missing (not a model bundle?)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(cfg_path, None, f"not valid JSON ({err})") from None
    if not isinstance(config, dict):
        raise DataFormatError(cfg_path, None, "must hold a JSON object")
    version = _need(config, "format_version", int, cfg_path)
    if version != BUNDLE_FORMAT:
        raise DataFormatError(cfg_path, "format_version", f"is {version}; this version reads format {BUNDLE_FORMAT}")
    enc = dict(_need(config, "encoder", dict, cfg_path))
    if enc.get("name") not in list_encoders():
        raise DataFormatError(cfg_path, "encoder.name", f"unknown encoder {enc.get('name')!r} (known: {', '.join(list_encoders())})")
    positive_int = lambda v: v > 0  # noqa: E731
    proj_dim = _need(config, "proj_dim", int, cfg_path, check=positive_int, problem="must be positive")
    feature_dim = _need(config, "feature_dim", int, cfg_path, check=positive_int, problem="must be positive")
    backbone = _need(config, "backbone", dict, cfg_path)
    if not isinstance(backbone.get("name"), str) or not backbone["name"]:
        raise DataFormatError(cfg_path, "backbone.name", "must be a non-empty string")
    _need(config, "layer", (int, str), cfg_path, check=lambda v: v == "final" or (isinstance(v, int) and v >= 0),
                  problem="must be a non-negative block index or 'final'")
    _need(config, "pooling", str, cfg_path)
    temperature = float(_need(config, "temperature", (int, float), cfg_path,
                              check=lambda v: math.isfinite(v) and v > 0, problem="must be a positive number"))
    spec = PreprocessingSpec.from_dict(_need(config, "preprocessing", dict, cfg_path), source=cfg_path)
    if not spec.channels:
        raise DataFormatError(cfg_path, "preprocessing.channels", "must list the model's channels")
    for key in ("provenance", "metrics"):
        _need(config, key, dict, cfg_path)
    if enc.get("n_chans") != len(spec.channels):
        raise DataFormatError(cfg_path, "encoder.n_chans", f"is {enc.get('n_chans')} but the spec has {len(spec.channels)} channels")
    if enc.get("n_times") != spec.n_times:
        raise DataFormatError(cfg_path, "encoder.n_times", f"is {enc.get('n_times')} but the spec gives {spec.n_times} samples")

    try:
        brain = BrainEmbedder({k: v for k, v in enc.items()}, proj_dim)
    except (TypeError, ValueError) as err:
        raise DataFormatError(cfg_path, "encoder", f"cannot build the encoder ({err})") from None
    weights_path = path / "encoder.safetensors"
    tensors = _read_tensors(weights_path)
    brain_state = {k[len("brain."):]: v for k, v in tensors.items() if k.startswith("brain.")}
    expected = brain.state_dict()
    missing = sorted(set(expected) - set(brain_state))
    unexpected = sorted(set(brain_state) - set(expected))
    if missing or unexpected:
        raise DataFormatError(weights_path, (missing or unexpected)[0],
                              f"weights do not match the encoder ({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in brain_state.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DataFormatError(weights_path, k, f"has shape {tuple(v.shape)}, the encoder needs {tuple(expected[k].shape)}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise DataFormatError(weights_path, k, "has non-finite values")
    brain.load_state_dict(brain_state)
    brain.eval()
    image_state = {k[len("image_projector."):]: v for k, v in tensors.items() if k.startswith("image_projector.")}
    if image_state and tuple(image_state.get("weight", torch.empty(0)).shape) != (proj_dim, feature_dim):
        raise DataFormatError(weights_path, "image_projector.weight", f"must be ({proj_dim}, {feature_dim})")

    gal_path = path / "gallery.safetensors"
    gal = _read_tensors(gal_path)
    for key in ("embeddings", "ids"):
        if key not in gal:
            raise DataFormatError(gal_path, key, "missing")
    emb = gal["embeddings"].float().numpy()
    ids = gal["ids"].numpy().astype(np.int64)
    if emb.ndim != 2 or emb.shape[1] != proj_dim or emb.shape[0] == 0:
        raise DataFormatError(gal_path, "embeddings", f"must be (N, {proj_dim}) with N > 0, got {tuple(emb.shape)}")
    if not np.isfinite(emb).all():
        raise DataFormatError(gal_path, "embeddings", "has non-finite values")
    if ids.shape != (emb.shape[0],):
        raise DataFormatError(gal_path, "ids", f"must have {emb.shape[0]} entries, got shape {ids.shape}")
    if len(np.unique(ids)) != len(ids):
        raise DataFormatError(gal_path, "ids", "has duplicates")
    emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)

    gj_path = path / "gallery.json"
    try:
        gj = json.loads(gj_path.read_text())
    except FileNotFoundError:
        raise DataFormatError(gj_path, None, "missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFormatError(gj_path, None, f"not valid JSON ({err})") from None
    raw_items = gj.get("items") if isinstance(gj, dict) else None
    if not isinstance(raw_items, list) or len(raw_items) != len(ids):
        raise DataFormatError(gj_path, "items", f"must be a list of {len(ids)} entries (one per gallery embedding)")
    items = []
    for i, it in enumerate(raw_items):
        if not isinstance(it, dict):
            raise DataFormatError(gj_path, f"items[{i}]", "must be an object")
        try:
            item = GalleryItem(id=int(it["id"]), concept=str(it["concept"]), file=str(it["file"]), thumbnail=str(it["thumbnail"]))
        except (KeyError, TypeError, ValueError) as err:
            raise DataFormatError(gj_path, f"items[{i}]", f"needs id, concept, file and thumbnail ({err})") from None
        if item.id != ids[i]:
            raise DataFormatError(gj_path, f"items[{i}].id", f"is {item.id} but gallery.safetensors has {ids[i]} there")
        if item.thumbnail and not (path / item.thumbnail).is_file():
            raise DataFormatError(path / item.thumbnail, f"items[{i}].thumbnail", "thumbnail file missing")
        items.append(item)
    return Bundle(path=path, config=config, spec=spec, brain=brain, gallery=emb.astype(np.float32), gallery_ids=ids,
                  items=items, temperature=temperature, image_projector_state=image_state)


def retarget_bundle(
    bundle_path: str | Path,
    out: str | Path,
    images: Sequence[str | Path],
    *,
    ids: Sequence[int] | None = None,
    concepts: Sequence[str] | None = None,
    weights: str | None = None,
    device: str = "auto",
    batch_size: int = 32,
) -> Path:
    """Copy a bundle to ``out`` with a new gallery: the given image files, embedded with the
    bundle's backbone, layer, pooling and image projector.

    The backbone's weights must be the ones the bundle was trained with (checked by their
    id); ``weights`` overrides where they are loaded from (default: as recorded).  ``ids``
    default to 1..N (the marker codes the app will match), ``concepts`` to each file's
    parent folder name.
    """
    from .config import layer_key
    from .errors import BCIError
    from .vision import extract_features, load_backbone

    bundle = load_bundle(bundle_path)
    out = Path(out).expanduser()
    if out.resolve() == bundle.path.resolve():
        raise ValueError("out must be a new folder, not the bundle itself")
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("images: no image files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataFormatError(missing[0], None, "image file not found")
    ids = list(range(1, len(paths) + 1)) if ids is None else [int(i) for i in ids]
    concepts = [p.parent.name for p in paths] if concepts is None else list(concepts)
    if len(ids) != len(paths) or len(concepts) != len(paths) or len(set(ids)) != len(ids):
        raise ValueError("ids and concepts must give one unique id and one concept per image")
    if not bundle.image_projector_state:
        raise DataFormatError(bundle.path / "encoder.safetensors", "image_projector", "missing: this bundle cannot be re-targeted")
    info = bundle.config["backbone"]
    size = info.get("image_size") or 0
    backbone = load_backbone(info["name"], weights or info.get("weights", "hub"), device=device, seed=0,
                             model_kwargs={"img_size": size} if size else None)
    if info.get("weights_id") and backbone.weights_id != info["weights_id"]:
        raise BCIError(f"backbone weights {backbone.weights_id} are not the ones the bundle was trained with "
                       f"({info['weights_id']}); pass the same weights file with --weights")
    layer = bundle.config["layer"]
    key = layer_key(layer)
    feats = extract_features(backbone, paths, [layer], pooling=bundle.config["pooling"], batch_size=batch_size)[key]
    projector = torch.nn.Linear(feats.shape[1], bundle.gallery.shape[1])
    try:
        projector.load_state_dict(bundle.image_projector_state)
    except RuntimeError as err:
        raise DataFormatError(bundle.path / "encoder.safetensors", "image_projector", f"does not fit the features ({err})") from None
    with torch.inference_mode():
        emb = torch.nn.functional.normalize(projector(torch.from_numpy(feats)), dim=1)
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy2(bundle.path / "encoder.safetensors", out / "encoder.safetensors")
    from .data.images import open_rgb

    _write_gallery(out, emb, ids, concepts, [str(p) for p in paths], [(lambda p=p: open_rgb(p)) for p in paths])
    config = dict(bundle.config)
    config["provenance"] = dict(config.get("provenance", {}), retargeted_from=str(bundle.path), gallery_images=len(paths))
    atomic_write_text(out / "bundle.json", json.dumps(config, indent=2) + "\n")
    return out
