"""The window's live session, in a process of its own.

The window's GUI thread paints; in the same process, a decoding thread would wait for the
GIL behind it, and a ready epoch would be decided late.  So the desktop app decodes in a
child process (``multiprocessing`` *spawn*: no Qt, no fork of a Qt process):
:func:`child_main` runs :class:`LiveLoop` there, and the window's
:class:`~bci_app.gui.workers.LiveWorker` turns what it sends into Qt signals.

:class:`LiveLoop` is the loop itself (Qt-free): it runs a
:class:`~bci_app.pipeline.LiveSession`, sleeping until data comes
(:meth:`~bci_app.pipeline.LiveSession.wait`), and reports through ``emit(kind, *args)``:

- ``connected(dict)``: stream facts once connected;
- ``decoded(list)``: the records of a step (the ``--headless`` JSON lines);
- ``samples(ndarray, ndarray)``: new raw samples of the displayed channels, (n, n_display)
  float32 in volts, and their LSL times, every ``display_interval`` s;
- ``markers(list)``: ``[t, label, stimulus_id]`` of the markers received;
- ``status(dict)``: every ``status_interval`` s, state, rate, lag, clock offset, summary;
- ``event(str)``, ``recording(str, str)``, ``failed(str)``, and ``finished(dict)`` (the
  summary; the last message).

Messages between the processes are JSON headers plus raw array bytes (no pickle).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, Callable

import numpy as np

__all__ = ["LiveLoop", "child_main", "decoding_threads", "describe_error", "receive", "send"]

logger = logging.getLogger("bci_app")


def describe_error(err: BaseException) -> str:
    """One line for the window: the message, with the type when the message alone is vague."""
    text = str(err).strip() or type(err).__name__
    from trainer.errors import BCIError

    from .streams import StreamError

    if isinstance(err, (BCIError, StreamError, FileNotFoundError, FileExistsError, ValueError)):
        return text
    return f"{type(err).__name__}: {text}"


def decoding_threads(n: int) -> None:
    """Set up this process for low-latency decoding with ``n`` threads: torch's intra-op
    threads and numpy's BLAS threads (the preprocessing's matrix products; OpenBLAS's
    default of one thread per core, spinning while it waits, made a 128-channel epoch 10x
    slower on a busy 2-core machine) both to ``n``, and the GIL handed between threads
    every 0.5 ms instead of 5 ms (the acquisition thread and the decoding loop share it)."""
    import threadpoolctl
    import torch

    sys.setswitchinterval(0.0005)
    torch.set_num_threads(n)
    threadpoolctl.threadpool_limits(n, user_api="blas")


# -- messages between the processes ----------------------------------------------------------


def send(conn, kind: str, *args: Any) -> None:
    """Send ``kind`` and ``args`` (JSON values and numpy arrays) over a
    ``multiprocessing`` connection: a JSON header, then each array's bytes."""
    arrays: list[np.ndarray] = []

    def plain(value: Any) -> Any:
        if isinstance(value, np.ndarray):
            arrays.append(np.ascontiguousarray(value))
            return {"__array__": len(arrays) - 1, "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, np.generic):
            return value.item()
        return value

    body = plain(list(args))
    conn.send_bytes(json.dumps({"kind": kind, "args": body, "n_arrays": len(arrays)}).encode())
    for a in arrays:
        conn.send_bytes(a.tobytes())


def receive(conn) -> tuple[str, list]:
    """The next message :func:`send` sent: ``(kind, args)``."""
    header = json.loads(conn.recv_bytes())
    arrays = [conn.recv_bytes() for _ in range(header["n_arrays"])]

    def restore(value: Any) -> Any:
        if isinstance(value, dict):
            if "__array__" in value:
                raw = arrays[value["__array__"]]
                return np.frombuffer(raw, dtype=np.dtype(value["dtype"])).reshape(value["shape"]).copy()
            return {k: restore(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore(v) for v in value]
        return value

    return header["kind"], restore(header["args"])


# -- the loop --------------------------------------------------------------------------------


class LiveLoop:
    """Decode ``stream`` with ``bundle`` until ``stopped()``; report through ``emit``.

    ``commands()`` returns the requests that came since the last call: ``("record",
    folder)`` and ``("stop-record", None)``.  ``wake_interval``: the longest sleep between
    epochs (the loop wakes at once when the chunk completing an epoch arrives, and for the
    signal view every ``display_interval``)."""

    def __init__(self, bundle, stream: str, *, emit: Callable[..., None], stopped: Callable[[], bool],
                 commands: Callable[[], list], display_interval: float = 0.04, status_interval: float = 0.5,
                 wake_interval: float = 0.05, **session_kwargs: Any):
        self.bundle, self.stream = bundle, stream
        self.emit, self.stopped, self.commands = emit, stopped, commands
        self.display_interval, self.status_interval = float(display_interval), float(status_interval)
        self.wake_interval = float(wake_interval)
        self._kwargs = session_kwargs
        self.session = None

    def run(self) -> None:
        from .pipeline import LiveSession
        from .streams import ConnectCancelled

        summary: dict = {}
        try:
            self.session = session = LiveSession(self.bundle, self.stream, **self._kwargs)
            session.start(cancel=self.stopped)
        except ConnectCancelled:  # disconnect or close while connecting: not an error
            self._close(quiet=True)
            self.emit("finished", summary)
            return
        except Exception as err:
            logger.debug("connect failed", exc_info=True)
            self.emit("failed", describe_error(err))
            self._close(quiet=True)
            self.emit("finished", summary)
            return
        try:
            self._loop(session)
        except Exception as err:  # a broken session: say so in the window (and the traceback in the log) and stop
            logger.error("live session failed", exc_info=True)
            self.emit("failed", describe_error(err))
        finally:
            summary = self._close()
            self.emit("finished", summary)

    def wake(self) -> None:
        """Wake the loop's sleep (a request came)."""
        if self.session is not None:
            self.session.source.notify()

    def _close(self, quiet: bool = False) -> dict:
        if self.session is None:
            return {}
        try:
            summary = self.session.close()
        except Exception as err:
            if not quiet:
                self.emit("failed", f"closing the session: {describe_error(err)}")
            return {}
        if summary.get("recording"):
            self.emit("recording", "stopped", summary["recording"])
        return summary

    def _loop(self, session) -> None:
        from mne_lsl.lsl import local_clock

        src = session.source
        index = {c: i for i, c in enumerate(src.ch_names)}
        display = [index[c] for c in session.bundle.spec.channels if c in index]
        self.emit("connected", {
            "stream": session.stream_name, "source_id": src.source_id, "markers": session.marker_name,
            "ch_names": list(src.ch_names), "sfreq": src.sfreq, "device": str(session.decoder.device),
            "display_channels": [src.ch_names[i] for i in display],
        })
        if session.recorder is not None:
            self.emit("recording", "started", str(session.record_dir))
        sent = src.available  # samples already handed to the signal view
        n_events = 0
        next_display = next_status = 0.0
        rate_window: list[tuple[float, int]] = []
        while not self.stopped():
            self._run_commands(session)
            recording = session.recorder is not None
            records = session.step()  # first: a ready epoch is decided before anything is sent
            if records:
                self.emit("decoded", records)
            if recording and session.recorder is None:  # a write failed (a full disk): decoding goes on
                self.emit("recording", "failed", session.problems[-1] if session.problems else "recording stopped")
            if session.last_markers:
                self.emit("markers", [[m.t, m.label, m.stimulus_id] for m in session.last_markers])
            while n_events < len(session.events):
                self.emit("event", session.events[n_events])
                n_events += 1
            now = time.monotonic()
            if now >= next_display:
                next_display = now + self.display_interval
                first, data, ts, _ = src.read_new(sent)  # what fell out of the buffer meanwhile is skipped
                if len(data):
                    self.emit("samples", np.ascontiguousarray(data[:, display], dtype=np.float32), ts)
                sent = first + len(data)
            if now >= next_status:
                next_status = now + self.status_interval
                rate_window.append((now, src.n_total))
                rate_window = [(t, n) for t, n in rate_window if now - t <= 5.0]
                t0, n0 = rate_window[0]
                rate = (src.n_total - n0) / (now - t0) if now - t0 > 0.4 else None
                self.emit("status", self._status(session, rate, local_clock()))
            session.wait(max(0.0, min(self.wake_interval, next_display - time.monotonic())))

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
        for command, arg in self.commands():
            try:
                if command == "record":
                    if session.recorder is not None:  # asked twice: already recording
                        continue
                    session.start_recording(arg)
                    self.emit("recording", "started", str(arg))
                    session.note(f"recording into {arg}", logging.INFO)
                elif command == "stop-record":
                    folder = session.record_dir if session.recorder is not None else None
                    path = session.stop_recording()
                    if folder is not None:  # an empty recording has no .fif, but it did stop
                        self.emit("recording", "stopped", str(path) if path else f"{folder} (no sample was recorded)")
            except Exception as err:
                logger.debug("recording command failed", exc_info=True)
                self.emit("recording", "failed", describe_error(err))


# -- the child process ------------------------------------------------------------------------


def child_main(conn, bundle_path: str, stream: str, threads: int, options: dict) -> None:
    """Entry of the decoding process: load the bundle, run :class:`LiveLoop`, send its
    reports over ``conn``; the requests ``stop``, ``record`` and ``stop-record`` come the
    other way."""
    logging.basicConfig(level=logging.WARNING, format="bci-app decoder: %(levelname)s %(message)s")
    state = {"stop": False, "pending": []}

    def take() -> None:
        try:
            while conn.poll():
                kind, args = receive(conn)
                if kind == "stop":
                    state["stop"] = True
                else:
                    state["pending"].append((kind, args[0] if args else None))
        except (EOFError, OSError):  # the window went away: stop
            state["stop"] = True

    def stopped() -> bool:
        take()
        return state["stop"]

    def commands() -> list:
        take()
        out, state["pending"] = state["pending"], []
        return out

    def emit(kind: str, *args: Any) -> None:
        try:
            send(conn, kind, *args)
        except (BrokenPipeError, EOFError, OSError):  # the window went away: stop
            state["stop"] = True

    try:
        decoding_threads(threads)
        from trainer.bundle import load_bundle

        bundle = load_bundle(bundle_path)
    except Exception as err:
        emit("failed", describe_error(err))
        emit("finished", {})
        return
    LiveLoop(bundle, stream, emit=emit, stopped=stopped, commands=commands, **options).run()
    conn.close()
