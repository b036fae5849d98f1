"""The model bundle: the only thing that crosses from the trainer to the live app.

A folder, no pickles anywhere::

    bundle.json            format version, encoder name and arguments, backbone, layer,
                           pooling, sizes, temperature, preprocessing spec, provenance,
                           metrics, the calibration of the confidences ("confidence",
                           optional), the fused layers ("fusion", optional), the
                           provisional decision stages ("windows", optional), and the
                           SHA-256 of each file below ("files")
    encoder.safetensors    brain encoder + projector ("brain.*"), image projector ("image_projector.*")
    gallery.safetensors    "embeddings" (N x D, L2-normalised) and "ids" (N, the stimulus codes)
    gallery.json           per gallery item: id, concept, source file, thumbnail
    thumbnails/            small JPEGs shown by the app

:func:`load_bundle` validates every field and names the bad one, and checks each file
against its SHA-256 in ``bundle.json``.  A bundle written before the hashes were recorded
(no "files") still loads, with a warning that its integrity cannot be checked.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Sequence

import numpy as np
import torch

from .config import MAX_TEMPERATURE, MIN_TEMPERATURE
from .data.things_eeg2 import INT32_RANGE
from .errors import DataFormatError, UsageError
from .files import atomic_path, atomic_write_text, sha256_file
from .preprocessing import PreprocessingSpec

__all__ = ["BUNDLE_FORMAT", "ID_RANGE", "TEMPERATURE_RANGE", "Bundle", "GalleryItem", "load_bundle", "retarget_bundle",
           "save_bundle", "write_derived_bundle"]

logger = logging.getLogger("trainer")

BUNDLE_FORMAT = 1
THUMBNAIL_SIZE = 128
THUMBNAIL_DIR = "thumbnails"
#: the range of a gallery id: ids are stimulus codes, which travel as int32 LSL markers
ID_RANGE = INT32_RANGE
#: the temperatures training can produce (trainer.config), with a 0.1 % margin for float
#: rounding: LogitScale clamps the logit scale (1 / temperature) to at most 100; a scale
#: below 1/100 leaves confidences uniform within 2 % for cosine similarities
TEMPERATURE_RANGE = (0.999 * MIN_TEMPERATURE, 1.001 * MAX_TEMPERATURE)
#: bundle.json and gallery.json larger than this are refused unread (a 16 540-image
#: gallery.json is about 2 MB)
_MAX_JSON_BYTES = 64 * 1024 * 1024
_SHA256 = re.compile(r"[0-9a-f]{64}")


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
        Epochs (B, C, T) -> embeddings (B, D), in eval mode, loaded on the CPU.
    gallery : np.ndarray (N, D) float32, L2-normalised
    gallery_ids : np.ndarray (N,) int64
    items : list of GalleryItem
    temperature : float
        The training (contrastive) temperature, within :data:`TEMPERATURE_RANGE`.
    image_projector_state : dict
        The image projector's ``weight`` and ``bias`` (for :func:`retarget_bundle`).
    confidence : dict or None
        The calibration of the confidences (``bundle.json``'s ``confidence``: temperatures
        fitted on validation concepts for single trials and averaged repetitions, see
        :func:`trainer.fit.fit_confidence`); None for a bundle written without it.
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
    confidence: dict | None = None

    @property
    def windows(self) -> list[dict]:
        """The provisional decision stages (``--windows``), earliest first: ``end`` (seconds
        after the onset), ``n_times`` (the epoch's first samples it holds) and the calibrated
        ``single_trial`` / ``averaged`` temperatures; [] for a bundle that decides at the
        epoch's end only (:mod:`trainer.windows`)."""
        return list(self.config.get("windows") or [])

    @property
    def layers(self) -> list:
        """The backbone layers the image side takes, in the order their features are
        concatenated: one, or the fused layers (``bundle.json``'s ``fusion``)."""
        layer = self.config["layer"]
        return list(layer) if isinstance(layer, list) else [layer]

    def image_features(self, feats: dict[str, np.ndarray]) -> np.ndarray:
        """What the image projector takes, from per-layer pooled features (keyed by
        :func:`trainer.config.layer_key`): the bundle's layers side by side."""
        from .config import layer_key

        parts = [np.asarray(feats[layer_key(k)], dtype=np.float32) for k in self.layers]
        return parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)

    def confidence_temperature(self, condition: str = "single_trial") -> float:
        """The temperature whose softmax gives calibrated confidences for ``condition``
        ("single_trial" or "averaged"): the training temperature when the bundle has no
        calibration (check :attr:`confidence`); for "averaged" the single-trial one when
        only that was fitted (an adapted bundle: its calibration block has no repetitions)."""
        if condition not in ("single_trial", "averaged"):
            raise ValueError(f"condition must be 'single_trial' or 'averaged', got {condition!r}")
        if self.confidence is None:
            return self.temperature
        part = self.confidence.get(condition) or self.confidence["single_trial"]
        return float(part["temperature"])

    @property
    def n_chans(self) -> int:
        return len(self.spec.channels)

    @property
    def n_times(self) -> int:
        return self.spec.n_times

    def thumbnail_path(self, index: int) -> Path:
        return self.path / self.items[index].thumbnail

    def embed(self, epochs: np.ndarray, *, device: str | torch.device = "cpu", batch_size: int = 1024) -> np.ndarray:
        """L2-normalised embeddings (n, D) float32 of preprocessed epochs (n, C, T), D the
        gallery's size even for n = 0.

        Runs :func:`trainer.model.embed_epochs` (the one encode-and-normalise path) on
        :attr:`brain` where it is; for another ``device`` on a copy moved there, so the
        module the live decoder may be running is never moved."""
        from .model import embed_epochs

        epochs = np.asarray(epochs, dtype=np.float32)
        if epochs.ndim != 3 or epochs.shape[1:] != (self.n_chans, self.n_times):
            raise UsageError(
                f"epochs must be (n, {self.n_chans}, {self.n_times}) for this bundle, got {epochs.shape}"
            )
        if not np.isfinite(epochs).all():
            raise UsageError("epochs contain NaN or Inf")
        if len(epochs) == 0:
            return np.zeros((0, self.gallery.shape[1]), np.float32)
        model, device = self.brain_on(device)
        return embed_epochs(model, epochs, device=device, batch_size=batch_size)

    def image_side(self, purpose: str, *, weights: str | None = None, device: str | torch.device = "auto",
                   trust_remote_code: bool = False):
        """(backbone, image projector) of this bundle, for embedding other images as its
        gallery was (``purpose``, e.g. "re-targeted", words the error of a bundle without
        its image projector).  The backbone is the one the bundle records, loaded from
        ``weights`` (default: where it records) and checked by its weights id;
        ``trust_remote_code`` as :func:`trainer.vision.load_backbone` takes it."""
        from .errors import BCIError
        from .vision import load_backbone, precision_of

        if not self.image_projector_state:
            raise DataFormatError(self.path / "encoder.safetensors", "image_projector",
                                  f"missing: this bundle cannot be {purpose} (its image side is not stored)")
        info = self.config["backbone"]
        size = info.get("image_size") or 0
        backbone = load_backbone(info["name"], weights or info.get("weights") or "hub", device=device, seed=0,
                                 model_kwargs={"img_size": size} if size else None, trust_remote_code=trust_remote_code,
                                 # in the dtype the fit's pass ran in: new images embedded as the gallery was
                                 precision=precision_of(info.get("dtype", "float32")))
        if info.get("weights_id") and backbone.weights_id != info["weights_id"]:
            raise BCIError(f"backbone weights {backbone.weights_id} are not the ones the bundle was trained with "
                           f"({info['weights_id']}); pass the same weights file with --weights")
        projector = _image_projector(self.config, self.gallery.shape[1])
        projector.load_state_dict(self.image_projector_state)  # shapes checked when the bundle was loaded
        return backbone, projector.eval()

    def brain_on(self, device: str | torch.device) -> tuple[torch.nn.Module, torch.device]:
        """(module, the device it is on): :attr:`brain` itself if it is on ``device``
        ('cuda' meaning any CUDA device), else a copy moved there, so that :attr:`brain`,
        which another thread may be running, is never moved.  The copy is made for each
        call (a copy kept would miss later changes to :attr:`brain`)."""
        device = torch.device(device)
        here = next(self.brain.parameters()).device
        if here.type == device.type and (device.index is None or device.index == here.index):
            return self.brain, here
        return copy.deepcopy(self.brain).to(device).eval(), device


