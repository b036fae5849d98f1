"""Training throughput of bci-train's shallow alignment on CPU (or GPU): samples/s,
seconds per epoch, and where the time goes (forward, backward, optimiser step, validation).

Uses the full THINGS-EEG2 sizes: 16540 training images, 17 channels x 250 samples (the
paper's input), 1024-d encoder, 512-d shared space, batch 1024.  The EEG comes from a
synthetic full-size set when one is given (``--data``, its official preprocessed training
file, resampled to 250 samples), otherwise random arrays of the same shape.

    python benchmarks/training_throughput.py [--data DIR] [--encoder eegproject] [--epochs 2] [--threads N] [--precision auto]

``--n-train 864`` gives the size of the demo's fit (subject 1 of the tiny set, 10 % held
out): its 50 epochs x 6 layers are most of the demo's first run.  ``--threads`` compares
torch intra-op thread counts (on a busy machine 1 thread can beat 2).  ``--precision`` is
``bci-train fit --precision`` (``trainer.fit.train_epoch``'s autocast, repeated here so that
forward, backward and step can be timed apart); benchmarks/training_peer.py times the
real ``train_epoch`` against a peer's loop.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from trainer.fit import resolve_precision
from trainer.losses import clip_loss
from trainer.model import AlignmentModel, normalised_embedding


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="synthetic full-size data folder (optional)")
    parser.add_argument("--encoder", default="eegproject")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--feature-dim", type=int, default=768, help="pooled layer size (ViT-B: 768)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-train", type=int, default=16540, help="training images (default: THINGS-EEG2's 16540)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (default: torch's own)")
    parser.add_argument("--precision", default="auto", help="auto, bf16 or fp32, as bci-train fit --precision")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    n, c, t = args.n_train, 17, 250
    if args.data:
        import scipy.signal

        from trainer.data import ThingsEEG2

        trials = ThingsEEG2(args.data).preprocessed(1, "training")
        x = scipy.signal.resample(trials.average_repetitions(), t, axis=-1).astype(np.float32)
        n, c = x.shape[:2]
        source = f"{args.data} (official 17 x 100 resampled to {t})"
    else:
        x = np.random.default_rng(0).standard_normal((n, c, t)).astype(np.float32)
        source = "random arrays"
    feats = np.random.default_rng(1).standard_normal((n, args.feature_dim)).astype(np.float32)
    x_t, f_t = torch.from_numpy(x).to(device), torch.from_numpy(feats).to(device)
    n_val = n // 10
    torch.manual_seed(0)
    model = AlignmentModel({"name": args.encoder, "n_chans": c, "n_times": t, "embed_dim": 1024}, args.feature_dim, 512).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    times = {"forward": 0.0, "backward": 0.0, "step": 0.0, "validation": 0.0}
    epoch_times = []
    for _ in range(args.epochs):
        t_epoch = time.perf_counter()
        model.train()
        order = torch.randperm(n - n_val, device=device)
        for idx in torch.split(order, args.batch_size):
            def forward(idx=idx):
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
                    brain, images = model.embed_brain(x_t[idx]), model.embed_images(f_t[idx])
                return clip_loss(brain.float(), images.float(), model.logit_scale())

            loss, dt = _timed(forward, device)
            times["forward"] += dt
            opt.zero_grad(set_to_none=True)
            _, dt = _timed(loss.backward, device)
            times["backward"] += dt
            _, dt = _timed(opt.step, device)
            times["step"] += dt
        model.eval()

        def validate():
            with torch.inference_mode():
                e = normalised_embedding(model.embed_brain, x_t[-n_val:])
                g = normalised_embedding(model.embed_images, f_t[-n_val:])
                return (e @ g.T).argmax(1)

        _, dt = _timed(validate, device)
        times["validation"] += dt
        epoch_times.append(time.perf_counter() - t_epoch)
    per_epoch = float(np.median(epoch_times))
    total = sum(times.values())
    result = {
        "device": str(device), "threads": torch.get_num_threads(), "precision": precision, "encoder": args.encoder, "data": source,
        "train_samples": n - n_val, "batch_size": args.batch_size,
        "seconds_per_epoch": round(per_epoch, 2), "samples_per_second": round((n - n_val) / per_epoch),
        "share": {k: round(v / total, 3) for k, v in times.items()},
        "estimated_50_epochs_minutes": round(50 * per_epoch / 60, 1),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
