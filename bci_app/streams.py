"""LSL streams: discovery, the EEG subscription and the marker subscriptions.

- :func:`list_streams` / :func:`resolve_one`: what is on the network.
- :class:`EEGSource`: an mne-lsl :class:`~mne_lsl.stream.StreamLSL` whose acquisition
  callback copies every chunk, exactly once, into a ring buffer that counts samples from
  the connection on (``n_total``), with each sample's LSL timestamp (clock-corrected and
  dejittered) and the local time it arrived.  Gaps (samples lost, or the stream stopped
  and came back) are detected from the timestamps.
- :class:`NumericMarkers` (an mne-lsl event stream: ``StreamLSL`` on an irregular numeric
  stream) and :class:`StringMarkers` (a plain ``StreamInlet`` with clock correction, as
  mne-lsl refuses string streams) deliver ``(lsl_time, value)`` pairs.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trainer.errors import BCIError

__all__ = ["ConnectCancelled", "StreamSummary", "list_streams", "resolve_one", "EEGSource", "NumericMarkers", "StringMarkers",
           "open_markers", "StreamError"]

logger = logging.getLogger("bci_app")


class StreamError(BCIError, RuntimeError):
    """A stream that is not there, is ambiguous, does not fit, or changed under us."""


class ConnectCancelled(StreamError):
    """Looking for a stream was stopped on request (see ``cancel`` of :func:`resolve_one`)."""


@dataclass(frozen=True)
class StreamSummary:
    name: str
    type: str
    sfreq: float
    n_channels: int
    dtype: str
    source_id: str
    hostname: str

    @property
    def is_marker(self) -> bool:
        return self.sfreq == 0

    def describe(self) -> str:
        rate = "irregular" if self.sfreq == 0 else f"{self.sfreq:g} Hz"
        return (f"{self.name!r}  type={self.type or '-'}  {rate}  {self.n_channels} ch  {self.dtype}  "
                f"source_id={self.source_id or '-'}  host={self.hostname}")


def _summary(sinfo) -> StreamSummary:
    dtype = sinfo.dtype if isinstance(sinfo.dtype, str) else np.dtype(sinfo.dtype).name
    return StreamSummary(sinfo.name, sinfo.stype, float(sinfo.sfreq), int(sinfo.n_channels), dtype,
                         sinfo.source_id, sinfo.hostname)


def list_streams(timeout: float = 1.0) -> list[StreamSummary]:
    """Every LSL stream visible within ``timeout`` seconds, sorted by name."""
    from mne_lsl.lsl import resolve_streams

    return sorted((_summary(s) for s in resolve_streams(timeout=timeout)), key=lambda s: (s.name, s.source_id))


def resolve_one(name: str, *, timeout: float = 5.0, source_id: str | None = None, markers: bool | None = None,
                cancel: Callable[[], bool] | None = None):
    """The one stream called ``name`` (an ``mne_lsl.lsl.StreamInfo``).

    With ``cancel``, the network is asked in short slices and :class:`ConnectCancelled` is
    raised as soon as ``cancel()`` is true (a window closing during a connect).
    Raises :class:`StreamError` naming what is available when there is none, or when the
    name is ambiguous (then give ``source_id``)."""
    from mne_lsl.lsl import resolve_streams

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        found = resolve_streams(timeout=timeout if cancel is None else max(min(0.3, remaining), 0.05), name=name,
                                source_id=source_id)
        if markers is not None:
            found = [s for s in found if (s.sfreq == 0) == markers]
        if found or cancel is None or remaining <= 0:
            break
        if cancel():
            raise ConnectCancelled(f"stopped looking for {name!r}")
    if len(found) == 1:
        return found[0]
    if not found:
        others = list_streams(timeout=0.5)
        kind = "marker " if markers else "EEG " if markers is False else ""
        avail = "; ".join(s.describe() for s in others) or "none"
        raise StreamError(f"no {kind}stream named {name!r} found within {timeout:g} s (streams seen: {avail})")
    raise StreamError(f"{len(found)} streams are named {name!r} ("
                      + ", ".join(f"source_id={s.source_id!r}" for s in found) + "); pick one with its source id")


class EEGSource:
    """Subscription to a regular-rate stream, with a ring buffer of the last
    ``bufsize`` seconds.

    Parameters
    ----------
    name : str
        Stream name.
    source_id : str | None
    bufsize : float
        Seconds kept (epochs must be cut, and the recorder fed, within this time).
    """

    def __init__(self, name: str, *, source_id: str | None = None, bufsize: float = 30.0):
        self.name, self.source_id, self.bufsize = name, source_id, float(bufsize)
        self._stream = None
        self._lock = threading.Lock()
        self.ch_names: list[str] = []
        self.sfreq = 0.0
        self.n_total = 0  # samples received since connect
        self.gaps: list[int] = []  # absolute sample indices where a gap precedes the sample
        self.samples_lost = 0  # estimated from timestamp jumps
        self.last_arrival = None  # local LSL clock when the last chunk arrived
        self.callback_errors = 0

    # -- connection -------------------------------------------------------------------
    def connect(self, timeout: float = 5.0, cancel: Callable[[], bool] | None = None) -> "EEGSource":
        from mne_lsl.stream import StreamLSL

        sinfo = resolve_one(self.name, timeout=timeout, source_id=self.source_id, markers=False, cancel=cancel)
        if sinfo.dtype == "string":
            raise StreamError(f"stream {self.name!r} carries strings, not a signal")
        self.source_id = sinfo.source_id or None
        # StreamLSL's own buffer is kept short (it rolls it on every chunk); ours is the ring
        stream = StreamLSL(bufsize=1.0, name=self.name, source_id=self.source_id)
        stream.connect(processing_flags="all", timeout=timeout, acquisition_delay=0.001)
        info = stream.info
        ch_names, sfreq = list(info["ch_names"]), float(info["sfreq"])
        if self._stream is None and not self.ch_names:
            self.ch_names, self.sfreq = ch_names, sfreq
            n = max(int(np.ceil(self.bufsize * sfreq)), 16)
            self._data = np.zeros((n, len(ch_names)), dtype=np.float64)
            self._ts = np.zeros(n, dtype=np.float64)
            self._arrival = np.zeros(n, dtype=np.float64)
        elif ch_names != self.ch_names or sfreq != self.sfreq:
            stream.disconnect()
            raise StreamError(f"stream {self.name!r} came back with other channels or rate")
        self._stream = stream
        stream.add_callback(self._on_chunk)
        logger.info("EEG stream %r: %d channels at %g Hz (source_id %r)", self.name, len(ch_names), sfreq,
                    self.source_id)
        return self

    @property
    def connected(self) -> bool:
        return self._stream is not None and self._stream.connected

    def disconnect(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream.connected:
            try:
                stream.disconnect()
            except Exception as err:  # pragma: no cover - liblsl teardown
                logger.debug("disconnect: %s", err)

    # -- acquisition (runs on mne-lsl's acquisition thread) ----------------------------
    def _on_chunk(self, data: np.ndarray, timestamps: np.ndarray, info: Any):
        try:
            from mne_lsl.lsl import local_clock

            now = local_clock()
            self._append(np.asarray(data), np.asarray(timestamps, dtype=np.float64), now)
        except Exception as err:  # never let an error disconnect the stream
            self.callback_errors += 1
            logger.error("EEG stream %r: chunk dropped (%s: %s)", self.name, type(err).__name__, err)
        return data, timestamps

    def _append(self, data: np.ndarray, ts: np.ndarray, now: float) -> None:
        n = len(ts)
        if n == 0:
            return
        cap = len(self._ts)
        with self._lock:
            if self.n_total:
                step = ts[0] - self._ts[(self.n_total - 1) % cap]
                if step > 1.5 / self.sfreq or step <= 0:
                    self.gaps.append(self.n_total)
                    self.samples_lost += max(int(round(step * self.sfreq)) - 1, 0)
            if n > cap:
                data, ts, skip = data[-cap:], ts[-cap:], n - cap
                self.n_total += skip
                n = cap
            pos = np.arange(self.n_total, self.n_total + n) % cap
            self._data[pos] = data
            self._ts[pos] = ts
            self._arrival[pos] = now
            self.n_total += n
            self.last_arrival = now

    # -- reading (any thread) ---------------------------------------------------------
    @property
    def oldest(self) -> int:
        return max(0, self.n_total - len(self._ts)) if self.ch_names else 0

    def latest_time(self) -> float | None:
        with self._lock:
            return float(self._ts[(self.n_total - 1) % len(self._ts)]) if self.n_total else None

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples ``start:stop`` (absolute indices) as (n, n_channels) data, timestamps and
        arrival times.  Raises IndexError when they are not (or no longer) in the buffer."""
        with self._lock:
            if start < self.oldest or stop > self.n_total or start > stop:
                raise IndexError(f"samples {start}:{stop} not in the buffer ({self.oldest}:{self.n_total})")
            pos = np.arange(start, stop) % len(self._ts)
            return self._data[pos], self._ts[pos].copy(), self._arrival[pos].copy()

    def find_sample(self, t: float, lo: int | None = None) -> tuple[int, float] | None:
        """The buffered sample whose timestamp is nearest ``t``: (absolute index, its
        distance in seconds), or None when the buffer is empty."""
        with self._lock:
            first, last = self.oldest if lo is None else max(lo, self.oldest), self.n_total
            if last <= first:
                return None
            cap = len(self._ts)
            # regular stream: the sample is where the rate says; look around there first
            guess = last - 1 - int(round((self._ts[(last - 1) % cap] - t) * self.sfreq))
            near = np.arange(max(first, guess - 3), min(last, guess + 4))
            if len(near):
                d = self._ts[near % cap] - t
                k = int(np.argmin(np.abs(d)))
                if abs(d[k]) <= 0.505 / self.sfreq:
                    return int(near[k]), float(d[k])
            pos = np.arange(first, last) % cap
            ts = self._ts[pos]
        k = int(np.searchsorted(ts, t))
        cands = [c for c in (k - 1, k) if 0 <= c < len(ts)]
        best = min(cands, key=lambda c: abs(ts[c] - t))
        return first + best, float(ts[best] - t)

    def has_gap(self, start: int, stop: int) -> bool:
        """True when a gap lies inside samples ``start:stop``."""
        return any(start < g < stop for g in self.gaps)