def _write_gallery(out: Path, emb: torch.Tensor, ids: Sequence[int], concepts: Sequence[str], files: Sequence[str],
                   images: Sequence[Any] | None) -> list[str]:
    """gallery.safetensors, gallery.json and thumbnails/ of a bundle folder; returns the
    files written (paths relative to ``out``)."""
    from safetensors.torch import save_file

    with atomic_path(out / "gallery.safetensors") as tmp:
        save_file({"embeddings": emb.contiguous(), "ids": torch.as_tensor(np.asarray(ids, dtype=np.int64))}, str(tmp))
    thumbs = out / THUMBNAIL_DIR
    if thumbs.is_symlink() or thumbs.is_file():
        thumbs.unlink()
    elif thumbs.exists():
        shutil.rmtree(thumbs)
    thumbs.mkdir()
    items, written = [], ["gallery.safetensors"]
    for i in range(len(ids)):
        thumb = ""
        if images is not None:
            image = images[i]() if callable(images[i]) else images[i]
            image = image.convert("RGB")
            image.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE))
            thumb = f"{THUMBNAIL_DIR}/{int(ids[i]):05d}.jpg"
            with atomic_path(out / thumb) as tmp:
                image.save(tmp, format="JPEG", quality=90)
            written.append(thumb)
        items.append({"id": int(ids[i]), "concept": str(concepts[i]), "file": str(files[i]), "thumbnail": thumb})
    atomic_write_text(out / "gallery.json", json.dumps({"items": items}, indent=1) + "\n")
    return written + ["gallery.json"]


