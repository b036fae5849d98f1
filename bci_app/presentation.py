"""The presenter's timing log: for each image, the planned and the actual onset (the flip
that showed it, in LSL time: the time its marker carries), and what that says about the
display (no Qt here; the window feeds it).

Within a sequence the plan is frame-locked: image ``k`` is due ``k * soa_frames`` frames
after the sequence's first onset (:class:`~bci_app.stimuli.FrameTiming`).  An onset later
than planned by a frame or more means frames were dropped (the display missed a refresh)
or, without vsync, that the timer fired late.  Sequences start when the participant (or
the pause timer) says so, so each sequence is planned from its own first flip.

The participant's key presses during sequences are logged too (:meth:`TimingLog.respond`):
a press within :data:`RESPONSE_WINDOW` seconds after a catch target's onset is a hit,
any other press a false alarm.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from trainer.files import atomic_write_text

from .stimuli import FrameTiming, Trial

__all__ = ["RESPONSE_WINDOW", "VSYNC_MIN_SHARE", "Onset", "TimingLog", "swap_pacing"]

#: vsync is taken to work when the median interval between buffer swaps is at least this
#: share of the screen's nominal frame
VSYNC_MIN_SHARE = 0.7

#: seconds after a catch target's onset in which a key press counts as seeing it
RESPONSE_WINDOW = 1.5


def swap_pacing(swap_times, nominal_hz: float) -> tuple[bool, float]:
    """Whether buffer swaps at ``swap_times`` (s) are paced by a display of ``nominal_hz``,
    and the rate they show (Hz; a 60 Hz screen often truly runs at 59.94).  The first
    interval is left out (the first swap may wait for the window to appear)."""
    times = np.asarray(swap_times, dtype=np.float64)[1:]
    intervals = np.diff(times)
    if len(intervals) < 2:
        raise ValueError("need at least 4 swap times to tell whether vsync paces them")
    interval = float(np.median(intervals))
    if not interval > 0:
        return False, math.inf
    # the rate: a line through the swaps against their frame numbers (a missed refresh
    # counts as two frames), more precise than any one interval
    frames = np.r_[0, np.cumsum(np.maximum(np.round(intervals / interval), 1))]
    slope = float(np.polyfit(frames, times, 1)[0])
    return interval >= VSYNC_MIN_SHARE / nominal_hz, 1.0 / slope


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
        self.responses: list[float] = []
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

    def respond(self, time: float) -> None:
        """The participant pressed the response key at LSL time ``time``."""
        self.responses.append(float(time))

    def catch_results(self) -> dict:
        """Catch targets shown, hits (a press within :data:`RESPONSE_WINDOW` s of one) and
        false alarms (presses that follow no catch target so closely)."""
        catches = [o.actual for o in self.onsets if o.catch]
        hit = [any(0.0 <= r - c <= RESPONSE_WINDOW for r in self.responses) for c in catches]
        false = [r for r in self.responses if not any(0.0 <= r - c <= RESPONSE_WINDOW for c in catches)]
        return {"targets": len(catches), "hits": int(sum(hit)), "false_alarms": len(false)}

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
            "catch": self.catch_results(),
        }

    def report(self) -> str:
        """The one-line timing report printed at the end."""
        s = self.summary()
        head = (f"timing ({s['mode']}, {s['refresh_hz']:g} Hz, {s['on_frames']}+{s['off_frames']} frames): "
                f"{s['onsets']} onsets in {s['sequences']} sequences" + (" (aborted)" if s["aborted"] else ""))
        if s["error_ms"] is None:
            return head
        e = s["error_ms"]
        c = s["catch"]
        catch = f"; catch targets {c['hits']}/{c['targets']} seen, {c['false_alarms']} false alarms" if c["targets"] else ""
        return (f"{head}; onset vs plan: median {e['median']:+.2f} ms, p99 {e['p99']:+.2f} ms, max |{e['max']:.2f}| ms; "
                f"{s['late_onsets']} late by a frame or more ({s['dropped_frames']} frames dropped){catch}")

    def write(self, path: str | Path) -> Path:
        """The log as JSON: the summary and every onset (planned and actual LSL times, the
        error in ms, the frames late).  Written atomically, so an aborted run leaves a
        complete file."""
        late = self.late_frames()
        rows = [{**asdict(o), "error_ms": round(1000.0 * o.error, 3), "late_frames": int(k)}
                for o, k in zip(self.onsets, late)]
        path = Path(path)
        doc = {"summary": self.summary(), "onsets": rows, "responses": self.responses}
        atomic_write_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")
        return path
