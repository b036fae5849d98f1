"""``bci-app`` with a window: the Qt application around :class:`MainWindow`, the demo
start-up, ``--screenshot`` and ``--max-epochs``."""

from __future__ import annotations

import logging
import signal
import sys
from pathlib import Path

__all__ = ["route_qt_messages", "run_window"]

logger = logging.getLogger("bci_app")


def run_window(args) -> int:
    """Open the window as the command line asks; returns the exit code."""
    from PySide6.QtCore import QTimer
    from PySide6.QtWidgets import QApplication

    from .window import MainWindow

    route_qt_messages()
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("bci-app")
    app.setOrganizationName("shallow-bci")
    window = MainWindow()
    state = {"code": 0, "replay": None}

    def fail(message: str) -> None:
        """Non-interactive runs (--screenshot) end on the first error."""
        print(f"bci-app: error: {message}", file=sys.stderr)
        state["code"] = 2
        window.close()

    def excepthook(kind, value, tb):  # an unexpected error in a slot: into the window, not a traceback
        logger.debug("unexpected error", exc_info=(kind, value, tb))
        window.show_error(f"unexpected {kind.__name__}: {value}")

    previous_hook = sys.excepthook
    sys.excepthook = excepthook
    if args.screenshot:
        def saved(path: str) -> None:  # "" when it could not be written (the error was shown)
            if path:
                print(f"bci-app: screenshot saved to {path}", file=sys.stderr, flush=True)
            state["code"] = 0 if path else 2
            window.close()

        window.screenshot_after(args.max_epochs or 1, args.screenshot)
        window.screenshot_saved.connect(saved)
        window.error_shown.connect(fail)
    elif args.max_epochs:
        window.epochs_decoded.connect(lambda n: window.close() if n >= args.max_epochs else None)
    if args.duration:
        QTimer.singleShot(int(args.duration * 1000), window.close)

    def connect_given():
        window.connect_stream(args.stream, args.markers or "", timeout=args.timeout, source_id=args.source_id,
                              record=args.record)

    if args.top_k:
        window.model.top_k.setValue(args.top_k)
    if args.device:
        if window.model.device.findText(args.device) < 0:  # e.g. cuda:1
            window.model.device.addItem(args.device)
        window.model.device.setCurrentText(args.device)
    if args.demo:
        _start_demo(window, args, state)
    elif args.bundle:
        window.load_bundle(args.bundle, then=connect_given if args.stream else None)
    else:
        last = window.settings.value("model/bundle", "")
        if last and Path(str(last)).is_dir():
            window.load_bundle(str(last))
        if args.stream:
            window.streams.eeg.setCurrentText(args.stream)
    window.refresh_streams()

    # Ctrl-C in the terminal closes the window like the close button
    signal.signal(signal.SIGINT, lambda *_: window.close())
    signal.signal(signal.SIGTERM, lambda *_: window.close())
    keepalive = QTimer()  # lets Python see signals while Qt runs
    keepalive.start(200)
    keepalive.timeout.connect(lambda: None)
    window.show()
    try:
        app.exec()
    finally:
        sys.excepthook = previous_hook
        keepalive.stop()
        window.shutdown()
        if state["replay"] is not None:
            state["replay"].stop()
    if window.summary and "samples_received" in window.summary:  # the session's summary, as --headless
        from ..summary import report_summary

        report_summary(window.summary, args.summary)
    return state["code"]


def route_qt_messages() -> None:
    """Qt's own warnings go to the log (debug level) instead of stderr: the offscreen
    platform, for one, warns on every resize."""
    from PySide6.QtCore import QtMsgType, qInstallMessageHandler

    def handler(kind, context, message):
        level = logging.WARNING if kind in (QtMsgType.QtCriticalMsg, QtMsgType.QtFatalMsg) else logging.DEBUG
        logging.getLogger("bci_app.qt").log(level, "Qt: %s", message)

    qInstallMessageHandler(handler)


def _start_demo(window, args, state) -> None:
    """Prepare the demo data and bundle on a worker thread (progress in the status bar),
    start the replay process, then load the bundle and connect."""
    from ..demo import prepare_demo, start_closed_loop, start_replay

    window.note("demo: preparing the synthetic data and the demo bundle (a few minutes the first time)")

    def ready(files):
        if args.demo == "replay":
            replay = start_replay(files)
            window.note(f"demo: replaying {files.session} as {replay.name!r} (bci-replay, looping)")
        else:
            replay = start_closed_loop(files)
            window.note(f"demo: the presenter shows the test images to a simulated participant (subject 1), "
                        f"streaming as {replay.name!r}")
        state["replay"] = replay
        window.streams.eeg.setCurrentText(replay.name)

        def connect():
            if not replay.running:
                window.show_error(f"demo: {replay.ended_text()}")
                return
            window.connect_stream(replay.name, f"{replay.name}-markers", timeout=max(args.timeout, 30.0),
                                  source_id=f"{replay.name}-src")

        window.load_bundle(files.bundle, then=connect)

    def prepare(progress):
        import torch

        # training with torch's own thread count; decoding (later) with the --threads given
        threads = torch.get_num_threads()
        torch.set_num_threads(getattr(args, "training_threads", None) or threads)
        try:
            return prepare_demo(args.demo_dir, progress=progress)
        finally:
            torch.set_num_threads(threads)

    window.run_task(prepare, ready, "demo",
                    on_failed=lambda m: window.show_error(f"demo: {m}"), progress=True)
