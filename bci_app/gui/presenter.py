"""``bci-app present``: the stimulus window, its display loop, and the experimenter's
controls.

The run itself (what each frame shows, the markers, the timing log) is
:class:`~bci_app.rsvp.RsvpRun`; this module only puts its frames on the screen and tells
it when each one got there.  Two display loops:

- **vsync**: a :class:`QOpenGLWindow` with a swap interval of 1.  Every buffer swap waits
  for the display's refresh; after it (and a ``glFinish``, so the swap has really
  happened) the flip is stamped with the LSL clock, and the next frame is drawn at once.
  Before the first sequence the loop measures the interval between swaps: when swaps are
  not paced by the display (a virtual X server, a driver that ignores the swap interval)
  the presenter says so and falls back to the timer.
- **timer** (``--no-vsync``, no OpenGL, or vsync not in effect): a raster window repainted
  on a precise timer at the screen's nominal refresh rate; the flip is stamped when the
  frame has been painted and handed to the window system.  The display's own delay (up
  to a frame, plus the monitor's input lag) is not seen: use the photodiode square.

Either way onsets are counted in frames, and a frame the loop misses delays the rest of
its sequence and is logged (:class:`~bci_app.presentation.TimingLog`).

Keys in the stimulus window: space or return starts the next sequence (while waiting) or
answers a catch target (during a sequence); P pauses or resumes (between sequences);
Escape aborts (the log keeps what was shown).
"""

from __future__ import annotations

import logging
import math
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import QObject, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QFont, QGuiApplication, QImage, QPainter, QPen
from PySide6.QtWidgets import QHBoxLayout, QLabel, QProgressBar, QPushButton, QVBoxLayout, QWidget

from ..presentation import TimingLog, swap_pacing
from ..rsvp import Frame, RsvpRun
from ..stimuli import FrameTiming, Stimulus, Trial

__all__ = ["PresenterOptions", "Presenter", "opengl_available", "paint_frame"]

logger = logging.getLogger("bci_app")

BACKGROUND = QColor(128, 128, 128)  # mid grey, as in THINGS-EEG2
CORNERS = ("top-left", "top-right", "bottom-left", "bottom-right")
PHOTODIODE_PX = 60
#: swaps measured before the first sequence, to check that vsync paces them
VSYNC_PROBE_SWAPS = 30
#: seconds assumed for a pause between sequences before any was measured
DEFAULT_PAUSE_S = 2.0


@dataclass
class PresenterOptions:
    """How the presenter shows its run (the command line's options)."""

    vsync: bool = True
    refresh_hz: float | None = None  # None: the screen's
    on_s: float = 0.1
    off_s: float = 0.1
    auto_pause: float | None = None
    photodiode: str | None = None  # a corner, or None
    image_px: int | None = None  # None: 500, at most 80 % of the screen's shorter side
    screen: int = 0
    fullscreen: bool = True
    require_receiver: bool = True
    controls: bool | None = None  # None: when the stimulus window leaves room for them


def opengl_available() -> bool:
    """Whether an OpenGL context can be made here (the offscreen platform has none)."""
    from PySide6.QtGui import QOpenGLContext

    return QOpenGLContext().create()


def _fixation(p: QPainter, cx: float, cy: float, r: float) -> None:
    p.setPen(Qt.NoPen)
    p.setBrush(QColor(255, 255, 255))
    p.drawEllipse(QRectF(cx - r, cy - r, 2 * r, 2 * r))
    p.setBrush(QColor(220, 30, 30))
    p.drawEllipse(QRectF(cx - 0.6 * r, cy - 0.6 * r, 1.2 * r, 1.2 * r))


