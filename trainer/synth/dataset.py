"""Write a synthetic data set in the exact THINGS-EEG2 layout (and optionally a
THINGS-MEG-like ``-epo.fif``), from procedural images and a simulated brain.

Layout written under ``OUT``::

    image_set/image_metadata.npy
    image_set/training_images/00001_<concept>/<concept>_01b.jpg ...
    image_set/test_images/00001_<concept>/<concept>_01s.jpg ...
    raw_data/sub-01/ses-01/raw_eeg_training.npy, raw_eeg_test.npy
    preprocessed_data/sub-01/preprocessed_eeg_training.npy, preprocessed_eeg_test.npy
    [preprocessed_data_63ch_250hz/sub-01/...]          (variant '63ch-250hz')
    [THINGS-MEG/derivatives/preprocessed/preprocessed_P1-epo.fif]   (with meg=True)
    synth.json                                          (what was generated, and how)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .._checks import check_option, check_positive, check_type
from ..data.images import write_image_metadata
from ..data.things_eeg2 import (
    CATCH_CODE,
    RawSession,
    arrange_trials,
    epoch_session,
    write_preprocessed,
    write_raw_array,
)
from ..data.things_meg import MEG_CATCH_CODE
from ..errors import DataFormatError, MissingFileError, UsageError
from ..montage import THINGS_EEG2_CHANNELS
from ..preprocessing import NAMED_SPECS
from .brain import UV, BrainModel, SubjectBrain, make_noise
from .images import image_statistics, make_concept_names, make_concept_styles, render_image

__all__ = ["NEW_PERSON_BASE", "PRESETS", "ImageFeatures", "SynthConfig", "check_rendered_images", "eeg_brain_model",
           "frontal_weights", "generate", "image_features", "MEG_CATCH_CODE", "read_synth_config", "subject_brain"]

logger = logging.getLogger("trainer")

VARIANT_FOLDERS = {"official": "preprocessed_data", "63ch-250hz": "preprocessed_data_63ch_250hz"}


@dataclass(frozen=True)
class SynthConfig:
    """Sizes and timing of a synthetic data set (see :data:`PRESETS`)."""

    n_train_concepts: int
    images_per_concept: int
    n_test_concepts: int
    n_sessions: int
    test_reps_per_session: int
    subjects: int
    image_size: int
    seed: int = 0
    sfreq: float = 1000.0
    soa: float = 0.2
    sequence_length: int = 20
    catch_rate: float = 0.3  # share of sequences with one catch trial
    trigger_delay: float = 0.011
    meg_test_reps: int = 12
    snr: float = 2.0  # scales the informative responses (1.0 = 1.5 microvolt sources)

    @property
    def n_train_images(self) -> int:
        return self.n_train_concepts * self.images_per_concept


PRESETS: dict[str, SynthConfig] = {
    # seconds to generate, for tests
    "tiny": SynthConfig(n_train_concepts=240, images_per_concept=4, n_test_concepts=20, n_sessions=2,
                        test_reps_per_session=10, subjects=2, image_size=64),
    # the demo's data set
    "small": SynthConfig(n_train_concepts=240, images_per_concept=8, n_test_concepts=50, n_sessions=2,
                         test_reps_per_session=20, subjects=2, image_size=128),
    # THINGS-EEG2 sizes: 1654 x 10 training images x 4 repetitions, 200 test images x 80
    "full": SynthConfig(n_train_concepts=1654, images_per_concept=10, n_test_concepts=200, n_sessions=4,
                        test_reps_per_session=20, subjects=10, image_size=128),
}


def _standardise(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    mean, std = ref.mean(axis=0), ref.std(axis=0)
    return (x - mean) / np.where(std > 1e-8, std, 1.0)


# -- the images and what the brain sees in them ----------------------------------------

@dataclass(frozen=True)
class ImageFeatures:
    """The images of a synthetic set as its brain sees them.

    Attributes
    ----------
    metadata : dict of str to list of str
        What ``image_metadata.npy`` holds (concept folders, file names, THINGS concepts).
    low, attr : dict of str to array
        Per partition (``'training'``, ``'test'``), in the order the EEG data uses: the
        low-level pixel statistics of each rendered image (n, n_low) and its concept's
        attributes (n, n_attr), both standardised against the training images.
    """

    metadata: dict[str, list[str]]
    low: dict[str, np.ndarray]
    attr: dict[str, np.ndarray]

    @property
    def n_low(self) -> int:
        return self.low["training"].shape[1]

    @property
    def n_attr(self) -> int:
        return self.attr["training"].shape[1]

    def labels(self, part: str) -> list[str]:
        """``concept_folder/file`` of each image of ``part`` (``'training'`` or ``'test'``)."""
        prefix = "train" if part == "training" else "test"
        return [f"{c}/{f}" for c, f in zip(self.metadata[f"{prefix}_img_concepts"], self.metadata[f"{prefix}_img_files"])]


def image_features(cfg: SynthConfig, *, on_image: Callable[[str, int, str, str, np.ndarray], None] | None = None,
                   progress: Callable[[str, int, int], None] | None = None) -> ImageFeatures:
    """The concepts, images and image features of the synthetic set made with ``cfg``
    (its seed is ``cfg.seed``): what :func:`generate` writes and what its brain responds
    to.  Rendering again from the seed gives the same images, so a simulated participant
    (:mod:`trainer.synth.live`) responds to a set's images exactly as its recordings do.

    ``on_image(part, index, concept_folder, file_name, pixels)`` is called for each image
    as it is rendered (``generate`` writes the JPEG there); ``progress('images', done,
    total)`` after each concept.  Rendering takes 1-8 ms per image (64-128 pixels)."""
    step = progress or (lambda *_: None)
    seed = cfg.seed
    rng = np.random.default_rng([seed, 1])
    n_con = cfg.n_train_concepts + cfg.n_test_concepts
    names = make_concept_names(n_con, rng)
    styles = make_concept_styles(n_con, rng)
    perm = rng.permutation(n_con)
    test_ids = sorted(perm[: cfg.n_test_concepts], key=lambda i: names[i])
    train_ids = sorted(perm[cfg.n_test_concepts :], key=lambda i: names[i])
    things_number = {i: k + 1 for k, i in enumerate(sorted(range(n_con), key=lambda i: names[i]))}

    meta: dict[str, list[str]] = {k: [] for k in (
        "train_img_concepts", "train_img_files", "train_img_concepts_THINGS",
        "test_img_concepts", "test_img_files", "test_img_concepts_THINGS")}
    feats: dict[str, list] = {"training": [], "test": []}
    attrs: dict[str, list] = {"training": [], "test": []}
    letters = "abcdefghijklmnopqrtuvwxyz"  # no "s": THINGS ends test image names with it
    total = cfg.n_train_images + cfg.n_test_concepts
    done = 0
    for part, ids, per in (("training", train_ids, cfg.images_per_concept), ("test", test_ids, 1)):
        prefix = "train" if part == "training" else "test"
        for k, cid in enumerate(ids):
            folder = f"{k + 1:05d}_{names[cid]}"
            img_rng = np.random.default_rng([seed, 2, cid])
            numbers = img_rng.choice(np.arange(1, 16), size=per, replace=False)
            for j in range(per):
                img = render_image(styles[cid], img_rng, size=cfg.image_size)
                tag = "s" if part == "test" else letters[int(img_rng.integers(0, len(letters)))]
                fname = f"{names[cid]}_{int(numbers[j]):02d}{tag}.jpg"
                if on_image is not None:
                    on_image(part, len(feats[part]), folder, fname, img)
                meta[f"{prefix}_img_concepts"].append(folder)
                meta[f"{prefix}_img_files"].append(fname)
                meta[f"{prefix}_img_concepts_THINGS"].append(f"{things_number[cid]:05d}_{names[cid]}")
                feats[part].append(image_statistics(img))
                attrs[part].append(styles[cid].attributes())
                done += 1
            step("images", done, total)
    ref_low = np.asarray(feats["training"], dtype=np.float64)
    ref_attr = np.asarray(attrs["training"], dtype=np.float64)
    low = {p: _standardise(np.asarray(feats[p], dtype=np.float64), ref_low) for p in feats}
    att = {p: _standardise(np.asarray(attrs[p], dtype=np.float64), ref_attr) for p in attrs}
    return ImageFeatures(metadata=meta, low=low, attr=att)


# -- the brain of a set, and its subjects ---------------------------------------------

#: subject indices of new persons start here (see :func:`subject_brain`)
NEW_PERSON_BASE = 2**32


def eeg_brain_model(cfg: SynthConfig, n_low: int, n_attr: int) -> BrainModel:
    """The EEG brain model of the set made with ``cfg``: the THINGS 63-channel cap, the
    core every subject shares (from ``cfg.seed``), amplitude ``cfg.snr`` x 1.5 microvolts."""
    return BrainModel(THINGS_EEG2_CHANNELS, n_low, n_attr, seed=cfg.seed, sfreq=cfg.sfreq, amplitude=cfg.snr * 1.5 * UV)


def frontal_weights(xyz: np.ndarray) -> np.ndarray:
    """How much of a blink each sensor sees: 0 on the back 70 % of the head, rising to 1
    at the front."""
    y = xyz[:, 1]
    return np.clip((y - np.quantile(y, 0.7)) / np.ptp(y) * 4, 0, 1)


def subject_brain(model: BrainModel, cfg: SynthConfig, subject: int, *, person: int | None = None) -> SubjectBrain:
    """Subject ``subject`` (1-based) of the set made with ``cfg``, or with ``person`` (an
    integer >= 0) a *new person*, who is in no data set.

    A subject's individual part is drawn from the random key ``(cfg.seed, 11, index)``
    (:meth:`BrainModel.subject`); a set's subjects have ``index = subject``, a new person
    ``index = subject + (person + 1) * 2**32``.  numpy's seed sequence spreads an integer
    of 2**32 or more over several 32-bit words, so a new person's key has a non-zero word
    that no subject's key has (a set would need 2**32 subjects to reach it): new persons
    never coincide with a subject of any set, nor with each other, and all of them share
    the set's core (they are people of the same population)."""
    check_type(subject, int, "subject")
    if not 1 <= subject < NEW_PERSON_BASE:
        raise UsageError(f"subject must be a number from 1, got {subject}")
    if person is None:
        if subject > cfg.subjects:
            raise UsageError(f"subject must be 1..{cfg.subjects} (the set's subjects), got {subject}")
        return model.subject(subject, seed=cfg.seed)
    check_type(person, int, "person")
    if person < 0:
        raise UsageError(f"person (a new person's seed) must be >= 0, got {person}")
    return model.subject(subject + (person + 1) * NEW_PERSON_BASE, seed=cfg.seed)


