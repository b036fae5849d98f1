"""A marker flood against the live app: decision latency, load shed, memory, recording.

An EEG outlet (the bundle's channels plus a counter channel ``CNT`` whose sample k
carries k microvolts, at 1000 Hz, in real time) and an int32 marker outlet run in this
process; ``bci-app --headless --record`` decodes them in another process.  After a few
seconds of calm (5 markers/s, the THINGS rate), ``--rate`` markers/s arrive for
``--seconds``, then calm again.  The app's summary gives the decision latency and the
epochs rejected as ``overload``; psutil samples its memory; the recording's counter
channel shows whether every sample received was recorded.

Usage::

    python benchmarks/marker_flood.py --bundle RUN [--rate 1000] [--seconds 5]

Prints a markdown table (copied into docs/live.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid

import numpy as np


def _outlets(name: str, ch_names: list[str], sfreq: float):
    from mne_lsl.lsl import StreamInfo, StreamOutlet

    info = StreamInfo(name, "EEG", len(ch_names), sfreq, "float32", f"{name}-src")
    info.set_channel_names(ch_names)
    info.set_channel_types("eeg")
    info.set_channel_units("volts")
    minfo = StreamInfo(f"{name}-markers", "Markers", 1, 0.0, "int32", f"{name}-markers-src")
    return StreamOutlet(info, 10), StreamOutlet(minfo)


def run(bundle_path: str, rate: float, seconds: float, calm: float = 8.0) -> list[tuple[str, str]]:
    import mne
    import psutil
    from mne_lsl.lsl import local_clock

    from trainer.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    ch_names = ["CNT", *bundle.spec.channels]
    sfreq = 1000.0
    name = f"flood-{uuid.uuid4().hex[:8]}"
    eeg, markers = _outlets(name, ch_names, sfreq)
    t0 = local_clock() + 0.1
    state = {"sent": 0, "stop": False}
    rng = np.random.default_rng(0)

    def push_eeg():
        while not state["stop"]:
            due = int((local_clock() - t0) * sfreq)
            while state["sent"] + 10 <= due:
                k = state["sent"]
                data = (rng.normal(size=(10, len(ch_names))) * 1e-5).astype(np.float32)
                data[:, 0] = np.arange(k, k + 10) * 1e-6
                eeg.push_chunk(data, timestamp=t0 + (k + np.arange(10)) / sfreq)
                state["sent"] = k + 10
            time.sleep(0.002)

    threading.Thread(target=push_eeg, daemon=True).start()
    n_ids = len(bundle.gallery_ids)
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = os.path.join(tmp, "summary.json")
        total = calm + seconds + calm + 2.0
        app = subprocess.Popen([sys.executable, "-c", "import sys; from bci_app.cli import main; sys.exit(main())",
                                "--bundle", bundle_path, "--stream", name, "--headless", "--device", "cpu",
                                "--duration", str(total), "--summary", summary_path, "--record", os.path.join(tmp, "rec")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc = psutil.Process(app.pid)
        rss: list[float] = []
        log: list[str] = []
        connected = threading.Event()

        def read_log():
            for line in app.stderr:
                log.append(line)
                if "decoding stream" in line:
                    connected.set()

        reader = threading.Thread(target=read_log, daemon=True)
        reader.start()
        if not connected.wait(120):
            app.kill()
            raise SystemExit("bci-app did not connect:\n" + "".join(log))
        time.sleep(1.0)
        start = local_clock()
        sent_markers = 0

        def mark(k: int) -> None:
            nonlocal sent_markers
            markers.push_sample(np.array([1 + sent_markers % n_ids], dtype=np.int32), timestamp=t0 + k / sfreq)
            sent_markers += 1

        next_t = start
        while app.poll() is None and local_clock() - start < calm + seconds:
            now = local_clock()
            flood = calm / 2 <= now - start < calm / 2 + seconds
            period = 1.0 / (rate if flood else 5.0)
            while next_t <= now:
                mark(int((next_t - t0) * sfreq))
                next_t += period
            try:
                rss.append(proc.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                break
            time.sleep(0.0005 if flood else 0.05)
        app.wait()
        reader.join(10)
        state["stop"] = True
        if app.returncode != 0:
            raise SystemExit("bci-app failed:\n" + "".join(log))
        summary = json.load(open(summary_path))
        raw = mne.io.read_raw_fif(summary["recording"], verbose="error")
        counter = np.round(raw.get_data(picks=["CNT"])[0] / 1e-6).astype(np.int64)
    d, m = summary["decision_latency"], summary["marker_to_decision_latency"]
    rej = summary["epochs_rejected"]
    holes = int(np.count_nonzero(np.diff(counter) != 1))
    others = {k: v for k, v in rej.items() if k != "overload"}
    return [
        ("markers sent / seen by the app", f"{sent_markers} / {summary['markers_seen']} ({rate:g}/s for {seconds:g} s, "
                                           "5/s before and after)"),
        ("epochs decoded / rejected as overload / other rejections",
         f"{summary['epochs_decoded']} / {rej.get('overload', 0)} / {sum(others.values())} "
         f"({', '.join(f'{k}: {v}' for k, v in others.items() if v) or '-'})"),
        ("decision latency p50 / p99 / max", f"{d['p50_ms']:.1f} / {d['p99_ms']:.1f} / {d['max_ms']:.1f} ms"),
        ("marker-to-decision p50 / p99 / max", f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f} / {m['max_ms']:.0f} ms"),
        ("app memory (RSS, max)", f"{max(rss):.0f} MiB"),
        ("recording: samples / received / holes in the counter",
         f"{len(counter)} / {summary['samples_received']} / {holes}"),
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--rate", type=float, default=1000.0, help="markers per second during the flood (default 1000)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of the flood (default 5)")
    args = p.parse_args()
    rows = run(args.bundle, args.rate, args.seconds)
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
