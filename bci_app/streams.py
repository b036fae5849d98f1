"""LSL streams: discovery, the EEG subscription and the marker subscriptions.

- :func:`list_streams` / :func:`resolve_one`: what is on the network (a name two streams
  share is an error listing them).
- :class:`EEGSource`: an mne-lsl :class:`~mne_lsl.lsl.StreamInlet` whose acquisition
  thread blocks in liblsl until samples arrive (no polling: an idle stream costs nothing)
  and copies every chunk, exactly once, into a ring buffer that counts samples from the
  connection on (``n_total``), with each sample's time and the local time it arrived;
  :meth:`EEGSource.wait` wakes the live loop as soon as the chunk it waits for is in.
  Sample times come from the raw, clock-corrected stamps through a
  :class:`~bci_app.timeline.Timeline` (not liblsl's dejitter, which smears jumps into
  minutes of wrong stamps), which finds the *gaps*: samples lost, a restart, a clock
  jump.  After a gap or a stall the stream's identity is checked again (a restarted
  outlet with the same source id reconnects by itself, possibly with other channels);
  until then the samples after the gap are held back (``available``).
- :class:`NumericMarkers` (single-channel codes, or mne-lsl's one-hot annotation streams
  with one channel per description) and :class:`StringMarkers` deliver ``(lsl_time,
  value)`` pairs, pulled from a clock-corrected ``StreamInlet`` when the loop asks.
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from trainer.errors import BCIError

from .timeline import Timeline, ring_positions

__all__ = ["ConnectCancelled", "EEGSource", "NumericMarkers", "StreamChanged", "StreamError", "StreamSummary",
           "StringMarkers", "announced_image_set", "list_streams", "marker_rows", "marker_sample", "marker_stream_info",
           "open_markers", "resolve_one"]

logger = logging.getLogger("bci_app")

#: how long resolve_one keeps listening for a second stream of the same name
AMBIGUITY_WAIT = 0.5
#: longest the acquisition thread waits in liblsl for a sample (bounds how long stopping takes)
PULL_WAIT = 0.1


class StreamError(BCIError, RuntimeError):
    """A stream that is not there, is ambiguous, does not fit, or changed under us."""


class StreamChanged(StreamError):
    """The stream came back with other channels, another channel order or another rate."""


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


def _unique(streams: list) -> list:
    """Streams without repeats (the same outlet answers every query), in order."""
    seen, out = set(), []
    for s in streams:
        if s.uid not in seen:
            seen.add(s.uid)
            out.append(s)
    return out


def resolve_one(name: str, *, timeout: float = 5.0, source_id: str | None = None, markers: bool | None = None,
                cancel: Callable[[], bool] | None = None, list_others: bool = True):
    """The one stream called ``name`` (an ``mne_lsl.lsl.StreamInfo``).

    With ``cancel``, the network is asked in short slices and :class:`ConnectCancelled` is
    raised as soon as ``cancel()`` is true (a window closing during a connect).  Once a
    stream is found, the network is asked once more (:data:`AMBIGUITY_WAIT` s) for
    another of the same name, since liblsl stops looking at the first answer.
    Raises :class:`StreamError` naming what is available when there is none (looked up for
    another 0.5 s; not with ``list_others=False``), or when the name is ambiguous (then give
    ``source_id``)."""
    from mne_lsl.lsl import resolve_streams

    def fits(found):
        return [s for s in found if markers is None or (s.sfreq == 0) == markers]

    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        found = fits(resolve_streams(timeout=timeout if cancel is None else max(min(0.3, remaining), 0.05),
                                     name=name, source_id=source_id))
        if found or cancel is None or remaining <= 0:
            break
        if cancel():
            raise ConnectCancelled(f"stopped looking for {name!r}")
    if found:
        more = resolve_streams(timeout=AMBIGUITY_WAIT, name=name, source_id=source_id, minimum=len(found) + 1)
        found = _unique(found + fits(more))
    if len(found) == 1:
        return found[0]
    if not found:
        kind = "marker " if markers else "EEG " if markers is False else ""
        if not list_others:
            raise StreamError(f"no {kind}stream named {name!r} found within {timeout:g} s")
        avail = "; ".join(s.describe() for s in list_streams(timeout=0.5)) or "none"
        raise StreamError(f"no {kind}stream named {name!r} found within {timeout:g} s (streams seen: {avail})")
    listed = "; ".join(_summary(s).describe() for s in found)
    hint = ("pick one with --source-id" if not source_id else
            "they even share the source id: stop the one that should not be there")
    raise StreamError(f"{len(found)} streams are named {name!r} ({listed}); {hint}")


def _describe_layout(ch_names: list[str], sfreq: float) -> str:
    shown = ", ".join(ch_names[:6]) + (", ..." if len(ch_names) > 6 else "")
    return f"{len(ch_names)} channels ({shown}) at {sfreq:g} Hz"


def _layout_change(old_names: list[str], old_sfreq: float, new_names: list[str], new_sfreq: float) -> str | None:
    """What differs between two stream layouts, in words, or None."""
    if list(old_names) == list(new_names) and old_sfreq == new_sfreq:
        return None
    if sorted(old_names) == sorted(new_names) and old_sfreq == new_sfreq:
        return f"the same channels in another order (was {_describe_layout(old_names, old_sfreq)}, now " \
               f"{_describe_layout(new_names, new_sfreq)})"
    return f"was {_describe_layout(old_names, old_sfreq)}, now {_describe_layout(new_names, new_sfreq)}"


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

    Attributes
    ----------
    n_total : int
        Samples received since the connection (the next sample's absolute index).
    available : int
        Samples whose times are final and whose stream is known to be the one connected
        to: readers (epochs, recording) use ``[oldest, available)``.
    gaps : list of int
        Absolute indices of the samples a gap precedes, in order.
    """

    def __init__(self, name: str, *, source_id: str | None = None, bufsize: float = 30.0):
        self.name, self.source_id, self.bufsize = name, source_id, float(bufsize)
        self._inlet = None
        self._acquisition: threading.Thread | None = None
        self._stop_acquiring = threading.Event()
        self._arrived = threading.Event()
        self._wake_at = 0  # wait() is woken once this many samples are available (0: by any chunk)
        self._offset: float | None = None
        self._lock = threading.Lock()
        self.ch_names: list[str] = []
        self.sfreq = 0.0
        self.n_total = 0
        self.gaps: list[int] = []
        self.samples_lost = 0  # estimated from the forward jumps of the timeline
        self.last_arrival = None  # local LSL clock when the last chunk arrived
        self.callback_errors = 0
        self.uid: str | None = None  # the outlet connected to
        self._timeline: Timeline | None = None
        self._settled = 0  # samples whose times are final
        self._verified = None  # samples before this index come from the outlet checked; None: all
        self._check: threading.Thread | None = None
        self._check_wanted = False
        self._changed: str | None = None  # why the stream is not the one connected to any more
        self._check_failures = 0
        self._releases: list[tuple[int, int, float]] = []  # (start, stop, local time): held back, then released

    # -- connection -------------------------------------------------------------------
    def open_buffer(self, ch_names: list[str], sfreq: float) -> None:
        """Size the ring buffer for this layout (done by :meth:`connect`; tests call it to
        feed :meth:`push` without LSL)."""
        self.ch_names, self.sfreq = list(ch_names), float(sfreq)
        n = max(int(np.ceil(self.bufsize * sfreq)), 16)
        self._data = np.zeros((n, len(ch_names)), dtype=np.float64)
        self._ts = np.zeros(n, dtype=np.float64)
        self._arrival = np.zeros(n, dtype=np.float64)
        self._timeline = Timeline(sfreq)

    @property
    def capacity(self) -> int:
        """Samples the ring holds."""
        return len(self._ts) if self.ch_names else 0

    def connect(self, timeout: float = 5.0, cancel: Callable[[], bool] | None = None) -> "EEGSource":
        """Subscribe (again, after the stream was torn down: then it must have the same
        channels and rate, or :class:`StreamChanged` is raised; a stream not found then is a
        short :class:`StreamError`, without a look at the other streams)."""
        from mne_lsl.lsl import StreamInlet

        sinfo = resolve_one(self.name, timeout=timeout, source_id=self.source_id, markers=False, cancel=cancel,
                            list_others=not self.ch_names)
        if sinfo.dtype == "string":
            raise StreamError(f"stream {self.name!r} carries strings, not a signal")
        self.source_id = sinfo.source_id or None
        # liblsl's clock correction only: the timeline places the samples (see the module docstring)
        inlet = StreamInlet(sinfo, max_buffered=max(math.ceil(self.bufsize), 1), processing_flags=("clocksync",))
        try:
            inlet.open_stream(timeout=timeout)
            ch_names = list(inlet.get_sinfo(timeout=timeout).get_channel_info()["ch_names"])
            sfreq = float(inlet.sfreq)
            offset = float(inlet.time_correction(timeout=timeout))
        except BaseException:
            inlet.close_stream()
            raise
        if not self.ch_names:
            self.open_buffer(ch_names, sfreq)
        else:
            change = _layout_change(self.ch_names, self.sfreq, ch_names, sfreq)
            if change is not None:
                inlet.close_stream()
                raise StreamChanged(f"stream {self.name!r} came back with other channels or rate: {change}")
        self.uid = sinfo.uid
        self._offset = offset
        stop = threading.Event()
        thread = threading.Thread(target=self._acquire, args=(inlet, stop), name=f"acquire-{self.name}", daemon=True)
        self._inlet, self._stop_acquiring, self._acquisition = inlet, stop, thread
        thread.start()
        logger.info("EEG stream %r: %d channels at %g Hz (source_id %r)", self.name, len(ch_names), sfreq,
                    self.source_id)
        return self

    @property
    def connected(self) -> bool:
        thread = self._acquisition
        return thread is not None and thread.is_alive() and not self._stop_acquiring.is_set()

    def disconnect(self) -> None:
        thread, inlet, self._acquisition, self._inlet = self._acquisition, self._inlet, None, None
        if thread is None:
            return
        self._stop_acquiring.set()
        if thread is not threading.current_thread():
            thread.join(2.0)  # at most one pull's wait (PULL_WAIT)
        if inlet is not None and not thread.is_alive():
            try:
                inlet.close_stream()
            except Exception as err:  # pragma: no cover - liblsl teardown
                logger.debug("disconnect: %s", err)
        self.notify()  # a wait() for data returns now

    def clock_offset(self) -> float | None:
        """liblsl's clock correction for this stream (s), as last measured (about once a
        second, by the acquisition thread), or None when not known."""
        return self._offset if self.connected else None

    def wait(self, timeout: float, until: int | None = None) -> bool:
        """Block until samples arrived since the last call (with ``until``: until samples
        up to ``until - 1`` are available, i.e. ``available >= until``), or :meth:`notify`
        was called, at most ``timeout`` seconds; True when woken.  What the live loop
        sleeps on: the chunk it waits for wakes it as soon as it is in the buffer.
        (Samples held back after a gap do not wake it: the loop looks again after
        ``timeout``, never spinning.)"""
        self._wake_at = 0 if until is None else int(until)
        if until is not None and self.available >= until:
            self._arrived.clear()
            return True
        arrived = self._arrived.wait(timeout)
        self._arrived.clear()  # samples pushed after this are seen by the caller's next look, or wake the next wait
        return arrived

    def notify(self) -> None:
        """Wake a :meth:`wait` (e.g. to stop a loop)."""
        self._arrived.set()

    # -- acquisition (runs on the acquisition thread) ----------------------------------
    def _acquire(self, inlet, stop: threading.Event) -> None:
        """Pull chunks as they arrive, until ``stop``: block in liblsl (without the GIL)
        for the next sample, then take whatever else is waiting; no polling, so nothing
        runs while no data comes, and a chunk is in the ring (and wakes :meth:`wait`)
        within microseconds of reaching the inlet.  An error (a stream lost for good)
        ends the thread: ``connected`` turns False and the session subscribes again."""
        from mne_lsl.lsl import local_clock

        max_samples = max(int(self.sfreq), 1024)  # a second per pull at most
        next_offset = local_clock() + 1.0
        while not stop.is_set():
            try:
                first, t0 = inlet.pull_sample(timeout=PULL_WAIT)
                now = local_clock()
                if t0 is not None:
                    first = np.array(first, dtype=np.float64)[None, :]  # the inlet reuses its buffer
                    rest, ts = inlet.pull_chunk(timeout=0.0, max_samples=max_samples)
                    if len(ts):
                        data = np.concatenate([first, np.asarray(rest, dtype=np.float64)])
                        stamps = np.concatenate([[t0], np.asarray(ts, dtype=np.float64)])
                    else:
                        data, stamps = first, np.array([t0])
                    self._on_chunk(data, stamps, now)
                if now >= next_offset:
                    next_offset = now + 1.0
                    try:
                        self._offset = float(inlet.time_correction(timeout=0.0))
                    except Exception:  # not measured again yet: keep the last estimate
                        pass
            except Exception as err:
                if not stop.is_set():
                    logger.warning("EEG stream %r: acquisition stopped (%s: %s)", self.name, type(err).__name__, err)
                    stop.set()
                    self.notify()
                break

    def _on_chunk(self, data: np.ndarray, timestamps: np.ndarray, now: float) -> None:
        try:
            self.push(data, timestamps, now)
        except Exception as err:  # never let an error stop the acquisition
            self.callback_errors += 1
            logger.error("EEG stream %r: chunk dropped (%s: %s)", self.name, type(err).__name__, err)
        if self._wake_at == 0 or self.available >= self._wake_at:
            self._arrived.set()

    def push(self, data: np.ndarray, raw_ts: np.ndarray, now: float) -> None:
        """Append received samples (n, n_channels) with their raw stamps."""
        n = len(raw_ts)
        if n == 0:
            return
        cap = len(self._ts)
        with self._lock:
            first = self.n_total
            ts, breaks, fixes = self._timeline.add(first, raw_ts)
            for start, stop, delta in fixes:  # provisional times of a break found now
                start = max(start, first - cap)
                if stop > start:
                    self._ts[ring_positions(start, stop, cap)] += delta
            for b in breaks:
                if b.index > 0:
                    self.gaps.append(b.index)
                    self.samples_lost += b.lost
                    if self._verified is None or b.index < self._verified:
                        self._verified = b.index  # the samples after a gap wait for a check
                    self._check_wanted = True
            if n > cap:
                data, ts, skip = data[-cap:], ts[-cap:], n - cap
                first += skip
                n = cap
            pos = ring_positions(first, first + n, cap)
            self._data[pos] = data
            self._ts[pos] = ts
            self._arrival[pos] = now
            self.n_total = first + n
            self._settled = self._timeline.settled
            self.last_arrival = now

    # -- reading (any thread) ---------------------------------------------------------
    @property
    def oldest(self) -> int:
        with self._lock:
            return self._oldest()

    def _oldest(self) -> int:
        return max(0, self.n_total - len(self._ts)) if self.ch_names else 0

    @property
    def available(self) -> int:
        with self._lock:
            return self._available()

    def _available(self) -> int:
        stop = min(self.n_total, self._settled)
        return stop if self._verified is None else min(stop, self._verified)

    def latest_time(self) -> float | None:
        """Time of the newest available sample."""
        with self._lock:
            stop = self._available()
            return float(self._ts[ring_positions(stop - 1, stop, len(self._ts))[0]]) if stop > self._oldest() else None

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Samples ``start:stop`` (absolute indices) as (n, n_channels) data, times and
        arrival times.  Raises IndexError when they are not (or no longer, or not yet)
        available."""
        with self._lock:
            oldest, available = self._oldest(), self._available()
            if start < oldest or stop > available or start > stop:
                raise IndexError(f"samples {start}:{stop} not in the buffer ({oldest}:{available})")
            pos = ring_positions(start, stop, len(self._ts))
            return self._data[pos], self._ts[pos].copy(), self._arrival[pos].copy()

    def available_since(self, index: int) -> float:
        """The local time sample ``index`` became available to readers: when it arrived, or,
        when it was held back after a gap, when the check of the stream released it.  What
        the epocher measures an epoch's wait from: a check that takes long does not make
        the epochs it held back look overdue.  Raises IndexError when the sample is not (or
        no longer) in the buffer."""
        with self._lock:
            if not self._oldest() <= index < self.n_total:
                raise IndexError(f"sample {index} not in the buffer ({self._oldest()}:{self.n_total})")
            t = float(self._arrival[ring_positions(index, index + 1, len(self._ts))[0]])
            for start, stop, when in reversed(self._releases):
                if start <= index < stop:
                    return max(t, when)
            return t

    def arrival(self, index: int) -> float:
        """The local time sample ``index`` arrived.  Raises IndexError when it is not (or no
        longer) in the buffer."""
        with self._lock:
            if not self._oldest() <= index < self.n_total:
                raise IndexError(f"sample {index} not in the buffer ({self._oldest()}:{self.n_total})")
            return float(self._arrival[ring_positions(index, index + 1, len(self._ts))[0]])

    def read_new(self, start: int) -> tuple[int, np.ndarray, np.ndarray, list[int]]:
        """Everything available from ``start`` on, in one locked step: (the first index
        returned, which is ``start`` unless those samples left the buffer, the data, the
        times, and the gaps at or after that index)."""
        with self._lock:
            first, stop = max(start, self._oldest()), self._available()
            stop = max(stop, first)
            pos = ring_positions(first, stop, len(self._ts))
            gaps = self.gaps[bisect.bisect_left(self.gaps, first):bisect.bisect_left(self.gaps, stop)]
            return first, self._data[pos], self._ts[pos].copy(), gaps

    def find_sample(self, t: float) -> tuple[int, float] | None:
        """The available sample whose time is nearest ``t`` within the segment (between
        gaps) whose time span holds ``t``: (absolute index, its distance in seconds).
        None when no segment holds ``t`` (it fell in a gap, before the buffer, or after
        the newest available sample) or the buffer is empty."""
        half = 0.5 / self.sfreq if self.sfreq else 0.0
        with self._lock:
            first, last = self._oldest(), self._available()
            if last <= first:
                return None
            cap = len(self._ts)

            def times(a: int, b: int) -> np.ndarray:
                return self._ts[ring_positions(a, b, cap)]

            bounds = [first] + [g for g in self.gaps[bisect.bisect_right(self.gaps, first):] if g < last] + [last]
            for lo, hi in reversed(list(zip(bounds[:-1], bounds[1:]))):  # the newest segment first
                t_lo, t_hi = times(lo, lo + 1)[0], times(hi - 1, hi)[0]
                if not t_lo - half <= t <= t_hi + half:
                    continue
                guess = lo + int(round((t - t_lo) * self.sfreq))
                a, b = max(lo, guess - 3), min(hi, guess + 4)
                if a >= b:
                    a = min(max(guess, lo), hi - 1)
                    b = a + 1
                d = times(a, b) - t
                k = int(np.argmin(np.abs(d)))
                if abs(d[k]) <= 1.01 * half or b - a == 1:
                    return a + k, float(d[k])
                # the segment's times are not where the rate says (a slow drift): search it
                ts = times(lo, hi)
                j = int(np.clip(np.searchsorted(ts, t), 1, len(ts) - 1))
                j = j if abs(ts[j] - t) < abs(ts[j - 1] - t) else j - 1
                return lo + j, float(ts[j] - t)
            return None

    def has_gap(self, start: int, stop: int) -> bool:
        """True when a gap lies inside samples ``start:stop`` (between two of them)."""
        with self._lock:
            i = bisect.bisect_right(self.gaps, start)
            return i < len(self.gaps) and self.gaps[i] < stop

    # -- identity after a gap or a stall ------------------------------------------------
    def check_identity(self, *, stalled: bool = False) -> None:
        """Start (in the background) a check that the stream on the network under this
        name and source id is the outlet connected to, or one with the same channels and
        rate.  Called by the session after a gap (automatically requested by
        :meth:`push`) and while the stream is stalled.  Raise the outcome with
        :meth:`raise_if_changed`."""
        with self._lock:  # push() sets _check_wanted under the lock: test and clear it the same way
            if stalled:
                self._check_wanted = True
            if not self._check_wanted or (self._check is not None and self._check.is_alive()):
                return
            self._check_wanted = False
        self._check = threading.Thread(target=self._run_check, name=f"check-{self.name}", daemon=True)
        self._check.start()

    def finish(self, timeout: float = 10.0) -> None:
        """At the end of a session (after :meth:`disconnect`): let the samples still held
        back be read, so the recording keeps every sample received.  A check of the stream
        that is under way is waited for (up to ``timeout``, longer than a check takes: a
        resolve and a look at each stream of the name); samples from a stream found changed
        stay held back; samples that could not be checked are kept with a warning; a
        suspected break still open is taken as it is."""
        check = self._check
        if self._verified is not None and (check is None or not check.is_alive()):
            self.check_identity(stalled=True)
            check = self._check
        if check is not None and check.is_alive():
            check.join(timeout)
        with self._lock:
            if self._changed is None and self._verified is not None:
                logger.warning("stream %r: the %d samples after the last gap could not be checked against the "
                               "stream before the end; they are kept", self.name, self.n_total - self._verified)
                self._release()
            self._settled = self.n_total

    def raise_if_changed(self) -> None:
        """Raise :class:`StreamChanged` when a check found the stream changed."""
        if self._changed is not None:
            raise StreamChanged(self._changed)

    def _run_check(self) -> None:
        from mne_lsl.lsl import resolve_streams

        try:
            found = _unique(resolve_streams(timeout=1.0, name=self.name, source_id=self.source_id))
        except Exception as err:  # the network in flux: try again
            logger.debug("stream check: %s", err)
            found = []
        ok = any(s.uid == self.uid for s in found)
        change = new_uid = None
        for s in ([] if ok else found):
            names = _channel_names(s)
            if names is None:
                if int(s.n_channels) == len(self.ch_names) and float(s.sfreq) == self.sfreq:
                    continue  # cannot tell: try again later
                names = [f"ch{i + 1}" for i in range(int(s.n_channels))]
            change = _layout_change(self.ch_names, self.sfreq, names, float(s.sfreq))
            if change is None:
                ok, new_uid = True, s.uid
                break
        with self._lock:
            if new_uid is not None:
                self.uid = new_uid  # another outlet with the same channels and rate
            if change is not None:
                self._changed = f"stream {self.name!r} came back with other channels or rate: {change}"
                return
            if not ok and self._check_failures < 2:
                self._check_failures += 1
                self._check_wanted = True  # try again at the next step
                return
            if not ok and self._verified is not None and self.n_total > self._verified:
                logger.warning("stream %r: could not look its channels up again after a gap; the samples after "
                               "it are used as they come", self.name)
            self._check_failures = 0
            if not self._check_wanted:  # no other gap came meanwhile
                self._release()

    def _release(self, when: float | None = None) -> None:
        """The samples held back since the last gap become available now (or at local time
        ``when``); called with the lock held."""
        if self._verified is not None and self.n_total > self._verified:
            if when is None:
                from mne_lsl.lsl import local_clock

                when = local_clock()
            self._releases = [*self._releases[-15:], (self._verified, self.n_total, float(when))]
        self._verified = None


def _channel_names(sinfo) -> list[str] | None:
    """The channel names a stream describes (through a short-lived inlet), or None."""
    from mne_lsl.lsl import StreamInlet

    try:
        inlet = StreamInlet(sinfo)
        try:
            inlet.open_stream(timeout=2.0)  # mne-lsl gives the full description of open inlets only
            names = inlet.get_sinfo(timeout=2.0).get_channel_names()
        finally:
            inlet.close_stream()
    except Exception as err:  # gone again, or no description
        logger.debug("channel names of %r: %s", sinfo.name, err)
        return None
    return list(names) if names else None


class _Markers:
    """Common part of the marker subscriptions: ``poll()`` -> list of (lsl_time, value)."""

    name: str
    image_set: str | None = None  # announced by the stream's description (announced_image_set)

    def poll(self) -> list[tuple[float, Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - interface
        pass


def marker_stream_info(name: str, source_id: str, *, strings: bool, image_set: str | None = None):
    """The description of a marker outlet this project sends (``bci-replay``, the
    presenter): one channel ``marker``, irregular rate, ``int32`` codes or strings.
    ``image_set`` (``'test'`` or ``'training'``): the image part the numeric codes count
    in, announced as an ``image_set`` entry of the description (``bci-replay --simulate``
    reads it)."""
    from mne_lsl.lsl import StreamInfo

    info = StreamInfo(name, "Markers", 1, 0.0, "string" if strings else "int32", source_id)
    info.set_channel_names(["marker"])
    if image_set is not None:
        info.desc.append_child_value("image_set", str(image_set))
    return info


def marker_sample(value: Any, *, strings: bool) -> list | np.ndarray:
    """One marker as such an outlet's ``push_sample`` takes it."""
    return [value] if strings else np.array([value], dtype=np.int32)


