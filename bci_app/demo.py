"""The one-command demo (``bci-app --demo``): synthetic data, a demo bundle, and a live
experiment to decode.

The first run generates subject 1 of the ``tiny`` synthetic THINGS-like set and fits the
demo bundle on it with the default recipe (random ``resnet10t``: the only weights a fresh
offline machine has; about two and a half minutes on a 2-core CPU).  Both are kept in the demo
folder (``--demo-dir``, ``$BCI_DEMO_DIR`` or ``~/.cache/shallow-bci/demo``), so later runs
start in seconds (two demos started together on one folder take turns: a lock file).

Then, by default, the closed loop (:func:`start_closed_loop`): a ``bci-app present``
process shows the set's test images in RSVP and sends their markers, a
``bci-replay --simulate`` process is subject 1 looking at them (the data set's brain
answers each marker, live, on an EEG stream), and the app decodes that stream.  With
``--demo replay`` a ``bci-replay`` process plays the recorded raw test session in a loop
instead (:func:`start_replay`).  Each runs under a unique stream name and stops with the
app (also when the app dies).

``tiny`` rather than ``small``: with the random backbone the demo has to use, ``tiny``
(20-way) decodes at 5-6x chance while ``small`` (50-way) reaches 3x, and ``tiny`` is ready
in half the time.  Nothing here imports Qt.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from trainer.files import atomic_write_text
from trainer.progress import JobProgress, Progress

__all__ = ["DemoFiles", "DemoLoop", "DemoProcess", "demo_dir", "prepare_demo", "start_app_process", "start_closed_loop",
           "start_replay"]

logger = logging.getLogger("bci_app")

DEMO_VERSION = 1
DEMO_PRESET = "tiny"
DEMO_SUBJECT = 1


def demo_dir(path: str | os.PathLike | None = None) -> Path:
    """The demo folder: ``path``, else ``$BCI_DEMO_DIR``, else ``<user cache>/shallow-bci/demo``."""
    if path:
        return Path(path).expanduser()
    env = os.environ.get("BCI_DEMO_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shallow-bci" / "demo"


@dataclass(frozen=True)
class DemoFiles:
    root: Path
    data: Path  # the synthetic data set
    bundle: Path  # the fitted demo bundle

    @property
    def session(self) -> Path:
        """The raw session the demo replays (test images, subject 1, session 1)."""
        return self.data / "raw_data" / f"sub-{DEMO_SUBJECT:02d}" / "ses-01" / "raw_eeg_test.npy"


def _ready(files: DemoFiles) -> bool:
    try:
        info = json.loads((files.root / "demo.json").read_text())
    except (OSError, ValueError):
        return False
    return (info.get("version") == DEMO_VERSION and files.session.is_file()
            and (files.bundle / "bundle.json").is_file())


#: the demo's first run, in seconds on a 2-core CPU: generating the data (a fifth of it the
#: images, the rest the raw recordings), then fitting the bundle (only the ratio matters:
#: it shapes the time left shown while the work is young)
_COSTS = {"data": 20.0, "model": 95.0}
_IMAGES_SHARE = 0.2
_LOCK_POLL_SECONDS = 0.5


@contextmanager
def _demo_lock(root: Path, step: Progress) -> Iterator[None]:
    """Hold ``root/demo.lock`` (an exclusive ``flock``) while the block runs.  When another
    process holds it (a second ``bci-app --demo`` started at the same time), wait with a
    message, polling (so that ``step`` may stop the wait: a cancelled GUI task)."""
    import fcntl

    with open(root / "demo.lock", "a+") as fh:  # the lock file stays: removing it would race
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("demo: another bci-app is preparing the demo in %s; waiting for it to finish", root)
            while True:
                step("waiting for another bci-app preparing the demo", 0, 1)
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    time.sleep(_LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def prepare_demo(root: str | os.PathLike | None = None, progress: Progress | None = None) -> DemoFiles:
    """Make sure the demo data and bundle exist in ``root`` (see :func:`demo_dir`); return them.

    ``progress(phase, done, total)`` reports the work of a first run as one job (data
    generation and every step of the fit; see :mod:`trainer.progress`).  Work is done in
    ``*.partial`` folders and renamed when complete, so an interrupted run starts the data
    step again instead of using half a data set, and resumes the fit from its checkpoints.
    Two processes preparing the same folder at once take turns (a lock file in it): the
    second waits, then finds the demo ready.
    """
    root = demo_dir(root)
    files = DemoFiles(root=root, data=root / "data", bundle=root / "bundle")
    if _ready(files):
        _drop_old_checkpoints(files)
        return files
    root.mkdir(parents=True, exist_ok=True)
    step = progress or (lambda *_: None)
    with _demo_lock(root, step):
        if _ready(files):  # made by the process we waited for
            logger.info("demo: ready (prepared by another bci-app)")
            return files
        started = time.perf_counter()
        job = JobProgress(progress, _COSTS)
        _make_data(files, job)
        _make_bundle(files, job)
        atomic_write_text(root / "demo.json", json.dumps({"version": DEMO_VERSION, "preset": DEMO_PRESET,
                                                          "subject": DEMO_SUBJECT}, indent=2) + "\n")
        logger.info("demo: ready after %.0f s", time.perf_counter() - started)
    return files


def _drop_old_checkpoints(files: DemoFiles) -> None:
    """Demo bundles fitted by earlier versions kept the fit's checkpoints (~0.5 GB) in
    ``bundle/checkpoints``; a finished bundle never needs them."""
    old = files.bundle / "checkpoints"
    if old.is_dir():
        logger.info("demo: removing %s (checkpoints of a finished fit)", old)
        shutil.rmtree(old, ignore_errors=True)


def _make_data(files: DemoFiles, job: JobProgress) -> None:
    from trainer.synth import generate

    if (files.data / "synth.json").is_file() and files.session.is_file():
        job.skip("data")
        return
    partial = files.root / "data.partial"
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(files.data, ignore_errors=True)
    logger.info("demo: generating the synthetic data set (%s preset, subject %d) in %s",
                DEMO_PRESET, DEMO_SUBJECT, files.data)
    data_step = _DataSteps(job)
    generate(partial, DEMO_PRESET, subjects=1, progress=data_step)
    partial.rename(files.data)


class _DataSteps:
    """:func:`trainer.synth.generate` reports its phases one after another (images, then
    each raw recording, then the preprocessed files), each with its own count: follow them
    as one step of the demo's job (the images its first :data:`_IMAGES_SHARE`)."""

    def __init__(self, job: JobProgress):
        self.job = job

    def __call__(self, stage: str, done: int, total: int) -> None:
        share = done / total if total else 1.0
        if stage == "images":
            fraction = _IMAGES_SHARE * share
        else:
            fraction = _IMAGES_SHARE + (1 - _IMAGES_SHARE) * share if "raw" in stage else 1.0
        self.job.update("data", fraction, 1.0, f"data: {stage} ({done}/{total})")


