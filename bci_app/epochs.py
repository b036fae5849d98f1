"""Online epochs, cut and preprocessed exactly as the trainer does offline.

A marker's LSL time is matched to the nearest sample of the EEG stream (its onset
sample).  Once the stream holds the raw window the bundle's
:class:`~trainer.preprocessing.PreprocessingSpec` asks for (``spec.window(stream rate)``),
the window is taken from the ring buffer, channels picked **by name**, and
``spec.apply`` runs on it: the same function, on the same samples, as
``trainer.data.things_eeg2.epoch_session`` offline.  Epochs that become ready together are
preprocessed as one batch.

An epoch is rejected (and counted, with the reason) when no data comes for its marker
(``no data``), when the stream had a gap inside its window (``gap``), when its samples are
not finite (``non-finite``), when one of the model's channels is constant over the window
(``flat``: a disconnected electrode, or an integer stream in volts that rounds every
sample to 0), when its window began before the first sample received (``before start``, a
marker just after connecting), when it fell out of the buffer (``overrun``), or when the
app is too far behind to decide in time (``overload``: markers come faster than epochs
can be decoded; the newest go first, so decisions stay timely).

A bundle trained with ``--windows`` (:mod:`trainer.windows`) has provisional stages: as
soon as the raw window of a stage's shorter epoch is in, that epoch (the full epoch's first
samples, preprocessed by the stage's spec) is handed out as a :class:`ProvisionalEpoch`
(:meth:`OnlineEpocher.take_provisional`); when several stages complete together only the
latest is, and none once the whole epoch is ready.  A provisional epoch with a problem is
skipped: the whole epoch says why (and is counted) when its turn comes.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from trainer.errors import DataFormatError
from trainer.preprocessing import PreprocessingSpec, flat_channels, select_channels, window_problem
from trainer.windows import stage_spec

from .streams import EEGSource, StreamError

__all__ = ["MarkerEvent", "OnlineEpocher", "ProvisionalEpoch", "ReadyEpoch", "REJECT_REASONS"]

logger = logging.getLogger("bci_app")

REJECT_REASONS = ("no data", "gap", "non-finite", "flat", "before start", "overrun", "overload")


@dataclass
class MarkerEvent:
    """A received marker: LSL time, raw value, the stimulus id it maps to (None when
    unknown), its label, and the local time it was received."""

    t: float
    value: Any
    stimulus_id: int | None
    label: str
    received: float
    onset: int | None = None  # absolute sample index, once matched
    stages_done: int = 0  # provisional stages handed out or passed over


@dataclass
class ReadyEpoch:
    marker: MarkerEvent
    epoch: np.ndarray  # (C, T) float32, preprocessed
    t_ready: float  # local LSL time the epoch's last sample arrived (or was released after a gap's check)


@dataclass
class ProvisionalEpoch:
    marker: MarkerEvent
    stage: int  # index into OnlineEpocher.stage_ends
    end: float  # seconds after the onset the stage's epoch ends
    epoch: np.ndarray  # (C, T_stage) float32, preprocessed
    t_ready: float


class OnlineEpocher:
    """Turns markers plus the EEG ring buffer into preprocessed epochs.

    Parameters
    ----------
    spec : PreprocessingSpec
        The bundle's spec (channels by name, window, filter, resampling, baseline, z-score).
    source : EEGSource
        Connected; its channel names and rate decide the picks and the raw window.
    no_data_timeout : float
        Seconds to wait for the samples of a marker before rejecting it ("no data").
    max_batch : int
        Epochs preprocessed together at most per :meth:`poll` (bounds the work, and the
        memory, of one step); when more are ready, the newest go first.
    max_delay : float
        Seconds an epoch may wait, once its samples are all there, before it is rejected
        as ``overload`` instead of decoded late.
    max_pending : int
        Markers waiting for their samples at most; older ones beyond are ``overload``.
    stages : sequence of float
        Window ends (seconds after the onset, before the epoch's end) of the provisional
        stages (:attr:`trainer.bundle.Bundle.windows`); none by default.
    """

    def __init__(self, spec: PreprocessingSpec, source: EEGSource, *, no_data_timeout: float = 5.0,
                 max_batch: int = 64, max_delay: float = 1.0, max_pending: int = 5000, stages: Sequence[float] = ()):
        try:
            self.spec = spec.resolve(source.ch_names, source=f"stream {source.name!r}")
            self.picks = np.asarray(select_channels(source.ch_names, self.spec.channels,
                                                    source=f"stream {source.name!r}"))
        except DataFormatError as err:
            raise StreamError(f"the bundle does not fit stream {source.name!r}: {err.problem}") from None
        self.source = source
        self.sfreq = source.sfreq
        if self.sfreq <= 0:
            raise StreamError(f"stream {source.name!r} has no regular rate")
        if self.sfreq < self.spec.sfreq:
            logger.warning("stream %r at %g Hz is slower than the bundle's %g Hz", source.name, self.sfreq, self.spec.sfreq)
        self.start, self.n_in = self.spec.window(self.sfreq)
        self.no_data_timeout = float(no_data_timeout)
        need = self.n_in / self.sfreq + self.no_data_timeout + 1.0
        if source.capacity and need * self.sfreq > source.capacity:
            raise StreamError(f"the bundle's raw window ({self.n_in / self.sfreq:.2f} s, from "
                              f"{self.start / self.sfreq:+.2f} s) plus the wait for late data "
                              f"({self.no_data_timeout:g} s) does not fit the app's buffer of "
                              f"{source.capacity / self.sfreq:g} s of stream {source.name!r}; every epoch would be lost")
        self.max_batch, self.max_delay, self.max_pending = int(max_batch), float(max_delay), int(max_pending)
        self.stage_ends = [float(e) for e in stages]
        self.stage_specs = [stage_spec(self.spec, e) for e in self.stage_ends]
        self.stage_n_in = []
        for e, stage in zip(self.stage_ends, self.stage_specs):
            start, n_in = stage.window(self.sfreq)
            if start != self.start or not 0 < n_in < self.n_in:
                raise StreamError(f"the bundle's window ending {e:g} s after the onset does not lie inside its epoch")
            self.stage_n_in.append(n_in)
        self._provisional: list[ProvisionalEpoch] = []
        self.pending: list[MarkerEvent] = []
        self.rejected: dict[str, int] = {r: 0 for r in REJECT_REASONS}
        self._flat_warned: set[str] = set()
        self._notes: list[str] = []

    def take_provisional(self) -> list[ProvisionalEpoch]:
        """The provisional epochs the last :meth:`poll` made (earlier stages first)."""
        out, self._provisional = self._provisional, []
        return out

    def take_notes(self) -> list[str]:
        """Messages for the user since the last call (e.g. a flat channel)."""
        notes, self._notes = self._notes, []
        return notes

    @property
    def window_seconds(self) -> tuple[float, float]:
        """Raw window around the onset, in seconds (start, end)."""
        return self.start / self.sfreq, (self.start + self.n_in) / self.sfreq

    def add(self, marker: MarkerEvent) -> None:
        self.pending.append(marker)

    def _unplaced(self, t: float) -> str:
        """Why no sample lies at time ``t`` although the stream has passed it: it fell in
        a gap, or before the buffer ("before start" before the first sample received, e.g.
        a marker just after connecting, else "overrun")."""
        src = self.source
        oldest = src.oldest
        try:
            _, ts, _ = src.read(oldest, oldest + 1)
        except IndexError:
            return "no data"
        if t < ts[0]:
            return "before start" if oldest == 0 else "overrun"
        return "gap"

    def poll(self, now: float) -> tuple[list[ReadyEpoch], list[tuple[MarkerEvent, str]]]:
        """Epochs whose windows are complete (at most ``max_batch``; more wait for the next
        call), and markers rejected since the last call."""
        src = self.source
        half = 0.5 / self.sfreq
        ready: list[tuple[MarkerEvent, int]] = []
        provisional: list[tuple[MarkerEvent, int, int]] = []
        rejected: list[tuple[MarkerEvent, str]] = []
        keep: list[MarkerEvent] = []
        latest, available, oldest = src.latest_time(), src.available, src.oldest
        if len(self.pending) > self.max_pending:
            shed = len(self.pending) - self.max_pending
            rejected += [(m, "overload") for m in self.pending[:shed]]
            self.pending = self.pending[shed:]
        for m in self.pending:
            if m.onset is None:
                if latest is None or latest < m.t - half:
                    # the stream has not reached the marker yet
                    if now - m.received > self.no_data_timeout:
                        rejected.append((m, "no data"))
                    else:
                        keep.append(m)
                    continue
                found = src.find_sample(m.t)
                # in a regular stream a marker lies within half a sample of one; allow a
                # whole sample for timestamp jitter; farther means it fell in a gap
                if found is None or abs(found[1]) > 2.0 * half:
                    rejected.append((m, self._unplaced(m.t)))
                    continue
                m.onset = found[0]
            first = m.onset + self.start
            last = first + self.n_in  # exclusive
            if first < oldest:
                rejected.append((m, "before start" if oldest == 0 else "overrun"))
            elif src.has_gap(first, min(last, max(available, first))):
                rejected.append((m, "gap"))  # no need to wait for the rest of the window
            elif available >= last:
                ready.append((m, first))
                m.stages_done = len(self.stage_ends)  # decided now: no provisional stage left to show
            elif now - m.received > self.no_data_timeout + self.n_in / self.sfreq:
                rejected.append((m, "no data"))
            else:
                keep.append(m)
                stage = m.stages_done
                while stage < len(self.stage_ends) and available >= first + self.stage_n_in[stage]:
                    stage += 1
                if stage > m.stages_done:  # the latest stage complete (earlier ones now passed over)
                    m.stages_done = stage
                    provisional.append((m, stage - 1, first))
        if len(ready) > self.max_batch:
            # more than one batch is ready (a flood): the ones already max_delay late are
            # shed, then the newest go first, so decisions stay timely; the others wait
            late = [(m, f) for m, f in ready if self._waited(f, now) > self.max_delay]
            rejected += [(m, "overload") for m, _ in late]
            ready = sorted((mf for mf in ready if mf not in late), key=lambda mf: mf[0].t)
            keep += [m for m, _ in ready[:-self.max_batch]]
            ready = ready[-self.max_batch:]
        self.pending = keep
        out: list[ReadyEpoch] = []
        if ready:
            windows, t_ready, good = [], [], []
            for m, first in ready:
                try:
                    data, _, _ = src.read(first, first + self.n_in)
                    since = src.available_since(first + self.n_in - 1)
                except IndexError:
                    rejected.append((m, "overrun"))
                    continue
                if now - since > self.max_delay:
                    rejected.append((m, "overload"))
                    continue
                w = data[:, self.picks].T
                problem = window_problem(w)
                if problem is not None:
                    if problem == "flat":
                        self._warn_flat([self.spec.channels[i] for i in flat_channels(w)])
                    rejected.append((m, problem))
                    continue
                windows.append(w)
                t_ready.append(since)
                good.append(m)
            if windows:
                epochs = self.spec.apply(np.stack(windows), self.sfreq)
                out = [ReadyEpoch(m, e, t) for m, e, t in zip(good, epochs, t_ready)]
        for _, reason in rejected:
            self.rejected[reason] += 1
        if provisional:
            self._provisional += self._stage_epochs(provisional, now)
        return out, rejected

    def _stage_epochs(self, provisional: list[tuple[MarkerEvent, int, int]], now: float) -> list[ProvisionalEpoch]:
        """Preprocess the provisional epochs, stage by stage (earlier stages first); one that
        cannot be read, is late, or has a problem in its window is skipped."""
        out = []
        for stage in sorted({k for _, k, _ in provisional}):
            windows, t_ready, good = [], [], []
            for m, k, first in provisional:
                if k != stage:
                    continue
                try:
                    data, _, _ = self.source.read(first, first + self.stage_n_in[k])
                    since = self.source.available_since(first + self.stage_n_in[k] - 1)
                except IndexError:
                    continue
                w = data[:, self.picks].T
                if now - since > self.max_delay or window_problem(w) is not None:
                    continue
                windows.append(w)
                t_ready.append(since)
                good.append(m)
            if windows:
                epochs = self.stage_specs[stage].apply(np.stack(windows), self.sfreq)
                out += [ProvisionalEpoch(m, stage, self.stage_ends[stage], e, t)
                        for m, e, t in zip(good, epochs, t_ready)]
        return out

    def next_complete(self) -> int | None:
        """The number of available samples (``source.available``) with which the next
        pending epoch's window is complete: what the live loop may sleep until.  None when a pending marker is not
        placed yet (any chunk may place it); a large number when nothing is pending."""
        ends = []
        for m in self.pending:
            if m.onset is None:
                return None
            n_in = self.stage_n_in[m.stages_done] if m.stages_done < len(self.stage_n_in) else self.n_in
            ends.append(m.onset + self.start + n_in)
        return min(ends) if ends else 2**62

    def _waited(self, first: int, now: float) -> float:
        """Seconds since the window from sample ``first`` was complete and available (-inf
        when it has left the buffer meanwhile: reading it says ``overrun``)."""
        try:
            return now - self.source.available_since(first + self.n_in - 1)
        except IndexError:
            return -math.inf

    def _warn_flat(self, names: list[str]) -> None:
        new = [n for n in names if n not in self._flat_warned]
        if new:
            self._flat_warned.update(new)
            self._notes.append(f"stream {self.source.name!r}: channel(s) {', '.join(new)} constant over an epoch's "
                               "window; such epochs are rejected ('flat'). A disconnected electrode, or integer "
                               "samples in volts (every sample rounds to 0: send float32, or microvolts)?")