class _Markers:
    """Common part of the marker subscriptions: ``poll()`` -> list of (lsl_time, value)."""

    name: str

    def poll(self) -> list[tuple[float, Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        pass


class NumericMarkers(_Markers):
    """Numeric markers through an mne-lsl event stream (``StreamLSL`` on an irregular
    numeric stream; every chunk is taken from its acquisition callback)."""

    def __init__(self, sinfo, *, timeout: float = 5.0):
        from mne_lsl.stream import StreamLSL

        self.name = sinfo.name
        self._queue: list[tuple[float, Any]] = []
        self._lock = threading.Lock()
        self._stream = StreamLSL(bufsize=256, name=sinfo.name, source_id=sinfo.source_id or None)
        with warnings.catch_warnings():
            # marker outlets (PsychoPy, trigger boxes) rarely describe their one channel;
            # mne-lsl warns and names it itself, which is all a marker stream needs
            warnings.filterwarnings("ignore", message="Something went wrong while reading the channel description")
            self._stream.connect(processing_flags=("clocksync",), timeout=timeout, acquisition_delay=0.001)
        self._stream.add_callback(self._on_chunk)

    def _on_chunk(self, data, timestamps, info):
        try:
            values = np.asarray(data)[:, 0]
            with self._lock:
                self._queue.extend(zip(np.asarray(timestamps, dtype=float).tolist(), values.tolist()))
        except Exception as err:  # never let an error disconnect the stream
            logger.error("marker stream %r: chunk dropped (%s)", self.name, err)
        return data, timestamps

    @property
    def connected(self) -> bool:
        return self._stream.connected

    def poll(self) -> list[tuple[float, Any]]:
        with self._lock:
            out, self._queue = self._queue, []
        return out

    def close(self) -> None:
        if self._stream.connected:
            try:
                self._stream.disconnect()
            except Exception as err:  # pragma: no cover
                logger.debug("marker disconnect: %s", err)


class StringMarkers(_Markers):
    """String (or any) markers through a plain ``StreamInlet`` with clock correction."""

    def __init__(self, sinfo, *, timeout: float = 5.0):
        from mne_lsl.lsl import StreamInlet

        self.name = sinfo.name
        self._inlet = StreamInlet(sinfo, max_buffered=360, processing_flags=("clocksync",))
        self._inlet.open_stream(timeout=timeout)
        offset = self._inlet.time_correction(timeout=timeout)
        logger.info("marker stream %r (string): clock offset %.2f ms", self.name, 1000 * offset)
        self.connected = True

    def poll(self) -> list[tuple[float, Any]]:
        if self._inlet is None:
            return []
        data, ts = self._inlet.pull_chunk(timeout=0.0)
        if not len(ts):
            return []
        values = [row[0] if isinstance(row, (list, tuple)) else row for row in data]
        return list(zip(np.asarray(ts, dtype=float).tolist(), values))

    def close(self) -> None:
        inlet, self._inlet = self._inlet, None
        self.connected = False
        if inlet is not None:
            try:
                inlet.close_stream()
            except Exception as err:  # pragma: no cover
                logger.debug("marker close: %s", err)


def open_markers(name: str, *, timeout: float = 5.0, source_id: str | None = None,
                 cancel: Callable[[], bool] | None = None) -> _Markers:
    """Subscribe to the marker stream ``name``: numeric or string, from its format."""
    sinfo = resolve_one(name, timeout=timeout, source_id=source_id, markers=True, cancel=cancel)
    if sinfo.n_channels < 1:
        raise StreamError(f"marker stream {name!r} has no channel")
    return StringMarkers(sinfo, timeout=timeout) if sinfo.dtype == "string" else NumericMarkers(sinfo, timeout=timeout)
