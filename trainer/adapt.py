"""Calibration for a new person (``bci-train adapt``): fine-tune a bundle's brain side on
recorded calibration blocks.

A calibration block is a ``bci-app --record`` recording made while the presenter showed
images of *training* concepts.  Its markers name the images (``concept/file`` labels, or
numeric codes of the data set's training part); each marker's epoch is cut from the
recording and preprocessed with the **base bundle's** spec (:meth:`PreprocessingSpec.epochs_from_continuous`:
the window, filter, resampling, baseline and normalisation the live app applies), and its
image becomes the target through the base bundle's own backbone, layer, pooling and
image projector.  Only the brain side is trained (all of it, its last layers, or its
projector), with the loss it was trained with (symmetric InfoNCE at the bundle's
temperature); the image side and so the gallery stay the bundle's, which is why the
adapted bundle needs no test image at all.  The best epoch is chosen on held-out
calibration concepts (never the test images), by the mean rank of the shown image among
them (a ranking measure: the loss also rewards mere changes of confidence, and a base
model that is sure and wrong about a new person has a high one); epoch 0 is the base
model itself, so an
adaptation that does not help keeps the base weights and says so.

What is never used: markers naming a test image (the data set's test part) or an image of
one of the bundle's gallery concepts are counted and skipped before any epoch is cut or any
image file opened for them (the recording's samples around them are loaded with the rest of
the file, and go no further).  The test images are only listed, from the data set's
metadata.

Adapting an adapted bundle continues from it: the recordings it was adapted on (its
provenance lists them) are used again with the new ones, and the validation concepts are
chosen by a hash of their names, so they stay held out from one round to the next.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ._checks import check_option
from .config import ADAPT_PARTS
from .errors import DataFormatError, MissingFileError, UsageError

__all__ = ["ADAPT_PARTS", "CalibrationTrials", "MIN_FIT_TRIALS", "MIN_VAL_CONCEPTS", "ImageCatalogue", "adapt_bundle",
           "evaluate_recordings", "read_recording", "read_trials"]

logger = logging.getLogger("trainer")

#: the least data an adaptation accepts: trials of the fitting concepts, and concepts held
#: out for validation (at 5 images a second, about 40 s of RSVP gives both)
MIN_FIT_TRIALS = 50
MIN_VAL_CONCEPTS = 5
RECORDING_FIF = "recording-raw.fif"
JOURNAL_VHDR = "recording.vhdr"
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: labels that are not images: the presenter's catch targets, gaps and edges
_NOT_IMAGES = ("catch",)


# -- recordings -----------------------------------------------------------------------


@dataclass
class Recording:
    """A recording's samples of the picked channels, and its markers.

    Attributes
    ----------
    path : Path
        The file read.
    data : array (n_channels, n_samples) float64
        The spec's channels, in the spec's order, in the stream's units.
    sfreq : float
    markers : list of (sample, label)
    bad : list of (start, stop) samples
        Spans marked ``BAD_*`` (the recorder's gaps): no epoch may overlap them.
    image_set : str | None
        The part numeric markers count in, when the recording says (``session.json``).
    """

    path: Path
    data: np.ndarray
    sfreq: float
    markers: list[tuple[int, str]]
    bad: list[tuple[int, int]]
    image_set: str | None = None

    @property
    def minutes(self) -> float:
        return self.data.shape[1] / self.sfreq / 60.0


def _recording_file(path: Path) -> Path:
    if path.is_dir():
        if (path / RECORDING_FIF).is_file():
            return path / RECORDING_FIF
        if (path / JOURNAL_VHDR).is_file():
            raise DataFormatError(path, RECORDING_FIF, f"missing: the recording was not finished (a crash?); "
                                                       f"'bci-app recover {path}' makes it from the journal")
        raise DataFormatError(path, RECORDING_FIF, "missing: not a bci-app --record folder")
    if not path.exists():
        raise MissingFileError(f"recording {path} does not exist")
    return path


def read_recording(path: str | Path, spec) -> Recording:
    """Read a ``bci-app --record`` folder (its ``recording-raw.fif``) or any file MNE
    reads whose annotations are the stimulus markers; only the channels of ``spec``
    (picked by name, as the live app does) are loaded."""
    import mne

    from .data.annotations import annotation_markers
    from .preprocessing import select_channels

    folder = Path(path).expanduser()
    file = _recording_file(folder)
    try:
        raw = mne.io.read_raw(file, preload=False, verbose="error")
    except Exception as err:  # MNE raises many types for unreadable files
        raise DataFormatError(file, None, f"MNE cannot read it ({type(err).__name__}: {err})") from None
    resolved = spec.resolve(raw.ch_names, source=file)
    picks = select_channels(raw.ch_names, resolved.channels, source=file)
    data = raw.get_data(picks=[raw.ch_names[i] for i in picks])
    sfreq = float(raw.info["sfreq"])
    markers, bad = annotation_markers(raw, file)
    image_set = None
    session = (folder if folder.is_dir() else file.parent) / "session.json"
    if session.is_file():
        try:
            image_set = json.loads(session.read_text()).get("image_set")
        except (OSError, ValueError, AttributeError):
            image_set = None
    return Recording(path=file, data=data, sfreq=sfreq, markers=markers, bad=bad,
                     image_set=image_set if isinstance(image_set, str) else None)


# -- images -----------------------------------------------------------------------------


def _concept_name(folder: str) -> str:
    """``00012_bear`` -> ``bear`` (THINGS numbers its concept folders)."""
    head, _, tail = folder.partition("_")
    return tail if tail and head.isdigit() else folder


@dataclass(frozen=True)
class ImageRef:
    path: Path
    label: str  # concept_folder/file
    concept: str  # without its number
    part: str  # 'training', 'test' or 'images' (a plain folder)


class ImageCatalogue:
    """The images markers may name: a THINGS-layout data folder (``image_set/`` inside,
    or the image_set folder itself: both parts, numbered codes count in one of them) or any
    folder of images (``concept/file`` under it, searched recursively).  No image file is
    opened here."""

    def __init__(self, root: str | Path):
        from .data.images import load_image_set

        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise MissingFileError(f"--images: {self.root} is not a folder")
        things = next((p for p in (self.root / "image_set", self.root) if (p / "image_metadata.npy").is_file()), None)
        self.parts: dict[str, list[ImageRef]] = {}
        if things is not None:
            for part in ("training", "test"):
                images = load_image_set(things, part, check_files=False)
                self.parts[part] = [ImageRef(images.path(i), f"{c}/{f}", _concept_name(c), part)
                                    for i, (c, f) in enumerate(zip(images.concepts, images.files))]
        else:
            files = sorted(p for p in self.root.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
            if not files:
                raise UsageError(f"--images: no .jpg/.jpeg/.png files in {self.root}")
            self.parts["images"] = [ImageRef(p, f"{p.parent.name}/{p.name}", _concept_name(p.parent.name), "images")
                                    for p in files]
        self._by_label: dict[str, ImageRef] = {}
        for refs in self.parts.values():
            for ref in refs:
                self._by_label.setdefault(ref.label, ref)
                self._by_label.setdefault(f"{ref.part}/{ref.label}", ref)

    @property
    def things(self) -> bool:
        return "training" in self.parts

    def find(self, label: str, numeric_part: str | None) -> ImageRef | None:
        """The image a marker names: a ``concept/file`` label, or a code 1..N of
        ``numeric_part``; None when there is no such image."""
        text = str(label).strip().replace("\\", "/")
        ref = self._by_label.get(text)
        if ref is not None:
            return ref
        try:
            code = int(float(text))
        except ValueError:
            return None
        refs = self.parts.get(numeric_part or "")
        if refs is None or not float(text).is_integer() or not 1 <= code <= len(refs):
            return None
        return refs[code - 1]


# -- trials -----------------------------------------------------------------------------


@dataclass
class CalibrationTrials:
    """Preprocessed epochs of calibration (or test) trials and their images.

    Attributes
    ----------
    epochs : array (n, C, T) float32
    image : array (n,) int
        Index into :attr:`images` per epoch.
    images : list of ImageRef
        The distinct images shown, in order of first appearance.
    counts : dict
        Markers per outcome: used, catch, skipped (test images: never used), rejected reasons.
    recordings : list of dict
        Per recording: path, minutes, markers, used.
    """

    epochs: np.ndarray
    image: np.ndarray
    images: list[ImageRef]
    counts: dict[str, int] = field(default_factory=dict)
    recordings: list[dict] = field(default_factory=list)

    @property
    def concepts(self) -> np.ndarray:
        return np.array([self.images[i].concept for i in self.image])

    @property
    def minutes(self) -> float:
        return float(sum(r["minutes"] for r in self.recordings))


def _numeric_part(rec: Recording, catalogue: ImageCatalogue, image_set: str | None) -> str | None:
    wanted = image_set or rec.image_set
    if wanted is None:
        return None
    aliases = {"train": "training", "training": "training", "test": "test"}
    part = aliases.get(wanted, wanted)
    if catalogue.things and part not in catalogue.parts:
        raise UsageError(f"image set {wanted!r}: choose train or test")
    return part if catalogue.things else "images"


def read_trials(
    recordings: Sequence[str | Path],
    images: str | Path | ImageCatalogue,
    spec,
    *,
    use: str = "calibration",
    excluded_concepts: Sequence[str] = (),
    image_set: str | None = None,
) -> CalibrationTrials:
    """The trials of ``recordings`` whose markers name images of ``images``, as epochs of
    ``spec`` (which must carry its normalisation: a bundle's spec).

    ``use='calibration'`` keeps the trials of training images and skips (cutting no epoch
    and opening no image for them) those of test images and of ``excluded_concepts`` (the bundle's gallery
    concepts); ``use='test'`` keeps only those.  A marker that names no image of
    ``images`` is an error naming it; numeric markers count in ``image_set`` ('train' or
    'test'; default: what the recording's session.json says).  Epochs that run past the
    recording's ends, overlap a ``BAD_`` span (a gap), are not finite or hold a constant
    channel are rejected and counted, as the live app rejects them."""
    check_option(use, ("calibration", "test"), "use")
    catalogue = images if isinstance(images, ImageCatalogue) else ImageCatalogue(images)
    excluded = {_concept_name(c) for c in excluded_concepts}
    refs: dict[str, int] = {}
    image_list: list[ImageRef] = []
    all_epochs, all_images = [], []
    counts = {"markers": 0, "used": 0, "catch": 0, "skipped": 0, "outside": 0, "gap": 0, "non-finite": 0, "flat": 0}
    per_recording = []
    for path in recordings:
        rec = read_recording(path, spec)
        part = _numeric_part(rec, catalogue, image_set)
        onsets, chosen, unknown = [], [], []
        for sample, label in rec.markers:
            counts["markers"] += 1
            if label.strip().lower() in _NOT_IMAGES:
                counts["catch"] += 1
                continue
            ref = catalogue.find(label, part)
            if ref is None:
                unknown.append(label)
                continue
            is_test = ref.part == "test" or ref.concept in excluded
            if is_test != (use == "test"):
                counts["skipped"] += 1
                continue
            onsets.append(sample)
            chosen.append(ref)
        if unknown:
            numeric = [u for u in unknown if u.strip().lstrip("-").replace(".", "", 1).isdigit()]
            hint = ""
            if numeric and part is None:
                hint = (" (numeric markers: the recording does not say which image set they count in; give it with "
                        "--set train|test, or record with the presenter's --labels)")
            raise DataFormatError(rec.path, "markers", f"{len(unknown)} marker(s) name images that are not in "
                                                       f"--images {catalogue.root}: {', '.join(map(repr, unknown[:5]))}"
                                                       f"{' ...' if len(unknown) > 5 else ''}{hint}")
        kept_epochs, kept_images, n_used = _epochs(rec, spec, onsets, chosen, counts)
        for ref in kept_images:
            if ref.label not in refs:
                refs[ref.label] = len(image_list)
                image_list.append(ref)
            all_images.append(refs[ref.label])
        all_epochs.append(kept_epochs)
        per_recording.append({"path": str(Path(path).expanduser().resolve()), "minutes": round(rec.minutes, 3),
                              "markers": len(rec.markers), "used": n_used})
        counts["used"] += n_used
    epochs = np.concatenate(all_epochs) if all_epochs else np.zeros((0, len(spec.channels), spec.n_times), np.float32)
    return CalibrationTrials(epochs=epochs, image=np.asarray(all_images, dtype=np.int64), images=image_list,
                             counts=counts, recordings=per_recording)


def _epochs(rec: Recording, spec, onsets: list[int], refs: list[ImageRef], counts: dict) -> tuple[np.ndarray, list[ImageRef], int]:
    """Epochs at ``onsets`` with the live app's rejections (see :func:`read_trials`)."""
    from .preprocessing import window_problem

    names = list(spec.channels)
    start, n_in = spec.window(rec.sfreq)
    good = []
    for i, onset in enumerate(onsets):
        a, b = onset + start, onset + start + n_in
        if a < 0 or b > rec.data.shape[1]:
            counts["outside"] += 1
        elif any((a < s1 and s0 < b) if s1 > s0 else a < s0 < b for s0, s1 in rec.bad):
            counts["gap"] += 1
        else:
            problem = window_problem(rec.data[:, a:b])
            if problem is None:
                good.append(i)
            else:
                counts[problem] += 1
    if not good:
        return np.zeros((0, len(names), spec.n_times), np.float32), [], 0
    epochs, kept = spec.epochs_from_continuous(rec.data, rec.sfreq, names, np.asarray([onsets[i] for i in good]),
                                               source=rec.path)
    return epochs, [refs[i] for i in good], int(kept.sum())


# -- the adaptation ---------------------------------------------------------------------


def _concept_hash(concept: str) -> float:
    """A stable number in [0, 1) per concept name (the validation split's order)."""
    return int.from_bytes(hashlib.sha256(concept.encode()).digest()[:8], "big") / 2.0**64


def calibration_split(concepts: np.ndarray, fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """(fit rows, validation rows) by whole concepts: those whose name hashes below
    ``fraction``, and at least :data:`MIN_VAL_CONCEPTS` (the lowest hashes), are held out.
    The same concepts stay held out when more recordings come."""
    names = sorted(set(concepts.tolist()), key=_concept_hash)
    held = [c for c in names if _concept_hash(c) < fraction]
    if len(held) < MIN_VAL_CONCEPTS:
        held = names[:MIN_VAL_CONCEPTS]
    is_val = np.isin(concepts, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class _ChannelMixing(torch.nn.Module):
    """``x -> mixing @ x + offset`` over the channels of (B, C, T) epochs, from the identity:
    how a new person's (or cap placement's) channels map onto those the model knows."""

    def __init__(self, n_chans: int):
        super().__init__()
        self.mixing = torch.nn.Parameter(torch.eye(n_chans))
        self.offset = torch.nn.Parameter(torch.zeros(n_chans))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("ij,bjt->bit", self.mixing, x) + self.offset[:, None]


class _Mixed(torch.nn.Module):
    """The brain side behind a channel mixing (``--adapt input``); :meth:`folded` gives
    back a plain brain side computing the same."""

    def __init__(self, brain: torch.nn.Module):
        super().__init__()
        linear = brain.encoder.input_linear()
        if linear is None:
            raise UsageError(f"--adapt input needs an encoder that begins with a linear layer on the flattened epoch "
                             f"(linear, eegproject); this bundle's is {brain.encoder_config.get('name')!r}: use "
                             "--adapt all, head or projector")
        self.brain = brain
        self.mix = _ChannelMixing(brain.encoder.n_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.brain(self.mix(x))

    def folded(self) -> torch.nn.Module:
        from .encoders import fold_channel_mixing

        enc = self.brain.encoder
        fold_channel_mixing(enc.input_linear(), self.mix.mixing.detach(), self.mix.offset.detach(), enc.n_chans,
                            enc.n_times)
        return self.brain


def _trainable(brain: torch.nn.Module, part: str) -> list[torch.nn.Parameter]:
    """The parameters ``--adapt`` trains (the others are frozen)."""
    if part == "input":
        for p in brain.brain.parameters():
            p.requires_grad_(False)
        return list(brain.mix.parameters())
    if part == "all":
        chosen = list(brain.parameters())
    else:
        chosen = list(brain.projector.parameters())
        if part == "head":
            layers = [m for m in brain.encoder.modules() if any(True for _ in m.parameters(recurse=False))]
            if layers:
                chosen = list(layers[-1].parameters(recurse=False)) + chosen
    ids = {id(p) for p in chosen}
    for p in brain.parameters():
        p.requires_grad_(id(p) in ids)
    return chosen


def _scores(brain, x: np.ndarray, targets: np.ndarray, gallery: torch.Tensor, scale: float, device) -> dict[str, float]:
    """Validation retrieval among the validation images: top-1, top-5, the mean rank of
    the shown image (0 = first, 1 = last, chance 0.5) and the loss."""
    from .losses import clip_loss
    from .metrics import topk_accuracy
    from .model import embed_epochs

    emb = embed_epochs(brain, x, device=device)
    sim = emb @ gallery.cpu().numpy().T
    out = topk_accuracy(sim, targets)
    true = sim[np.arange(len(sim)), targets][:, None]
    rank = float(((sim > true).sum(axis=1) / max(1, sim.shape[1] - 1)).mean())
    with torch.inference_mode():
        loss = clip_loss(torch.from_numpy(emb), gallery.cpu()[torch.from_numpy(targets)], torch.tensor(math.log(scale)))
    return {"top1": float(out["top1"]), "top5": float(out["top5"]), "rank": rank, "loss": float(loss)}


def _recalibrate(bundle, brain, x_val: np.ndarray, val_targets: np.ndarray, gal_val: torch.Tensor, seed: int) -> dict:
    """The adapted brain's single-trial confidence temperature, fitted on the held-out
    calibration concepts' trials for a gallery of the bundle's size
    (:func:`trainer.confidence.fit_temperature`); the new bundle's ``confidence``."""
    from .confidence import calibrate
    from .model import embed_epochs

    sim = embed_epochs(brain, x_val, device="cpu") @ gal_val.cpu().numpy().T
    n_way = len(bundle.gallery_ids)
    single = calibrate(sim, val_targets, n_way, bundle.temperature, seed=seed)
    logger.info("confidence: temperature %.4g (training) -> %.4g for single trials (ECE on the held-out concepts "
                "%.3f -> %.3f)", bundle.temperature, single["temperature"], single["val_ece_before"], single["val_ece_after"])
    return {"method": "temperature", "n_way": n_way, "fitted_on": "held-out calibration concepts",
            "n_val_images": int(len(gal_val)), "training_temperature": float(bundle.temperature), "single_trial": single}


def _image_targets(bundle, images: list[ImageRef], *, weights: str | None, device, cache: Path,
                   progress: Callable | None, trust_remote_code: bool = False) -> torch.Tensor:
    """The bundle's normalised image embeddings of ``images`` (its backbone, layer,
    pooling and image projector; features cached)."""
    from .errors import BCIError
    from .model import normalised_embedding
    from .vision import cached_features

    try:
        backbone, projector = bundle.image_side("adapted", weights=weights, device=device,
                                                trust_remote_code=trust_remote_code)
    except (OSError, RuntimeError) as err:
        info = bundle.config["backbone"]
        raise BCIError(f"the bundle's backbone {info['name']} with weights {weights or info.get('weights') or 'hub'!r} "
                       f"cannot be loaded ({err}); adapting needs the weights the bundle was trained with: give them "
                       "with --weights FILE") from None
    ident = hashlib.sha256("\n".join(str(r.path.resolve()) for r in images).encode()).hexdigest()[:16]

    def report(done: int, total: int) -> None:
        if progress is not None:
            progress(f"image features of {backbone.name}", done, total)

    feats = bundle.image_features(cached_features(backbone, [r.path for r in images], bundle.layers,
                                                  pooling=bundle.config["pooling"], cache_dir=cache / "features",
                                                  image_set_id=f"calibration-{ident}-{len(images)}", batch_size=32,
                                                  progress=report))
    with torch.inference_mode():
        return normalised_embedding(projector, torch.from_numpy(feats))


def adapt_bundle(
    base: str | Path,
    recordings: Sequence[str | Path],
    images: str | Path,
    out: str | Path,
    *,
    adapt: str = "all",
    from_scratch: bool = False,
    epochs: int = 40,
    patience: int = 10,
    lr: float | None = None,
    weight_decay: float = 1e-4,
    batch_size: int = 64,
    val_fraction: float = 0.2,
    seed: int = 0,
    device: str = "auto",
    weights: str | None = None,
    trust_remote_code: bool = False,
    image_set: str | None = None,
    cache: str | Path | None = None,
    overwrite: bool = False,
    progress: Callable[[str, int, int], Any] | None = None,
) -> dict[str, Any]:
    """Adapt the bundle ``base`` to the person of ``recordings`` and write it to ``out``.

    Parameters
    ----------
    base : path
        The bundle to start from (an inter-subject bundle, or an adapted one: then its own
        calibration recordings are used again with the new ones).
    recordings : list of path
        ``bci-app --record`` folders (or MNE-readable files with marker annotations).
    images : path
        The images the markers name (the data folder the presenter showed, or the folder).
    adapt : 'all' | 'head' | 'projector'
        What of the brain side is trained; the rest, and the image side, stay.
    from_scratch : bool
        Train a brain side of the same architecture from random weights on the same data
        (for comparison; ``adapt`` is then 'all').
    epochs, patience : int
        At most ``epochs`` passes; stop after ``patience`` without a better validation rank.
    lr : float | None
        AdamW learning rate (default 1e-4 adapting, 1e-3 from scratch).
    val_fraction : float
        Share of calibration concepts held out (at least :data:`MIN_VAL_CONCEPTS`).
    weights : str | None
        Where the backbone's weights are (default: as the bundle records).
    trust_remote_code : bool
        Let an hf: backbone whose folder ships its own model code run it.
    progress : callable | None
        ``progress(phase, done, total)``; it may raise to cancel (nothing is written then).

    Returns the summary also stored in the new bundle's provenance (``adaptation``):
    trials, concepts and minutes used, validation top-1/top-5/mean rank/loss before (the
    starting model) and after, the chosen epoch, the history and seconds.
    """
    from .bundle import load_bundle, write_derived_bundle
    from .config import default_cache_dir
    from .losses import clip_loss
    from .model import BrainEmbedder
    from .vision import resolve_device

    started = time.perf_counter()
    check_option(adapt, ADAPT_PARTS, "--adapt (adapt)")
    for name, value in (("epochs", epochs), ("patience", patience), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if not 0 < val_fraction < 1:
        raise UsageError(f"--val-fraction must be between 0 and 1, got {val_fraction!r}")
    lr = (1e-3 if from_scratch or adapt == "input" else 1e-4) if lr is None else float(lr)
    if not (math.isfinite(lr) and lr > 0):
        raise UsageError(f"--lr must be a positive number, got {lr!r}")
    bundle = load_bundle(base)
    out = Path(out).expanduser()
    if out.resolve() == bundle.path.resolve():
        raise UsageError(f"--out must be a new folder, not the base bundle ({out})")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UsageError(f"--out {out} is not empty; give a new folder (or --overwrite)")
    previous = bundle.config.get("provenance", {}).get("adaptation") or {}
    paths = [Path(p).expanduser() for p in recordings]
    if not paths:
        raise UsageError("--recording: give at least one calibration recording")
    earlier = [Path(r["path"]) for r in previous.get("recordings", []) if isinstance(r, dict) and "path" in r]
    new_set = {p.resolve() for p in paths}
    reused = [p for p in earlier if p.resolve() not in new_set and (p.exists())]
    for p in earlier:
        if not p.exists():
            logger.warning("the bundle was adapted on %s, which is no longer there: adapting without it", p)
    paths = reused + paths
    device = resolve_device(device)
    cache_dir = Path(cache).expanduser() if cache else default_cache_dir()

    def report(phase: str, done: int, total: int) -> None:
        if progress is not None:
            progress(phase, done, total)

    report("reading the recordings", 0, 1)
    trials = read_trials(paths, images, bundle.spec, excluded_concepts=[it.concept for it in bundle.items],
                         image_set=image_set)
    fit_rows, val_rows = calibration_split(trials.concepts, val_fraction) if len(trials.epochs) else (np.array([]),) * 2
    n_val_concepts = len(set(trials.concepts[val_rows].tolist())) if len(val_rows) else 0
    if len(fit_rows) < MIN_FIT_TRIALS or n_val_concepts < MIN_VAL_CONCEPTS:
        raise UsageError(
            f"too little calibration data for a validation split: {len(trials.epochs)} usable trial(s) of "
            f"{len(set(trials.concepts.tolist()))} training concept(s) in {len(paths)} recording(s) "
            f"(markers: {_describe_counts(trials.counts)}); adapt needs at least {MIN_FIT_TRIALS} trials to fit "
            f"beside {MIN_VAL_CONCEPTS} concepts held out for validation (about a minute of RSVP)")
    logger.info("calibration: %d trials (%d images, %d concepts; %d held out) from %.1f minutes in %d recording(s)",
                len(trials.epochs), len(trials.images), len(set(trials.concepts.tolist())), n_val_concepts,
                trials.minutes, len(paths))
    targets = _image_targets(bundle, trials.images, weights=weights, device=device, cache=cache_dir,
                             progress=report, trust_remote_code=trust_remote_code).to(device)

    torch.manual_seed(seed)
    brain = BrainEmbedder(dict(bundle.brain.encoder_config), bundle.brain.proj_dim)  # a copy: bundle.brain stays
    if from_scratch:
        adapt = "all"
    else:
        brain.load_state_dict(bundle.brain.state_dict())
    if adapt == "input":
        brain = _Mixed(brain)
    brain = brain.to(device)
    params = _trainable(brain, adapt)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    scale = 1.0 / bundle.temperature
    log_scale = torch.tensor(math.log(scale), device=device)

    x_fit = torch.from_numpy(trials.epochs[fit_rows]).to(device)
    t_fit = targets[torch.from_numpy(trials.image[fit_rows]).to(device)]
    val_images, val_targets = np.unique(trials.image[val_rows], return_inverse=True)
    x_val, gal_val = trials.epochs[val_rows], targets[torch.from_numpy(val_images).to(device)]
    brain.eval()
    before = _scores(brain, x_val, val_targets, gal_val, scale, device)
    best = dict(before, epoch=0)
    best_state = {k: v.detach().clone() for k, v in brain.state_dict().items()}
    history = [dict(before, epoch=0, train_loss=None)]
    gen = torch.Generator().manual_seed(seed)
    n = len(x_fit)
    n_batches = max(1, math.ceil(n / batch_size))
    since = 0
    for epoch in range(1, epochs + 1):
        brain.train()
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for idx in torch.tensor_split(order, n_batches):
            if len(idx) < 2:
                continue
            loss = clip_loss(brain(x_fit[idx]), t_fit[idx], log_scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        brain.eval()
        val = _scores(brain, x_val, val_targets, gal_val, scale, device)
        history.append(dict(val, epoch=epoch, train_loss=total / n))
        if val["rank"] < best["rank"]:
            best = dict(val, epoch=epoch)
            best_state = {k: v.detach().clone() for k, v in brain.state_dict().items()}
            since = 0
        else:
            since += 1
        report(f"adapting: epoch {epoch}/{epochs}, validation top-1 {val['top1']:.3f} (before {before['top1']:.3f})",
               epoch, epochs)
        if since >= patience:
            break
    brain.load_state_dict(best_state)
    brain = brain.cpu().eval()
    if adapt == "input":
        brain = brain.folded()
    if best["epoch"] == 0:
        logger.warning("no epoch of the adaptation did better than the starting model on the held-out concepts: "
                       "the new bundle keeps its weights")
    confidence = _recalibrate(bundle, brain, x_val, val_targets, gal_val, seed)
    summary = {
        "base": str(bundle.path.resolve()),
        "base_sha256": bundle.config.get("files", {}).get("encoder.safetensors"),
        "from_scratch": bool(from_scratch),
        "adapt": adapt,
        "recordings": trials.recordings,
        "minutes": round(trials.minutes, 3),
        "markers": trials.counts,
        "n_trials": int(len(trials.epochs)),
        "n_fit": int(len(fit_rows)),
        "n_val": int(len(val_rows)),
        "n_images": len(trials.images),
        "n_concepts": len(set(trials.concepts.tolist())),
        "n_val_concepts": n_val_concepts,
        "before": {k: before[k] for k in ("top1", "top5", "rank", "loss")},
        "after": {k: best[k] for k in ("top1", "top5", "rank", "loss")},
        "val_chance_top1": 1.0 / len(val_images),
        "best_epoch": int(best["epoch"]),
        "confidence": confidence,
        "epochs_run": len(history) - 1,
        "lr": lr,
        "batch_size": batch_size,
        "seed": seed,
        "round": int(previous.get("round", 0)) + 1 if not from_scratch else 1,
        "history": history,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    summary["seconds"] = round(time.perf_counter() - started, 1)
    report("writing the bundle", 0, 1)
    provenance = dict(bundle.config.get("provenance", {}), adaptation=summary)
    metrics = {"calibration": {"before": summary["before"], "after": summary["after"], "n_val": summary["n_val"],
                               "val_chance_top1": summary["val_chance_top1"]}}
    write_derived_bundle(bundle, out, brain=brain, provenance=provenance, metrics=metrics, confidence=confidence)
    report("done", 1, 1)
    return summary


def _describe_counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{v} {k}" for k, v in counts.items() if v)


# -- evaluation -------------------------------------------------------------------------


def evaluate_recordings(bundle_path: str | Path, recordings: Sequence[str | Path], images: str | Path, *,
                        device: str = "auto", image_set: str | None = None) -> dict[str, Any]:
    """The bundle decoding the test-image trials of ``recordings`` (epoched as the live app
    does): top-1/top-5 of single trials and of each image's trials averaged, against the
    bundle's gallery (matched by the items' ``concept/file``)."""
    from .bundle import load_bundle
    from .metrics import topk_accuracy
    from .vision import resolve_device

    bundle = load_bundle(bundle_path)
    trials = read_trials(recordings, images, bundle.spec, use="test",
                         excluded_concepts=[it.concept for it in bundle.items], image_set=image_set)
    if not len(trials.epochs):
        raise UsageError(f"no trial of a test image in {', '.join(map(str, recordings))}")
    by_file = {it.file.replace("\\", "/"): i for i, it in enumerate(bundle.items)}
    rows = []
    for ref in trials.images:
        row = by_file.get(ref.label)
        if row is None:
            raise DataFormatError(bundle.path / "gallery.json", "items", f"image {ref.label!r} is not in the gallery")
        rows.append(row)
    target = np.asarray(rows)[trials.image]
    device = resolve_device(device)
    emb = bundle.embed(trials.epochs, device=device)
    single = topk_accuracy(emb @ bundle.gallery.T, target)
    shown = np.unique(trials.image)
    mean = np.stack([trials.epochs[trials.image == i].mean(axis=0) for i in shown])
    averaged = topk_accuracy(bundle.embed(mean, device=device) @ bundle.gallery.T, np.asarray(rows)[shown])
    reps = np.bincount(trials.image)
    return {"n_way": int(len(bundle.gallery)), "chance_top1": 1.0 / len(bundle.gallery), "n_trials": int(len(trials.epochs)),
            "n_images": int(len(shown)), "n_repetitions": float(reps[reps > 0].mean()),
            "single_trial": {k: float(v) for k, v in single.items()},
            "averaged": {k: float(v) for k, v in averaged.items()}, "markers": trials.counts}
