"""The presenter's onset timing on this machine: ``bci-app present`` shows a folder of
images (RSVP, 100 ms on, 100 ms off, sequences of 20, an automatic 0.5 s pause) in each
display setting that exists here, and its own timing report is collected.

- ``offscreen``: Qt's offscreen platform (no display, no OpenGL): the timer loop.
- ``xvfb``: a real X server (Xvfb, if installed) with Mesa's OpenGL: vsync is asked for,
  measured, and (on Xvfb, where nothing paces the swaps) replaced by the timer.
- ``xvfb --no-vsync``: the timer loop on the X server.
- each again with ``--load``: a second process keeps one core busy (a decoder, a
  simulated participant), as in the closed-loop demo.

Usage::

    python benchmarks/presenter_timing.py [--images DIR] [--images-per-run 400]

Prints a markdown table (copied into docs/experiment.md).  Each row is one run; the
columns are from the timing log (onset minus plan; "late" = onsets a frame or more late).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path


def _images(root: Path, n: int = 20) -> Path:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (500, 500, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


def _xvfb() -> tuple[subprocess.Popen, str] | None:
    if shutil.which("Xvfb") is None:
        return None
    for n in range(180, 400):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            break
    proc = subprocess.Popen(["Xvfb", f":{n}", "-nolisten", "tcp", "-screen", "0", "1920x1080x24"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{n}").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return None
        time.sleep(0.05)
    return proc, f":{n}"


def _burner() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def _run(images: Path, n_images: int, env: dict, extra: list[str], tmp: Path) -> dict:
    log = tmp / f"{uuid.uuid4().hex}.json"
    reps = max(1, n_images // len(list(images.iterdir())))
    cmd = [sys.executable, "-m", "bci_app.cli", "present", "--images", str(images), "--pause", "0.5",
           "--repetitions", str(reps), "--markers", f"bench-{uuid.uuid4().hex[:8]}", "--no-receiver-check",
           "--log", str(log), *extra]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise SystemExit(f"bci-app present failed: {proc.stderr[-2000:]}")
    doc = json.loads(log.read_text())
    report = [line for line in proc.stderr.splitlines() if "timing (" in line][-1]
    display = [line for line in proc.stderr.splitlines() if "display:" in line][-1]
    return {"summary": doc["summary"], "report": report.split("present: ", 1)[1],
            "display": display.split("display: ", 1)[1]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", default=None, help="a folder of images (default: 20 noise images, 500 px)")
    p.add_argument("--images-per-run", type=int, default=400)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="presenter-timing-"))
    if args.images:
        images = Path(args.images)
    else:
        (tmp / "images").mkdir()
        images = _images(tmp / "images")
    base = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY")}
    settings = [("offscreen", dict(base, QT_QPA_PLATFORM="offscreen"), [])]
    x = _xvfb()
    if x is not None:
        settings += [("xvfb", dict(base, DISPLAY=x[1]), ["--windowed"]),
                     ("xvfb --no-vsync", dict(base, DISPLAY=x[1]), ["--windowed", "--no-vsync"])]
    rows = []
    try:
        for load in (False, True):
            burner = _burner() if load else None
            try:
                for name, env, extra in settings:
                    r = _run(images, args.images_per_run, env, extra, tmp)
                    rows.append((name + (", 1 core busy" if load else ""), r))
                    print(f"{rows[-1][0]}: {r['report']}", file=sys.stderr)
            finally:
                if burner is not None:
                    burner.kill()
                    burner.wait()
    finally:
        if x is not None:
            x[0].terminate()
            x[0].wait()
    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, {platform.platform()}\n")
    print("| setting | display loop | onsets | median | p99 | max abs | late by ≥ 1 frame |")
    print("|---|---|---|---|---|---|---|")
    for name, r in rows:
        s, e = r["summary"], r["summary"]["error_ms"]
        print(f"| {name} | {r['display']} | {s['onsets']} | {e['median']:+.2f} ms | {e['p99']:+.2f} ms | "
              f"{e['max']:.2f} ms | {s['late_onsets']} |")


if __name__ == "__main__":
    main()
