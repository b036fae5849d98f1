"""The presenter's timing log: for each image, the planned and the actual onset (the flip
that showed it, in LSL time: the time its marker carries), and what that says about the
display (no Qt here; the window feeds it).

Within a sequence the plan is frame-locked: image ``k`` is due ``k * soa_frames`` frames
after the sequence's first onset (:class:`~bci_app.stimuli.FrameTiming`).  An onset later
than planned by a frame or more means frames were dropped (the display missed a refresh)
or, without vsync, that the timer fired late.  Sequences start when the participant (or
the pause timer) says so, so each sequence is planned from its own first flip.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.files import atomic_write_text

from .stimuli import FrameTiming, Trial

__all__ = ["Onset", "TimingLog"]


@dataclass(frozen=True)
class Onset:
    """One image's onset: what was shown, and when (LSL seconds)."""

    sequence: int
    position: int
    code: int
    label: str
    catch: bool
    planned: float
    actual: float

    @property
    def error(self) -> float:
        """Actual minus planned onset, in seconds (positive: late)."""
        return self.actual - self.planned


class TimingLog:
    """Collects the onsets of a run (see the module docstring).

    Parameters
    ----------
    timing : FrameTiming
        The display's frames and the image and blank durations.
    mode : str
        How flips were timed (``'vsync'`` or ``'timer'``), for the report.
    """

    def __init__(self, timing: FrameTiming, mode: str):
        self.timing, self.mode = timing, mode
        self.onsets: list[Onset] = []
        self._sequence_start: dict[int, float] = {}
        self.aborted = False

    def add(self, trial: Trial, flip_time: float) -> Onset:
        """Log ``trial`` shown at the flip at LSL time ``flip_time``; its plan comes from
        the first onset of its sequence."""
        if not math.isfinite(flip_time):
            raise ValueError(f"flip time must be finite, got {flip_time!r}")
        step = self.timing.soa_frames * self.timing.frame
        start = self._sequence_start.setdefault(trial.sequence, flip_time - trial.position * step)
        planned = start + trial.position * step
        onset = Onset(trial.sequence, trial.position, trial.code, trial.label, trial.catch, planned, float(flip_time))
        self.onsets.append(onset)
        return onset

    def late_frames(self) -> np.ndarray:
        """Per onset, whole frames late against the plan (0 when on time)."""
        err = np.array([o.error for o in self.onsets], dtype=np.float64)
        return np.maximum(np.round(err / self.timing.frame), 0).astype(np.int64)

    def summary(self) -> dict:
        """Counts and errors (ms) of the run."""
        err_ms = 1000.0 * np.array([o.error for o in self.onsets], dtype=np.float64)
        late = self.late_frames()
        return {
            "mode": self.mode,
            "refresh_hz": self.timing.refresh_hz,
            "on_frames": self.timing.on_frames,
            "off_frames": self.timing.off_frames,
            "onsets": len(self.onsets),
            "sequences": len(self._sequence_start),
            "aborted": self.aborted,
            "error_ms": None if not len(err_ms) else {
                "median": float(np.median(err_ms)), "p99": float(np.percentile(err_ms, 99)),
                "max": float(np.max(np.abs(err_ms)))},
            "late_onsets": int(np.count_nonzero(late)),
            "dropped_frames": int(late.sum()),
        }

    def report(self) -> str:
        """The one-line timing report printed at the end."""
        s = self.summary()
        head = (f"timing ({s['mode']}, {s['refresh_hz']:g} Hz, {s['on_frames']}+{s['off_frames']} frames): "
                f"{s['onsets']} onsets in {s['sequences']} sequences" + (" (aborted)" if s["aborted"] else ""))
        if s["error_ms"] is None:
            return head
        e = s["error_ms"]
        return (f"{head}; onset vs plan: median {e['median']:+.2f} ms, p99 {e['p99']:+.2f} ms, max |{e['max']:.2f}| ms; "
                f"{s['late_onsets']} late by a frame or more ({s['dropped_frames']} frames dropped)")

    def write(self, path: str | Path) -> Path:
        """The log as JSON: the summary and every onset (planned and actual LSL times, the
        error in ms, the frames late).  Written atomically, so an aborted run leaves a
        complete file."""
        late = self.late_frames()
        rows = [{**asdict(o), "error_ms": round(1000.0 * o.error, 3), "late_frames": int(k)}
                for o, k in zip(self.onsets, late)]
        path = Path(path)
        atomic_write_text(path, json.dumps({"summary": self.summary(), "onsets": rows}, indent=1, allow_nan=False) + "\n")
        return path
