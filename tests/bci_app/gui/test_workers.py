"""Workers: tasks report results, errors and progress on the GUI thread and can be
cancelled; signals across threads keep Python's reference counts intact (PySide6 6.12.0
did not, which aborted a window after some minutes of decoding)."""

from __future__ import annotations

import sys
import threading
import time

import pytest

pytest.importorskip("PySide6")


_REFCOUNT_PROBE = r"""
import gc, sys, threading
import numpy as np
from PySide6.QtCore import QCoreApplication, QObject, Signal, Slot

class Source(QObject):
    status = Signal(dict)
    samples = Signal(np.ndarray, np.ndarray)
    decoded = Signal(list)

class Sink(QObject):
    n = 0
    @Slot(dict)
    def on_status(self, d):
        Sink.n += 1
    def on_samples(self, a, b):
        Sink.n += 1
    def on_decoded(self, records):
        Sink.n += 1

app = QCoreApplication([])
source, sink = Source(), Sink()
source.status.connect(sink.on_status)
source.samples.connect(sink.on_samples)
source.decoded.connect(sink.on_decoded)
n = int(sys.argv[1])
gc.collect()
before = [sys.getrefcount(x) for x in (True, False, None)]

def emit():  # from another thread, as the live worker does: queued to the GUI thread
    for i in range(n):
        source.status.emit({"state": "connected", "recording": False, "lag": None, "ok": True})
        source.samples.emit(np.zeros((4, 2), np.float32), np.zeros(4))
        source.decoded.emit([{"stimulus_id": None, "hit": i % 2 == 0}])

thread = threading.Thread(target=emit)
thread.start()
while thread.is_alive() or Sink.n < 3 * n:
    app.processEvents()
gc.collect()
after = [sys.getrefcount(x) for x in (True, False, None)]
print(*[a - b for a, b in zip(after, before)])
"""


def test_many_cross_thread_signals_leave_reference_counts_alone():
    import subprocess

    # a leak grows with n (6.12.0: n per signal, 3 n here, or an abort); the counts also move
    # by a few dozen with objects in flight, whatever n (seen: None -6 to -76 for 300-10000)
    n = 3000
    out = subprocess.run([sys.executable, "-c", _REFCOUNT_PROBE, str(n)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    deltas = [int(v) for v in out.stdout.split()]
    # PySide6 6.12.0 lost a reference to True on every emission (3 n here)
    for name, delta in zip(("True", "False", "None"), deltas):
        assert delta > -n // 10, f"{name} lost {-delta} references over {3 * n} emissions"


def _run(qtbot, window, fn, **kw):
    got = {}
    worker = window.run_task(fn, lambda r: got.setdefault("result", r), "test",
                             on_failed=lambda m: got.setdefault("error", m), **kw)
    qtbot.waitUntil(lambda: bool(got) and not window._tasks, timeout=10000)
    return got, worker


def test_tasks_deliver_results_errors_and_progress_on_the_gui_thread(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from bci_app.gui.window import MainWindow

    win = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(win)
    gui = threading.get_ident()
    seen = {}

    def work(progress):
        seen["thread"] = threading.get_ident()
        progress("step", 1, 2)
        return 42

    got, _ = _run(qtbot, win, work)
    assert got == {"result": 42} and seen["thread"] != gui

    def broken(progress):
        raise ValueError("the file is not a bundle")

    got, _ = _run(qtbot, win, broken)
    assert got == {"error": "the file is not a bundle"}

    def crash(progress):
        raise KeyError("x")

    got, _ = _run(qtbot, win, crash)
    assert got["error"] == "KeyError: 'x'"  # unexpected errors name their type

    phases = []
    win._on_progress = lambda *a: phases.append(a)  # noqa: E731 - the window's slot, observed

    def steps(progress):
        for i in range(3):
            progress("phase", i + 1, 3)
        return "done"

    # progress reaches the status bar
    got, _ = _run(qtbot, win, steps, progress=True)
    assert got == {"result": "done"} and win.progress.isHidden()
    win.close()


def test_closing_the_window_cancels_a_long_task(qtbot, tmp_path):
    import time

    from PySide6.QtCore import QSettings

    from bci_app.gui.window import MainWindow

    win = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(win)
    state = {"steps": 0}

    def long_work(progress):  # like fitting the demo bundle: reports progress often
        for i in range(10_000):
            time.sleep(0.01)
            state["steps"] = i
            progress("training", i, 10_000)

    win.run_task(long_work, lambda r: None, "long", on_failed=lambda m: state.setdefault("error", m))
    qtbot.waitUntil(lambda: state["steps"] > 5, timeout=5000)
    t0 = time.monotonic()
    win.close()
    assert time.monotonic() - t0 < 5.0
    assert not win._tasks and state["steps"] < 1000
    assert "error" not in state  # a task cancelled by closing is not an error


def test_the_status_bar_shows_the_time_left_of_the_whole_job(qtbot, tmp_path, monkeypatch):
    import types

    from PySide6.QtCore import QSettings

    import bci_app.gui.window as window_module
    from bci_app.gui.window import MainWindow

    clock = {"now": 1000.0}
    monkeypatch.setattr(window_module, "time", types.SimpleNamespace(monotonic=lambda: clock["now"]))
    win = MainWindow(settings=QSettings(str(tmp_path / "s.ini"), QSettings.IniFormat))
    qtbot.addWidget(win)
    go_on = threading.Event()

    def job(progress):
        progress("model: layer_1 (2/6): epoch 1/50", 0, 100)
        time.sleep(0.15)  # past the worker's throttle
        clock["now"] = 1030.0
        progress("model: layer_2 (3/6): epoch 5/50", 25, 100)
        go_on.wait(10)
        return "ok"

    win.run_task(job, lambda r: None, "job", progress=True)
    qtbot.waitUntil(lambda: "left" in win.progress_label.text(), timeout=5000)
    # a quarter of the job in 30 s: the rest takes about 90 s
    assert win.progress_label.text() == "model: layer_2 (3/6): epoch 5/50 — about 1 min 30 s left"
    go_on.set()
    qtbot.waitUntil(lambda: not win._tasks, timeout=5000)
    assert win.progress.isHidden()
    win.close()
