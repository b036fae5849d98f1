"""Work off the GUI thread: each worker is a ``QObject`` moved to its own ``QThread`` and
talks to the window only through signals carrying numpy arrays and plain dicts.

- :class:`LiveWorker` runs a :class:`~bci_app.pipeline.LiveSession` (acquisition is
  mne-lsl's own thread; epoching and inference happen here) and hands the window decoded
  epochs, new raw samples for the signal view, markers and a status snapshot.
- :class:`TaskWorker` runs one function (load a bundle, list streams, prepare the demo)
  and reports progress, its result or its error.

The window asks workers to stop (:meth:`LiveWorker.stop` is thread-safe) and waits a
bounded time for their threads (:func:`stop_thread`).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any, Callable

import numpy as np
from PySide6.QtCore import QObject, QThread, Signal, Slot

__all__ = ["LiveWorker", "TaskCancelled", "TaskWorker", "describe_error", "start_in_thread", "stop_thread"]

logger = logging.getLogger("bci_app")


def describe_error(err: BaseException) -> str:
    """One line for the window: the message, with the type when the message alone is vague."""
    text = str(err).strip() or type(err).__name__
    from trainer.errors import BCIError

    from ..streams import StreamError

    if isinstance(err, (BCIError, StreamError, FileNotFoundError, FileExistsError, ValueError)):
        return text
    return f"{type(err).__name__}: {text}"


def start_in_thread(worker: QObject, entry: Callable[[], None], name: str) -> QThread:
    """Move ``worker`` to a new thread and call ``entry`` there once it starts."""
    thread = QThread()
    thread.setObjectName(name)
    worker.moveToThread(thread)
    thread.started.connect(entry)
    thread.start()
    return thread


def stop_thread(thread: QThread | None, timeout_ms: int) -> bool:
    """Quit ``thread``'s event loop and wait for it at most ``timeout_ms``; True when it ended."""
    if thread is None:
        return True
    thread.quit()
    return thread.wait(timeout_ms)


class TaskCancelled(Exception):
    """Raised inside a task's progress callback once :meth:`TaskWorker.cancel` was called."""


class TaskWorker(QObject):
    """Run ``fn(progress)`` once on a worker thread.

    ``progress(phase, done, total)`` may be called from ``fn``; it is throttled to a few
    updates per second before it reaches the GUI, and raises :class:`TaskCancelled` once
    :meth:`cancel` was called (from any thread), so a long task stops at its next report.
    """

    progress = Signal(str, int, int)
    done = Signal(object)
    failed = Signal(str)
    finished = Signal()

    def __init__(self, fn: Callable[[Callable[[str, int, int], None]], Any], *, shows_progress: bool = False):
        super().__init__()
        self._fn = fn
        self._last = 0.0
        self._cancelled = threading.Event()
        self.shows_progress = shows_progress

    def cancel(self) -> None:
        self._cancelled.set()

    def _progress(self, phase: str, done: int, total: int) -> None:
        if self._cancelled.is_set():
            raise TaskCancelled(phase)
        now = time.monotonic()
        if now - self._last >= 0.1 or done >= total:
            self._last = now
            self.progress.emit(str(phase), int(done), int(total))

    @Slot()
    def run(self) -> None:
        try:
            result = self._fn(self._progress)
        except TaskCancelled:  # stopped on request (the window closing): not an error
            logger.debug("task cancelled")
        except Exception as err:  # shown in the window, never as a traceback
            logger.debug("task failed", exc_info=True)
            self.failed.emit(describe_error(err))
        else:
            self.done.emit(result)
        finally:
            self.finished.emit()


