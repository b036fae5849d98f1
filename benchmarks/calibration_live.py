"""Calibration end to end, in real time over LSL, as docs/calibration.md tells a lab to run it.

A simulated *new* person (``bci-replay --simulate --subject-seed S``: a brain in no data
set) watches the presenter (``bci-app present``, offscreen) while ``bci-app --headless
--record`` records:

1. a calibration block of training-concept images (``--set train --labels --duration M``);
2. ``bci-train adapt`` on that recording (timed);
3. two test blocks of the test images, decoded live by the base bundle and then by the
   adapted one (the same person, the same noise seed, the same presentation order).

Usage::

    python benchmarks/calibration_live.py --data DIR --base BUNDLE --out DIR [--person 101]
        [--minutes 2] [--repetitions 5]

Prints the live single-trial and averaged top-1/top-5 of both bundles, the adaptation's
validation figures and the wall-clock time of each step (copied into docs/calibration.md).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import time
import uuid
from pathlib import Path

APP = "import sys; from bci_app.cli import main; sys.exit(main())"
REPLAY = "import sys; from bci_app.cli import replay_main; sys.exit(replay_main())"
TRAIN = "import sys; from trainer.cli import main; sys.exit(main())"


def _block(data: Path, bundle: Path, person: int, folder: Path, presenter_args: list[str], *, record: bool) -> dict:
    """One block: participant, decoder and presenter as three processes; the decoder's summary."""
    from mne_lsl.lsl import resolve_streams

    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    name = f"cal-{uuid.uuid4().hex[:8]}"
    markers = f"{name}-markers"
    folder.mkdir(parents=True, exist_ok=True)
    procs, files = [], contextlib.ExitStack()

    def start(code, *args, log):
        err = files.enter_context(open(folder / f"{log}.log", "w"))
        proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], env=env, stdout=subprocess.DEVNULL,
                                stderr=err, text=True)
        procs.append(proc)
        return proc

    try:
        participant = start(REPLAY, "--simulate", "--data", data, "--subject", 1, "--subject-seed", person, "--name", name,
                            "--markers-from", markers, "--timeout", 120, "--marker-timeout", 3, log="participant")
        deadline = time.monotonic() + 120
        while not resolve_streams(timeout=0.5, name=name):
            if participant.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((folder / "participant.log").read_text())
        decoder_args = ["--headless", "--bundle", bundle, "--stream", name, "--markers", markers, "--timeout", 60,
                        "--idle-exit", 5, "--device", "cpu", "--summary", folder / "summary.json"]
        if record:
            decoder_args += ["--record", folder / "recording"]
        decoder = start(APP, *decoder_args, log="decoder")
        # the presenter starts its first sequence once any program receives its markers: the
        # participant is already waiting for them, so the decoder gets a head start to load
        # and to connect to the EEG (else the first sequences go out before it subscribed)
        time.sleep(10.0)
        presenter = start(APP, "present", "--images", data, "--markers", markers, "--windowed", "--pause", 2.0,
                          "--log", folder / "presentation.json", *presenter_args, log="presenter")
        for proc, log, limit in ((presenter, "presenter", 3600), (participant, "participant", 120), (decoder, "decoder", 300)):
            if proc.wait(timeout=limit) != 0:
                raise RuntimeError(f"{log} failed: {(folder / f'{log}.log').read_text()[-2000:]}")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        files.close()
    return json.loads((folder / "summary.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a synthetic data set (bci-train synth)")
    parser.add_argument("--base", type=Path, required=True, help="the base bundle (fit --train-subjects all)")
    parser.add_argument("--out", type=Path, required=True, help="working folder (recordings, bundles, logs)")
    parser.add_argument("--person", type=int, default=101, help="the new person's subject seed (default 101)")
    parser.add_argument("--minutes", type=float, default=2.0, help="calibration minutes (default 2)")
    parser.add_argument("--repetitions", type=int, default=5, help="repetitions of each test image (default 5)")
    args = parser.parse_args()

    out = args.out / f"person-{args.person}-{args.minutes:g}min"
    times = {}
    t0 = time.perf_counter()
    _block(args.data, args.base, args.person, out / "calibration",
           ["--set", "train", "--labels", "--duration", f"{args.minutes:g}", "--seed", "1"], record=True)
    times["calibration block"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    adapted = out / "adapted"
    result = subprocess.run([sys.executable, "-c", TRAIN, "adapt", "--bundle", str(args.base), "--recording",
                             str(out / "calibration" / "recording"), "--images", str(args.data), "--out", str(adapted),
                             "--device", "cpu", "--overwrite", "--json"], capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"adapt failed: {result.stderr}")
    summary = json.loads(result.stdout)
    times["bci-train adapt"] = time.perf_counter() - t0
    live = {}
    for label, bundle in (("base", args.base), ("adapted", adapted)):
        t0 = time.perf_counter()
        live[label] = _block(args.data, bundle, args.person, out / f"test-{label}",
                             ["--set", "test", "--repetitions", str(args.repetitions), "--seed", "2"], record=False)
        times[f"test block ({label})"] = time.perf_counter() - t0

    print(f"{time.strftime('%Y-%m-%d')}, {platform.machine()} {os.cpu_count()} cores, {platform.platform()}\n")
    print(f"new person {args.person}; calibration {args.minutes:g} min of training images: {summary['n_trials']} trials "
          f"({summary['markers']['catch']} catch), adaptation {summary['seconds']:.0f} s, validation top-1 "
          f"{summary['before']['top1']:.3f} -> {summary['after']['top1']:.3f} (epoch {summary['best_epoch']}, "
          f"chance {summary['val_chance_top1']:.3f})\n")
    print("| bundle | decoded live | single-trial top-1 | top-5 | averaged top-1 | top-5 | lost samples |")
    print("|---|---|---|---|---|---|---|")
    for label, s in live.items():
        st, av = s["single_trial"], s["averaged"]
        print(f"| {label} | {s['epochs_decoded']} | {st['top1']:.3f} | {st['top5']:.3f} | {av['top1']:.3f} | "
              f"{av['top5']:.3f} | {s['samples_lost']} |")
    print("\n| step | wall-clock |\n|---|---|")
    for step, seconds in times.items():
        print(f"| {step} | {seconds / 60:.1f} min |")


if __name__ == "__main__":
    main()