def _check_gallery_ids(ids: Sequence[int]) -> list[int]:
    """Gallery ids as ints: unique, each an int32 marker code (UsageError otherwise)."""
    out = []
    for i in ids:
        if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)):
            raise UsageError(f"gallery ids must be integers (stimulus codes), got {i!r:.60}")
        if not ID_RANGE[0] <= int(i) <= ID_RANGE[1]:
            raise UsageError(f"gallery id {int(i)} does not fit an int32 marker ({ID_RANGE[0]}..{ID_RANGE[1]})")
        out.append(int(i))
    if len(set(out)) != len(out):
        raise UsageError("gallery ids must be unique")
    return out


def _write_config(out: Path, config: dict, files: Sequence[str]) -> None:
    """bundle.json, written last, with the SHA-256 of every other file of the bundle."""
    config = dict(config)
    config["files"] = {rel: sha256_file(out / rel) for rel in files}
    atomic_write_text(out / "bundle.json", json.dumps(config, indent=2) + "\n")


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
    layer: int | str | list,
    pooling: str,
    provenance: dict,
    metrics: dict | None = None,
    confidence: dict | None = None,
    fusion: dict | None = None,
    windows: list[dict] | None = None,
) -> Path:
    """Write a bundle folder from a trained :class:`trainer.model.AlignmentModel`.

    ``gallery_features`` are the pooled backbone features (N, feature_dim) of the gallery
    images; they are projected and normalised here.  ``gallery_ids`` are the stimulus
    codes (unique int32).  ``gallery_images`` are PIL images (or callables returning one)
    for the thumbnails, or None to skip thumbnails.  ``confidence``: the calibration
    (:func:`trainer.fit.fit_confidence`), or None.  ``fusion``: for a model aligned with
    several layers (``layer`` their list), :func:`trainer.fit.fusion_record`.  ``windows``:
    the provisional stages of a model trained with ``--windows`` (:attr:`Bundle.windows`).
    ``bundle.json`` is written last, with the SHA-256 of every other file.
    """
    from safetensors.torch import save_file

    from .model import normalised_embedding

    out = Path(out)
    model = model.eval().cpu()
    n = len(gallery_ids)
    if not (len(gallery_features) == len(gallery_concepts) == len(gallery_files) == n):
        raise ValueError("save_bundle: gallery features, ids, concepts and files must have the same length")
    ids = _check_gallery_ids(gallery_ids)
    temperature = float(model.logit_scale.temperature)
    if not TEMPERATURE_RANGE[0] <= temperature <= TEMPERATURE_RANGE[1]:
        raise UsageError(f"temperature {temperature:g} is outside {TEMPERATURE_RANGE[0]:g}..{TEMPERATURE_RANGE[1]:g}, "
                         "the range a bundle may hold")
    out.mkdir(parents=True, exist_ok=True)
    with torch.inference_mode():
        emb = normalised_embedding(model.embed_images,
                                   torch.as_tensor(np.asarray(gallery_features), dtype=torch.float32)).contiguous()
    tensors = {f"brain.{k}": v.detach().contiguous() for k, v in model.brain.state_dict().items()}
    tensors.update({f"image_projector.{k}": v.detach().contiguous() for k, v in model.image_projector.state_dict().items()})
    with atomic_path(out / "encoder.safetensors") as tmp:
        save_file(tensors, str(tmp))

    written = _write_gallery(out, emb, ids, gallery_concepts, gallery_files, gallery_images)
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
    if confidence is not None:
        config["confidence"] = _check_confidence(json.loads(json.dumps(confidence)), out / "bundle.json")
    if fusion is not None:
        config["fusion"] = dict(fusion)
    if windows:
        config["windows"] = json.loads(json.dumps(windows))
        _check_windows(config["windows"], spec, out / "bundle.json")
    _check_layers(config, out / "bundle.json")
    _write_config(out, config, ["encoder.safetensors", *written])
    return out


# -- loading -------------------------------------------------------------------------------


def _need(config: dict, key: str, types: type | tuple, source: Path, *, check=None, problem: str = "",
          name: str | None = None) -> Any:
    name = name or key
    if key not in config:
        raise DataFormatError(source, name, "missing")
    value = config[key]
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,))):
        names = types.__name__ if isinstance(types, type) else " or ".join(t.__name__ for t in types)
        raise DataFormatError(source, name, f"must be {names}, got {type(value).__name__} ({value!r:.60})")
    if check is not None and not check(value):
        raise DataFormatError(source, name, problem or f"invalid value {value!r:.60}")
    return value


def _optional(config: dict, key: str, types: type | tuple, source: Path, name: str, *, check=None,
              problem: str = "") -> Any:
    """Like :func:`_need` for a key that may be absent or null."""
    if config.get(key) is None:
        return None
    return _need(config, key, types, source, check=check, problem=problem, name=name)


