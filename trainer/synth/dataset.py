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

import json
import logging
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
from ..errors import UsageError
from ..montage import THINGS_EEG2_CHANNELS
from ..preprocessing import NAMED_SPECS
from .brain import UV, BrainModel, make_noise
from .images import image_statistics, make_concept_names, make_concept_styles, render_image

__all__ = ["PRESETS", "SynthConfig", "generate", "MEG_CATCH_CODE"]

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
    rng = np.random.default_rng([seed, 1])
    n_con = cfg.n_train_concepts + cfg.n_test_concepts
    names = make_concept_names(n_con, rng)
    styles = make_concept_styles(n_con, rng)
    perm = rng.permutation(n_con)
    test_ids = sorted(perm[: cfg.n_test_concepts], key=lambda i: names[i])
    train_ids = sorted(perm[cfg.n_test_concepts :], key=lambda i: names[i])
    things_number = {i: k + 1 for k, i in enumerate(sorted(range(n_con), key=lambda i: names[i]))}

    img_root = out / "image_set"
    meta: dict[str, list[str]] = {k: [] for k in (
        "train_img_concepts", "train_img_files", "train_img_concepts_THINGS",
        "test_img_concepts", "test_img_files", "test_img_concepts_THINGS")}
    feats: dict[str, list] = {"training": [], "test": []}
    attrs: dict[str, list] = {"training": [], "test": []}
    from PIL import Image

    letters = "abcdefghijklmnopqrtuvwxyz"  # no "s": THINGS ends test image names with it
    total = cfg.n_train_images + cfg.n_test_concepts
    done = 0
    for part, ids, per in (("training", train_ids, cfg.images_per_concept), ("test", test_ids, 1)):
        prefix = "train" if part == "training" else "test"
        for k, cid in enumerate(ids):
            folder = f"{k + 1:05d}_{names[cid]}"
            (img_root / f"{part}_images" / folder).mkdir(parents=True, exist_ok=True)
            img_rng = np.random.default_rng([seed, 2, cid])
            numbers = img_rng.choice(np.arange(1, 16), size=per, replace=False)
            for j in range(per):
                img = render_image(styles[cid], img_rng, size=cfg.image_size)
                tag = "s" if part == "test" else letters[int(img_rng.integers(0, len(letters)))]
                fname = f"{names[cid]}_{int(numbers[j]):02d}{tag}.jpg"
                Image.fromarray(img).save(img_root / f"{part}_images" / folder / fname, quality=92)
                meta[f"{prefix}_img_concepts"].append(folder)
                meta[f"{prefix}_img_files"].append(fname)
                meta[f"{prefix}_img_concepts_THINGS"].append(f"{things_number[cid]:05d}_{names[cid]}")
                feats[part].append(image_statistics(img))
                attrs[part].append(styles[cid].attributes())
                done += 1
            step("images", done, total)
    write_image_metadata(img_root / "image_metadata.npy", meta)
    ref_low = np.asarray(feats["training"], dtype=np.float64)
    ref_attr = np.asarray(attrs["training"], dtype=np.float64)
    low = {p: _standardise(np.asarray(feats[p], dtype=np.float64), ref_low) for p in feats}
    att = {p: _standardise(np.asarray(attrs[p], dtype=np.float64), ref_attr) for p in attrs}

    # -- brains and recordings --------------------------------------------------------
    model = BrainModel(THINGS_EEG2_CHANNELS, ref_low.shape[1], ref_attr.shape[1], seed=seed,
                       sfreq=cfg.sfreq, amplitude=cfg.snr * 1.5 * UV)
    frontal = np.clip((model.xyz[:, 1] - np.quantile(model.xyz[:, 1], 0.7)) / np.ptp(model.xyz[:, 1]) * 4, 0, 1)
    n_train = cfg.n_train_images
    halves = np.arange(n_train) % 2 if cfg.n_sessions > 1 else np.zeros(n_train, dtype=int)
    reps_train = 2 if cfg.n_sessions > 1 else 1
    specs = {v: NAMED_SPECS[v].resolve(THINGS_EEG2_CHANNELS) for v in variants}
    for sub in range(1, cfg.subjects + 1):
        brain = model.subject(sub, seed=seed)
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
            _write_meg(out, sub, cfg, low, att, seed, meta)
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
