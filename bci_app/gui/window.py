"""The main window: streams and model on the left, retrieved images over the live signals
in the middle, running figures and events on the right.

Everything slow (loading a bundle, looking for streams, preparing the demo, decoding) runs
on worker threads (:mod:`bci_app.gui.workers`); the slots here only copy results into
widgets and preallocated buffers.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from PySide6.QtCore import QObject, QSettings, Qt, QTimer, Signal, Slot
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import QFileDialog, QLabel, QMainWindow, QMessageBox, QProgressBar, QScrollArea, QSplitter, QVBoxLayout, QWidget

from trainer.progress import time_left

from .candidates import CandidateView, Gallery
from .panels import Banner, EventLog, FiguresPanel, ModelPanel, StreamPanel
from .signal_view import SignalView
from .workers import LiveWorker, TaskWorker, start_in_thread, stop_thread

__all__ = ["MainWindow", "default_settings"]

logger = logging.getLogger("bci_app")

SHORTCUTS = (
    ("Ctrl+O", "open a model bundle"),
    ("F5", "look for streams again"),
    ("Ctrl+L", "connect / disconnect"),
    ("Ctrl+R", "start / stop recording"),
    ("Ctrl+Shift+S", "save a screenshot of the window"),
    ("F1", "this list"),
    ("Ctrl+Q", "quit"),
)


def default_settings() -> QSettings:
    """The user's settings file (``bci-app`` in the platform's settings location)."""
    return QSettings(QSettings.IniFormat, QSettings.UserScope, "shallow-bci", "bci-app")


class _TaskHandle(QObject):
    """Lives on the GUI thread, so a task's results reach their callbacks there
    (``on_finished(entry)`` last, whatever the outcome)."""

    def __init__(self, parent: QObject, on_done, on_failed, on_finished):
        super().__init__(parent)
        self.on_done, self.on_failed, self.on_finished = on_done, on_failed, on_finished
        self.entry = None

    @Slot(object)
    def done(self, result) -> None:
        self.on_done(result)

    @Slot(str)
    def failed(self, message: str) -> None:
        self.on_failed(message)

    @Slot()
    def finished(self) -> None:
        if self.entry is not None:
            self.on_finished(self.entry)
        self.deleteLater()


class MainWindow(QMainWindow):
    """The live decoder's window.

    Signals
    -------
    bundle_loaded(str)
        A bundle was loaded (its folder).
    epochs_decoded(int)
        Decoded epochs so far in this connection (after the candidate view was updated).
    """

    bundle_loaded = Signal(str)
    epochs_decoded = Signal(int)
    live_stopped = Signal(dict)
    error_shown = Signal(str)
    screenshot_saved = Signal(str)
    recording_changed = Signal(str, str)  # as LiveWorker.recording, after the window showed it
    def __init__(self, settings: QSettings | None = None, parent=None):
        super().__init__(parent)
        self.settings = settings if settings is not None else default_settings()
        self.setWindowTitle("bci-app — live visual decoding")
        self.bundle = None
        self.gallery: Gallery | None = None
        self.live: LiveWorker | None = None
        self.live_thread = None
        self.stream_info: dict = {}
        self.epochs = 0
        self.summary: dict = {}
        self.errors: list[str] = []
        self._tasks: list[tuple] = []  # (thread, worker) of running tasks
        self._closing = False
        self._after_bundle = None  # called once the pending bundle has loaded
        self._screenshot: tuple[int, str] | None = None
        self._recording_wanted = False  # what the user asked for last (the worker confirms)
        self._stopping = False
        self._bundle_loading = False
        self._progress_start: float | None = None  # when the job shown in the status bar began
        self._progress_done = 0
        self.calibration = None  # the CalibrationRun of a block in progress

        self.banner = Banner()
        self.streams = StreamPanel()
        self.model = ModelPanel()
        self.candidates = CandidateView()
        self.signal = SignalView()
        self.figures = FiguresPanel()
        self.log = EventLog()
        self.progress = QProgressBar()
        self.progress.setMaximumWidth(320)
        self.progress.hide()
        self.progress_label = QLabel("")
        self.record_label = QLabel("")
        self.record_label.setStyleSheet("color: #c0392b; font-weight: bold;")
        self.statusBar().addWidget(self.progress_label)
        self.statusBar().addWidget(self.progress)
        self.statusBar().addPermanentWidget(self.record_label)

        left = QWidget()
        lv = QVBoxLayout(left)
        lv.setContentsMargins(0, 0, 0, 0)
        lv.addWidget(self.streams)
        lv.addWidget(self.model)
        lv.addStretch(1)
        scroll = QScrollArea()
        scroll.setWidget(left)
        scroll.setWidgetResizable(True)
        scroll.setMinimumWidth(340)
        scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarAlwaysOff)
        self.middle = QSplitter(Qt.Vertical)
        self.middle.addWidget(self.candidates)
        self.middle.addWidget(self.signal)
        self.middle.setStretchFactor(1, 1)
        right = QWidget()
        rv = QVBoxLayout(right)
        rv.setContentsMargins(0, 0, 0, 0)
        rv.addWidget(self.figures)
        rv.addWidget(self.log, 1)
        self.splitter = QSplitter(Qt.Horizontal)
        self.splitter.addWidget(scroll)
        self.splitter.addWidget(self.middle)
        self.splitter.addWidget(right)
        self.splitter.setStretchFactor(1, 1)
        self.splitter.setSizes([400, 860, 340])
        central = QWidget()
        cv = QVBoxLayout(central)
        cv.setContentsMargins(4, 4, 4, 4)
        cv.addWidget(self.banner)
        cv.addWidget(self.splitter, 1)
        self.setCentralWidget(central)
        self._make_actions()

        self.streams.refresh_requested.connect(self.refresh_streams)
        self.streams.connect_requested.connect(self.connect_stream)
        self.streams.disconnect_requested.connect(self.disconnect_stream)
        self.model.open_requested.connect(self._choose_bundle)
        self.model.top_k.valueChanged.connect(self.candidates.set_top_k)
        self.streams.set_connection("idle")
        self._restore_settings()

    # -- actions ------------------------------------------------------------------------
    def _make_actions(self) -> None:
        def action(text, shortcut, slot, menu, checkable=False):
            a = QAction(text, self)
            a.setShortcut(QKeySequence(shortcut))
            a.setCheckable(checkable)
            a.triggered.connect(slot)
            menu.addAction(a)
            self.addAction(a)
            return a

        file_menu = self.menuBar().addMenu("&File")
        self.open_action = action("&Open bundle…", "Ctrl+O", self._choose_bundle, file_menu)
        self.recdir_action = action("Recordings &folder…", "", self._choose_record_dir, file_menu)
        self.shot_action = action("Save &screenshot…", "Ctrl+Shift+S", self._save_screenshot_dialog, file_menu)
        file_menu.addSeparator()
        action("&Quit", "Ctrl+Q", self.close, file_menu)
        session_menu = self.menuBar().addMenu("&Session")
        action("&Refresh streams", "F5", self.refresh_streams, session_menu)
        self.connect_action = action("&Connect / disconnect", "Ctrl+L", self._toggle_connection, session_menu)
        self.record_action = action("&Record", "Ctrl+R", self.toggle_recording, session_menu, checkable=True)
        self.record_action.setEnabled(False)
        session_menu.addSeparator()
        self.calibrate_action = action("Cali&brate…", "", self.calibrate_dialog, session_menu)
        self.cancel_calibration_action = action("Cancel calibration", "", self.cancel_calibration, session_menu)
        self.cancel_calibration_action.setEnabled(False)
        help_menu = self.menuBar().addMenu("&Help")
        action("&Keyboard shortcuts", "F1", self._show_shortcuts, help_menu)

    def _show_shortcuts(self) -> None:
        QMessageBox.information(self, "Keyboard shortcuts",
                                "\n".join(f"{k:<14} {what}" for k, what in SHORTCUTS))

    # -- settings -----------------------------------------------------------------------
    def _restore_settings(self) -> None:
        s = self.settings
        geometry = s.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1600, 900)
        state = s.value("window/splitter")
        if state is not None:
            self.splitter.restoreState(state)
        self.streams.eeg.setCurrentText(str(s.value("stream/name", "") or ""))
        markers = str(s.value("stream/markers", "") or "")
        if markers:
            self.streams.markers.setCurrentText(markers)
        device = str(s.value("model/device", "auto") or "auto")
        if self.model.device.findText(device) < 0:  # e.g. cuda:1
            self.model.device.addItem(device)
        self.model.device.setCurrentText(device)
        try:
            self.model.top_k.setValue(int(s.value("model/top_k", 5)))
        except (TypeError, ValueError):
            pass
        self.record_dir = Path(str(s.value("record/folder", "") or Path.home() / "bci-recordings"))

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("window/geometry", self.saveGeometry())
        s.setValue("window/splitter", self.splitter.saveState())
        s.setValue("stream/name", self.streams.eeg.currentText().strip())
        s.setValue("stream/markers", self.streams.marker_name())
        s.setValue("model/device", self.model.device.currentText())
        s.setValue("model/top_k", self.model.top_k.value())
        s.setValue("record/folder", str(self.record_dir))
        if self.bundle is not None:
            s.setValue("model/bundle", os.path.abspath(self.bundle.path))  # the next start may run elsewhere
        s.sync()

    # -- errors and progress ----------------------------------------------------------
    def show_error(self, message: str) -> None:
        """Show an error in the window (banner + log); never a traceback."""
        self.errors.append(message)
        self.banner.show_error(message)
        self.log.add(message, error=True)
        logger.error("%s", message)
        self.error_shown.emit(message)

    def note(self, message: str) -> None:
        self.log.add(message)
        self.statusBar().showMessage(message, 8000)

    def _on_progress(self, phase: str, done: int, total: int) -> None:
        now = time.monotonic()
        if self._progress_start is None or done < self._progress_done:  # a new job
            self._progress_start = now
        self._progress_done = done
        left = time_left(done, total, now - self._progress_start)  # the rate since the job began
        text = phase if len(phase) <= 90 else phase[:87] + "..."
        self.progress_label.setText(text + (f" — {left}" if left else ""))
        self.progress_label.setToolTip(phase)
        self.progress.setRange(0, max(total, 1))
        self.progress.setValue(done)
        self.progress.show()

    def _end_progress(self) -> None:
        self.progress.hide()
        self.progress_label.setText("")
        self._progress_start, self._progress_done = None, 0

    def show_progress(self, phase: str, done: int, total: int) -> None:
        """Show a job's progress in the status bar (``total`` 0: busy, no share known)."""
        self._on_progress(phase, done, total)
        if total <= 0:
            self.progress.setRange(0, 0)

    def end_progress(self) -> None:
        self._end_progress()

    @property
    def bundle_loading(self) -> bool:
        return self._bundle_loading

    # -- tasks --------------------------------------------------------------------------
    def run_task(self, fn, on_done, name: str, on_failed=None, progress: bool = False) -> TaskWorker:
        """Run ``fn(progress)`` on a worker thread; ``on_done(result)`` on the GUI thread."""
        worker = TaskWorker(fn, shows_progress=progress)
        handle = _TaskHandle(self, on_done, on_failed or self.show_error, self._task_finished)
        worker.done.connect(handle.done)
        worker.failed.connect(handle.failed)
        worker.finished.connect(handle.finished)
        if progress:
            worker.progress.connect(self._on_progress)
        thread = start_in_thread(worker, worker.run, name)
        entry = (thread, worker, handle)
        self._tasks.append(entry)
        handle.entry = entry  # finished is queued to this thread: it arrives after this
        return worker

    def _task_finished(self, entry) -> None:
        thread, worker, _ = entry
        thread.quit()
        thread.wait(2000)
        if entry in self._tasks:
            self._tasks.remove(entry)
        if worker.shows_progress:
            self._end_progress()

    # -- bundle -------------------------------------------------------------------------
    def _choose_bundle(self) -> None:
        start = str(self.settings.value("model/bundle", "") or Path.cwd())
        folder = QFileDialog.getExistingDirectory(self, "Open a model bundle (a bci-train run folder)", start)
        if folder:
            self.load_bundle(folder)

    def load_bundle(self, folder: str | Path, then=None) -> None:
        """Load a bundle and its thumbnails on a worker thread."""
        if self.live is not None:
            self.show_error("disconnect before opening another bundle")
            return
        self._after_bundle = then
        self._bundle_loading = True
        self.model.open_button.setEnabled(False)
        self.note(f"loading bundle {folder}")

        def work(progress):
            from trainer.bundle import load_bundle

            progress("loading bundle", 0, 2)
            bundle = load_bundle(folder)
            progress("loading thumbnails", 1, 2)
            return bundle, Gallery.from_bundle(bundle)

        def failed(message):
            self._bundle_loading = False
            self.model.open_button.setEnabled(True)
            self._after_bundle = None
            self.show_error(f"bundle {folder}: {message}")

        self.run_task(work, self._bundle_ready, "bundle", on_failed=failed)

    def _bundle_ready(self, result) -> None:
        self._bundle_loading = False
        self.bundle, self.gallery = result
        self.model.open_button.setEnabled(True)
        self.model.show_bundle(self.bundle)
        self.candidates.set_gallery(self.gallery)
        self.settings.setValue("model/bundle", os.path.abspath(self.bundle.path))
        self.note(f"bundle loaded: {self.bundle.path} ({len(self.bundle.items)} images)")
        self.bundle_loaded.emit(str(self.bundle.path))
        then, self._after_bundle = self._after_bundle, None
        if then is not None:
            then()

    # -- calibration --------------------------------------------------------------------
    def _calibration_problem(self) -> str | None:
        if self.calibration is not None:
            return "a calibration is running (Session → Cancel calibration stops it)"
        if self.bundle is None:
            return "open the bundle to calibrate first (Ctrl+O)"
        if self.live is None or not self.stream_info:
            return "connect to the person's EEG stream first (Ctrl+L): the calibration records it"
        if self._recording_wanted:
            return "stop the recording first (Ctrl+R): the calibration makes its own"
        return None

    def calibrate_dialog(self) -> None:
        """Session → Calibrate…: ask for the block's settings, then start it."""
        problem = self._calibration_problem()
        if problem is not None:
            self.show_error(f"calibration: {problem}")
            return
        from .calibration import CalibrationDialog

        dialog = CalibrationDialog(self.bundle.path, self)
        if dialog.exec():
            self.start_calibration(**dialog.values())

    def start_calibration(self, *, images: str, minutes: float = 5.0, screen: int | None = None,
                          windowed: bool = False, adapt: str = "all", pause: float | None = None,
                          adapt_fn=None, epochs: int = 40):
        """Run a calibration block on the connected stream (see
        :mod:`bci_app.gui.calibration`); returns its ``CalibrationRun`` (``finished(str)``
        when it ends), or None when it could not start (the error is shown)."""
        problem = self._calibration_problem()
        if problem is not None:
            self.show_error(f"calibration: {problem}")
            return None
        from trainer.errors import BCIError

        from ..calibrate import Calibration
        from .calibration import CalibrationRun

        try:
            cal = Calibration(self.bundle.path, images, minutes=minutes, root=self.record_dir / "calibration",
                              screen=screen, windowed=windowed, adapt=adapt, pause=pause, epochs=epochs,
                              device=self.model.device.currentText(), adapt_fn=adapt_fn)
        except (BCIError, OSError) as err:
            self.show_error(f"calibration: {err}")
            return None
        previous = {"stream": self.stream_info["stream"], "source_id": self.stream_info.get("source_id"),
                    "markers": self.stream_info.get("markers")}
        run = CalibrationRun(self, cal, previous=previous)
        self.calibration = run
        run.finished.connect(self._calibration_finished)
        self.calibrate_action.setEnabled(False)
        self.cancel_calibration_action.setEnabled(True)
        try:
            run.start()
        except (BCIError, OSError) as err:
            run.deleteLater()
            self._calibration_finished("")
            self.show_error(f"calibration: {err}")
            return None
        return run

    def cancel_calibration(self) -> None:
        if self.calibration is not None:
            self.calibration.cancel()

    def _calibration_finished(self, bundle: str) -> None:
        self.calibration = None
        self.calibrate_action.setEnabled(True)
        self.cancel_calibration_action.setEnabled(False)
        if bundle:
            self.note(f"calibration: decoding with the adapted bundle {bundle}")

    # -- streams ------------------------------------------------------------------------
    def refresh_streams(self) -> None:
        self.streams.refresh_button.setEnabled(False)

        def work(progress):
            from ..streams import list_streams

            return list_streams(timeout=1.0)

        def done(streams):
            self.streams.refresh_button.setEnabled(True)
            self.streams.set_streams(streams)
            self.note(f"{len(streams)} stream(s) on the network")

        def failed(message):
            self.streams.refresh_button.setEnabled(True)
            self.show_error(f"looking for streams: {message}")

        self.run_task(work, done, "streams", on_failed=failed)

    def _toggle_connection(self) -> None:
        if self.live is not None:
            self.disconnect_stream()
        else:
            self.connect_stream(self.streams.eeg.currentText().strip(), self.streams.marker_name())

    def connect_stream(self, name: str, markers: str = "", *, timeout: float = 5.0, source_id: str | None = None,
                       record: str | None = None) -> None:
        """Connect to the EEG stream ``name`` (markers: ``name-markers`` or the only marker
        stream when empty) and decode with the loaded bundle on a worker thread."""
        if self.live is not None:
            return
        if self._bundle_loading:
            self.show_error("a bundle is still loading; connect when it is loaded")
            return
        if self.bundle is None:
            self.show_error("open a model bundle first (Ctrl+O)")
            return
        if not name:
            self.show_error("give the name of the EEG stream (F5 lists the streams on the network)")
            return
        self.banner.hide()
        self.streams.eeg.setCurrentText(name)
        self.epochs = 0
        self.summary = {}
        self.figures.reset()
        self.candidates.clear()
        self.signal.clear()
        self.streams.set_connection("connecting")
        self.note(f"connecting to {name!r}" + (f" with markers {markers!r}" if markers else ""))
        worker = LiveWorker(self.bundle, name, markers=markers or None, device=self.model.device.currentText(),
                            top_k=self.model.top_k.value(), source_id=source_id, timeout=timeout,
                            record=record)
        worker.connected.connect(self._on_connected)
        worker.decoded.connect(self._on_decoded)
        worker.samples.connect(self.signal.add_samples)
        worker.markers.connect(self.signal.add_markers)
        worker.status.connect(self._on_status)
        worker.event.connect(self.note)
        worker.recording.connect(self._on_recording)
        worker.failed.connect(self.show_error)
        worker.finished.connect(self._on_live_finished)
        self.live = worker
        self.live_thread = start_in_thread(worker, worker.run, "live")
        self.model.device.setEnabled(False)
        self.model.top_k.setEnabled(False)

    def disconnect_stream(self) -> None:
        if self.live is None:
            return
        self._stopping = True
        self.streams.set_connection("stopping")
        self.live.stop()

    def _on_connected(self, info: dict) -> None:
        self.stream_info = info
        self.streams.set_connection("connected")
        self.streams.show_info(info)
        self.signal.reset(info["display_channels"], info["sfreq"])
        self.record_action.setEnabled(self.calibration is None)  # a calibration block records by itself
        self.refresh_streams()
        self.note(f"decoding {info['stream']!r} ({len(info['ch_names'])} channels, {info['sfreq']:g} Hz) with "
                  f"markers {info['markers']!r} on {info['device']}")

    def _on_decoded(self, records: list) -> None:
        self.epochs += sum(not r.get("provisional") for r in records)  # a provisional decision is no decoded epoch
        self.candidates.show_record(records[-1])
        self.figures.show_last(records[-1])
        self.epochs_decoded.emit(self.epochs)
        if self._screenshot is not None and self.epochs >= self._screenshot[0]:
            n, path = self._screenshot
            self._screenshot = None
            # one more status and redraw first, so the figures and traces are current
            QTimer.singleShot(700, lambda: self._take_screenshot(path))

    def _on_status(self, status: dict) -> None:
        self.summary = status["summary"]
        if self._stopping:  # a status sent before the stop: keep showing "stopping"
            status = dict(status, state="stopping")
        self.streams.show_status(status, self.stream_info.get("sfreq", 0.0))
        self.figures.show_summary(status["summary"])

    def _on_live_finished(self, summary: dict) -> None:
        thread, self.live_thread, self.live = self.live_thread, None, None
        if thread is not None:
            thread.quit()
            thread.wait(2000)
        if summary:
            self.summary = summary
            self.figures.show_summary(summary)
            self.note(f"disconnected after {summary.get('epochs_decoded', 0)} epochs")
        self.signal.stop()
        self.streams.set_connection("idle")
        self.record_action.setEnabled(False)
        self.record_action.setChecked(False)
        self.record_label.setText("")
        self._recording_wanted = False
        self._stopping = False
        self.model.device.setEnabled(True)
        self.model.top_k.setEnabled(True)
        self.live_stopped.emit(summary)

    # -- recording ----------------------------------------------------------------------
    def _choose_record_dir(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Folder for recordings", str(self.record_dir))
        if folder:
            self.record_dir = Path(folder)
            self.note(f"recordings go to {folder}")

    def toggle_recording(self, checked: bool | None = None) -> None:
        if self.live is None:
            self.record_action.setChecked(False)
            return
        if self._recording_wanted:
            self._recording_wanted = False
            self.live.stop_recording()
            self.note("finishing the recording…")
        else:
            self._recording_wanted = True
            stamp = time.strftime("%Y%m%d-%H%M%S")
            stream = "".join(c if c.isalnum() or c in "-_" else "_" for c in self.stream_info.get("stream", "eeg"))
            self.live.start_recording(str(self.record_dir / f"{stamp}-{stream}"))
        self.record_action.setChecked(self._recording_wanted)

    def _on_recording(self, what: str, detail: str) -> None:
        if what == "started":
            self.record_label.setText(f"● REC {detail}")
            self.note(f"recording into {detail}")
        elif what == "stopped":
            self.record_label.setText("")
            self.note(f"recording saved: {detail}")
        else:  # the recording could not start (or finish): nothing is being recorded
            self.record_label.setText("")
            self._recording_wanted = False
            self.show_error(f"recording: {detail}")
        self.record_action.setChecked(self._recording_wanted)
        self.recording_changed.emit(what, detail)

    # -- screenshots --------------------------------------------------------------------
    def screenshot_after(self, n_epochs: int, path: str | Path) -> None:
        """Save the window to ``path`` once ``n_epochs`` epochs are decoded (then emits
        ``screenshot_saved`` with the absolute path, or ``""`` when it could not be written)."""
        self._screenshot = (int(n_epochs), os.path.abspath(path))

    def _take_screenshot(self, path: str) -> None:
        path = os.path.abspath(path)
        self.signal.redraw()
        pixmap = self.grab()
        if not pixmap.save(path):
            self.show_error(f"could not write the screenshot {path}")
            self.screenshot_saved.emit("")
            return
        self.note(f"screenshot saved: {path}")
        self.screenshot_saved.emit(path)

    def _save_screenshot_dialog(self) -> None:
        path, _ = QFileDialog.getSaveFileName(self, "Save a screenshot", "bci-app.png", "PNG images (*.png)")
        if path:
            self._take_screenshot(path)

    # -- closing ------------------------------------------------------------------------
    def shutdown(self, timeout_s: float = 5.0) -> bool:
        """Stop all workers, waiting at most about ``timeout_s`` for each; True when all ended."""
        ok = True
        self.signal.stop()
        if self.calibration is not None:  # the presenter and the adaptation stop; the recording is kept
            self.calibration.abort(timeout_s)
        if self.live is not None:
            live, thread = self.live, self.live_thread
            live.stop()
            # the loop ends within milliseconds; closing a recording writes its FIF file
            recording = bool(self.record_label.text()) or self._recording_wanted
            deadline = time.monotonic() + (30.0 if recording else timeout_s)
            while thread.isRunning() and not thread.wait(50):
                from PySide6.QtCore import QCoreApplication

                QCoreApplication.processEvents()  # deliver the worker's last signals
                if time.monotonic() > deadline:
                    break
            if self.live is not None:  # finished was not delivered: tidy up here
                if not stop_thread(thread, 1000):
                    # a Qt thread destroyed while running aborts the process: wait instead
                    logger.warning("the decoder is still finishing (a recording being written?); waiting for it")
                    thread.wait()
                    ok = False
                self.live = self.live_thread = None
        for _, worker, _ in self._tasks:  # all at once: they stop at their next progress report
            worker.cancel()
        deadline = time.monotonic() + 3 * timeout_s  # a synthetic recording takes some seconds to make
        for thread, _, _ in list(self._tasks):
            ok = stop_thread(thread, max(int(1000 * (deadline - time.monotonic())), 0)) and ok
        self._tasks.clear()
        return ok

    def closeEvent(self, event) -> None:
        if not self._closing:
            self._closing = True
            self.save_settings()
            if not self.shutdown():
                logger.warning("a worker did not stop in time")
        event.accept()
