"""The cost of a protocol (``bci-train reproduce``), from figures measured here and counted.

Measured on this machine:
* the feature pass of small timm backbones (random weights) in seconds per image, against
  their GFLOPs per image: the effective GFLOP/s of this machine's backbone passes;
* one training epoch of the default recipe (EEGProject, batch 1024) at THINGS-EEG2 size
  (16 540 x 17 x 250) and THINGS-MEG size (22 248 x 271 x 201), in seconds.

Counted, without weights (torch's FlopCounterMode on the meta device): the GFLOPs per image
of every backbone of the protocol, and the GFLOPs of one training step.

The GPU figures divide the counted FLOPs by an assumed sustained throughput
(``--gpu-tflops``, default 100: a current data-centre GPU in bf16 at about a third of its
peak) and add ``--step-ms`` per training step (kernel launches, the optimiser; default 1
ms) and ``--run-overhead`` seconds per run (a process loading epochs and cached
features; default 20 s).  They are estimates from those assumptions, not measurements:
no GPU was available here.  The CPU figures extrapolate this machine's measured rates.

    python benchmarks/scaling_cost.py --config configs/reproduce/paper.toml [--gpu-tflops 100] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

# the image sets of the real data: THINGS-EEG2 (16 540 training + 200 test images) and
# THINGS-MEG (1854 concepts x 12 training images + 200 test images); MEG epochs at all 271
# sensors (an upper bound: the occipito-parietal selection is smaller), 0-1 s at 200 Hz
EEG_IMAGES, EEG_TRAIN, EEG_SHAPE = 16_740, 16_540, (17, 250)
MEG_IMAGES, MEG_TRAIN, MEG_SHAPE = 22_448, 22_248, (271, 201)


def _images(n: int, size: int = 256):
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def measure_features(names: list[str], n_images: int) -> list[dict]:
    """Seconds per image of the whole feature pass (decode, transform, forward, pool) of
    each backbone at its own size, random weights, on the CPU."""
    from trainer.vision import describe_backbone, extract_features, load_backbone

    images = _images(n_images)
    out = []
    for name in names:
        backbone = load_backbone(name, "random")
        info = describe_backbone(name, flops=True)
        layers = [backbone.n_layers - 1, "final"]
        extract_features(backbone, images[:8], layers, batch_size=8)  # warm-up
        t0 = time.perf_counter()
        extract_features(backbone, images, layers, batch_size=32)
        per_image = (time.perf_counter() - t0) / n_images
        out.append({"backbone": name, "gflops": info["gflops"], "seconds_per_image": per_image,
                    "gflop_per_s": info["gflops"] / per_image})
    return out


def _model(shape, feature_dim: int):
    from trainer.model import AlignmentModel

    c, t = shape
    return AlignmentModel({"name": "eegproject", "n_chans": c, "n_times": t, "embed_dim": 1024}, feature_dim, 512)


def step_gflops(shape, feature_dim: int, batch: int = 1024) -> float:
    """GFLOPs of one training step (forward and backward of both sides and the loss)."""
    from torch.utils.flop_counter import FlopCounterMode

    from trainer.losses import clip_loss

    model = _model(shape, feature_dim)
    x, f = torch.randn(batch, *shape), torch.randn(batch, feature_dim)
    with FlopCounterMode(display=False) as counter:
        loss = clip_loss(model.embed_brain(x), model.embed_images(f), model.logit_scale())
        loss.backward()
    return counter.get_total_flops() / 1e9


def measure_epoch(shape, n_train: int, feature_dim: int, epochs: int = 1) -> float:
    """Seconds of one training epoch (trainer.fit.train_epoch) on the CPU, random data."""
    from trainer.fit import train_epoch

    torch.manual_seed(0)
    model = _model(shape, feature_dim)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    x, f = torch.randn(n_train, *shape), torch.randn(n_train, feature_dim)
    batches = list(torch.tensor_split(torch.randperm(n_train), max(1, n_train // 1024)))
    train_epoch(model, opt, x, f, batches[:2], "fp32")  # warm-up
    t0 = time.perf_counter()
    for _ in range(epochs):
        train_epoch(model, opt, x, f, batches, "fp32")
    return (time.perf_counter() - t0) / epochs


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/reproduce/paper.toml")
    parser.add_argument("--gpu-tflops", type=float, default=100.0, help="assumed sustained GPU throughput (TFLOP/s)")
    parser.add_argument("--step-ms", type=float, default=1.0, help="assumed fixed GPU cost of a training step (ms)")
    parser.add_argument("--run-overhead", type=float, default=20.0, help="assumed fixed cost of a run (s)")
    parser.add_argument("--probe-images", type=int, default=64)
    parser.add_argument("--feature-dim", type=int, default=1280, help="pooled feature size for the training cost")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)

    from trainer.reproduce import load_protocol, plan_protocol
    from trainer.vision import describe_backbone

    started = time.strftime("%Y-%m-%d %H:%M")
    probes = measure_features(["resnet10t", "vit_tiny_patch16_224", "vit_small_patch16_224"], args.probe_images)
    cpu_gflops = float(np.median([p["gflop_per_s"] for p in probes]))
    epoch_s = {"eeg": measure_epoch(EEG_SHAPE, EEG_TRAIN, args.feature_dim),
               "meg": measure_epoch(MEG_SHAPE, MEG_TRAIN, args.feature_dim)}
    train = {"eeg": (EEG_SHAPE, EEG_TRAIN), "meg": (MEG_SHAPE, MEG_TRAIN)}
    step = {m: step_gflops(shape, args.feature_dim) for m, (shape, _) in train.items()}

    protocol = load_protocol(args.config, out="/tmp/scaling-cost-unused")
    runs, features = plan_protocol(protocol)
    epochs = int(protocol.fit.get("epochs", 50))
    tflops = args.gpu_tflops * 1e3  # GFLOP/s
    rows = []
    for name in dict.fromkeys(r.info["backbone"] for r in runs):
        size = next(b.get("image_size", 0) for b in protocol.backbones if b["name"] == name)
        info = describe_backbone(name, model_kwargs={"img_size": size} if size else None,
                                 trust_remote_code=name.startswith("hf:"), flops=True)
        images = sum(EEG_IMAGES if m == "eeg" else MEG_IMAGES for m in ("eeg", "meg") if getattr(protocol, m))
        mine = [r for r in runs if r.info["backbone"] == name]
        gpu_train = cpu_train = 0.0
        for r in mine:
            m = r.info["modality"]
            n_train = train[m][1]
            steps = epochs * max(1, n_train // 1024)
            gpu_train += steps * (step[m] / tflops + args.step_ms / 1e3) + args.run_overhead
            cpu_train += epochs * epoch_s[m]
        feature_gflop = info["gflops"] * images
        rows.append({"backbone": name, "n_params": info["n_params"], "gflops_per_image": info["gflops"], "images": images,
                     "runs": len(mine), "feature_gpu_hours": feature_gflop / tflops / 3600,
                     "feature_cpu_hours": feature_gflop / cpu_gflops / 3600, "train_gpu_hours": gpu_train / 3600,
                     "train_cpu_hours": cpu_train / 3600})
    total = {k: sum(r[k] for r in rows) for k in ("runs", "feature_gpu_hours", "train_gpu_hours", "feature_cpu_hours",
                                                    "train_cpu_hours")}
    result = {"date": started, "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
                                          f"{torch.get_num_threads()} threads",
              "probes": probes, "cpu_gflop_per_s": cpu_gflops, "epoch_seconds_cpu": epoch_s, "step_gflops": step,
              "assumptions": {"gpu_tflops": args.gpu_tflops, "step_ms": args.step_ms, "run_overhead_s": args.run_overhead},
              "epochs": epochs, "backbones": rows, "total": total}
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"# measured {started} on {result['machine']}")
    for p in probes:
        print(f"feature pass {p['backbone']}: {p['gflops']:.1f} GFLOP/image, {1e3 * p['seconds_per_image']:.1f} ms/image "
              f"-> {p['gflop_per_s']:.0f} GFLOP/s")
    print(f"training epoch (EEGProject, batch 1024): EEG {epoch_s['eeg']:.1f} s, MEG {epoch_s['meg']:.1f} s on this CPU; "
          f"a step is {step['eeg']:.0f} / {step['meg']:.0f} GFLOP")
    print()
    print("| backbone | params | GFLOP/image | runs | features, GPU-h | training, GPU-h | features, CPU-h here | "
          "training, CPU-h here |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['backbone']} | {r['n_params'] / 1e6:.0f} M | {r['gflops_per_image']:.0f} | {r['runs']} | "
              f"{r['feature_gpu_hours']:.2f} | {r['train_gpu_hours']:.1f} | {r['feature_cpu_hours']:.0f} | "
              f"{r['train_cpu_hours']:.0f} |")
    print(f"| total | | | {total['runs']} | {total['feature_gpu_hours']:.1f} | {total['train_gpu_hours']:.0f} | "
          f"{total['feature_cpu_hours']:.0f} | {total['train_cpu_hours']:.0f} |")


if __name__ == "__main__":
    main()