def _make_bundle(files: DemoFiles, job: JobProgress) -> None:
    from trainer.fit import FitConfig, fit

    if (files.bundle / "bundle.json").is_file():
        job.skip("model")
        return
    partial = files.root / "bundle.partial"
    shutil.rmtree(files.bundle, ignore_errors=True)  # a bundle folder without bundle.json is unfinished
    logger.info("demo: training the demo bundle (random resnet10t, default recipe) in %s", files.bundle)
    # an interrupted fit resumes from its checkpoints (in the demo's cache, keyed by this folder)
    fit(FitConfig(data=str(files.data), subject=DEMO_SUBJECT, out=str(partial), backbone="resnet10t",
                  weights="random", cache=str(files.root / "cache")), progress=job.callback("model", "model: "))
    partial.rename(files.bundle)


class DemoProcess:
    """A background process of the demo (a replay, a simulated participant, a presenter)."""

    def __init__(self, process: subprocess.Popen, name: str, log_path: Path, what: str = "replay process"):
        self.process, self.name, self.log_path, self.what = process, name, log_path, what

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def error_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def ended_text(self) -> str:
        """What to tell when the process has ended ("" while it runs)."""
        return "" if self.running else f"the {self.what} ended: {self.error_text() or 'no output'}"

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # bci-replay and bci-app present stop cleanly on SIGTERM
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_app_process(code: str, args: list[str], name: str, log_path: Path, what: str,
                      env: dict | None = None) -> DemoProcess:
    """Start ``bci_app.cli.<code>()`` (``main``: bci-app, ``replay_main``: bci-replay) with
    ``args`` in a process of its own, its output to ``log_path``; ``name`` is the stream it
    makes, ``what`` how messages call it."""
    log = open(log_path, "w")
    cmd = [sys.executable, "-c", f"import sys; from bci_app.cli import {code}; sys.exit({code}())", *args]
    try:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env)
    finally:
        log.close()
    return DemoProcess(process, name, log_path, what)


