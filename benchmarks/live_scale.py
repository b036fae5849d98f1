"""Live decision latency at scale: channel counts up to MEG size, galleries up to 100 000 images.

Bundles are made here with random weights and a random gallery (speed does not depend on
the weights): an EEGProject encoder (1024-d, 512-d shared space) over

- 17 channels of a 1000 Hz stream (THINGS-EEG2's occipito-parietal set), 250 Hz epochs;
- 128 channels of a 2000 Hz stream, 250 Hz epochs;
- 271 channels of a 1200 Hz stream (THINGS-MEG's sensors), 200 Hz epochs;

each with a 200-image gallery, and the 17-channel bundle with galleries of 20, 2 000,
20 000 and 100 000 images.

1. **Compute** (in this process, one thread, as ``bci-app --threads 1``): one epoch's
   online preprocessing (``spec.apply`` on its raw window) plus decoding (encoder, running
   average, gallery scores, softmax, top-5), timed per epoch: what a decision costs once
   its last sample is in.
2. **Live** (``--live``): a ``bci-replay`` process plays a random-noise recording of the
   bundle's channels at the stream's rate, with a marker every 200 ms (the THINGS rate),
   looped; ``bci-app --headless`` decodes it for ``--seconds`` in another process; its
   summary gives the decision latency (``t_decided - t_ready``: from the arrival of an
   epoch's last sample to its decision), psutil its CPU and memory.

Usage::

    python benchmarks/live_scale.py [--live] [--seconds 60] [--work DIR] [--plot docs/img/live_latency_scale.png]

Prints markdown tables (copied into docs/live.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (label, channels, stream rate, epoch rate)
STREAMS = [("EEG 17 ch @ 1000 Hz", 17, 1000.0, 250.0), ("EEG 128 ch @ 2000 Hz", 128, 2000.0, 250.0),
           ("MEG 271 ch @ 1200 Hz", 271, 1200.0, 200.0)]
GALLERIES = [20, 200, 2000, 20000, 100000]


def make_bundle(out: Path, n_chans: int, sfreq_out: float, n_images: int, seed: int = 0) -> Path:
    """A bundle with random weights, the spec's channels ``S001..``, and a random gallery."""
    import torch

    from trainer.bundle import save_bundle
    from trainer.model import AlignmentModel
    from trainer.preprocessing import PreprocessingSpec

    if (out / "bundle.json").exists():
        return out
    names = [f"S{i + 1:03d}" for i in range(n_chans)]
    spec = PreprocessingSpec(channels=tuple(names), channel_pattern=None, sfreq=sfreq_out)
    torch.manual_seed(seed)
    enc = {"name": "eegproject", "n_chans": n_chans, "n_times": spec.n_times, "embed_dim": 1024}
    model = AlignmentModel(enc, 256, 512)
    feats = np.random.default_rng(seed).standard_normal((n_images, 256)).astype(np.float32)
    ids = list(range(1, n_images + 1))
    save_bundle(out, model=model, spec=spec, gallery_features=feats, gallery_ids=ids,
                gallery_concepts=[f"c{i}" for i in ids], gallery_files=[f"c{i}/{i}.jpg" for i in ids],
                gallery_images=None, backbone={"name": "random", "weights": "random", "weights_id": "random"},
                layer="final", pooling="mean", provenance={"benchmark": "live_scale"})
    return out


def make_recording(out: Path, n_chans: int, sfreq: float, seconds: float, n_images: int, seed: int = 0) -> Path:
    """Noise on the bundle's channels with an annotation (a gallery id) every 200 ms."""
    import mne

    if out.exists():
        return out
    rng = np.random.default_rng(seed)
    n = int(seconds * sfreq)
    info = mne.create_info([f"S{i + 1:03d}" for i in range(n_chans)], sfreq, "eeg")
    raw = mne.io.RawArray((rng.standard_normal((n_chans, n)) * 1e-5).astype(np.float32), info, verbose="error")
    onsets = np.arange(1.5, seconds - 1.5, 0.2)
    raw.set_annotations(mne.Annotations(onsets, 0.0, [str(int(i)) for i in rng.integers(1, n_images + 1, len(onsets))]))
    raw.save(out, verbose="error")
    return out


def compute(bundle_path: Path, sfreq_in: float, n: int = 300, seed: int = 0) -> dict:
    """Per-epoch seconds of preprocessing and of decoding (with a running average)."""
    from bci_app.decoder import Decoder
    from trainer.bundle import load_bundle

    bundle = load_bundle(bundle_path)
    spec = bundle.spec
    dec = Decoder(bundle, device="cpu", top_k=5)
    _, n_in = spec.window(sfreq_in)
    rng = np.random.default_rng(seed)
    windows = rng.standard_normal((8, len(spec.channels), n_in)) * 1e-5
    pre, decode, total = [], [], []
    for i in range(n + 10):
        t0 = time.perf_counter()
        epoch = spec.apply(windows[i % 8][None], sfreq_in)
        t1 = time.perf_counter()
        dec.decode(epoch, [1 + i % 20])
        t2 = time.perf_counter()
        if i >= 10:
            pre.append(t1 - t0)
            decode.append(t2 - t1)
            total.append(t2 - t0)
    return {k: np.asarray(v) * 1e3 for k, v in (("preprocessing", pre), ("decoding", decode), ("total", total))}