class _Files:
    """The bundle's files, each read once and checked against the SHA-256 that bundle.json
    records (``hashes`` None: an old bundle without hashes, nothing to check)."""

    def __init__(self, root: Path, cfg_path: Path, hashes: dict[str, str] | None):
        self.root, self.cfg_path, self.hashes = root, cfg_path, hashes
        self.checked: set[str] = set()

    def _check(self, rel: str, path: Path, digest: str) -> None:
        if self.hashes is None:
            return
        if rel not in self.hashes:
            raise DataFormatError(self.cfg_path, "files", f"records no SHA-256 for {rel}")
        if digest != self.hashes[rel]:
            raise DataFormatError(path, None, "does not match the SHA-256 recorded in bundle.json: "
                                              "the file was changed or damaged")
        self.checked.add(rel)

    def read(self, rel: str, *, limit: int | None = None) -> bytes:
        path = self.root / rel
        if not path.is_file():
            raise DataFormatError(path, None, "missing" if not path.exists() else "not a file")
        if limit is not None and path.stat().st_size > limit:
            raise DataFormatError(path, None, f"is {path.stat().st_size / 2**20:.0f} MiB, more than the "
                                              f"{limit / 2**20:.0f} MiB such a file may be")
        try:
            data = path.read_bytes()
        except OSError as err:
            raise DataFormatError(path, None, f"unreadable ({err.strerror or err})") from None
        self._check(rel, path, hashlib.sha256(data).hexdigest())
        return data

    def verify(self, rel: str) -> None:
        path = self.root / rel
        if not path.is_file():
            raise DataFormatError(path, None, "missing" if not path.exists() else "not a file")
        try:
            digest = sha256_file(path)
        except OSError as err:
            raise DataFormatError(path, None, f"unreadable ({err.strerror or err})") from None
        self._check(rel, path, digest)

    def verify_rest(self) -> None:
        """Every file bundle.json lists must be there and unchanged."""
        for rel in sorted(set(self.hashes or ()) - self.checked):
            self.verify(rel)


def _safe_relative(rel: str) -> bool:
    """A relative POSIX path inside the folder: no '..', no absolute path, no drive, no '\\'."""
    p = PurePosixPath(rel)
    return (bool(rel) and "\\" not in rel and not p.is_absolute() and not PureWindowsPath(rel).drive
            and ".." not in p.parts and "." not in rel.split("/") and "" not in rel.split("/"))


def _recorded_hashes(config: dict, cfg_path: Path) -> dict[str, str] | None:
    if "files" not in config:
        logger.warning("%s records no SHA-256 of the bundle's files (it was written before they were): "
                       "its integrity cannot be checked", cfg_path)
        return None
    files = _need(config, "files", dict, cfg_path)
    for rel, digest in files.items():
        if not _safe_relative(rel):
            raise DataFormatError(cfg_path, "files", f"lists {rel!r:.80}, which is not a path inside the bundle")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise DataFormatError(cfg_path, "files", f"the SHA-256 of {rel} must be 64 hexadecimal digits, got {digest!r:.80}")
    return files