def paint_frame(p: QPainter, width: int, height: int, frame: Frame, image: QImage | None, *,
                photodiode: str | None = None, progress: float | None = None) -> None:
    """Draw one frame: grey background, the image centred, the fixation dot on top, the
    photodiode square (white on the frames of odd onsets, black otherwise) in its corner,
    and between sequences the prompt and a progress bar."""
    p.fillRect(0, 0, width, height, BACKGROUND)
    cx, cy = width / 2, height / 2
    if frame.image is not None and image is not None:
        p.drawImage(int(cx - image.width() / 2), int(cy - image.height() / 2), image)
    if frame.fixation:
        _fixation(p, cx, cy, max(4.0, min(width, height) / 120))
    if photodiode:
        x = 0 if photodiode.endswith("left") else width - PHOTODIODE_PX
        y = 0 if photodiode.startswith("top") else height - PHOTODIODE_PX
        p.fillRect(x, y, PHOTODIODE_PX, PHOTODIODE_PX, QColor(255, 255, 255) if frame.photodiode else QColor(0, 0, 0))
    if frame.prompt:
        font = QFont()
        font.setPixelSize(max(14, height // 30))
        p.setFont(font)
        p.setPen(QColor(255, 255, 255))
        p.drawText(QRectF(0, cy + height / 8, width, height / 4), Qt.AlignHCenter | Qt.AlignTop | Qt.TextWordWrap,
                   frame.prompt)
        if progress is not None:
            bar = QRectF(width * 0.25, height * 0.9, width * 0.5, max(6.0, height / 100))
            p.setPen(QPen(QColor(230, 230, 230), 1))
            p.setBrush(Qt.NoBrush)
            p.drawRect(bar)
            p.fillRect(QRectF(bar.x(), bar.y(), bar.width() * min(max(progress, 0.0), 1.0), bar.height()),
                       QColor(230, 230, 230))


class _ImageCache:
    """The images of the next sequences, decoded and scaled on a worker thread (``QImage``
    may be made off the GUI thread), so that a sequence never waits for a file."""

    def __init__(self, size: int, ahead: int = 2):
        self.size, self.ahead = size, ahead
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="presenter-images")
        self._futures: dict[Path, Future] = {}
        self._keep: set[Path] = set()

    def _load(self, path: Path) -> QImage:
        image = QImage(str(path))
        if image.isNull():
            raise OSError(f"{path}: not an image Qt can read")
        image = image.scaled(self.size, self.size, Qt.KeepAspectRatio, Qt.SmoothTransformation)
        return image.convertToFormat(QImage.Format_ARGB32_Premultiplied)

    def prefetch(self, sequences: list[list[Trial]], first: int) -> None:
        """Load sequences ``first`` .. ``first + ahead``; forget the ones before."""
        wanted = {t.stimulus.path for s in sequences[first:first + self.ahead + 1] for t in s}
        for path in wanted:
            if path not in self._futures:
                self._futures[path] = self._pool.submit(self._load, path)
        for path in list(self._futures):
            if path not in wanted and path not in self._keep:
                del self._futures[path]

    def ready(self, sequence: list[Trial]) -> bool:
        return all(t.stimulus.path in self._futures and self._futures[t.stimulus.path].done() for t in sequence)

    def get(self, stimulus: Stimulus) -> QImage:
        future = self._futures.get(stimulus.path)
        if future is None:
            future = self._futures[stimulus.path] = self._pool.submit(self._load, stimulus.path)
        return future.result()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class _StimulusSurface:
    """What both stimulus windows share: the frame to paint, and the key presses."""

    def setup_surface(self, presenter: "Presenter") -> None:
        self.presenter = presenter
        self.current = Frame(None, prompt="starting")
        self.image: QImage | None = None
        if hasattr(self, "setTitle"):  # a QWindow
            self.setTitle("bci-app present")
        else:
            self.setWindowTitle("bci-app present")
        self.setCursor(Qt.BlankCursor)

    def paint_current(self, p: QPainter) -> None:
        pr = self.presenter
        paint_frame(p, self.width(), self.height(), self.current, self.image, photodiode=pr.options.photodiode,
                    progress=pr.progress_fraction() if self.current.prompt else None)

    def keyPressEvent(self, event) -> None:  # noqa: N802 (Qt's name)
        self.presenter.key(event.key())

    def closeEvent(self, event) -> None:  # noqa: N802
        self.presenter.window_closed(self)
        event.accept()


def _gl_window_class():
    from PySide6.QtOpenGL import QOpenGLWindow

    class GLStimulusWindow(_StimulusSurface, QOpenGLWindow):
        """The vsync display loop's window: draws with QPainter, stamps each swap."""

        def __init__(self, presenter: "Presenter"):
            QOpenGLWindow.__init__(self, QOpenGLWindow.NoPartialUpdate)
            fmt = self.format()
            fmt.setSwapInterval(1)
            fmt.setSwapBehavior(fmt.SwapBehavior.DoubleBuffer)
            self.setFormat(fmt)
            self.setup_surface(presenter)
            self.frameSwapped.connect(self._swapped)

        def paintGL(self) -> None:  # noqa: N802
            p = QPainter(self)
            self.paint_current(p)
            p.end()

        def _swapped(self) -> None:
            self.makeCurrent()
            self.context().functions().glFinish()  # the swap has happened, not just been queued
            self.presenter.flipped()

    return GLStimulusWindow


class _RasterStimulusWindow(_StimulusSurface, QWidget):
    """The timer display loop's window: repainted synchronously on each tick."""

    def __init__(self, presenter: "Presenter"):
        QWidget.__init__(self)
        self.setAttribute(Qt.WA_OpaquePaintEvent)
        self.setAutoFillBackground(False)
        self.setup_surface(presenter)

    def paintEvent(self, event) -> None:  # noqa: N802
        p = QPainter(self)
        self.paint_current(p)
        p.end()


class PresenterControls(QWidget):
    """The experimenter's panel: the timing mode, receivers, progress and time left,
    and start / pause / resume / abort."""

    def __init__(self, presenter: "Presenter"):
        super().__init__()
        self.presenter = presenter
        self.setWindowTitle("bci-app present: controls")
        self.mode = QLabel("display: measuring")
        self.stream = QLabel("")
        self.bar = QProgressBar()
        self.left = QLabel("")
        self.start_button = QPushButton("Start next sequence")
        self.pause_button = QPushButton("Pause")
        self.abort_button = QPushButton("Abort")
        self.start_button.clicked.connect(presenter.proceed)
        self.pause_button.clicked.connect(presenter.toggle_pause)
        self.abort_button.clicked.connect(presenter.abort)
        buttons = QHBoxLayout()
        for b in (self.start_button, self.pause_button, self.abort_button):
            buttons.addWidget(b)
        layout = QVBoxLayout(self)
        for w in (self.mode, self.stream, self.bar, self.left):
            layout.addWidget(w)
        layout.addLayout(buttons)

    def refresh(self) -> None:
        pr = self.presenter
        self.mode.setText(f"display: {pr.mode_text()}")
        self.stream.setText(f"markers: {pr.sender.name!r}, "
                            + ("received" if pr.receiver_seen else "no receiver yet"))
        run = pr.run
        if run is not None:
            self.bar.setMaximum(max(run.total, 1))
            self.bar.setValue(run.shown)
            self.left.setText(f"{run.shown} of {run.total} images, sequence {min(run.sequence + 1, len(run.sequences))} "
                              f"of {len(run.sequences)}, {run.state}; about {_clock(pr.seconds_left())} left")
            self.pause_button.setText("Resume" if run.state == "paused" else "Pause")
            self.start_button.setEnabled(run.state == "waiting" and run.hold is None)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Presenter(QObject):
    """Shows ``sequences`` on the screen and sends their markers through ``sender``.

    Parameters
    ----------
    sequences : list of list of Trial
    sender : callable(trial, flip_time), with ``name`` and ``has_consumers()``
        The marker outlet (:class:`~bci_app.rsvp.MarkerSender`).
    options : PresenterOptions
    clock : callable
        The LSL clock (``mne_lsl.lsl.local_clock``).

    Emits ``finished(log)`` once the run is done or aborted (the window is closed then).
    """

    finished = Signal(object)
    changed = Signal()

    def __init__(self, sequences: list[list[Trial]], sender, options: PresenterOptions, *, clock=None):
        super().__init__()
        if clock is None:
            from mne_lsl.lsl import local_clock as clock
        self.sequences, self.sender, self.options, self.clock = sequences, sender, options, clock
        screens = QGuiApplication.screens()
        if not 0 <= options.screen < len(screens):
            from trainer.errors import UsageError

            names = ", ".join(f"{i}: {s.name()} {s.size().width()}x{s.size().height()}" for i, s in enumerate(screens))
            raise UsageError(f"--screen {options.screen}: this display has {len(screens)} screen(s) ({names})")
        self.screen = screens[options.screen]
        self.nominal_hz = float(options.refresh_hz or self.screen.refreshRate() or 60.0)
        if not (math.isfinite(self.nominal_hz) and self.nominal_hz > 0):
            self.nominal_hz = 60.0
        side = min(self.screen.size().width(), self.screen.size().height())
        self.image_px = int(options.image_px or min(500, 0.8 * side))
        self.images = _ImageCache(self.image_px)
        self.images.prefetch(sequences, 0)
        self.mode = "vsync" if options.vsync else "timer"
        self.mode_reason = "" if options.vsync else "--no-vsync"
        if self.mode == "vsync" and not opengl_available():
            self.mode, self.mode_reason = "timer", f"no OpenGL on the '{QGuiApplication.platformName()}' platform"
        self.run: RsvpRun | None = None
        self.log: TimingLog | None = None
        self.window = None
        self.controls: PresenterControls | None = None
        self.receiver_seen = False
        self._retired = None  # the vsync window replaced by the timer's (see _measured)
        self.error: str | None = None  # what stopped the run, when something did
        self._probe: list[float] = []
        self._pauses: list[float] = []
        self._ended_at: float | None = None
        self._timer = QTimer(self)
        self._timer.setTimerType(Qt.PreciseTimer)
        self._timer.setSingleShot(True)
        self._timer.timeout.connect(self._tick)
        self._next_tick = 0.0
        self._done = False
        self._ui = QTimer(self)
        self._ui.setInterval(250)
        self._ui.timeout.connect(self._refresh_ui)

    # -- the experimenter's actions ------------------------------------------------------
    def proceed(self) -> None:
        if self.run is not None:
            self.run.proceed()

    def toggle_pause(self) -> None:
        if self.run is None:
            return
        if self.run.state == "paused" or (self.run.state == "running" and self.run._pause_after):
            self.run.resume()
        else:
            self.run.pause()

    def abort(self) -> None:
        if self.run is None:  # before the display was measured: nothing shown yet
            self.log = TimingLog(FrameTiming.for_display(self.nominal_hz, self.options.on_s, self.options.off_s),
                                 self.mode)
            self.log.aborted = True
            self._finish()
            return
        self.run.abort()

    def key(self, key: int) -> None:
        if key in (Qt.Key_Space, Qt.Key_Return, Qt.Key_Enter):
            if self.run is not None and self.run.state == "running":
                self.log.respond(self.clock())
            else:
                self.proceed()
        elif key == Qt.Key_P:
            self.toggle_pause()
        elif key == Qt.Key_Escape:
            self.abort()

    def window_closed(self, window) -> None:
        """The participant's window was closed (not replaced): that ends the run."""
        if window is self.window and not self._done:
            self.abort()
            if self.run is not None:
                self._finish()

    # -- what the display shows ------------------------------------------------------------
    def mode_text(self) -> str:
        hz = self.log.timing.refresh_hz if self.log is not None else self.nominal_hz
        text = f"{self.mode}, {hz:.2f} Hz"
        if self.mode == "vsync" and self.run is None:
            text += " (measuring the display)"
        return text + (f" ({self.mode_reason})" if self.mode_reason else "")

    def pause_estimate(self) -> float:
        if self.options.auto_pause is not None:
            return self.options.auto_pause
        return sum(self._pauses) / len(self._pauses) if self._pauses else DEFAULT_PAUSE_S

    def seconds_left(self) -> float:
        return self.run.seconds_left(self.pause_estimate()) if self.run is not None else 0.0

    def progress_fraction(self) -> float | None:
        return self.run.shown / max(self.run.total, 1) if self.run is not None else None

    def start(self) -> None:
        """Open the stimulus window (and the controls) and start the display loop."""
        if self.mode == "vsync":
            self.window = _gl_window_class()(self)
        else:
            self._begin_run(self.nominal_hz)
            self.window = _RasterStimulusWindow(self)
        self._show_window()
        if self.options.controls or (self.options.controls is None and self._room_for_controls()):
            self.controls = PresenterControls(self)
            self.controls.show()
        self._ui.start()
        logger.debug("present: %d images in %d sequences on screen %d (%s), markers on %r",
                     sum(len(s) for s in self.sequences), len(self.sequences), self.options.screen,
                     self.screen.name() or "unnamed", self.sender.name)
        if self.mode == "timer":
            self._next_tick = self.clock()
            self._timer.start(0)
        else:
            self.window.update()

    def _room_for_controls(self) -> bool:
        return not self.options.fullscreen or len(QGuiApplication.screens()) > 1

    def _show_window(self) -> None:
        w = self.window
        if hasattr(w, "setScreen"):
            w.setScreen(self.screen)
        geo = self.screen.geometry()
        if self.options.fullscreen:
            w.setGeometry(geo)
            w.showFullScreen()
        else:
            side = min(self.image_px + 200, geo.width(), geo.height())
            w.setGeometry(geo.x() + (geo.width() - side) // 2, geo.y() + (geo.height() - side) // 2, side, side)
            w.show()
        if hasattr(w, "requestActivate"):
            w.requestActivate()
        else:
            w.activateWindow()

    def _begin_run(self, refresh_hz: float) -> None:
        timing = FrameTiming.for_display(refresh_hz, self.options.on_s, self.options.off_s)
        self.log = TimingLog(timing, self.mode)
        self.run = RsvpRun(self.sequences, timing, self._send, self.log, auto_pause=self.options.auto_pause)
        self._update_hold()

    def _send(self, trial: Trial, flip_time: float) -> None:
        self.sender(trial, flip_time)

    def _update_hold(self) -> None:
        run = self.run
        if not self.receiver_seen and self.options.require_receiver:
            self.receiver_seen = self.sender.has_consumers()
        if self.options.require_receiver and not self.receiver_seen:
            run.hold = f"waiting for a program to receive the markers ('{self.sender.name}')"
        elif run.state == "waiting" and run.sequence < len(self.sequences) and not self.images.ready(self.sequences[run.sequence]):
            run.hold = "loading images"
        else:
            run.hold = None

    def _next_frame(self, now: float) -> None:
        run = self.run
        was_running, sequence = run.state == "running", run.sequence
        if run.state == "waiting":
            self._update_hold()
        frame = run.frame(now)
        if run.state == "running" and not was_running:
            if self._ended_at is not None:
                self._pauses.append(now - self._ended_at)
            self.images.prefetch(self.sequences, run.sequence)
        if was_running and run.sequence != sequence:
            self._ended_at = now
        if frame.prompt and run.state == "waiting" and run.hold is None and self.options.auto_pause is None:
            frame = Frame(None, photodiode=frame.photodiode,
                          prompt=f"{frame.prompt}\nabout {_clock(self.seconds_left())} left")
        image = None
        if frame.image is not None:
            try:
                image = self.images.get(frame.image)
            except OSError as err:  # a file that is not an image: stop, and say which
                self.error = str(err)
                run.abort()
                frame = Frame(None, prompt=f"stopped: {err}")
        self.window.current = frame
        self.window.image = image

    # -- the display loops -----------------------------------------------------------------
    def flipped(self) -> None:
        """vsync: the frame is on screen now."""
        if self._done:
            return
        now = self.clock()
        if self.run is None:
            self._probe.append(now)
            if len(self._probe) <= VSYNC_PROBE_SWAPS:
                self.window.update()
                return
            self._measured(now)
            if self.run is None:  # fell back to the timer
                return
        else:
            self.run.flipped(now)
        if self.run.finished:
            self._finish()
            return
        self._next_frame(now)
        self.window.update()

    def _measured(self, now: float) -> None:
        """vsync: decide from the probe's swap intervals whether the display paces them."""
        paced, hz = swap_pacing(self._probe, self.nominal_hz)
        if paced:
            logger.info("present: vsync in effect (a swap every %.2f ms: %.2f Hz)", 1000 / hz, hz)
            self._begin_run(hz)  # the display's true rate (59.94 where the screen says 60)
            return
        self.mode = "timer"
        self.mode_reason = (f"vsync asked for, but buffer swaps here are not paced by the display: one every "
                            f"{1000 / hz:.1f} ms on a {self.nominal_hz:g} Hz screen")
        logger.warning("present: %s: timing by the timer instead", self.mode_reason)
        old = self.window
        self._begin_run(self.nominal_hz)
        self.window = _RasterStimulusWindow(self)
        self._show_window()
        # this runs inside the old window's frameSwapped signal: keep it alive and close it
        # once that returns (deleting a window inside its own signal crashes); no longer
        # self.window, so closing it does not end the run
        self._retired = old
        QTimer.singleShot(0, old.close)
        self._next_tick = self.clock()
        self._timer.start(0)

    def _tick(self) -> None:
        """timer: paint the next frame now (it is due), then schedule the one after."""
        if self._done:
            return
        now = self.clock()
        while now < self._next_tick:  # the timer fires up to a millisecond early
            now = self.clock()
        self._next_frame(now)
        self.window.repaint()
        flip = self.clock()
        self.run.flipped(flip)
        if self.run.finished:
            self._finish()
            return
        period = 1.0 / self.log.timing.refresh_hz
        self._next_tick += period
        if self._next_tick < flip:  # missed one or more ticks: go on from the next one due
            self._next_tick += math.ceil((flip - self._next_tick) / period) * period
        self._timer.start(max(0, int((self._next_tick - self.clock()) * 1000)))

    def _refresh_ui(self) -> None:
        if self.controls is not None:
            self.controls.refresh()
        self.changed.emit()

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._timer.stop()
        self._ui.stop()
        self.images.close()
        if self.controls is not None:
            self.controls.close()
        if self.window is not None:
            self.window.close()
        self.finished.emit(self.log)


def run_presenter(args) -> int:
    """``bci-app present``: build the run from the command line, show it, write the log."""
    import sys

    from PySide6.QtWidgets import QApplication

    from ..rsvp import MarkerSender
    from ..stimuli import limit_duration, load_stimuli, make_sequences
    from .app import route_qt_messages

    stimuli = load_stimuli(args.images, "training" if args.set == "train" else "test")  # checks the source
    catch = None
    if args.catch:
        path = Path(args.catch)
        if not path.is_file():
            from trainer.errors import MissingFileError

            raise MissingFileError(f"--catch {path}: no such image file")
        catch = Stimulus(0, f"catch/{path.name}", path)
    sequences = make_sequences(stimuli, repetitions=args.repetitions, seed=args.seed,
                               sequence_length=args.sequence_length, catch=catch,
                               catch_rate=args.catch_rate if catch is not None else 0.0)
    options = PresenterOptions(vsync=not args.no_vsync, refresh_hz=args.refresh, on_s=args.on_ms / 1000,
                               off_s=args.off_ms / 1000, auto_pause=args.pause, photodiode=args.photodiode,
                               image_px=args.image_size, screen=args.screen, fullscreen=not args.windowed,
                               require_receiver=not args.no_receiver_check)
    route_qt_messages()
    app = QApplication.instance() or QApplication([sys.argv[0]])
    app.setApplicationName("bci-app present")
    if args.duration is not None:
        hz = args.refresh or (app.primaryScreen().refreshRate() if app.primaryScreen() else 60.0) or 60.0
        timing = FrameTiming.for_display(hz, options.on_s, options.off_s)
        before = len(sequences)
        sequences = limit_duration(sequences, timing, args.duration, args.pause if args.pause is not None else DEFAULT_PAUSE_S)
        if len(sequences) < before:
            print(f"bci-app present: --duration {args.duration:g} min: showing the first {len(sequences)} of {before} "
                  "sequences", file=sys.stderr)
    part = "training" if args.set == "train" else "test"
    data_folder = (Path(args.images) / "image_set").is_dir() and not (Path(args.images) / "bundle.json").is_file()
    sender = MarkerSender(args.markers, labels=args.labels, image_set=part if data_folder else None)
    presenter = Presenter(sequences, sender, options)
    result = {}

    def finished(log):
        result["log"] = log
        app.quit()

    presenter.finished.connect(finished)
    import signal

    signal.signal(signal.SIGINT, lambda *_: presenter.abort())
    signal.signal(signal.SIGTERM, lambda *_: presenter.abort())
    keepalive = QTimer()  # lets Python see signals while Qt runs
    keepalive.timeout.connect(lambda: None)
    keepalive.start(200)
    n_images = sum(len(s) for s in sequences)
    print(f"bci-app present: {n_images} images in {len(sequences)} sequences, markers on {args.markers!r} "
          f"({'labels' if args.labels else 'numeric ids'}); space starts a sequence, P pauses, Esc aborts",
          file=sys.stderr, flush=True)
    presenter.start()
    started = time.monotonic()
    app.exec()
    keepalive.stop()
    log = result.get("log") or presenter.log
    mode_line = presenter.mode_text()
    sender.close()
    path = Path(args.log) if args.log else Path(time.strftime("presentation-%Y%m%d-%H%M%S.json"))
    log.write(path)
    if presenter.error:
        from trainer.errors import BCIError

        raise BCIError(f"{presenter.error} (the timing log of what was shown is in {path})")
    print(f"bci-app present: display: {mode_line}; {time.monotonic() - started:.0f} s", file=sys.stderr)
    print(f"bci-app present: {log.report()}", file=sys.stderr)
    print(f"bci-app present: timing log written to {path}", file=sys.stderr)
    return 0
