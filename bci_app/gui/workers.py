"""Work off the GUI thread: each worker is a ``QObject`` moved to its own ``QThread`` and
talks to the window only through signals carrying numpy arrays and plain dicts.

- :class:`LiveWorker` runs a :class:`~bci_app.pipeline.LiveSession` in a decoding process
  (:mod:`bci_app.live_loop`: there the GUI thread's painting never holds up a decision)
  and hands the window decoded epochs, new raw samples for the signal view, markers and
  a status snapshot.
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

from ..live_loop import describe_error

__all__ = ["LiveWorker", "TaskCancelled", "TaskWorker", "describe_error", "start_in_thread", "stop_thread"]

logger = logging.getLogger("bci_app")


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
    """Decode a stream with a bundle in a decoding process (:mod:`bci_app.live_loop`);
    this worker's thread starts it, passes the window's requests to it and turns its
    reports into signals.

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
        ``[t, label, stimulus_id]`` of markers received.
    status(dict)
        Every ``status_interval`` seconds: connection state, measured rate, lag, clock
        offset and the session summary (accuracy, rejections, latency).
    event(str)
        A message for the log (stalled, lost, back, recording...).
    recording(str, str)
        ``("started", folder)``, ``("stopped", file)`` or ``("failed", message)``.
    failed(str)
        The session could not start or broke (or the decoding process ended); the worker stops.
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

    #: seconds the decoding process gets to finish (close its streams) once asked to stop,
    #: before it is terminated (not while it records: a recording is finished whatever it takes)
    STOP_TIMEOUT = 20.0

    def __init__(self, bundle, stream: str, *, markers: str | None = None, device: str = "auto", top_k: int = 5,
                 source_id: str | None = None, timeout: float = 5.0, record: str | None = None,
                 display_interval: float = 0.04, status_interval: float = 0.5, wake_interval: float = 0.05):
        super().__init__()
        self._options = dict(markers=markers, device=device, top_k=top_k, source_id=source_id, timeout=timeout,
                             record=record, display_interval=display_interval, status_interval=status_interval,
                             wake_interval=wake_interval)
        self.bundle, self.stream = bundle, stream
        self._stop = threading.Event()
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._quiet_stop = False  # stopped before it connected: ended without waiting, not an error

    # -- requests from the GUI thread (thread-safe) ----------------------------------
    def stop(self) -> None:
        self._stop.set()

    def start_recording(self, folder: str) -> None:
        self._requests.put(("record", folder))

    def stop_recording(self) -> None:
        self._requests.put(("stop-record", None))

    # -- the decoding process ---------------------------------------------------------------
    @Slot()
    def run(self) -> None:
        import multiprocessing

        import torch

        from ..live_loop import child_main, receive, send

        ctx = multiprocessing.get_context("spawn")  # never fork a process that runs Qt
        here, there = ctx.Pipe()
        proc = ctx.Process(target=child_main, name="bci-app-decoder", daemon=True,
                           args=(there, str(self.bundle.path), self.stream, torch.get_num_threads(), self._options))
        try:
            proc.start()
        except Exception as err:
            self.failed.emit(f"could not start the decoding process: {describe_error(err)}")
            self.finished.emit({})
            return
        there.close()

        def tell(*message) -> None:
            try:
                send(here, *message)
            except (BrokenPipeError, EOFError, OSError):  # the process is gone: the loop below says so
                pass

        stop_sent, stop_deadline, summary, connected = False, None, None, False
        recording = self._options["record"] is not None
        try:
            while summary is None:
                if self._stop.is_set() and not stop_sent:
                    tell("stop")
                    stop_sent = True
                    # a recording being finished is waited for as long as it takes (the
                    # window waits too): terminated, it would leave a journal, not a FIF
                    stop_deadline = None if recording else time.monotonic() + self.STOP_TIMEOUT
                    if not connected and not recording:
                        # still starting or looking for the streams, nothing to lose: no
                        # need to wait for its imports or its next look at the network
                        stop_deadline = time.monotonic() + 0.2
                        self._quiet_stop = True
                while not stop_sent:
                    try:
                        tell(*self._requests.get_nowait())
                    except queue.Empty:
                        break
                try:
                    if here.poll(0.02):
                        kind, args = receive(here)
                        if kind == "finished":
                            summary = args[0]
                        else:
                            connected = connected or kind == "connected"
                            if kind == "recording":
                                recording = args[0] == "started"
                            getattr(self, kind).emit(*args)
                        continue
                except (EOFError, OSError):
                    pass  # the process is gone
                else:
                    if proc.is_alive() and (stop_deadline is None or time.monotonic() < stop_deadline):
                        continue
                late = proc.is_alive()
                if late:
                    proc.terminate()
                proc.join(5.0)
                if not (late and self._quiet_stop):
                    self.failed.emit("the decoding process did not stop in time and was terminated" if late else
                                     f"the decoding process ended unexpectedly (exit code {proc.exitcode})")
                summary = {}
        finally:
            proc.join(5.0)
            if proc.is_alive():
                proc.kill()
            here.close()
        self.finished.emit(summary)