def _read_json(files: _Files, rel: str) -> Any:
    path = files.root / rel
    data = files.read(rel, limit=_MAX_JSON_BYTES)
    try:
        return json.loads(data.decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        raise DataFormatError(path, None, f"not valid JSON ({type(err).__name__}: {str(err)[:200]})") from None


def _read_tensors(files: _Files, rel: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = files.root / rel
    data = files.read(rel)
    try:
        return load(data)
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as err:
        raise DataFormatError(path, None, f"unreadable ({err})") from None


def _check_config(config: dict, cfg_path: Path) -> tuple[dict, int, int, float, PreprocessingSpec]:
    """The fields of bundle.json: (encoder, proj_dim, feature_dim, temperature, spec)."""
    from .datasets import SOURCES
    from .encoders import list_encoders
    from .vision import POOLINGS

    version = _need(config, "format_version", int, cfg_path)
    if version != BUNDLE_FORMAT:
        raise DataFormatError(cfg_path, "format_version", f"is {version}; this version reads format {BUNDLE_FORMAT}")
    enc = dict(_need(config, "encoder", dict, cfg_path))
    if enc.get("name") not in list_encoders():
        raise DataFormatError(cfg_path, "encoder.name", f"unknown encoder {enc.get('name')!r:.60} (known: {', '.join(list_encoders())})")
    positive = lambda v: v > 0  # noqa: E731
    non_negative = lambda v: v >= 0  # noqa: E731
    proj_dim = _need(config, "proj_dim", int, cfg_path, check=positive, problem="must be positive")
    feature_dim = _need(config, "feature_dim", int, cfg_path, check=positive, problem="must be positive")
    backbone = _need(config, "backbone", dict, cfg_path)
    if not isinstance(backbone.get("name"), str) or not backbone["name"]:
        raise DataFormatError(cfg_path, "backbone.name", "must be a non-empty string")
    for key in ("provider", "weights", "weights_id", "preprocessing_id", "dtype"):
        _optional(backbone, key, str, cfg_path, f"backbone.{key}")
    for key in ("image_size", "n_layers", "n_params"):
        _optional(backbone, key, int, cfg_path, f"backbone.{key}", check=non_negative, problem="must be >= 0")
    _check_layers(config, cfg_path)
    _need(config, "pooling", str, cfg_path, check=lambda v: v in POOLINGS, problem=f"must be one of {', '.join(POOLINGS)}")
    lo, hi = TEMPERATURE_RANGE
    temperature = float(_need(config, "temperature", (int, float), cfg_path, check=lambda v: math.isfinite(v) and lo <= v <= hi,
                              problem=f"must be a number in {lo:g}..{hi:g} (the range training produces), "
                                      f"got {config.get('temperature')!r:.60}"))
    spec = PreprocessingSpec.from_dict(_need(config, "preprocessing", dict, cfg_path), source=cfg_path)
    if not spec.channels:
        raise DataFormatError(cfg_path, "preprocessing.channels", "must list the model's channels")
    provenance = _need(config, "provenance", dict, cfg_path)
    _optional(provenance, "source", str, cfg_path, "provenance.source", check=lambda v: v in SOURCES,
              problem=f"must be one of {', '.join(SOURCES)}")
    metrics = _need(config, "metrics", dict, cfg_path)
    _optional(metrics, "n_way", int, cfg_path, "metrics.n_way", check=positive, problem="must be positive")
    for key in ("averaged", "single_trial"):
        part = _optional(metrics, key, dict, cfg_path, f"metrics.{key}")
        for k in ("top1", "top5"):
            if part is not None:
                _optional(part, k, (int, float), cfg_path, f"metrics.{key}.{k}")
    if enc.get("n_chans") != len(spec.channels):
        raise DataFormatError(cfg_path, "encoder.n_chans", f"is {enc.get('n_chans')!r:.20} but the spec has {len(spec.channels)} channels")
    if enc.get("n_times") != spec.n_times:
        raise DataFormatError(cfg_path, "encoder.n_times", f"is {enc.get('n_times')!r:.20} but the spec gives {spec.n_times} samples")
    return enc, proj_dim, feature_dim, temperature, spec


def _is_layer(v: Any) -> bool:
    return v == "final" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0)


def _check_layers(config: dict, cfg_path: Path) -> None:
    """``layer`` (a block index or 'final'; for a fused model the list of its layers) and
    ``fusion`` (kind, layers, feature sizes summing to ``feature_dim``, weights)."""
    from .model import FUSIONS

    fusion = config.get("fusion")
    if fusion is None:
        _need(config, "layer", (int, str), cfg_path, check=_is_layer, problem="must be a non-negative block index or 'final'")
        return
    if not isinstance(fusion, dict):
        raise DataFormatError(cfg_path, "fusion", f"must be an object, got {type(fusion).__name__}")
    _need(fusion, "kind", str, cfg_path, name="fusion.kind", check=lambda v: v in FUSIONS,
          problem=f"must be one of {', '.join(FUSIONS)}")
    layers = _need(config, "layer", list, cfg_path, check=lambda v: len(v) >= 2 and all(map(_is_layer, v)),
                   problem="of a fused model must list at least two layers (block indices or 'final')")
    if fusion.get("layers") != layers:
        raise DataFormatError(cfg_path, "fusion.layers", f"must be the layers of 'layer' ({layers!r:.80})")
    dims = _need(fusion, "feature_dims", list, cfg_path, name="fusion.feature_dims",
                 check=lambda v: len(v) == len(layers) and all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in v),
                 problem=f"must give a positive feature size for each of the {len(layers)} layers")
    if sum(dims) != config.get("feature_dim"):
        raise DataFormatError(cfg_path, "fusion.feature_dims", f"sum to {sum(dims)}, but feature_dim is {config.get('feature_dim')!r:.20}")
    if fusion["kind"] == "weighted":
        _need(fusion, "weights", list, cfg_path, name="fusion.weights",
              check=lambda v: len(v) == len(layers) and all(isinstance(w, (int, float)) and math.isfinite(w) and w >= 0 for w in v),
              problem=f"must give a non-negative weight for each of the {len(layers)} layers")


def _image_projector(config: dict, proj_dim: int) -> torch.nn.Module:
    """The image side a (checked) bundle.json describes, with fresh weights."""
    from .model import image_projector

    fusion = config.get("fusion")
    if fusion is None:
        return image_projector([int(config["feature_dim"])], proj_dim)
    return image_projector(list(fusion["feature_dims"]), proj_dim, fusion["kind"])


def _check_windows(value: Any, spec: PreprocessingSpec, cfg_path: Path) -> None:
    """``windows``: the provisional stages, each ending inside the epoch, earliest first,
    with as many samples as the spec gives up to its end and calibrated temperatures."""
    from .windows import stage_samples

    if not isinstance(value, list):
        raise DataFormatError(cfg_path, "windows", f"must be a list of stages, got {type(value).__name__}")
    lo, hi = TEMPERATURE_RANGE
    last = spec.tmin
    for i, w in enumerate(value):
        where = f"windows[{i}]"
        if not isinstance(w, dict):
            raise DataFormatError(cfg_path, where, "must be an object")
        end = _need(w, "end", (int, float), cfg_path, name=f"{where}.end",
                    check=lambda v, after=last: math.isfinite(v) and after < v < spec.tmax,
                    problem=f"must end after the stage before it and before the epoch's end ({spec.tmax:g} s)")
        last, n = end, stage_samples(spec, end)
        _need(w, "n_times", int, cfg_path, name=f"{where}.n_times", check=lambda v, n=n: v == n,
              problem=f"must be {n}, the epoch's samples up to {end:g} s")
        for cond in ("single_trial", "averaged"):
            part = _need(w, cond, dict, cfg_path, name=f"{where}.{cond}")
            _need(part, "temperature", (int, float), cfg_path, name=f"{where}.{cond}.temperature",
                  check=lambda v: math.isfinite(v) and lo <= v <= hi, problem=f"must be a number in {lo:g}..{hi:g}")