def marker_rows(rows: np.ndarray, ch_names: list[str], one_hot: bool = False) -> list[list[Any]]:
    """The marker values in each sample of a numeric marker stream.

    A plain marker stream has one channel: the value itself.  A *one-hot* stream (stream
    type ``annotations``, such as mne-lsl's annotation outlet of ``mne-lsl player FILE
    --annotations``) has one channel per description, named by it, non-zero (the
    duration, or -1) on the channel that fires: the values are the names of the channels
    that fire (a sample may fire several)."""
    rows = np.asarray(rows)
    if rows.ndim == 1:
        rows = rows[:, None]
    if not one_hot:
        return [[v] for v in rows[:, 0].tolist()]
    return [[ch_names[i] for i in np.flatnonzero(row)] for row in rows]


def announced_image_set(sinfo) -> str | None:
    """The ``image_set`` a marker stream's description announces (the part of a data set
    its numeric codes count in: see :func:`marker_stream_info`), or None."""
    try:
        value = sinfo.desc.child_value("image_set").strip()
    except Exception:  # a description liblsl cannot read: nothing announced
        return None
    return value or None


class _InletMarkers(_Markers):
    """A marker stream through a plain ``StreamInlet`` with clock correction, read with
    :meth:`poll` (a non-blocking pull; markers wait in liblsl's queue until then: no
    thread, nothing lost)."""

    def __init__(self, sinfo, *, timeout: float = 5.0):
        from mne_lsl.lsl import StreamInlet

        self.name = sinfo.name
        self._inlet = StreamInlet(sinfo, max_buffered=360, processing_flags=("clocksync",))
        try:
            self._inlet.open_stream(timeout=timeout)
            full = self._inlet.get_sinfo(timeout=timeout)
            self.image_set = announced_image_set(full)
            self._describe(sinfo, full)
            offset = self._inlet.time_correction(timeout=timeout)
        except BaseException:
            self.close()
            raise
        logger.info("marker stream %r (%s): clock offset %.2f ms", self.name,
                    "strings" if sinfo.dtype == "string" else "numbers", 1000 * offset)

    def _describe(self, sinfo, full) -> None:
        """Read what the stream's description says about its values."""

    def _values(self, data) -> list[list[Any]]:  # pragma: no cover - interface
        raise NotImplementedError

    @property
    def connected(self) -> bool:
        return self._inlet is not None

    def poll(self) -> list[tuple[float, Any]]:
        if self._inlet is None:
            return []
        data, ts = self._inlet.pull_chunk(timeout=0.0)
        if not len(ts):
            return []
        return [(t, v) for t, values in zip(np.asarray(ts, dtype=float).tolist(), self._values(data)) for v in values]

    def close(self) -> None:
        inlet, self._inlet = self._inlet, None
        if inlet is not None:
            try:
                inlet.close_stream()
            except Exception as err:  # pragma: no cover
                logger.debug("marker close: %s", err)