def _pct(v: np.ndarray) -> str:
    return f"{np.percentile(v, 50):.2f} / {np.percentile(v, 99):.2f}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="/tmp/bci-live-scale", help="bundles and recordings are made (once) here")
    p.add_argument("--live", action="store_true", help="also decode live over LSL (bci-replay + bci-app --headless)")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each live run")
    p.add_argument("--plot", default=None, help="write latency vs gallery size and channel count here (PNG)")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import threadpoolctl
    import torch

    torch.set_num_threads(1)  # as bci-app --threads 1 (the default) sets up its process
    threadpoolctl.threadpool_limits(1, user_api="blas")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    print(f"{date.today()}, {platform.machine()} with {os.cpu_count()} cores, torch {torch.__version__}, "
          "one torch and BLAS thread\n")

    cases = []  # (kind, label, bundle, stream rate, n_chans, n_images)
    for label, c, fs, fo in STREAMS:
        cases.append(("channels", label, make_bundle(work / f"b{c}_200", c, fo, 200), fs, c, 200))
    for g in GALLERIES:
        cases.append(("gallery", f"{g:,} images", make_bundle(work / f"b17_{g}", 17, 250.0, g), 1000.0, 17, g))

    print("| case | preprocessing p50 / p99 (ms) | decoding p50 / p99 (ms) | both p50 / p99 (ms) |\n|---|---|---|---|")
    results = {}
    for kind, label, bundle, fs, _c, _g in cases:
        r = compute(bundle, fs)
        results[(kind, label)] = r
        what = f"{label}, 200 images" if kind == "channels" else f"17 ch @ 1000 Hz, {label}"
        print(f"| {what} | {_pct(r['preprocessing'])} | {_pct(r['decoding'])} | {_pct(r['total'])} |")

    if args.live:
        from live_decoding import live

        print("\n| live case | decision latency p50 / p99 / max (ms) | epochs decoded / markers | app CPU mean (% of a core) "
              "| app memory max (MiB) |\n|---|---|---|---|---|")
        live_cases = [cs for cs in cases if cs[0] == "channels"] + [cs for cs in cases if cs[5] == GALLERIES[-1]]
        for _kind, label, bundle, fs, c, g in live_cases:
            rec = make_recording(work / f"rec{c}_{int(fs)}_{g}-raw.fif", c, fs, 60.0, g)
            stream = label if _kind == "channels" else STREAMS[0][0]
            _, summary, usage = live(str(bundle), str(rec), args.seconds, describe=f"{stream}, {g:,} images")
            d = summary["decision_latency"]
            print(f"| {stream}, {g:,} images | {d['p50_ms']:.2f} / {d['p99_ms']:.2f} / {d['max_ms']:.2f} | "
                  f"{summary['epochs_decoded']} / {summary['markers_seen']} | {usage['cpu_mean']:.0f} | "
                  f"{usage['rss_max']:.0f} |")

    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        xs = GALLERIES
        for q, style in ((50, "o-"), (99, "s--")):
            axes[0].plot(xs, [np.percentile(results[("gallery", f"{g:,} images")]["total"], q) for g in xs], style,
                         label=f"p{q}")
        axes[0].set(xscale="log", xlabel="gallery images (17 ch @ 1000 Hz)", ylabel="ms per decision",
                    title="preprocessing + decoding vs gallery size")
        labels = [s[0] for s in STREAMS]
        for q, style in ((50, "o-"), (99, "s--")):
            axes[1].plot([s[1] for s in STREAMS], [np.percentile(results[("channels", lab)]["total"], q) for lab in labels],
                         style, label=f"p{q}")
        axes[1].set(xlabel="channels (17 @ 1000 Hz, 128 @ 2000 Hz, 271 @ 1200 Hz)", ylabel="ms per decision",
                    title="preprocessing + decoding vs channels (200 images)")
        for ax in axes:
            ax.axhline(5.0, color="grey", lw=0.8, ls=":")
            ax.legend()
            ax.grid(alpha=0.3)
        fig.suptitle(f"one CPU thread, {date.today()} ({os.cpu_count()} cores, no GPU); dotted: the 5 ms goal", fontsize=9)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        print(f"\nplot: {args.plot}")


if __name__ == "__main__":
    main()