def _check_confidence(value: Any, cfg_path: Path) -> dict:
    """``confidence`` of bundle.json: a temperature (within :data:`TEMPERATURE_RANGE`) for
    ``single_trial`` and, optionally, ``averaged``; other keys describe how it was fitted."""
    if not isinstance(value, dict):
        raise DataFormatError(cfg_path, "confidence", f"must be an object, got {type(value).__name__}")
    _need(value, "method", str, cfg_path, name="confidence.method", check=lambda v: v == "temperature",
          problem="must be 'temperature' (the one calibration this version applies)")
    lo, hi = TEMPERATURE_RANGE
    for cond in ("single_trial", "averaged"):
        part = _need(value, cond, dict, cfg_path, name=f"confidence.{cond}") if cond == "single_trial" else \
            _optional(value, cond, dict, cfg_path, f"confidence.{cond}")
        if part is not None:
            _need(part, "temperature", (int, float), cfg_path, name=f"confidence.{cond}.temperature",
                  check=lambda v: math.isfinite(v) and lo <= v <= hi, problem=f"must be a number in {lo:g}..{hi:g}")
    return value


def _check_weights(tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, prefix: str) -> None:
    """``tensors`` (names without ``prefix``) have exactly the names, shapes and dtypes of
    ``expected`` and finite values."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise DataFormatError(path, prefix + (missing or unexpected)[0],
                              f"weights do not match the encoder ({len(missing)} missing, {len(unexpected)} unexpected)")
    for k, v in tensors.items():
        if tuple(v.shape) != tuple(expected[k].shape):
            raise DataFormatError(path, prefix + k, f"has shape {tuple(v.shape)}, the encoder needs {tuple(expected[k].shape)}")
        if v.dtype != expected[k].dtype:
            raise DataFormatError(path, prefix + k, f"is {v.dtype}, the encoder needs {expected[k].dtype}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise DataFormatError(path, prefix + k, "has non-finite values")


def _load_brain(enc: dict, proj_dim: int, tensors: dict[str, torch.Tensor], cfg_path: Path, weights_path: Path):
    """The brain encoder with the file's weights.  It is first built without memory
    (``meta`` device): sizes in bundle.json that the weights do not match are refused
    before anything that large is allocated."""
    from .model import BrainEmbedder

    brain_state = {k[len("brain."):]: v for k, v in tensors.items() if k.startswith("brain.")}
    try:
        with torch.device("meta"):
            skeleton = BrainEmbedder(enc, proj_dim)
    except (TypeError, ValueError, ArithmeticError, RuntimeError, KeyError) as err:
        raise DataFormatError(cfg_path, "encoder", f"cannot build the encoder ({err})") from None
    _check_weights(brain_state, skeleton.state_dict(), weights_path, "brain.")
    brain = BrainEmbedder(enc, proj_dim)
    brain.load_state_dict(brain_state)
    return brain.eval()


def _load_image_projector(tensors: dict[str, torch.Tensor], config: dict, proj_dim: int, path: Path) -> dict:
    state = {k[len("image_projector."):]: v for k, v in tensors.items() if k.startswith("image_projector.")}
    if state:
        with torch.device("meta"):
            expected = _image_projector(config, proj_dim).state_dict()
        _check_weights(state, expected, path, "image_projector.")
    return state


def _load_gallery(files: _Files, proj_dim: int) -> tuple[np.ndarray, np.ndarray]:
    gal_path = files.root / "gallery.safetensors"
    gal = _read_tensors(files, "gallery.safetensors")
    for key in ("embeddings", "ids"):
        if key not in gal:
            raise DataFormatError(gal_path, key, "missing")
    for key in sorted(set(gal) - {"embeddings", "ids"}):
        raise DataFormatError(gal_path, key, "unexpected tensor (a gallery holds 'embeddings' and 'ids')")
    if gal["embeddings"].dtype not in (torch.float32, torch.float64):
        raise DataFormatError(gal_path, "embeddings", f"is {gal['embeddings'].dtype}, must be float32")
    if gal["ids"].dtype not in (torch.int64, torch.int32):
        raise DataFormatError(gal_path, "ids", f"is {gal['ids'].dtype}, must be int64 (stimulus codes)")
    emb = gal["embeddings"].double().numpy()
    ids = gal["ids"].numpy().astype(np.int64)
    if emb.ndim != 2 or emb.shape[1] != proj_dim or emb.shape[0] == 0:
        raise DataFormatError(gal_path, "embeddings", f"must be (N, {proj_dim}) with N > 0, got {tuple(emb.shape)}")
    if not np.isfinite(emb).all():
        raise DataFormatError(gal_path, "embeddings", "has non-finite values")
    norms = np.linalg.norm(emb, axis=1)
    if not (norms > 1e-12).all():
        raise DataFormatError(gal_path, "embeddings", f"row {int(np.argmin(norms))} is all zeros")
    if ids.shape != (emb.shape[0],):
        raise DataFormatError(gal_path, "ids", f"must have {emb.shape[0]} entries, got shape {ids.shape}")
    out_of_range = (ids < ID_RANGE[0]) | (ids > ID_RANGE[1])
    if out_of_range.any():
        raise DataFormatError(gal_path, "ids", f"id {int(ids[out_of_range][0])} does not fit an int32 marker "
                                               f"({ID_RANGE[0]}..{ID_RANGE[1]})")
    if len(np.unique(ids)) != len(ids):
        raise DataFormatError(gal_path, "ids", "has duplicates")
    return (emb / norms[:, None]).astype(np.float32), ids


def _thumbnail(value: str, i: int, files: _Files, gj_path: Path) -> str:
    """A gallery item's thumbnail: '' or a file under thumbnails/ that stays inside it."""
    if value == "":
        return value
    where = f"items[{i}].thumbnail"
    if not _safe_relative(value) or PurePosixPath(value).parts[0] != THUMBNAIL_DIR or len(PurePosixPath(value).parts) < 2:
        raise DataFormatError(gj_path, where, f"must be a file under {THUMBNAIL_DIR}/ in the bundle, got {value!r:.80}")
    path = files.root / value
    if not path.is_file():
        raise DataFormatError(path, where, "thumbnail file missing")
    real = path.resolve()
    if not real.is_relative_to(files.root.resolve() / THUMBNAIL_DIR):
        raise DataFormatError(gj_path, where, f"{value!r} leads outside the bundle's {THUMBNAIL_DIR}/ folder (to {real})")
    files.verify(value)
    return value


