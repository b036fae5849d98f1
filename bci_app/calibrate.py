"""One calibration block for a new person: present, record, adapt (``bci-app calibrate``
and the window's Calibrate… action).

A bundle trained on other people decodes a new person poorly.  A calibration block shows
the person *training*-concept images (``bci-app present --set train --labels --duration
MIN``, a process of its own) while the live session records the EEG and the presenter's
markers; then :func:`trainer.adapt.adapt_bundle` fine-tunes the bundle's brain side on
that recording, on a worker thread, and the new bundle decodes the person.

Nothing is lost on the way: every block gets its own folder, ::

    <calibration folder>/<YYYYmmdd-HHMMSS>/
        calibration.json     what was asked, what happened (updated at each phase)
        presenter.log        the presenter's output
        presentation.json    its timing log
        recording/           the bci-app --record folder (recording-raw.fif)
        bundle/              the adapted bundle (unless another folder was asked for)

A presenter that fails says so with the end of its log; an adaptation that fails or is
cancelled keeps the recording, and the message gives the ``bci-train adapt`` command that
adapts it by hand.  Adapting an adapted bundle continues from it (``adapt_bundle`` reuses
the recordings it was adapted on), so blocks add up.

:class:`Calibration` holds no thread but the adaptation's and knows no Qt: the headless
command drives it with :func:`record_block` (its own :class:`~bci_app.pipeline.LiveSession`),
the window with its live worker and a timer that polls :meth:`Calibration.poll`-style
properties.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import shlex
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from trainer.config import ADAPT_PARTS
from trainer.errors import BCIError, MissingFileError, UsageError
from trainer.files import atomic_write_text

from .demo import DemoProcess, start_app_process

__all__ = ["ADAPT_MODES", "Calibration", "CalibrationCancelled", "CalibrationError", "CalibrationResult",
           "UnknownMarkersFilter", "adapt_by_hand", "default_calibration_root", "default_image_folder", "record_block"]

logger = logging.getLogger("bci_app")

#: what ``--adapt`` trains: ``bci-train adapt --adapt``'s choices
ADAPT_MODES = ADAPT_PARTS
#: the presenter's key-paced pause, as ``bci-app present --duration`` counts it
_KEY_PAUSE_S = 2.0
#: recorded after the presenter ends, beyond the epoch window, so the last epochs are whole
_TAIL_MARGIN_S = 1.0
_RECORDING_FIF = "recording-raw.fif"


class CalibrationError(BCIError):
    """A calibration block that could not finish; the message says what is kept and how
    to go on."""


class CalibrationCancelled(CalibrationError):
    """Raised inside the adaptation's progress callback once :meth:`Calibration.cancel`
    was called."""


@dataclass(frozen=True)
class CalibrationResult:
    folder: Path  # the block's folder
    recording: Path  # its recording folder
    bundle: Path  # the adapted bundle
    summary: dict  # adapt_bundle's summary


def default_calibration_root() -> Path:
    """Where calibration blocks go unless told: ``~/bci-recordings/calibration``."""
    return Path.home() / "bci-recordings" / "calibration"


def default_image_folder(bundle_path: str | os.PathLike) -> Path | None:
    """The data folder a bundle was trained on (its provenance) when it holds the images
    (``image_set/``), else None."""
    try:
        config = json.loads((Path(bundle_path) / "bundle.json").read_text())
        data = config.get("provenance", {}).get("data")
    except (OSError, ValueError, AttributeError):
        return None
    if not isinstance(data, str) or not data:
        return None
    folder = Path(data).expanduser()
    return folder if (folder / "image_set").is_dir() else None


def adapt_by_hand(base: str | os.PathLike, recording: str | os.PathLike, images: str | os.PathLike,
                  out: str | os.PathLike, adapt: str = "all") -> str:
    """The ``bci-train adapt`` command line that adapts ``base`` on ``recording``."""
    args = ["bci-train", "adapt", "--bundle", str(base), "--recording", str(recording), "--images", str(images),
            "--out", str(out)]
    if adapt != "all":
        args += ["--adapt", adapt]
    return shlex.join(args)


def _new_block_folder(root: Path) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for n in range(1, 1000):
        folder = root / (stamp if n == 1 else f"{stamp}-{n}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
    raise CalibrationError(f"could not make a new calibration folder in {root}")


def _default_adapt(*args, **kwargs) -> dict:
    from trainer.adapt import adapt_bundle

    return adapt_bundle(*args, **kwargs)


class Calibration:
    """One calibration block: the presenter, the recording's folder, the adaptation.

    Parameters
    ----------
    base : path
        The bundle to adapt (an inter-subject bundle, or an adapted one: blocks add up).
    images : path
        The data folder the presenter shows the training images of (THINGS layout), or a
        folder of images; ``adapt_bundle`` finds the images the markers name there.
    minutes : float
        Length of the block (``bci-app present --duration``).
    root : path | None
        The calibration folder; the block gets a new ``<root>/<timestamp>`` folder
        (default :func:`default_calibration_root`).
    out : path | None
        Where the adapted bundle goes (new or empty; default ``<block>/bundle``).
    markers : str | None
        The presenter's marker stream name (default: a unique ``bci-calibrate-…``).
    screen, windowed, pause
        As ``bci-app present --screen / --windowed / --pause`` (``pause`` None: the
        participant starts each sequence with the space bar).
    adapt, epochs, device
        As ``bci-train adapt``.
    seed : int | None
        Order of the images (default: a new one per block, so blocks show other images).
    offscreen : bool
        The presenter runs on Qt's offscreen platform (no window; for tests and checks).
    adapt_fn : callable | None
        Called as ``adapt_bundle(base, [recording], images, out, adapt=, epochs=,
        device=, progress=)`` (default :func:`trainer.adapt.adapt_bundle`): a seam for
        tests of the window, which need no real training.
    """

    def __init__(self, base: str | os.PathLike, images: str | os.PathLike, *, minutes: float = 5.0,
                 root: str | os.PathLike | None = None, out: str | os.PathLike | None = None,
                 markers: str | None = None, screen: int | None = None, windowed: bool = False,
                 pause: float | None = None, adapt: str = "all", epochs: int = 40, device: str = "auto",
                 seed: int | None = None, offscreen: bool = False,
                 adapt_fn: Callable[..., dict] | None = None):
        if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not (math.isfinite(minutes)
                                                                                      and minutes > 0):
            raise UsageError(f"--minutes must be a positive number, got {minutes!r}")
        if adapt not in ADAPT_MODES:
            raise UsageError(f"--adapt must be one of {', '.join(ADAPT_MODES)}, got {adapt!r}")
        if screen is not None and (isinstance(screen, bool) or not isinstance(screen, int) or screen < 0):
            raise UsageError(f"--screen must be a screen number >= 0, got {screen!r}")
        if pause is not None and not (math.isfinite(pause) and pause >= 0):
            raise UsageError(f"--pause must be >= 0 seconds, got {pause!r}")
        self.base = Path(base).expanduser().resolve()
        if not (self.base / "bundle.json").is_file():
            raise MissingFileError(f"--bundle {self.base}: not a bundle folder (no bundle.json)")
        self.images = Path(images).expanduser().resolve()
        self.minutes, self.adapt, self.epochs, self.device = float(minutes), adapt, int(epochs), device
        self.screen, self.windowed, self.pause, self.offscreen = screen, bool(windowed), pause, bool(offscreen)
        self.seed = int.from_bytes(os.urandom(4), "little") >> 1 if seed is None else int(seed)
        self.markers = markers or f"bci-calibrate-{uuid.uuid4().hex[:8]}"
        self._adapt_fn = adapt_fn or _default_adapt
        self.n_images, self.repetitions, self.planned_seconds = self._plan()  # checks the images
        if out is not None:
            out = Path(out).expanduser().resolve()
            if out.exists() and (not out.is_dir() or any(out.iterdir())):
                raise UsageError(f"--out {out} is not empty; give a new folder")
        self.root = Path(root).expanduser().resolve() if root is not None else default_calibration_root()
        self.folder = _new_block_folder(self.root)
        self.out = out if out is not None else self.folder / "bundle"
        self.recording_dir = self.folder / "recording"
        self.presenter: DemoProcess | None = None
        self.phase = "ready"  # presenting, recorded, adapting, done, failed, cancelled
        self.error: str | None = None
        self.summary: dict | None = None
        self.presented: dict | None = None  # the presenter's timing summary
        self._lock = threading.Lock()
        self._progress: tuple[str, int, int] = ("", 0, 1)
        self._cancel = threading.Event()
        self._thread: threading.Thread | None = None
        self._t_presenter: float | None = None
        self._save()

    # -- the plan -------------------------------------------------------------------------
    def _plan(self) -> tuple[int, int, float]:
        """(training images, repetitions, seconds) of the block, as the presenter will
        show it (at 60 Hz); checks that ``images`` holds training images."""
        from .stimuli import FrameTiming, limit_duration, load_stimuli, make_sequences

        stimuli = load_stimuli(self.images, "training")
        if not stimuli:
            raise UsageError(f"--images {self.images}: no training images to show")
        timing = FrameTiming.for_display(60.0)
        pause = _KEY_PAUSE_S if self.pause is None else self.pause
        soa = timing.soa_frames * timing.frame
        # enough repetitions to fill the block; the presenter's --duration cuts the rest
        repetitions = max(1, math.ceil(60.0 * self.minutes / (len(stimuli) * soa)))
        sequences = limit_duration(make_sequences(stimuli, repetitions=repetitions, seed=self.seed), timing,
                                   self.minutes, pause)
        seconds = sum(pause + len(s) * soa for s in sequences)
        return len(stimuli), repetitions, seconds

    # -- the record of the block ----------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        return {"base": str(self.base), "images": str(self.images), "minutes": self.minutes, "markers": self.markers,
                "seed": self.seed, "repetitions": self.repetitions, "adapt": self.adapt, "epochs": self.epochs,
                "recording": str(self.recording_dir), "out": str(self.out), "phase": self.phase, "error": self.error,
                "presented": self.presented,
                "adaptation": None if self.summary is None else {k: v for k, v in self.summary.items()
                                                                 if k != "history"}}

    def _save(self) -> None:
        try:
            atomic_write_text(self.folder / "calibration.json",
                              json.dumps(self.describe(), indent=2, default=str) + "\n")
        except OSError as err:  # the record is a convenience: the block goes on
            logger.warning("calibration: could not write %s: %s", self.folder / "calibration.json", err)

    def adapt_command(self) -> str:
        """``bci-train adapt`` on this block's recording, to run by hand."""
        return adapt_by_hand(self.base, self.recording_dir, self.images, self.out, self.adapt)

    def _kept(self) -> str:
        if (self.recording_dir / _RECORDING_FIF).is_file():
            return f"the recording is kept in {self.recording_dir}; to adapt on it by hand: {self.adapt_command()}"
        if (self.recording_dir / "recording.vhdr").is_file():
            return (f"the recording's journal is kept in {self.recording_dir}: 'bci-app recover {self.recording_dir}' "
                    f"finishes it, then: {self.adapt_command()}")
        return f"nothing was recorded (see {self.folder})"

    # -- presenting -----------------------------------------------------------------------
    def presenter_command(self) -> list[str]:
        """The ``bci-app present`` arguments of this block."""
        args = ["present", "--images", str(self.images), "--set", "train", "--labels", "--duration", f"{self.minutes:g}",
                "--repetitions", str(self.repetitions), "--seed", str(self.seed), "--markers", self.markers,
                "--log", str(self.folder / "presentation.json"), "--exit-with-parent"]
        if self.screen is not None:
            args += ["--screen", str(self.screen)]
        if self.windowed:
            args.append("--windowed")
        if self.pause is not None:
            args += ["--pause", f"{self.pause:g}"]
        return args

    def start_presenter(self) -> DemoProcess:
        """Start the presenter process (its output to ``presenter.log``)."""
        if self.phase != "ready":
            raise RuntimeError(f"Calibration.start_presenter: the block is {self.phase}, not ready")
        env = dict(os.environ)
        if self.offscreen:
            env["QT_QPA_PLATFORM"] = "offscreen"
        self.presenter = start_app_process("main", self.presenter_command(), self.markers, self.folder / "presenter.log",
                                           "presenter", env=env)
        self._t_presenter = time.monotonic()
        self.phase = "presenting"
        self._save()
        logger.info("calibration: presenting %.1f min of training images from %s on %r (folder %s)",
                    self.planned_seconds / 60, self.images, self.markers, self.folder)
        return self.presenter

    @property
    def presenting(self) -> bool:
        return self.presenter is not None and self.presenter.running

    def seconds_left(self) -> float:
        """About how long the presenter has still to go (its start-up counted in)."""
        if self._t_presenter is None:
            return self.planned_seconds
        return max(0.0, self.planned_seconds - (time.monotonic() - self._t_presenter))

    def tail_seconds(self, tmax: float) -> float:
        """How long to go on recording after the presenter ended, for epochs that end
        ``tmax`` after their marker."""
        return max(0.0, float(tmax)) + _TAIL_MARGIN_S

    def presenter_ended(self) -> dict:
        """Once the presenter has ended: its timing summary; a :class:`CalibrationError`
        when it failed (with the end of its log) or showed nothing."""
        if self.presenter is None or self.presenter.running:
            raise RuntimeError("Calibration.presenter_ended: the presenter is still running (or never started)")
        code = self.presenter.process.returncode
        try:
            self.presented = json.loads((self.folder / "presentation.json").read_text())["summary"]
        except (OSError, ValueError, KeyError, TypeError):
            self.presented = None
        if self._cancel.is_set():
            self._cancelled()
            return self.presented or {}
        if code != 0:
            self._fail(f"the presenter failed (exit code {code}): {self._log_tail()} [{self.presenter.log_path}]")
        if not self.presented or not self.presented.get("onsets"):
            self._fail(f"the presenter showed no image: {self._log_tail()} [{self.presenter.log_path}]")
        self.phase = "recorded"
        self._save()
        aborted = " (aborted)" if self.presented.get("aborted") else ""
        logger.info("calibration: the presenter showed %d images%s", self.presented["onsets"], aborted)
        return self.presented

    def _log_tail(self, lines: int = 4) -> str:
        """The end of the presenter's log on one line (errors are one line)."""
        text = self.presenter.error_text() if self.presenter is not None else ""
        tail = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(tail) or "no output"

    def presenter_ended_text(self) -> str:
        """What to tell of an ended presenter, on one line ("" while it runs)."""
        if self.presenter is None or self.presenter.running:
            return ""
        return f"the presenter ended: {self._log_tail()}"

    def adopt_recording(self, folder: str | os.PathLike) -> None:
        """Take a recording made without this block's presenter (``bci-app --record``
        while ``bci-app present --set train --labels`` ran by hand) as the block's, to
        adapt on it."""
        if self.phase != "ready":
            raise RuntimeError(f"Calibration.adopt_recording: the block is {self.phase}, not ready")
        folder = Path(folder).expanduser().resolve()
        if not folder.is_dir():
            raise MissingFileError(f"recording {folder} is not a folder")
        self.recording_dir = folder
        self.phase = "recorded"
        self._save()

    def _fail(self, message: str) -> None:
        self.phase, self.error = "failed", f"{message}; {self._kept()}"
        self._save()
        raise CalibrationError(self.error)

    def fail(self, message: str) -> CalibrationError:
        """Mark the block failed for ``message`` (from its driver: a stream that broke);
        returns the error to raise or show, which says what is kept."""
        self.stop_presenter()
        self.phase, self.error = "failed", f"{message}; {self._kept()}"
        self._save()
        return CalibrationError(self.error)

    def stop_presenter(self) -> None:
        if self.presenter is not None:
            self.presenter.stop()

    # -- adapting -------------------------------------------------------------------------
    def start_adapting(self) -> None:
        """Adapt the bundle on the block's recording on a worker thread; follow it with
        :attr:`progress`, :attr:`finished` and :meth:`result`."""
        if self.phase not in ("recorded",):
            raise RuntimeError(f"Calibration.start_adapting: the block is {self.phase}, not recorded")
        if self._cancel.is_set():
            self._cancelled()
            return
        if not (self.recording_dir / _RECORDING_FIF).is_file():
            self._fail(f"no {_RECORDING_FIF} in {self.recording_dir}")
        self.phase = "adapting"
        self._save()
        self._thread = threading.Thread(target=self._adapt, name="calibration-adapt", daemon=True)
        self._thread.start()

    def _report(self, phase: str, done: int, total: int) -> None:
        if self._cancel.is_set():
            raise CalibrationCancelled(phase)
        with self._lock:
            self._progress = (str(phase), int(done), int(total))

    def _adapt(self) -> None:
        kwargs: dict[str, Any] = dict(adapt=self.adapt, epochs=self.epochs, device=self.device, progress=self._report)
        try:
            parameters = inspect.signature(self._adapt_fn).parameters
        except (TypeError, ValueError):
            parameters = {}
        if "cancel" in parameters:
            kwargs["cancel"] = self._cancel.is_set
        try:
            summary = self._adapt_fn(self.base, [self.recording_dir], self.images, self.out, **kwargs)
        except CalibrationCancelled:
            self._cancelled()
        except Exception as err:  # shown as it is, with what is kept
            if self._cancel.is_set() or type(err).__name__ == "Cancelled":
                self._cancelled()
                return
            if not isinstance(err, (BCIError, OSError)):
                logger.error("calibration: the adaptation failed", exc_info=True)
            text = str(err) if isinstance(err, BCIError) else f"{type(err).__name__}: {err}"
            self.phase, self.error = "failed", f"the adaptation failed: {text}; {self._kept()}"
            self._save()
        else:
            self.summary = dict(summary)
            self.phase = "done"
            self._save()

    def _cancelled(self) -> None:
        self.phase, self.error = "cancelled", f"calibration cancelled; {self._kept()}"
        self._save()

    def cancel(self) -> None:
        """Stop the block: the presenter (its recording is kept) or the adaptation (at its
        next progress report; nothing is written)."""
        self._cancel.set()
        self.stop_presenter()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    @property
    def progress(self) -> tuple[str, int, int]:
        """The adaptation's last ``(phase, done, total)``."""
        with self._lock:
            return self._progress

    @property
    def finished(self) -> bool:
        return self.phase in ("done", "failed", "cancelled")

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the adaptation; True when it has ended."""
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    def result(self) -> CalibrationResult:
        """The adapted bundle, or the block's :class:`CalibrationError` (or
        :class:`CalibrationCancelled`)."""
        if self.phase == "done":
            return CalibrationResult(self.folder, self.recording_dir, self.out, self.summary or {})
        if self.phase == "cancelled":
            raise CalibrationCancelled(self.error)
        if self.phase == "failed":
            raise CalibrationError(self.error)
        raise RuntimeError(f"Calibration.result: the block is {self.phase}, not finished")


class UnknownMarkersFilter(logging.Filter):
    """The base bundle's gallery holds test images: the calibration's training images are
    'not a stimulus of the gallery' by design, which is not worth a warning each."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("marker %r is not a stimulus")