# -- reading a set back -----------------------------------------------------------------

def read_synth_config(root: str | Path) -> SynthConfig:
    """The :class:`SynthConfig` a synthetic set under ``root`` was made with (from its
    ``synth.json``); a :class:`~trainer.errors.DataFormatError` when ``root`` is not such
    a set."""
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"data folder {root} not found")
    path = root / "synth.json"
    if not path.is_file():
        raise DataFormatError(root, None, "not a synthetic data set made by 'bci-train synth' (no synth.json)")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DataFormatError(path, None, f"not readable JSON ({err})") from None
    if not isinstance(summary, dict) or summary.get("generator") != "trainer.synth":
        found = summary.get("generator") if isinstance(summary, dict) else None
        raise DataFormatError(path, "generator", f"not a set made by 'bci-train synth' (generator {found!r}, "
                                                 "expected 'trainer.synth')")
    config = summary.get("config")
    if not isinstance(config, dict):
        raise DataFormatError(path, "config", "missing, or not an object")
    fields = {f.name: f for f in dataclasses.fields(SynthConfig)}
    unknown = sorted(set(config) - set(fields))
    if unknown:
        raise DataFormatError(path, "config", f"unknown keys {unknown}: made by another version of trainer.synth")
    for name, f in fields.items():
        if name not in config:
            if f.default is dataclasses.MISSING:
                raise DataFormatError(path, f"config.{name}", "missing")
            continue
        value, kind = config[name], int if f.type == "int" else float
        ok = isinstance(value, int) if kind is int else isinstance(value, (int, float)) and math.isfinite(value)
        if isinstance(value, bool) or not ok or value < 0:
            raise DataFormatError(path, f"config.{name}", f"expected a non-negative {kind.__name__}, got {value!r}")
    return SynthConfig(**{k: (float(v) if fields[k].type == "float" else v) for k, v in config.items()})