def _load_items(files: _Files, ids: np.ndarray) -> list[GalleryItem]:
    gj_path = files.root / "gallery.json"
    gj = _read_json(files, "gallery.json")
    raw_items = gj.get("items") if isinstance(gj, dict) else None
    if not isinstance(raw_items, list) or len(raw_items) != len(ids):
        raise DataFormatError(gj_path, "items", f"must be a list of {len(ids)} entries (one per gallery embedding)")
    items = []
    for i, it in enumerate(raw_items):
        if not isinstance(it, dict):
            raise DataFormatError(gj_path, f"items[{i}]", "must be an object")
        for key, types in (("id", int), ("concept", str), ("file", str), ("thumbnail", str)):
            _need(it, key, types, gj_path, name=f"items[{i}].{key}")
        if it["id"] != ids[i]:
            raise DataFormatError(gj_path, f"items[{i}].id", f"is {it['id']} but gallery.safetensors has {ids[i]} there")
        items.append(GalleryItem(id=it["id"], concept=it["concept"], file=it["file"],
                                 thumbnail=_thumbnail(it["thumbnail"], i, files, gj_path)))
    return items


def load_bundle(path: str | Path) -> Bundle:
    """Load and validate a bundle folder; errors name the file and the field at fault.

    Every file is checked against the SHA-256 that ``bundle.json`` records for it before
    it is used (a bundle without recorded hashes loads with a warning).  Thumbnails must
    lie in the bundle's ``thumbnails/`` folder; sizes, dtypes, ids (int32 marker codes)
    and the temperature (:data:`TEMPERATURE_RANGE`) are checked."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataFormatError(path, None, "bundle folder not found")
    cfg_path = path / "bundle.json"
    if not cfg_path.exists():
        raise DataFormatError(cfg_path, None, "missing (not a model bundle?)")
    config = _read_json(_Files(path, cfg_path, None), "bundle.json")
    if not isinstance(config, dict):
        raise DataFormatError(cfg_path, None, "must hold a JSON object")
    enc, proj_dim, feature_dim, temperature, spec = _check_config(config, cfg_path)
    confidence = _check_confidence(config["confidence"], cfg_path) if config.get("confidence") is not None else None
    if config.get("windows") is not None:
        _check_windows(config["windows"], spec, cfg_path)
    files = _Files(path, cfg_path, _recorded_hashes(config, cfg_path))

    weights_path = path / "encoder.safetensors"
    tensors = _read_tensors(files, "encoder.safetensors")
    other = sorted(k for k in tensors if not k.startswith(("brain.", "image_projector.")))
    if other:
        raise DataFormatError(weights_path, other[0], "unexpected tensor (the file holds 'brain.*' and 'image_projector.*')")
    brain = _load_brain(enc, proj_dim, tensors, cfg_path, weights_path)
    image_state = _load_image_projector(tensors, config, proj_dim, weights_path)
    emb, ids = _load_gallery(files, proj_dim)
    items = _load_items(files, ids)
    files.verify_rest()
    return Bundle(path=path, config=config, spec=spec, brain=brain, gallery=emb, gallery_ids=ids,
                  items=items, temperature=temperature, image_projector_state=image_state, confidence=confidence)


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
    trust_remote_code: bool = False,
) -> Path:
    """Copy a bundle to ``out`` with a new gallery: the given image files, embedded with the
    bundle's backbone, layer, pooling and image projector.

    The backbone's weights must be the ones the bundle was trained with (checked by their
    id); ``weights`` overrides where they are loaded from (default: as recorded).  ``ids``
    default to 1..N (the marker codes the app will match), ``concepts`` to each file's
    parent folder name.  ``trust_remote_code``: as :func:`trainer.vision.load_backbone`
    takes it (an hf: backbone whose folder ships its own code).
    """
    from .data.images import open_rgb
    from .files import atomic_write_bytes
    from .model import normalised_embedding
    from .vision import extract_features

    bundle = load_bundle(bundle_path)
    out = Path(out).expanduser()
    if out.resolve() == bundle.path.resolve():
        raise UsageError(f"out must be a new folder, not the bundle itself ({out})")
    paths = [Path(p) for p in images]
    if not paths:
        raise UsageError("images: no image files given")
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise DataFormatError(missing[0], None, "image file not found")
    ids = list(range(1, len(paths) + 1)) if ids is None else _check_gallery_ids(list(ids))
    concepts = [p.parent.name for p in paths] if concepts is None else [str(c) for c in concepts]
    if len(ids) != len(paths) or len(concepts) != len(paths):
        raise UsageError(f"ids and concepts must give one id and one concept per image ({len(paths)} images, "
                         f"{len(ids)} ids, {len(concepts)} concepts)")
    backbone, projector = bundle.image_side("re-targeted", weights=weights, device=device,
                                            trust_remote_code=trust_remote_code)
    feats = bundle.image_features(extract_features(backbone, paths, bundle.layers, pooling=bundle.config["pooling"],
                                                   batch_size=batch_size))
    if feats.shape[1] != bundle.config["feature_dim"]:
        raise DataFormatError(bundle.path / "encoder.safetensors", "image_projector",
                              f"does not fit the features (it takes {bundle.config['feature_dim']}, the backbone gives "
                              f"{feats.shape[1]})")
    with torch.inference_mode():
        emb = normalised_embedding(projector, torch.from_numpy(feats))
    # the encoder as loaded: the bytes are checked against the hash the bundle recorded
    weights_bytes = _Files(bundle.path, bundle.path / "bundle.json", bundle.config.get("files")).read("encoder.safetensors")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / "encoder.safetensors", weights_bytes)
    written = _write_gallery(out, emb, ids, concepts, [str(p) for p in paths], [(lambda p=p: open_rgb(p)) for p in paths])
    config = {k: v for k, v in bundle.config.items() if k != "files"}
    config["provenance"] = dict(config.get("provenance", {}), retargeted_from=str(bundle.path), gallery_images=len(paths))
    n_way = (bundle.confidence or {}).get("n_way")
    if isinstance(n_way, int) and n_way != len(paths):
        logger.warning("the confidences were calibrated for a %d-image gallery; with %d images they are %s than "
                       "probabilities", n_way, len(paths), "lower" if len(paths) > n_way else "higher")
    _write_config(out, config, ["encoder.safetensors", *written])
    return out


def write_derived_bundle(bundle: Bundle, out: str | Path, *, brain: torch.nn.Module, provenance: dict,
                         metrics: dict, confidence: dict | None) -> Path:
    """Write ``bundle`` to ``out`` with another brain side (same architecture), its
    ``provenance``, ``metrics`` and ``confidence`` calibration replaced (None: the new
    brain's confidences are not calibrated, and the bundle says so by having none): the
    image projector, the gallery and the thumbnails are copied byte for byte (each checked
    against the SHA-256 the bundle records), so the gallery embeddings stay exactly the
    bundle's."""
    from safetensors.torch import save_file

    from .files import atomic_write_bytes

    out = Path(out).expanduser()
    if out.resolve() == bundle.path.resolve():
        raise UsageError(f"out must be a new folder, not the bundle itself ({out})")
    expected = bundle.brain.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in brain.state_dict().items()}
    _check_weights(state, expected, out / "encoder.safetensors", "brain.")
    files = _Files(bundle.path, bundle.path / "bundle.json", bundle.config.get("files"))
    gallery = ["gallery.safetensors", "gallery.json"] + [it.thumbnail for it in bundle.items if it.thumbnail]
    out.mkdir(parents=True, exist_ok=True)
    thumbs = out / THUMBNAIL_DIR
    if thumbs.is_symlink() or thumbs.is_file():
        thumbs.unlink()
    elif thumbs.exists():
        shutil.rmtree(thumbs)
    for rel in gallery:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / rel, files.read(rel))
    tensors = {f"brain.{k}": v for k, v in state.items()}
    tensors.update({f"image_projector.{k}": v.detach().cpu().contiguous() for k, v in bundle.image_projector_state.items()})
    with atomic_path(out / "encoder.safetensors") as tmp:
        save_file(tensors, str(tmp))
    # the new brain is calibrated anew (or not at all) and decides at the epoch's end only:
    # the base's provisional stages were learnt by the base's brain
    config = {k: v for k, v in bundle.config.items() if k not in ("files", "confidence", "windows")}
    config.update(provenance=dict(provenance), metrics=dict(metrics))
    if bundle.windows:
        logger.warning("the derived bundle decides at the epoch's end only: the provisional stages (--windows) of %s "
                       "were learnt by its own brain", bundle.path)
    if confidence is not None:
        config["confidence"] = _check_confidence(json.loads(json.dumps(confidence)), out / "bundle.json")
    _write_config(out, config, ["encoder.safetensors", *gallery])
    return out
