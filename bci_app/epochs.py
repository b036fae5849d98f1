"""Online epochs, cut and preprocessed exactly as the trainer does offline.

A marker's LSL time is matched to the nearest sample of the EEG stream (its onset
sample).  Once the stream holds the raw window the bundle's
:class:`~trainer.preprocessing.PreprocessingSpec` asks for (``spec.window(stream rate)``),
the window is taken from the ring buffer, channels picked **by name**, and
``spec.apply`` runs on it: the same function, on the same samples, as
``trainer.data.things_eeg2.epoch_session`` offline.  Epochs that become ready together are
preprocessed as one batch.

An epoch is rejected (and counted, with the reason) when no data comes for its marker,
when the stream had a gap inside its window, when its samples are not finite, when its
window began before the first sample received (a marker just after connecting), or when it
fell out of the buffer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.errors import DataFormatError
from trainer.preprocessing import PreprocessingSpec, select_channels

from .streams import EEGSource, StreamError

__all__ = ["MarkerEvent", "ReadyEpoch", "OnlineEpocher", "REJECT_REASONS"]

logger = logging.getLogger("bci_app")

REJECT_REASONS = ("no data", "gap", "non-finite", "before start", "overrun")


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


@dataclass
class ReadyEpoch:
    marker: MarkerEvent
    epoch: np.ndarray  # (C, T) float32, preprocessed
    t_ready: float  # local LSL time the epoch's last sample arrived


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
    """

    def __init__(self, spec: PreprocessingSpec, source: EEGSource, *, no_data_timeout: float = 5.0):
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
        self.pending: list[MarkerEvent] = []
        self.rejected: dict[str, int] = {r: 0 for r in REJECT_REASONS}

    @property
    def window_seconds(self) -> tuple[float, float]:
        """Raw window around the onset, in seconds (start, end)."""
        return self.start / self.sfreq, (self.start + self.n_in) / self.sfreq

    @staticmethod
    def _too_old(src: EEGSource) -> str:
        """Why a window that begins before the buffer is missing: it began before the
        first sample received ("before start", e.g. a marker just after connecting), or
        it fell out of the buffer ("overrun")."""
        return "before start" if src.oldest == 0 else "overrun"

    def add(self, marker: MarkerEvent) -> None:
        self.pending.append(marker)

    def poll(self, now: float) -> tuple[list[ReadyEpoch], list[tuple[MarkerEvent, str]]]:
        """Epochs whose windows are complete, and markers rejected since the last call."""
        src = self.source
        half = 0.5 / self.sfreq
        ready: list[tuple[MarkerEvent, int]] = []
        rejected: list[tuple[MarkerEvent, str]] = []
        keep: list[MarkerEvent] = []
        latest = src.latest_time()
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
                    # no sample at the marker's time: it fell in a gap, or before the buffer
                    rejected.append((m, self._too_old(src) if found is not None and found[0] == src.oldest
                                     and found[1] > 0 else "no data"))
                    continue
                m.onset = found[0]
            first = m.onset + self.start
            last = first + self.n_in  # exclusive
            if first < src.oldest:
                rejected.append((m, self._too_old(src)))
            elif src.n_total >= last:
                if src.has_gap(first, last):
                    rejected.append((m, "gap"))
                else:
                    ready.append((m, first))
            elif now - m.received > self.no_data_timeout + self.n_in / self.sfreq:
                rejected.append((m, "no data"))
            else:
                keep.append(m)
        self.pending = keep
        out: list[ReadyEpoch] = []
        if ready:
            windows, t_ready, good = [], [], []
            for m, first in ready:
                try:
                    data, _, arrival = src.read(first, first + self.n_in)
                except IndexError:
                    rejected.append((m, "overrun"))
                    continue
                w = data[:, self.picks].T
                if not np.isfinite(w).all():
                    rejected.append((m, "non-finite"))
                    continue
                windows.append(w)
                t_ready.append(float(arrival[-1]))
                good.append(m)
            if windows:
                epochs = self.spec.apply(np.stack(windows), self.sfreq)
                out = [ReadyEpoch(m, e, t) for m, e, t in zip(good, epochs, t_ready)]
        for _, reason in rejected:
            self.rejected[reason] += 1
        return out, rejected