class LiveWorker(QObject):
    """Decode a stream with a bundle on this worker's thread.

    Signals
    -------
    connected(dict)
        Stream facts once connected: name, source id, channel names, rate, marker stream,
        device, and the names of the displayed channels (the model's).
    decoded(list)
        The records of :meth:`LiveSession.step` (the ``--headless`` JSON lines).
    samples(ndarray, ndarray)
        New raw samples of the displayed channels, (n, n_display) float32 in volts, and
        their LSL timestamps (n,) float64; sent every ``display_interval`` seconds.
    markers(list)
        ``(t, label, stimulus_id)`` of markers received.
    status(dict)
        Every ``status_interval`` seconds: connection state, measured rate, lag, clock
        offset and the session summary (accuracy, rejections, latency).
    event(str)
        A message for the log (stalled, lost, back, recording...).
    recording(str, str)
        ``("started", folder)``, ``("stopped", file)`` or ``("failed", message)``.
    failed(str)
        The session could not start or broke; the worker stops.
    finished(dict)
        The final summary (empty when the session never started).
    """

    connected = Signal(dict)
    decoded = Signal(list)
    samples = Signal(np.ndarray, np.ndarray)
    markers = Signal(list)
    status = Signal(dict)
    event = Signal(str)
    recording = Signal(str, str)
    failed = Signal(str)
    finished = Signal(dict)

    def __init__(self, bundle, stream: str, *, markers: str | None = None, device: str = "auto", top_k: int = 5,
                 source_id: str | None = None, timeout: float = 5.0, record: str | None = None,
                 display_interval: float = 0.04, status_interval: float = 0.5, poll_interval: float = 0.05):
        super().__init__()
        self._kwargs = dict(markers=markers, device=device, top_k=top_k, source_id=source_id, timeout=timeout,
                            record=record)
        self.bundle, self.stream = bundle, stream
        self.display_interval, self.status_interval = float(display_interval), float(status_interval)
        self.poll_interval = float(poll_interval)
        self._stop = threading.Event()
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self.session = None

    # -- requests from the GUI thread (thread-safe) ----------------------------------
    def stop(self) -> None:
        self._stop.set()
        self._wake()

    def start_recording(self, folder: str) -> None:
        self._commands.put(("record", folder))
        self._wake()

    def stop_recording(self) -> None:
        self._commands.put(("stop-record", None))
        self._wake()

    def _wake(self) -> None:
        """The loop sleeps until data comes (:meth:`LiveSession.wait`): wake it for a request."""
        session = self.session
        if session is not None:
            session.source.notify()

    # -- the loop -----------------------------------------------------------------------
    @Slot()
    def run(self) -> None:
        from ..pipeline import LiveSession
        from ..streams import ConnectCancelled

        summary: dict = {}
        try:
            self.session = session = LiveSession(self.bundle, self.stream, **self._kwargs)
            session.start(cancel=self._stop.is_set)
        except ConnectCancelled:  # disconnect or close while connecting: not an error
            self._close(quiet=True)
            self.finished.emit(summary)
            return
        except Exception as err:
            logger.debug("connect failed", exc_info=True)
            self.failed.emit(describe_error(err))
            self._close(quiet=True)
            self.finished.emit(summary)
            return
        try:
            self._loop(session)
        except Exception as err:  # a broken session: say so in the window and stop
            logger.debug("live session failed", exc_info=True)
            self.failed.emit(describe_error(err))
        finally:
            summary = self._close()
            self.finished.emit(summary)

    def _close(self, quiet: bool = False) -> dict:
        if self.session is None:
            return {}
        try:
            summary = self.session.close()
        except Exception as err:
            if not quiet:
                self.failed.emit(f"closing the session: {describe_error(err)}")
            return {}
        if summary.get("recording"):
            self.recording.emit("stopped", summary["recording"])
        return summary

    def _loop(self, session) -> None:
        from mne_lsl.lsl import local_clock

        src = session.source
        index = {c: i for i, c in enumerate(src.ch_names)}
        display = [index[c] for c in session.bundle.spec.channels if c in index]
        self.connected.emit({
            "stream": session.stream_name, "source_id": src.source_id, "markers": session.marker_name,
            "ch_names": list(src.ch_names), "sfreq": src.sfreq, "device": str(session.decoder.device),
            "display_channels": [src.ch_names[i] for i in display],
        })
        if session.recorder is not None:
            self.recording.emit("started", str(session.record_dir))
        sent = src.available  # samples already handed to the signal view
        n_events = 0
        next_display = next_status = 0.0
        rate_window: list[tuple[float, int]] = []
        while not self._stop.is_set():
            self._run_commands(session)
            recording = session.recorder is not None
            records = session.step()
            if recording and session.recorder is None:  # a write failed (a full disk): decoding goes on
                self.recording.emit("failed", session.problems[-1] if session.problems else "recording stopped")
            if session.last_markers:
                self.markers.emit([(m.t, m.label, m.stimulus_id) for m in session.last_markers])
            if records:
                self.decoded.emit(records)
            while n_events < len(session.events):
                self.event.emit(session.events[n_events])
                n_events += 1
            now = time.monotonic()
            if now >= next_display:
                next_display = now + self.display_interval
                first, data, ts, _ = src.read_new(sent)  # what fell out of the buffer meanwhile is skipped
                if len(data):
                    self.samples.emit(np.ascontiguousarray(data[:, display], dtype=np.float32), ts)
                sent = first + len(data)
            if now >= next_status:
                next_status = now + self.status_interval
                rate_window.append((now, src.n_total))
                rate_window = [(t, n) for t, n in rate_window if now - t <= 5.0]
                t0, n0 = rate_window[0]
                rate = (src.n_total - n0) / (now - t0) if now - t0 > 0.4 else None
                self.status.emit(self._status(session, rate, local_clock()))
            session.wait(self.poll_interval)

    def _status(self, session, rate: float | None, now: float) -> dict:
        src = session.source
        lag = None
        available = src.available
        n = min(available - src.oldest, max(int(src.sfreq), 1))
        if n > 0:
            try:
                _, ts, arrival = src.read(available - n, available)
                lag = float(np.median(arrival - ts))
            except IndexError:  # left the buffer meanwhile
                pass
        offset = src.clock_offset()
        silent = None if src.last_arrival is None else now - src.last_arrival
        return {"state": session.status, "rate": rate, "lag": lag, "clock_offset": offset, "silent": silent,
                "recording": session.recorder is not None, "summary": session.summary()}

    def _run_commands(self, session) -> None:
        while True:
            try:
                command, arg = self._commands.get_nowait()
            except queue.Empty:
                return
            try:
                if command == "record":
                    if session.recorder is not None:  # asked twice: already recording
                        continue
                    session.start_recording(arg)
                    self.recording.emit("started", str(arg))
                    session.note(f"recording into {arg}", logging.INFO)
                elif command == "stop-record":
                    folder = session.record_dir if session.recorder is not None else None
                    path = session.stop_recording()
                    if folder is not None:  # an empty recording has no .fif, but it did stop
                        self.recording.emit("stopped", str(path) if path else f"{folder} (no sample was recorded)")
            except Exception as err:
                logger.debug("recording command failed", exc_info=True)
                self.recording.emit("failed", describe_error(err))