class NumericMarkers(_InletMarkers):
    """Numeric markers: single-channel codes give their values; multi-channel (one-hot,
    mne-lsl's annotation streams) the name of the channel that fires (see
    :func:`marker_rows`)."""

    def _describe(self, sinfo, full) -> None:
        with warnings.catch_warnings():
            # marker outlets (PsychoPy, trigger boxes) rarely describe their one channel;
            # mne-lsl warns and names it itself, which is all a marker stream needs
            warnings.filterwarnings("ignore", message="Something went wrong while reading the channel description")
            self.ch_names = list(full.get_channel_info()["ch_names"])
        self.one_hot = str(sinfo.stype).lower() == "annotations"
        if self.one_hot:
            logger.info("marker stream %r: an annotation stream of %d channel(s), read as one-hot (the channel that "
                        "fires names the marker: %s)", self.name, len(self.ch_names), ", ".join(self.ch_names[:8])
                        + (", ..." if len(self.ch_names) > 8 else ""))
        elif len(self.ch_names) > 1:
            raise StreamError(f"marker stream {self.name!r} has {len(self.ch_names)} channels and is not an annotation "
                              f"stream (its type is {sinfo.stype!r}): send the marker on one channel, or one channel "
                              "per description with stream type 'annotations' (as 'mne-lsl player --annotations')")

    def _values(self, data) -> list[list[Any]]:
        return marker_rows(data, self.ch_names, self.one_hot)


class StringMarkers(_InletMarkers):
    """String (or any) markers: the first channel of each sample."""

    def _values(self, data) -> list[list[Any]]:
        return [[row[0] if isinstance(row, (list, tuple)) else row] for row in data]


def open_markers(name: str, *, timeout: float = 5.0, source_id: str | None = None,
                 cancel: Callable[[], bool] | None = None) -> _Markers:
    """Subscribe to the marker stream ``name``: numeric or string, from its format."""
    sinfo = resolve_one(name, timeout=timeout, source_id=source_id, markers=True, cancel=cancel)
    if sinfo.n_channels < 1:
        raise StreamError(f"marker stream {name!r} has no channel")
    return StringMarkers(sinfo, timeout=timeout) if sinfo.dtype == "string" else NumericMarkers(sinfo, timeout=timeout)
