"""Deciding before the epoch ends (``--windows``): the stages of a decision.

A model trained with ``--windows 0.3,0.5,1.0`` is one encoder that has learnt to decode the
epoch's first 0.3 s, 0.5 s and all of it: while it trains, each epoch of a batch has the
samples after a randomly drawn window end set to zero (after normalisation, where zero is
the training mean).  Live, the app decides provisionally as soon as the first window's
samples are in, refines at each later window, and decides finally at the epoch's end; a
window's epoch is the full epoch's first samples exactly (the band-pass is causal, the
baseline lies before the onset, and resampling near a sample uses only samples within the
kernel's half-width, which the shorter raw window still holds), padded with zeros.

Window ends are seconds after the stimulus onset; the epoch's own end (``tmax``) is always
the last stage.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from .errors import UsageError
from .preprocessing import PreprocessingSpec

__all__ = ["parse_windows", "stage_ends", "stage_masks", "stage_samples", "stage_spec", "zero_padded"]


def parse_windows(text: str) -> list[float]:
    """``--windows``: comma-separated window ends in seconds ('' for none), sorted, without repeats."""
    if not str(text).strip():
        return []
    try:
        values = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise UsageError(f"--windows (windows) must be comma-separated positive seconds after the onset, e.g. "
                         f"0.3,0.5,1.0, got {text!r}")
    return sorted(set(values))


def stage_samples(spec: PreprocessingSpec, end: float) -> int:
    """Samples of the epoch up to ``end`` seconds after the onset (exclusive)."""
    return int(round((end - spec.tmin) * spec.sfreq))


def stage_ends(spec: PreprocessingSpec, windows: list[float]) -> list[float]:
    """The decision stages for ``windows`` under ``spec``: the window ends, then the epoch's
    end; a UsageError for a window that does not end inside the epoch or holds no sample."""
    ends = []
    for w in windows:
        if not spec.tmin < w <= spec.tmax + 1e-9 or stage_samples(spec, w) < 1:
            raise UsageError(f"--windows (windows): {w:g} s does not end inside the epoch ({spec.tmin:g} to "
                             f"{spec.tmax:g} s after the onset, {spec.sfreq:g} Hz)")
        if stage_samples(spec, w) < spec.n_times:
            ends.append(float(w))
    return ends + [float(spec.tmax)]


def stage_masks(spec: PreprocessingSpec, ends: list[float]) -> np.ndarray:
    """(n_stages, n_times) float32: 1 for the samples each stage has seen, 0 after."""
    masks = np.zeros((len(ends), spec.n_times), dtype=np.float32)
    for i, end in enumerate(ends):
        masks[i, : stage_samples(spec, end)] = 1.0
    return masks


def stage_spec(spec: PreprocessingSpec, end: float) -> PreprocessingSpec:
    """The spec of the epoch's first samples up to ``end``: the same raw samples, filter,
    resampling, baseline and normalisation, cut earlier (:mod:`trainer.windows`)."""
    return replace(spec, tmax=spec.tmin + stage_samples(spec, end) / spec.sfreq)


def zero_padded(epochs: np.ndarray, n_times: int) -> np.ndarray:
    """Epochs (n, C, T_stage) padded with zeros to (n, C, n_times), the model's input."""
    epochs = np.asarray(epochs, dtype=np.float32)
    out = np.zeros(epochs.shape[:-1] + (n_times,), dtype=np.float32)
    out[..., : epochs.shape[-1]] = epochs
    return out
