"""How long the window's GUI thread ever stalls while it decodes at the THINGS rate.

The demo's bundle and session (``bci-app --demo``'s cache; made on first use) are replayed
by a ``bci-replay`` process (5 images/s, RSVP), and the real :class:`MainWindow` decodes
them for ``--seconds``.  A 1 ms precise ``QTimer`` on the GUI thread records the time
between its ticks: any work on the GUI thread (a redraw, a candidate update, a status
update) delays the next tick, so the longest gap beyond 1 ms is the longest the window
was unresponsive.  Each slot of the window is also timed.

Usage::

    QT_QPA_PLATFORM=offscreen python benchmarks/gui_responsiveness.py [--seconds 120] [--demo-dir DIR]

Prints a markdown table (copied into docs/app.md).  Offscreen rendering is software
rendering, like a desktop without GPU acceleration.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import tempfile
import time

import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--demo-dir", default=None)
    args = p.parse_args()
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.setswitchinterval(0.0005)  # as bci-app does
    import torch

    torch.set_num_threads(1)
    from PySide6.QtCore import QElapsedTimer, QSettings, Qt, QTimer
    from PySide6.QtWidgets import QApplication

    from bci_app.demo import prepare_demo, start_replay
    from bci_app.gui.window import MainWindow

    files = prepare_demo(args.demo_dir)
    replay = start_replay(files)
    from bci_app.gui.signal_view import SignalView

    slot_times: dict[str, list[float]] = {}

    def timed(name, fn):
        @functools.wraps(fn)
        def wrapper(*a):
            t0 = time.perf_counter()
            try:
                return fn(*a)
            finally:
                slot_times.setdefault(name, []).append(time.perf_counter() - t0)
        return wrapper

    # the window's slots, timed; patched on the classes so they stay methods of QObjects
    # (PySide6 runs a plain function connected to a worker's signal on the worker thread)
    MainWindow._on_decoded = timed("candidates + figures (per decoded epoch)", MainWindow._on_decoded)
    MainWindow._on_status = timed("status + summary (every 0.5 s)", MainWindow._on_status)
    SignalView.add_samples = timed("samples into the trace buffer (every 40 ms)", SignalView.add_samples)
    SignalView.redraw = timed("trace redraw (30 fps)", SignalView.redraw)

    app = QApplication([])
    settings = QSettings(os.path.join(tempfile.mkdtemp(), "settings.ini"), QSettings.IniFormat)
    win = MainWindow(settings=settings)
    win.resize(1600, 900)
    win.show()

    import gc

    gc_pauses: list[tuple[int, float]] = []
    gc_start = {}

    def on_gc(phase, info):  # garbage collection holds the GIL: it stalls every thread
        if phase == "start":
            gc_start["t"] = time.perf_counter()
        elif "t" in gc_start:
            gc_pauses.append((info["generation"], time.perf_counter() - gc_start.pop("t")))

    gc.callbacks.append(on_gc)
    gaps: list[float] = []
    clock = QElapsedTimer()
    probe = QTimer()
    probe.setTimerType(Qt.PreciseTimer)
    probe.setInterval(1)
    state = {"last": None, "measuring": False}

    def tick():
        now = clock.nsecsElapsed() / 1e9
        if state["measuring"] and state["last"] is not None:
            gaps.append(now - state["last"])
        state["last"] = now

    probe.timeout.connect(tick)
    clock.start()
    probe.start()

    def connect():
        win.connect_stream(replay.name, f"{replay.name}-markers", timeout=30.0, source_id=f"{replay.name}-src")

    def start_measuring():  # after connecting and the first epochs (warm-up, first pixmaps)
        gaps.clear()
        for v in slot_times.values():
            v.clear()
        gc_pauses.clear()
        state["measuring"], state["epochs0"] = True, win.epochs
        QTimer.singleShot(int(args.seconds * 1000), app.quit)

    win.epochs_decoded.connect(lambda n: start_measuring() if n == 5 and not state["measuring"] else None)
    win.load_bundle(files.bundle, then=connect)
    QTimer.singleShot(int((args.seconds + 120) * 1000), app.quit)  # never hang
    t0 = time.monotonic()
    app.exec()
    elapsed = time.monotonic() - t0
    summary = dict(win.summary)
    win.close()
    replay.stop()
    if not gaps:
        sys.exit(f"nothing measured: {win.errors or 'no epochs decoded'}")

    g = (np.asarray(gaps) - 0.001) * 1000.0  # beyond the 1 ms timer period
    print(f"# GUI thread responsiveness, {args.seconds:.0f} s of decoding at the THINGS rate "
          f"({summary.get('epochs_decoded', 0) - state.get('epochs0', 0)} epochs), {elapsed:.0f} s in all\n")
    print("| measure | value |")
    print("|---|---|")
    print(f"| GUI thread longest stall | {g.max():.1f} ms |")
    print(f"| stall p99.9 / p99 / p50 | {np.percentile(g, 99.9):.1f} / {np.percentile(g, 99):.1f} / "
          f"{np.percentile(g, 50):.2f} ms |")
    print(f"| probe ticks | {len(g):,} |")
    for name, values in slot_times.items():
        if values:
            v = np.asarray(values) * 1000.0
            print(f"| {name} | mean {v.mean():.2f} ms, max {v.max():.1f} ms ({len(v):,} calls) |")
    for gen in (0, 1, 2):
        v = np.asarray([d for g_, d in gc_pauses if g_ == gen]) * 1000.0
        if len(v):
            print(f"| Python garbage collection, generation {gen} | mean {v.mean():.2f} ms, max {v.max():.1f} ms "
                  f"({len(v):,} runs, any thread) |")
    lat = summary.get("decision_latency") or {}
    if lat:
        print(f"| decision latency with the window (ready -> decided) | p50 {lat['p50_ms']:.1f} ms, "
              f"p99 {lat['p99_ms']:.1f} ms |")
    print(f"| samples lost | {summary.get('samples_lost')} |")


if __name__ == "__main__":
    main()
