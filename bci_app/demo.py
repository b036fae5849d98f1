"""The one-command demo (``bci-app --demo``): synthetic data, a demo bundle, a replay.

The first run generates subject 1 of the ``tiny`` synthetic THINGS-like set and fits the
demo bundle on it with the default recipe (random ``resnet10t``: the only weights a fresh
offline machine has; about two minutes on a 2-core CPU).  Both are kept in the demo
folder (``--demo-dir``, ``$BCI_DEMO_DIR`` or ``~/.cache/shallow-bci/demo``), so later runs
start in seconds.  Then a ``bci-replay`` process plays the raw test session in a loop as
an LSL stream under a unique name, and the live app decodes it.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["DemoFiles", "DemoReplay", "demo_dir", "prepare_demo", "start_replay"]

logger = logging.getLogger("bci_app")

DEMO_VERSION = 1
DEMO_PRESET = "tiny"
DEMO_SUBJECT = 1

Progress = Callable[[str, int, int], None]


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


def prepare_demo(root: str | os.PathLike | None = None, progress: Progress | None = None) -> DemoFiles:
    """Make sure the demo data and bundle exist in ``root`` (see :func:`demo_dir`); return them.

    ``progress(phase, done, total)`` reports the work of a first run.  Work is done in
    ``*.partial`` folders and renamed when complete, so an interrupted run starts that step
    again instead of using half a data set.
    """
    from trainer.fit import FitConfig, fit
    from trainer.synth import generate

    root = demo_dir(root)
    files = DemoFiles(root=root, data=root / "data", bundle=root / "bundle")
    if _ready(files):
        return files
    root.mkdir(parents=True, exist_ok=True)
    step = progress or (lambda *_: None)
    started = time.perf_counter()
    if not (files.data / "synth.json").is_file() or not files.session.is_file():
        partial = root / "data.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.rmtree(files.data, ignore_errors=True)
        logger.info("demo: generating the synthetic data set (%s preset, subject %d) in %s",
                    DEMO_PRESET, DEMO_SUBJECT, files.data)
        generate(partial, DEMO_PRESET, subjects=1, progress=lambda stage, done, total: step(f"data: {stage}", done, total))
        partial.rename(files.data)
    if not (files.bundle / "bundle.json").is_file():
        partial = root / "bundle.partial"
        shutil.rmtree(files.bundle, ignore_errors=True)  # a bundle folder without bundle.json is unfinished
        logger.info("demo: training the demo bundle (random resnet10t, default recipe) in %s", files.bundle)
        # partial folders keep their checkpoints: an interrupted fit resumes
        fit(FitConfig(data=str(files.data), subject=DEMO_SUBJECT, out=str(partial), backbone="resnet10t",
                      weights="random", cache=str(root / "cache")), progress=step)
        partial.rename(files.bundle)
    (root / "demo.json").write_text(json.dumps({"version": DEMO_VERSION, "preset": DEMO_PRESET,
                                                "subject": DEMO_SUBJECT}, indent=2) + "\n")
    logger.info("demo: ready after %.0f s", time.perf_counter() - started)
    return files


class DemoReplay:
    """A ``bci-replay`` process playing the demo session in a loop (see :func:`start_replay`)."""

    def __init__(self, process: subprocess.Popen, name: str, log_path: Path):
        self.process, self.name, self.log_path = process, name, log_path

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def error_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace").strip()[-2000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 5.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()  # bci-replay stops cleanly on SIGTERM
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_replay(files: DemoFiles, name: str | None = None) -> DemoReplay:
    """Start ``bci-replay SESSION --loop`` in a background process under a unique stream name
    (its markers are ``NAME-markers``).  Its output goes to ``replay.log`` in the demo folder."""
    name = name or f"bci-demo-{uuid.uuid4().hex[:8]}"
    log_path = files.root / "replay.log"
    log = open(log_path, "w")
    cmd = [sys.executable, "-c", "import sys; from bci_app.cli import replay_main; sys.exit(replay_main())",
           str(files.session), "--name", name, "--source-id", f"{name}-src", "--loop", "--exit-with-parent"]
    try:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    finally:
        log.close()
    return DemoReplay(process, name, log_path)
