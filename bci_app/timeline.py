"""Sample times of a regular-rate stream, and where its timeline breaks.

An EEG outlet stamps its samples with the sender's clock (liblsl deduces the stamps of
the samples of a chunk from the chunk's stamp and the nominal rate).  Those raw stamps
jitter by the sender's scheduling, drift against the nominal rate (a device whose true
rate is 0.1 % or even 1 % off its nominal one), and jump when samples are lost, when the
stream restarts, or when the sender's clock jumps.

liblsl's own ``dejitter`` smooths the stamps with a regression of long memory: a jump of
+10 s becomes a ramp of distorted stamps lasting minutes, and ``monotonize`` turns a jump
back into minutes of identical stamps.  A marker matched to such samples cuts its epoch
from the wrong data.  So the app takes the raw (clock-corrected) stamps and runs
:class:`Timeline` on them instead:

- within a segment, the time of sample ``n`` is a straight line in ``n``, fitted to the
  raw stamps by least squares weighted with a memory of ``time_constant`` seconds: it
  averages the jitter out and follows the sender's true rate and its slow drift;
- a raw stamp further than ``tolerance`` from that line (forward: samples lost, a
  restart; backward: the sender's clock went back) opens a *suspected* break.  When
  ``confirm`` seconds of samples have passed since, none of them back on the line, the
  break is real: a new segment starts there, a *gap* (the line keeps its rate, its offset
  jumps).  A stamp that comes back to the line first makes it all jitter: one late chunk,
  or a sender that fell behind by 40 ms and caught up over a few chunks.  Samples at yet
  another distance meanwhile add a step to the suspicion (a break followed by another is
  two gaps).  The tolerance is ``max(min_tolerance, 8 x the measured jitter)``.

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
class _Step:
    index: int  # first sample at this distance from the line
    jump: float  # its residual
    seen: int = 0  # samples at it


class _LineFit:
    """Exponentially weighted least squares of ``y ~ a + b (n - n0)``: ``y`` is a raw stamp
    minus the nominal time ``n / sfreq`` (small numbers), ``n`` the sample index."""

    def __init__(self, memory: float, min_span: float):
        self.lam = math.exp(-1.0 / memory)  # weight kept per sample
        self.min_var = min_span * min_span / 12.0  # the spread of n before the slope is used
        self.n0 = 0
        self.s = self.sx = self.sy = self.sxx = self.sxy = 0.0
        self.start: float | None = None  # the first y: the line before anything is fitted

    def line(self) -> tuple[float, float]:
        """(a, b): the fitted line at ``n0``, and its slope per sample."""
        if self.s < 1e-12:
            return (self.start or 0.0), 0.0
        mx, my = self.sx / self.s, self.sy / self.s
        var = self.sxx / self.s - mx * mx
        if var < self.min_var:  # too short a span to trust a slope: the mean only
            return my, 0.0
        b = (self.sxy / self.s - mx * my) / var
        return my - b * mx, b

    def predict(self, n: np.ndarray) -> np.ndarray:
        a, b = self.line()
        return a + b * (n - self.n0)

    def add(self, n: np.ndarray, y: np.ndarray) -> None:
        if not len(n):
            return
        if self.start is None:
            self.start = float(y[0])
        if abs(float(n[-1]) - self.n0) > 1e6:
            self._recentre(int(n[-1]))
        x = n - self.n0
        w = self.lam ** np.arange(len(n) - 1, -1, -1, dtype=np.float64)
        decay = self.lam ** len(n)
        self.s = decay * self.s + float(w.sum())
        self.sx = decay * self.sx + float(w @ x)
        self.sy = decay * self.sy + float(w @ y)
        self.sxx = decay * self.sxx + float(w @ (x * x))
        self.sxy = decay * self.sxy + float(w @ (x * y))

    def shift(self, jump: float) -> None:
        """The line jumps by ``jump`` (a break): its rate stays."""
        self.sy += jump * self.s
        self.sxy += jump * self.sx
        if self.start is not None:
            self.start += jump

    def _recentre(self, n0: int) -> None:
        c = float(n0 - self.n0)
        self.sxx += -2.0 * c * self.sx + c * c * self.s
        self.sxy -= c * self.sy
        self.sx -= c * self.s
        self.n0 = n0


class Timeline:
    """Turns the raw stamps of a regular stream into smooth sample times, segment by
    segment (see the module docstring).

    A sample off the line is a *suspected* break until ``confirm`` seconds of samples
    after it passed without one back on the line (a break: the times from it on are
    corrected, see :meth:`add`), or a sample comes back to the line (late chunks: jitter).
    Until then the times from the suspect on are provisional: :attr:`settled` is the
    first sample whose time may still change.

    Parameters
    ----------
    sfreq : float
        The stream's nominal rate.
    time_constant : float
        Seconds of stamps the line is fitted to (their weight halves every 0.7 of it).
    min_tolerance : float
        Smallest jump (s) that breaks the timeline; the jitter measured raises it.
    confirm : float
        Seconds of samples at the new line that make a jump a break.
    """

    def __init__(self, sfreq: float, *, time_constant: float = 10.0, min_tolerance: float = 0.01,
                 confirm: float = 0.2):
        if not sfreq > 0 or not math.isfinite(sfreq):
            raise ValueError(f"sfreq must be a positive number, got {sfreq!r}")
        self.sfreq = float(sfreq)
        self.dt = 1.0 / self.sfreq
        self.min_tolerance = float(min_tolerance)
        self.confirm = max(int(round(confirm * sfreq)), 1)  # in samples
        self._fit = _LineFit(memory=time_constant * self.sfreq, min_span=1.0 * self.sfreq)
        self._jitter_memory = 2.0 * self.sfreq  # samples over which the jitter estimate follows
        self.jitter = 0.002  # mean |residual| (s), a cautious start
        self.settled = 0
        self._steps: list[_Step] = []  # the open suspicion: the distances from the line seen since

    @property
    def tolerance(self) -> float:
        return max(self.min_tolerance, 8.0 * self.jitter)

    @property
    def rate(self) -> float:
        """The sender's rate as fitted (the nominal rate until a second of stamps is in)."""
        return 1.0 / (self.dt + self._fit.line()[1])

    def add(self, first: int, raw: np.ndarray) -> tuple[np.ndarray, list[Break], list[tuple[int, int, float]]]:
        """Place samples ``first, first + 1, ...`` whose raw stamps are ``raw``.

        Returns their times, the breaks confirmed now (possibly before ``first``), and
        corrections ``(start, stop, delta)``: add ``delta`` to the times already given to
        samples ``start:stop`` (provisional times of a confirmed break).  A non-finite
        stamp counts as on the line.  The stream's first sample starts its first segment.
        """
        raw = np.asarray(raw, dtype=np.float64)
        n = np.arange(first, first + len(raw), dtype=np.float64)
        y = raw - n * self.dt  # stamp minus nominal time
        out = np.full_like(raw, np.nan)
        breaks: list[Break] = []
        fixes: list[tuple[int, int, float]] = []
        if self._fit.start is None:
            finite = np.flatnonzero(np.isfinite(y))
            if not len(finite):  # no usable stamp yet: nothing to place these samples by
                return out, breaks, fixes
            self._fit.start = float(y[finite[0]])
        i = 0
        while i < len(raw):
            pred = self._fit.predict(n[i:])
            resid = y[i:] - pred
            resid[~np.isfinite(resid)] = 0.0
            tol = self.tolerance
            if not self._steps:
                off = np.flatnonzero(np.abs(resid) > tol)
                j = int(off[0]) if len(off) else len(resid)
                out[i:i + j] = n[i:i + j] * self.dt + pred[:j]
                if j:
                    self._fit.add(n[i:i + j], pred[:j] + resid[:j])
                    self._follow_jitter(resid[:j])
                if j < len(resid):
                    self._steps = [_Step(first + i + j, float(resid[j]))]
                i += j
                continue
            # a suspicion is open: samples at its last step's distance extend it; a sample
            # back on the line ends it (jitter); a sample elsewhere adds a step
            step = self._steps[-1]
            seen = sum(s.seen for s in self._steps)
            same = np.abs(resid - step.jump) <= tol
            j = int(np.argmin(same)) if not same.all() else len(resid)
            take = min(j, self.confirm - seen)
            out[i:i + take] = n[i:i + take] * self.dt + pred[:take]
            step.seen += take
            i += take
            if seen + take >= self.confirm:
                breaks += self._confirm(first, i, out, fixes)
            elif i < len(raw) and abs(resid[take]) <= tol:  # back on the line: late (or early) chunks
                for s in self._steps:
                    self._follow_jitter(np.full(s.seen, s.jump))
                self._steps = []
            elif i < len(raw):  # at another distance
                self._steps.append(_Step(first + i, float(resid[take])))
        self.settled = self._steps[0].index if self._steps else first + len(raw)
        return out, breaks, fixes

    def _confirm(self, first: int, stop: int, out: np.ndarray, fixes: list) -> list[Break]:
        """The open suspicion is a break (one per step): correct the provisional times of
        its samples (``out`` holds samples ``first:stop`` of this call; ``fixes`` gets the
        ones given out before) and shift the line."""
        breaks, before = [], 0.0
        ends = [s.index for s in self._steps[1:]] + [first + stop]
        for s, end in zip(self._steps, ends):
            if s.index < first:  # given out before this call: the caller corrects them
                fixes.append((s.index, min(end, first), s.jump))
            lo, hi = max(s.index, first) - first, end - first
            if hi > lo:
                out[lo:hi] += s.jump
            breaks.append(Break(s.index, s.jump - before, max(int(round((s.jump - before) * self.sfreq)), 0)))
            before = s.jump
        self._fit.shift(before)
        self._steps = []
        return breaks

    def _follow_jitter(self, resid: np.ndarray) -> None:
        a = 1.0 - math.exp(-len(resid) / self._jitter_memory)
        self.jitter += a * (float(np.abs(resid).mean()) - self.jitter)