def check_rendered_images(root: str | Path, features: ImageFeatures, rendered: dict[tuple[str, int], np.ndarray],
                          *, tolerance: float = 2.0) -> None:
    """Check that a set's images are those :func:`image_features` renders again: its
    ``image_metadata.npy`` lists the same files, and each image in ``rendered``
    (``(part, index) -> pixels``) matches its JPEG within ``tolerance``: the mean absolute
    difference in 0..255 levels, both blurred (Gaussian, 2.5 pixels) since JPEG drops the
    pixel noise.  Measured on every image of the ``tiny`` set: an image's JPEG differs from
    its rendering by at most 1.2, from other images of the set by 2.5 or more (by 5.5 or
    more for 99 % of them).  Raises a
    :class:`~trainer.errors.DataFormatError` naming the first mismatch."""
    from PIL import Image
    from scipy import ndimage

    from ..data.images import read_image_metadata

    image_root = Path(root) / "image_set"
    meta_path = image_root / "image_metadata.npy"
    written = read_image_metadata(meta_path)
    again = "made by another version of trainer.synth (or changed since): regenerate it with 'bci-train synth'"
    for key, values in features.metadata.items():
        have = [str(v) for v in written[key]]
        if have != values:
            where = next((i for i, (a, b) in enumerate(zip(have, values)) if a != b), min(len(have), len(values)))
            got = have[where] if where < len(have) else "nothing"
            want = values[where] if where < len(values) else "nothing"
            raise DataFormatError(meta_path, key, f"entry {where} is {got!r}, the generator renders {want!r} there: "
                                                  f"{again}")
    for (part, i), pixels in rendered.items():
        prefix = "train" if part == "training" else "test"
        path = image_root / f"{part}_images" / features.metadata[f"{prefix}_img_concepts"][i] / \
            features.metadata[f"{prefix}_img_files"][i]
        try:
            with Image.open(path) as im:
                stored = np.asarray(im.convert("RGB"), dtype=np.float64)
        except OSError as err:
            raise DataFormatError(path, None, f"cannot be read ({err})") from None
        if stored.shape != pixels.shape:
            raise DataFormatError(path, None, f"is {stored.shape[1]}x{stored.shape[0]} pixels, the generator renders "
                                              f"{pixels.shape[1]}x{pixels.shape[0]}: {again}")
        diff = float(np.abs(ndimage.gaussian_filter(stored, (2.5, 2.5, 0))
                            - ndimage.gaussian_filter(pixels.astype(np.float64), (2.5, 2.5, 0))).mean())
        if diff > tolerance:
            raise DataFormatError(path, None, f"differs from the image the generator renders (mean difference "
                                              f"{diff:.1f} of 255 levels): {again}")