def record_block(cal: Calibration, stream: str, *, source_id: str | None = None, timeout: float = 30.0,
                 device: str = "auto") -> Path:
    """Present and record ``cal`` headless: start the presenter, decode and record
    ``stream`` with a :class:`~bci_app.pipeline.LiveSession` listening to the presenter's
    markers until the presenter has ended (and the last epochs' samples are in), then
    finish the recording.  Returns the recording folder; raises a
    :class:`CalibrationError` (the presenter failed; the stream broke) that says what is
    kept.  Ctrl-C (``KeyboardInterrupt``) stops the presenter and finishes the recording
    on its way out."""
    from trainer.bundle import load_bundle

    from .pipeline import LiveSession
    from .streams import ConnectCancelled

    bundle = load_bundle(cal.base)
    cal.start_presenter()
    quiet = UnknownMarkersFilter()
    logger.addFilter(quiet)
    session = None
    try:
        session = LiveSession(bundle, stream, markers=cal.markers, device=device, record=cal.recording_dir,
                              timeout=timeout, source_id=source_id)
        try:
            # a presenter that ends while the streams are looked for (it failed) stops the wait
            session.start(cancel=lambda: not cal.presenting)
        except ConnectCancelled:
            cal.presenter_ended()  # raises the presenter's error, with its log
            raise cal.fail("the presenter ended before the recording started") from None
        except BCIError as err:
            raise cal.fail(f"could not start recording: {err}"
                           + (f" ({cal.presenter_ended_text()})" if cal.presenter_ended_text() else "")) from None
        ended_at = None
        tail = cal.tail_seconds(bundle.spec.tmax)
        while True:
            session.step()
            if ended_at is None and not cal.presenting:
                ended_at = time.monotonic()
            if ended_at is not None and time.monotonic() - ended_at >= tail:
                break
            time.sleep(0.002)
    except BCIError as err:
        if isinstance(err, CalibrationError):
            raise
        raise cal.fail(f"the block stopped: {err}") from None
    finally:
        logger.removeFilter(quiet)
        if session is not None:
            summary = session.close()
            for problem in summary.get("problems") or []:
                logger.warning("calibration: %s", problem)
        cal.stop_presenter()
    cal.presenter_ended()
    return cal.recording_dir
