"""The window's Calibrate… action: a small dialog, then one calibration block
(:class:`bci_app.calibrate.Calibration`) run alongside the live decoder.

How a block goes in the window (:class:`CalibrationRun`, on the GUI thread, driven by
the live worker's signals and a 5 Hz timer that reads the block's state):

1. the presenter process starts, sending the training images' markers on a stream of
   its own;
2. the window reconnects to the same EEG stream, now listening to those markers and
   recording into the block's ``recording/`` folder; it decodes as usual meanwhile (the
   base bundle's gallery does not hold the training images: they are decoded, not scored);
3. when the presenter has ended (and the last epochs' samples are in), the recording is
   finished on the decoder's thread; then the bundle is adapted on the block's own
   worker thread (progress in the status bar; Session → Cancel calibration stops it);
4. the window disconnects, loads the adapted bundle and connects again with the marker
   stream it had before; the event log says what the adaptation did.

A failure or a cancel reconnects as before and keeps the recording; the message says how
to adapt it by hand.  Qt lives here only; the block's logic is in
:mod:`bci_app.calibrate`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from PySide6.QtCore import QObject, QTimer, Signal
from PySide6.QtGui import QGuiApplication
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDialog,
    QDialogButtonBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

__all__ = ["CalibrationDialog", "CalibrationRun"]

logger = logging.getLogger("bci_app")

#: the live worker's connect timeout while the presenter starts (a cold Python + Qt start
#: on a slow machine takes seconds)
_CONNECT_TIMEOUT_S = 30.0
_POLL_MS = 200


class CalibrationDialog(QDialog):
    """Minutes, screen, image folder, adaptation mode and pacing of a calibration block.

    ``values()`` gives them as the keyword arguments of
    :meth:`bci_app.gui.window.MainWindow.start_calibration`.
    """

    def __init__(self, bundle_path: str | Path | None, parent=None):
        from ..calibrate import ADAPT_MODES, default_image_folder

        super().__init__(parent)
        self.setWindowTitle("Calibrate for a new person")
        intro = QLabel("The presenter shows training images for the chosen minutes while the EEG is recorded; "
                       "then the bundle is adapted to the person and loaded.")
        intro.setWordWrap(True)
        self.minutes = QDoubleSpinBox()
        self.minutes.setRange(0.1, 60.0)
        self.minutes.setDecimals(1)
        self.minutes.setSingleStep(0.5)
        self.minutes.setValue(5.0)
        self.minutes.setSuffix(" min")
        self.screen = QComboBox()
        for i, screen in enumerate(QGuiApplication.screens()):
            size = screen.size()
            self.screen.addItem(f"{i}: {screen.name() or 'screen'} ({size.width()}×{size.height()})", i)
        self.windowed = QCheckBox("in a window (not full screen)")
        self.images = QLineEdit()
        self.images.setPlaceholderText("the data folder whose training images are shown")
        default = default_image_folder(bundle_path) if bundle_path is not None else None
        if default is not None:
            self.images.setText(str(default))
        browse = QPushButton("Browse…")
        browse.clicked.connect(self._browse)
        images_row = QWidget()
        row = QHBoxLayout(images_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.images, 1)
        row.addWidget(browse)
        self.adapt = QComboBox()
        self.adapt.addItems(list(ADAPT_MODES))
        self.adapt.setToolTip("all: the whole brain side; head: its last layer and projector; projector: that alone")
        self.pause = QDoubleSpinBox()
        self.pause.setRange(0.0, 30.0)
        self.pause.setSingleStep(0.5)
        self.pause.setDecimals(1)
        self.pause.setSpecialValueText("space bar")  # 0: the participant starts each sequence
        self.pause.setSuffix(" s")
        self.pause.setToolTip("how each sequence starts: the participant's space bar, or by itself after a pause")
        self.error = QLabel("")
        self.error.setStyleSheet("color: #c0392b;")
        self.error.setWordWrap(True)
        self.error.hide()
        form = QFormLayout()
        form.addRow("length", self.minutes)
        form.addRow("screen", self.screen)
        form.addRow("", self.windowed)
        form.addRow("images", images_row)
        form.addRow("adapt", self.adapt)
        form.addRow("next sequence", self.pause)
        self.buttons = QDialogButtonBox(QDialogButtonBox.Ok | QDialogButtonBox.Cancel)
        self.buttons.button(QDialogButtonBox.Ok).setText("Start")
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(intro)
        layout.addLayout(form)
        layout.addWidget(self.error)
        layout.addWidget(self.buttons)

    def _browse(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "The images to show (a data folder with image_set/)",
                                                  self.images.text() or str(Path.home()))
        if folder:
            self.images.setText(folder)

    def values(self) -> dict:
        return {"minutes": float(self.minutes.value()), "screen": self.screen.currentData(),
                "windowed": self.windowed.isChecked(), "images": self.images.text().strip(),
                "adapt": self.adapt.currentText(), "pause": float(self.pause.value()) or None}

    def problem(self) -> str | None:
        """What keeps the block from starting (shown in the dialog), or None."""
        images = self.images.text().strip()
        if not images:
            return "choose the folder of the images to show"
        if not Path(images).expanduser().is_dir():
            return f"{images} is not a folder"
        return None

    def accept(self) -> None:
        problem = self.problem()
        if problem is not None:
            self.error.setText(problem)
            self.error.show()
            return
        super().accept()


class CalibrationRun(QObject):
    """One calibration block in the window (see the module docstring).

    Signals
    -------
    finished(str)
        The adapted bundle's folder once it is loaded, or ``""`` when the block failed
        or was cancelled (the window has shown why).
    """

    finished = Signal(str)

    def __init__(self, window, calibration, *, previous: dict):
        super().__init__(window)
        self.window, self.cal, self.previous = window, calibration, dict(previous)
        self.state = "starting"
        self._tail_until: float | None = None
        self._timer = QTimer(self)
        self._timer.setInterval(_POLL_MS)
        self._timer.timeout.connect(self._tick)
        window.live_stopped.connect(self._on_live_stopped)
        window.recording_changed.connect(self._on_recording)
        window.bundle_loaded.connect(self._on_bundle_loaded)
        window.error_shown.connect(self._on_error)
        self._pending = None  # what to do once the live worker has stopped
        from ..calibrate import UnknownMarkersFilter

        self._quiet = UnknownMarkersFilter()  # the training images are not in the gallery, by design

    # -- the steps ------------------------------------------------------------------------
    def start(self) -> None:
        cal, w = self.cal, self.window
        cal.start_presenter()
        logger.addFilter(self._quiet)
        w.note(f"calibration: the presenter shows {cal.planned_seconds / 60:.1f} min of training images "
               f"(markers {cal.markers!r}); recording into {cal.recording_dir}")
        self.state = "switching"
        self._after_disconnect(self._connect_for_block)
        self._timer.start()

    def _connect_for_block(self) -> None:
        self.state = "presenting"
        self.window.connect_stream(self.previous["stream"], self.cal.markers, timeout=_CONNECT_TIMEOUT_S,
                                   source_id=self.previous.get("source_id"), record=str(self.cal.recording_dir))

    def _after_disconnect(self, then) -> None:
        if self.window.live is None:
            then()
            return
        self._pending = then
        self.window.disconnect_stream()

    def _on_live_stopped(self, summary: dict) -> None:
        then, self._pending = self._pending, None
        if then is not None:
            then()
            return
        if self.state in ("presenting", "tail", "finishing"):  # the decoder stopped under the block
            errors = self.window.errors
            why = errors[-1] if errors else "the decoder stopped"
            ended = self.cal.presenter_ended_text()
            self._fail(self.cal.fail(f"the recording stopped: {why}" + (f" ({ended})" if ended else "")))

    def _tick(self) -> None:
        cal, w = self.cal, self.window
        if self.state == "presenting":
            if not cal.presenting and cal.presenter.process.returncode != 0 and not cal.cancelled:
                from ..calibrate import CalibrationError

                try:  # it failed (perhaps while the decoder still waits for its markers): say why at once
                    cal.presenter_ended()
                except CalibrationError as err:
                    self._fail(err)
                    return
            if cal.presenting:
                left = int(round(cal.seconds_left()))
                total = max(int(round(cal.planned_seconds)), 1)
                w.show_progress(f"calibration: presenting, about {left // 60}:{left % 60:02d} left "
                                "(Session → Cancel calibration stops)", total - min(left, total), total)
                return
            tail = 0.0 if cal.cancelled else cal.tail_seconds(w.bundle.spec.tmax if w.bundle is not None else 1.0)
            self._tail_until = time.monotonic() + tail
            self.state = "tail"
        if self.state == "tail" and time.monotonic() >= self._tail_until:
            self.state = "finishing"
            w.show_progress("calibration: finishing the recording", 0, 0)
            if w.live is not None:
                w.live.stop_recording()
        elif self.state == "adapting":
            phase, done, total = cal.progress
            if phase:
                w.show_progress(f"calibration: {phase}", done, total)
            if cal.finished:
                self._adapted()

    def _on_recording(self, what: str, detail: str) -> None:
        if self.state != "finishing":
            return
        if what == "failed":
            self._fail(self.cal.fail(f"the recording failed: {detail}"))
            return
        if what != "stopped":
            return
        from ..calibrate import CalibrationError

        try:
            presented = self.cal.presenter_ended()
        except CalibrationError as err:
            self._fail(err)
            return
        if self.cal.phase == "cancelled":
            self._fail(None)
            return
        self.window.note(f"calibration: recorded {presented.get('onsets', 0)} images; adapting the bundle "
                         f"(--adapt {self.cal.adapt})")
        self.state = "adapting"
        try:
            self.cal.start_adapting()
        except CalibrationError as err:
            self._fail(err)

    def _adapted(self) -> None:
        from ..calibrate import CalibrationCancelled, CalibrationError

        try:
            result = self.cal.result()
        except CalibrationCancelled:
            self._fail(None)
            return
        except CalibrationError as err:
            self._fail(err)
            return
        s = result.summary
        before, after = s.get("before") or {}, s.get("after") or {}
        scores = (f"; validation top-1 {before['top1']:.3f} → {after['top1']:.3f}"
                  if "top1" in before and "top1" in after else "")
        self.window.note(f"calibration: adapted bundle written to {result.bundle} ({s.get('n_trials', '?')} trials"
                         f"{scores}); loading it")
        self.state = "unloading"
        self._after_disconnect(lambda: self._load(result.bundle))

    def _load(self, bundle: Path) -> None:
        self.state = "loading"
        self.window.load_bundle(bundle, then=self._reconnect)

    def _on_bundle_loaded(self, path: str) -> None:
        if self.state == "loading" and Path(path).resolve() == Path(self.cal.out).resolve():
            self.state = "loaded"

    def _on_error(self, message: str) -> None:
        if self.state == "loading" and not self.window.bundle_loading:  # the adapted bundle did not load
            self.state = "ended"
            self._reconnect_as_before()

    def _reconnect(self) -> None:
        self.window.connect_stream(self.previous["stream"], self.previous.get("markers") or "",
                                   timeout=_CONNECT_TIMEOUT_S, source_id=self.previous.get("source_id"))
        self._end(str(self.cal.out) if self.state == "loaded" else "")

    def _fail(self, err) -> None:
        """End the block: ``err`` shown as an error (None: the block was cancelled), the
        connection as it was before."""
        self.cal.stop_presenter()
        if err is None:
            self.window.note(self.cal.error or "calibration cancelled")
        else:
            self.window.show_error(f"calibration: {err}")
        self.state = "ended"
        self._after_disconnect(lambda: self._reconnect_as_before())

    def _reconnect_as_before(self) -> None:
        self.window.connect_stream(self.previous["stream"], self.previous.get("markers") or "",
                                   timeout=_CONNECT_TIMEOUT_S, source_id=self.previous.get("source_id"))
        self._end("")

    def _detach(self) -> None:
        """Stop following the window (the block has ended)."""
        self._timer.stop()
        self._pending = None
        logger.removeFilter(self._quiet)
        if self.state != "detached":
            for signal, slot in ((self.window.live_stopped, self._on_live_stopped),
                                 (self.window.recording_changed, self._on_recording),
                                 (self.window.bundle_loaded, self._on_bundle_loaded),
                                 (self.window.error_shown, self._on_error)):
                signal.disconnect(slot)
        self.state = "detached"

    def _end(self, bundle: str) -> None:
        self._detach()
        self.window.end_progress()
        self.finished.emit(bundle)

    # -- requests -------------------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the block: the presenter (the recording is finished and kept) or the
        adaptation (at its next progress report)."""
        if self.state in ("ended", "detached", "unloading", "loading", "loaded"):
            return
        self.window.note("calibration: cancelling…")
        self.cal.cancel()

    def abort(self, timeout_s: float = 5.0) -> None:
        """The window is closing: stop the presenter and the adaptation, without waiting
        for anything but the adaptation's thread (a bounded wait)."""
        self._detach()  # nothing more is started: no reconnect, no bundle
        self.cal.cancel()
        self.cal.wait(timeout_s)