def _schedule(codes: np.ndarray, cfg: SynthConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """RSVP timing for a shuffled list of image codes: true onsets (samples), codes with
    catch trials inserted, total samples, blink times."""
    sf = cfg.sfreq
    soa = int(round(cfg.soa * sf))
    onsets, out_codes, blinks = [], [], []
    t = int(2.0 * sf)
    for start in range(0, len(codes), cfg.sequence_length):
        seq = list(codes[start : start + cfg.sequence_length])
        if rng.uniform() < cfg.catch_rate:
            seq.insert(int(rng.integers(0, len(seq) + 1)), CATCH_CODE)
        for code in seq:
            onsets.append(t)
            out_codes.append(code)
            if rng.uniform() < 0.01:
                blinks.append(t + int(rng.integers(0, soa)))
            t += soa
        # end of sequence: blank, response, self-paced pause; most blinks land here
        pause = int((0.75 + rng.uniform(0.5, 1.5)) * sf)
        if rng.uniform() < 0.8:
            blinks.append(t + int(0.3 * sf + rng.uniform(0, 0.5) * pause))
        t += pause
    n_samples = t + int(2.0 * sf)
    return np.asarray(onsets), np.asarray(out_codes), n_samples, np.asarray(blinks)


def _record(brain, model: BrainModel, codes: np.ndarray, amps_by_code: np.ndarray, cfg: SynthConfig,
            rng: np.random.Generator, frontal: np.ndarray) -> np.ndarray:
    """One continuous recording as THINGS stores it: (63 EEG rows in volts + stim row, n)."""
    onsets, codes, n_samples, blinks = _schedule(codes, cfg, rng)
    is_img = codes != CATCH_CODE
    amps = np.zeros((len(codes), amps_by_code.shape[1]))
    amps[is_img] = amps_by_code[codes[is_img] - 1]
    n_eeg = len(model.ch_names)
    data = np.empty((n_eeg + 1, n_samples), dtype=np.float64)  # filled in place: no full-size copies
    brain.continuous(n_samples, onsets, amps, rng, out=data[:n_eeg])
    make_noise(rng, model.xyz, n_samples, cfg.sfreq, frontal=frontal, blink_times=blinks, out=data[:n_eeg])
    stim = data[n_eeg]
    stim[:] = 0
    delay = int(round(cfg.trigger_delay * cfg.sfreq))
    width = 5  # trigger pulse length (samples)
    for s, c in zip(onsets + delay, codes):
        stim[s : s + width] = c
    return data


def generate(
    out: str | Path,
    preset: "str | SynthConfig" = "tiny",
    *,
    subjects: int | None = None,
    seed: int = 0,
    variants: Sequence[str] = ("official",),
    meg: bool = False,
    progress: Callable[[str, int, int], None] | None = None,
) -> dict:
    """Generate a synthetic THINGS-like data set into ``out``; returns its summary
    (also written to ``out/synth.json``).  Deterministic for (preset, subjects, seed)."""
    if isinstance(preset, SynthConfig):
        named = [k for k, v in PRESETS.items() if replace(v, snr=preset.snr, seed=preset.seed) == preset]
        cfg, preset = replace(preset, seed=seed), (named[0] if named else "custom")
    elif preset in PRESETS:
        cfg = replace(PRESETS[preset], seed=seed)
    else:
        raise UsageError(f"preset must be one of {', '.join(PRESETS)} (or a SynthConfig); got {preset!r}")
    if not variants:
        raise UsageError("variants: give at least one of " + ", ".join(VARIANT_FOLDERS))
    for v in variants:
        check_option(v, VARIANT_FOLDERS, "variants")
    check_type(seed, int, "seed")
    if subjects is not None:
        check_positive(subjects, "subjects", integer=True)
        cfg = replace(cfg, subjects=subjects)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step = progress or (lambda *_: None)

    # -- concepts and images ----------------------------------------------------------
    img_root = out / "image_set"
    from PIL import Image

    def save(part: str, index: int, folder: str, fname: str, img: np.ndarray) -> None:
        path = img_root / f"{part}_images" / folder
        path.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(path / fname, quality=92)

    images = image_features(cfg, on_image=save, progress=step)
    write_image_metadata(img_root / "image_metadata.npy", images.metadata)
    low, att = images.low, images.attr

    # -- brains and recordings --------------------------------------------------------
    model = eeg_brain_model(cfg, images.n_low, images.n_attr)
    frontal = frontal_weights(model.xyz)
    n_train = cfg.n_train_images
    halves = np.arange(n_train) % 2 if cfg.n_sessions > 1 else np.zeros(n_train, dtype=int)
    reps_train = 2 if cfg.n_sessions > 1 else 1
    specs = {v: NAMED_SPECS[v].resolve(THINGS_EEG2_CHANNELS) for v in variants}
    for sub in range(1, cfg.subjects + 1):
        brain = subject_brain(model, cfg, sub)
        amps = {p: brain.source_amplitudes(low[p], att[p]) for p in low}
        epochs: dict[tuple[str, str], list] = {(v, p): [] for v in variants for p in ("training", "test")}
        for ses in range(1, cfg.n_sessions + 1):
            rec_rng = np.random.default_rng([seed, 3, sub, ses])
            train_codes = np.flatnonzero(halves == (ses - 1) % 2) + 1
            runs = {
                "training": rec_rng.permutation(np.repeat(train_codes, reps_train)),
                "test": rec_rng.permutation(np.repeat(np.arange(1, cfg.n_test_concepts + 1), cfg.test_reps_per_session)),
            }
            for part, codes in runs.items():
                data = _record(brain, model, codes, amps[part], cfg, rec_rng, frontal)
                path = out / "raw_data" / f"sub-{sub:02d}" / f"ses-{ses:02d}" / f"raw_eeg_{part}.npy"
                write_raw_array(path, data, THINGS_EEG2_CHANNELS, cfg.sfreq)
                session = _session_from_array(data, part, path, cfg.sfreq)
                del data
                for v in variants:  # epoch now, so the raw session can be freed
                    epochs[(v, part)].append(epoch_session(session, specs[v]))
                del session
                # after each recording: callers (the demo) may stop between two of them
                step(f"sub-{sub:02d} raw", 2 * (ses - 1) + (part == "test") + 1, 2 * cfg.n_sessions)
        for v in variants:
            for part in ("training", "test"):
                trials = arrange_trials(epochs.pop((v, part)), specs[v], partition=part,
                                        n_images=n_train if part == "training" else cfg.n_test_concepts)
                write_preprocessed(out / VARIANT_FOLDERS[v] / f"sub-{sub:02d}" / f"preprocessed_eeg_{part}.npy", trials)
                del trials
            step(f"sub-{sub:02d} preprocessed ({v})", 1, 1)
        if meg:
            _write_meg(out, sub, cfg, low, att, seed, images.metadata)
            step(f"sub-{sub:02d} MEG", 1, 1)

    summary = {
        "generator": "trainer.synth",
        "preset": preset,
        "config": asdict(cfg),
        "subjects": list(range(1, cfg.subjects + 1)),
        "variants": list(variants),
        "meg": meg,
        "n_training_images": n_train,
        "n_test_images": cfg.n_test_concepts,
        "training_repetitions": reps_train * (cfg.n_sessions // 2 if cfg.n_sessions > 1 else 1),
        "test_repetitions": cfg.test_reps_per_session * cfg.n_sessions,
        "units": "volts",
        "seconds": round(time.perf_counter() - started, 1),
    }
    (out / "synth.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _session_from_array(data: np.ndarray, part: str, path: Path, sfreq: float) -> RawSession:
    """The RawSession the written file reads back as (saves re-reading it; no copy)."""
    import mne

    info = mne.create_info(list(THINGS_EEG2_CHANNELS) + ["stim"], sfreq, ["eeg"] * len(THINGS_EEG2_CHANNELS) + ["stim"])
    raw = mne.io.RawArray(data, info, verbose="error")  # float64 C-order: used as is, no copy
    events = mne.find_events(raw, stim_channel="stim", shortest_event=1, consecutive=True, initial_event=True, verbose="error")
    return RawSession(raw=raw, events=events[events[:, 2] != CATCH_CODE], catch_events=events[events[:, 2] == CATCH_CODE],
                      partition=part, source=str(path))


MEG_CHANNELS_DROPPED = ("MLF25", "MRF43", "MRO13", "MLT57")  # broken sensors (THINGS-MEG has 271 of 275)


def meg_channel_names() -> list[str]:
    """271 CTF axial gradiometer names (the CTF-275 layout minus 4)."""
    import mne

    names = [n.split("-")[0] for n in mne.channels.read_layout("CTF-275").names]
    return [n for n in names if n not in MEG_CHANNELS_DROPPED]


def _write_meg(out: Path, sub: int, cfg: SynthConfig, low: dict, att: dict, seed: int, meta: dict) -> Path:
    """A THINGS-MEG-like preprocessed ``-epo.fif``: training images once, test images
    ``meg_test_reps`` times, some catch trials, 200 Hz, -0.1..1.3 s, in tesla."""
    import mne

    sfreq, tmin, n_t = 200.0, -0.1, 281
    ch = meg_channel_names()
    model = BrainModel(ch, low["training"].shape[1], att["training"].shape[1], seed=seed + 1000, kind="meg",
                       sfreq=sfreq, amplitude=cfg.snr * 1.5, individuality=0.6)
    brain = model.subject(sub, seed=seed)
    rng = np.random.default_rng([seed, 4, sub])
    n_train, n_test = cfg.n_train_images, cfg.n_test_concepts
    codes = np.concatenate([np.arange(1, n_train + 1), np.repeat(np.arange(n_train + 1, n_train + n_test + 1), cfg.meg_test_reps)])
    n_catch = max(1, len(codes) // 50)
    codes = rng.permutation(np.concatenate([codes, np.full(n_catch, MEG_CATCH_CODE)]))
    evoked = {p: brain.evoked(low[p], att[p]) for p in low}  # (n_img, C, 160) from onset
    pre = int(round(-tmin * sfreq))
    data = make_noise(rng, model.xyz, len(codes) * n_t, sfreq, frontal=np.zeros(len(ch)), background_uv=8.0,
                      alpha_uv=3.0, line_uv=0.5, drift_uv=2.0, unit=1e-14).reshape(len(ch), len(codes), n_t).transpose(1, 0, 2)
    n_wave = evoked["training"].shape[2]
    gains = np.clip(1 + brain.trial_gain_sd * rng.standard_normal(len(codes)), 0.1, None)
    for i, code in enumerate(codes):
        if code == MEG_CATCH_CODE:
            continue
        resp = evoked["training"][code - 1] if code <= n_train else evoked["test"][code - n_train - 1]
        data[i, :, pre : pre + n_wave] += gains[i] * resp * 1e-14
    event_id = {f"training/{c}/{f}": k + 1 for k, (c, f) in enumerate(zip(meta["train_img_concepts"], meta["train_img_files"]))}
    event_id.update({f"test/{c}/{f}": n_train + k + 1 for k, (c, f) in enumerate(zip(meta["test_img_concepts"], meta["test_img_files"]))})
    event_id["catch"] = MEG_CATCH_CODE
    info = mne.create_info(ch, sfreq, "mag")
    events = np.column_stack([np.arange(len(codes)) * 300 + 1000, np.zeros(len(codes), int), codes]).astype(int)
    epochs = mne.EpochsArray(data, info, events=events, tmin=tmin, event_id=event_id, baseline=None, verbose="error")
    path = out / "THINGS-MEG" / "derivatives" / "preprocessed" / f"preprocessed_P{sub}-epo.fif"
    path.parent.mkdir(parents=True, exist_ok=True)
    epochs.save(path, overwrite=True, verbose="error")
    return path
