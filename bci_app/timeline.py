"""Sample times of a regular-rate stream, and where its timeline breaks.

An EEG outlet stamps its samples with the sender's clock (liblsl deduces the stamps of
the samples of a chunk from the chunk's stamp and the nominal rate).  Those raw stamps
jitter by the sender's scheduling, drift slowly against the nominal rate, and jump when
samples are lost, when the stream restarts, or when the sender's clock jumps.

liblsl's own ``dejitter`` smooths the stamps with a regression of long memory: a jump of
+10 s becomes a ramp of distorted stamps lasting minutes, and ``monotonize`` turns a jump
back into minutes of identical stamps.  A marker matched to such samples cuts its epoch
from the wrong data.  So the app takes the raw (clock-corrected) stamps and runs
:class:`Timeline` on them instead:

- within a segment, the time of sample ``n`` is ``n / sfreq + offset``, where ``offset``
  follows the raw stamps with a time constant of a few seconds (it averages the jitter
  out and absorbs a slow drift of the sender's rate);
- a raw stamp further than ``tolerance`` from that line (forward: samples lost, a
  restart; backward: the sender's clock went back) starts a new segment there: a *gap*.
  The tolerance is ``max(min_tolerance, 8 x the measured jitter)``.

A stream with exact stamps (a replay, a hardware-stamped amplifier) gets its raw stamps
back unchanged.  Everything here is plain arithmetic on arrays, tested without LSL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Break", "Timeline", "ring_positions"]


def ring_positions(start: int, stop: int, size: int) -> np.ndarray:
    """Positions in a ring buffer of ``size`` slots of the absolute indices ``start:stop``."""
    return np.arange(start, stop) % size


@dataclass(frozen=True)
class Break:
    """A discontinuity before sample ``index``: the raw stamp was ``jump`` seconds off the
    stream's line (positive: later, i.e. about ``lost`` samples are missing)."""

    index: int
    jump: float
    lost: int


@dataclass
class _Suspect:
    index: int  # first sample off the line
    jump: float  # its residual
    seen: int = 0  # samples since, still at that jump


class Timeline:
    """Turns the raw stamps of a regular stream into smooth sample times, segment by
    segment (see the module docstring).

    A sample off the line is a *suspected* break until ``confirm`` seconds of samples
    after it stay at the same jump (a break: the times from it on are corrected, see
    :meth:`add`), or a sample comes back to the line (a late chunk: jitter).  Until then
    the times from the suspect on are provisional: :attr:`settled` is the first sample
    whose time may still change.

    Parameters
    ----------
    sfreq : float
        The stream's nominal rate.
    time_constant : float
        Seconds over which the offset follows the raw stamps.
    min_tolerance : float
        Smallest jump (s) that breaks the timeline; the jitter measured raises it.
    confirm : float
        Seconds of samples at the new line that make a jump a break.
    """

    def __init__(self, sfreq: float, *, time_constant: float = 5.0, min_tolerance: float = 0.01,
                 confirm: float = 0.2):
        if not sfreq > 0 or not math.isfinite(sfreq):
            raise ValueError(f"sfreq must be a positive number, got {sfreq!r}")
        self.dt = 1.0 / float(sfreq)
        self.time_constant = float(time_constant) * float(sfreq)  # in samples
        self.min_tolerance = float(min_tolerance)
        self.confirm = max(int(round(confirm * sfreq)), 1)  # in samples
        self.offset: float | None = None  # time of sample n is n * dt + offset
        self.jitter = 0.002  # mean |residual| (s), a cautious start
        self.settled = 0
        self._suspect: _Suspect | None = None

    @property
    def tolerance(self) -> float:
        return max(self.min_tolerance, 8.0 * self.jitter)

    def add(self, first: int, raw: np.ndarray) -> tuple[np.ndarray, list[Break], list[tuple[int, int, float]]]:
        """Place samples ``first, first + 1, ...`` whose raw stamps are ``raw``.

        Returns their times, the breaks confirmed now (possibly before ``first``), and
        corrections ``(start, stop, delta)``: add ``delta`` to the times already given to
        samples ``start:stop`` (provisional times of a confirmed break).  A non-finite
        stamp counts as on the line.  The stream's first sample starts its first segment.
        """
        raw = np.asarray(raw, dtype=np.float64)
        line = np.arange(first, first + len(raw), dtype=np.float64) * self.dt
        out = np.full_like(raw, np.nan)
        breaks: list[Break] = []
        fixes: list[tuple[int, int, float]] = []
        i = 0
        while i < len(raw):
            if self.offset is None:
                finite = np.flatnonzero(np.isfinite(raw[i:]))
                if not len(finite):  # no usable stamp yet: nothing to place these samples by
                    break
                self.offset = float(raw[i + finite[0]] - line[i + finite[0]])
            resid = raw[i:] - (line[i:] + self.offset)
            resid[~np.isfinite(resid)] = 0.0
            tol = self.tolerance
            sus = self._suspect
            if sus is None:
                off = np.flatnonzero(np.abs(resid) > tol)
                j = int(off[0]) if len(off) else len(resid)
                out[i:i + j] = line[i:i + j] + self.offset
                if j:
                    self._follow(resid[:j])
                if j < len(resid):
                    self._suspect = _Suspect(first + i + j, float(resid[j]))
                i += j
                continue
            # a suspect is open: samples at its jump extend it; a sample back on the line
            # ends it (jitter); a sample elsewhere confirms it and opens another
            same = np.abs(resid - sus.jump) <= tol
            j = int(np.argmin(same)) if not same.all() else len(resid)
            take = min(j, self.confirm - sus.seen)
            out[i:i + take] = line[i:i + take] + self.offset
            sus.seen += take
            i += take
            if sus.seen >= self.confirm or (i < len(raw) and abs(resid[take]) > tol):
                # a break: the samples from the suspect on belong to the new line
                start = sus.index
                if start < first:  # given out before this call: the caller corrects them
                    fixes.append((start, first, sus.jump))
                out[max(start - first, 0):i] += sus.jump
                breaks.append(Break(start, sus.jump, max(int(round(sus.jump / self.dt)), 0)))
                self.offset += sus.jump
                self._suspect = None
            elif i < len(raw):  # back on the line: it was a late (or early) chunk, jitter
                self._follow(np.full(sus.seen, sus.jump), move=False)
                self._suspect = None
        self.settled = self._suspect.index if self._suspect is not None else first + len(raw)
        return out, breaks, fixes

    def _follow(self, resid: np.ndarray, move: bool = True) -> None:
        """Move the offset toward the residuals of ``len(resid)`` samples (unless they
        were an outlier, ``move=False``), and update the jitter estimate."""
        m = len(resid)
        a = 1.0 - math.exp(-m / self.time_constant)
        if move:
            self.offset += a * float(resid.mean())
        self.jitter += a * (float(np.abs(resid).mean()) - self.jitter)
