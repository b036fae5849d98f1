"""Live decoding benchmarks (issue: live decoding).

1. Decoder throughput: epochs/s of the bundle's encoder + gallery scoring on this CPU, for
   batches of 1 and 32, and of the online preprocessing (spec.apply on raw windows).
2. A live replay: bci-replay plays a THINGS raw test session (looped) over LSL on
   loopback; ``bci-app --headless`` decodes it in another process for ``--seconds``; the
   app's summary gives decision latency (t_decided - t_ready), marker-to-decision latency,
   epochs decoded / rejected / lost; psutil samples the app's CPU and memory.

Usage::

    python benchmarks/live_decoding.py --bundle RUN --session DATA/raw_data/sub-01/ses-01/raw_eeg_test.npy \\
        [--seconds 300]

Prints a markdown table (copied into docs/live.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np


def throughput(bundle_path: str, session_path: str) -> list[tuple[str, str]]:
    from bci_app.decoder import Decoder
    from bci_app.sessions import read_session
    from trainer.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    dec = Decoder(bundle, device="cpu")
    rows = []
    rng = np.random.default_rng(0)
    for batch in (1, 32):
        x = rng.standard_normal((batch, bundle.n_chans, bundle.n_times)).astype(np.float32)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 3.0:
            dec.decode(x, [None] * batch)
            n += batch
        rate = n / (time.perf_counter() - t0)
        rows.append((f"decoder, batch {batch} (encoder + gallery + top-k)", f"{rate:,.0f} epochs/s"))
    session = read_session(session_path)
    spec = bundle.spec.resolve(session.ch_names)
    start, n_in = spec.window(session.sfreq)
    data = session.raw.get_data(picks=list(spec.channels))
    onsets = [m.sample for m in session.markers if m.sample + start >= 0 and m.sample + start + n_in <= data.shape[1]]
    windows = np.stack([data[:, s + start : s + start + n_in] for s in onsets[:64]])
    for batch in (1, 32):
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < 3.0:
            spec.apply(windows[:batch], session.sfreq)
            n += batch
        rate = n / (time.perf_counter() - t0)
        rows.append((f"online preprocessing, batch {batch} ({len(spec.channels)} ch x {n_in} raw samples)",
                     f"{rate:,.0f} epochs/s"))
    return rows


def live(bundle_path: str, session_path: str, seconds: float,
         describe: str = "1000 Hz, 63 channels, looped test session") -> tuple[list[tuple[str, str]], dict, dict]:
    """Replay ``session_path`` (looped) and decode it with ``bci-app --headless`` for
    ``seconds``: the table rows, the app's summary, and its CPU (mean %, of one core) and
    memory (max RSS, MiB)."""
    import psutil

    name = f"bench-{uuid.uuid4().hex[:8]}"
    env = dict(os.environ)
    replay = subprocess.Popen([sys.executable, "-c", "import sys; from bci_app.cli import replay_main; sys.exit(replay_main())",
                               session_path, "--name", name, "--loop"], env=env, stderr=subprocess.DEVNULL)
    time.sleep(2.0)
    with tempfile.TemporaryDirectory() as tmp:
        summary_path = os.path.join(tmp, "summary.json")
        app = subprocess.Popen([sys.executable, "-c", "import sys; from bci_app.cli import main; sys.exit(main())",
                                "--bundle", bundle_path, "--stream", name, "--headless", "--device", "cpu",
                                "--duration", str(seconds), "--summary", summary_path],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        proc = psutil.Process(app.pid)
        cpu, rss = [], []
        proc.cpu_percent(None)
        while app.poll() is None:
            time.sleep(1.0)
            try:
                cpu.append(proc.cpu_percent(None))
                rss.append(proc.memory_info().rss / 2**20)
            except psutil.NoSuchProcess:
                break
        err = app.communicate()[1]
        replay.terminate()
        replay.wait(10)
        if app.returncode != 0:
            raise SystemExit(f"bci-app failed:\n{err}")
        summary = json.load(open(summary_path))
    d, m = summary["decision_latency"], summary["marker_to_decision_latency"]
    rej = summary["epochs_rejected"]
    rows = [
        ("replay length", f"{seconds:.0f} s, {describe}"),
        ("epochs decoded / markers seen", f"{summary['epochs_decoded']} / {summary['markers_seen']}"),
        ("epochs rejected (reasons), samples lost, gaps",
         f"{sum(rej.values())} ({', '.join(f'{k}: {v}' for k, v in rej.items() if v) or '-'}), "
         f"{summary['samples_lost']}, {summary['gaps']}"),
        ("epochs pending at exit (window not complete yet)", str(summary["epochs_pending"])),
        ("decision latency p50 / p99 / max", f"{d['p50_ms']:.2f} / {d['p99_ms']:.2f} / {d['max_ms']:.2f} ms"),
        ("marker-to-decision p50 / p99", f"{m['p50_ms']:.0f} / {m['p99_ms']:.0f} ms"),
        ("app CPU (mean / max of 1 s samples)", f"{np.mean(cpu[2:]):.0f} % / {np.max(cpu[2:]):.0f} % of one core"),
        ("app memory (RSS, max)", f"{np.max(rss):.0f} MiB"),
    ]
    return rows, summary, {"cpu_mean": float(np.mean(cpu[2:])), "cpu_max": float(np.max(cpu[2:])),
                           "rss_max": float(np.max(rss))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", required=True)
    p.add_argument("--session", required=True, help="a THINGS raw .npy session (or any bci-replay input)")
    p.add_argument("--seconds", type=float, default=300.0)
    p.add_argument("--skip-live", action="store_true")
    args = p.parse_args()
    rows = throughput(args.bundle, args.session)
    if not args.skip_live:
        more, summary, _ = live(args.bundle, args.session, args.seconds)
        rows += more
    print("| measure | value |\n|---|---|")
    for k, v in rows:
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