def start_replay(files: DemoFiles, name: str | None = None) -> DemoProcess:
    """Start ``bci-replay SESSION --loop`` in a background process under a unique stream name
    (its markers are ``NAME-markers``).  Its output goes to ``replay.log`` in the demo folder."""
    name = name or f"bci-demo-{uuid.uuid4().hex[:8]}"
    return start_app_process("replay_main", [str(files.session), "--name", name, "--source-id", f"{name}-src", "--loop",
                                  "--exit-with-parent"], name, files.root / "replay.log", "replay process")


class DemoLoop:
    """The closed loop's two processes: the presenter (markers ``NAME-markers``) and the
    simulated participant (EEG ``NAME``, source id ``NAME-src``)."""

    def __init__(self, presenter: DemoProcess, participant: DemoProcess, name: str):
        self.presenter, self.participant, self.name = presenter, participant, name

    @property
    def markers(self) -> str:
        return f"{self.name}-markers"

    @property
    def running(self) -> bool:
        return self.presenter.running and self.participant.running

    def ended_text(self) -> str:
        """What to tell when either process has ended ("" while both run)."""
        return self.participant.ended_text() or self.presenter.ended_text()

    def stop(self, timeout: float = 5.0) -> None:
        self.presenter.stop(timeout)
        self.participant.stop(timeout)


#: images the demo's presenter shows per repetition of the test set, and repetitions:
#: 20 images x 1000 is more than an hour of RSVP
DEMO_REPETITIONS = 1000


def start_closed_loop(files: DemoFiles, name: str | None = None, *, offscreen: bool = False) -> DemoLoop:
    """Start the presenter (``bci-app present``: the test images in random order, a new
    sequence every half second, in a small window; ``offscreen``: no window at all) and
    the simulated participant (``bci-replay --simulate``: subject 1 of the demo data)
    under a unique stream name.  Their output goes to ``presenter.log`` and
    ``participant.log`` in the demo folder, the presenter's timing log to
    ``presentation.json``."""
    name = name or f"bci-demo-{uuid.uuid4().hex[:8]}"
    markers = f"{name}-markers"
    participant = start_app_process("replay_main", ["--simulate", "--data", str(files.data), "--subject", str(DEMO_SUBJECT),
                                         "--name", name, "--source-id", f"{name}-src", "--markers-from", markers,
                                         "--exit-with-parent"], name, files.root / "participant.log",
                         "simulated participant")
    env = dict(os.environ)
    if offscreen:
        env["QT_QPA_PLATFORM"] = "offscreen"
    seed = int.from_bytes(os.urandom(4), "little") >> 1
    presenter = start_app_process("main", ["present", "--images", str(files.data), "--set", "test", "--markers", markers,
                                "--windowed", "--image-size", "300", "--pause", "0.5",
                                "--repetitions", str(DEMO_REPETITIONS), "--seed", str(seed),
                                "--log", str(files.root / "presentation.json"), "--exit-with-parent"],
                       name, files.root / "presenter.log", "presenter", env=env)
    return DemoLoop(presenter, participant, name)
