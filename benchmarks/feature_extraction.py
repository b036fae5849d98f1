"""Throughput of trainer.vision.extract_features: one layer vs many layers (+ final) in one pass.

Random weights and random images, so it runs offline; e.g.

    python benchmarks/feature_extraction.py --backbone vit_tiny_patch16_224 --n-images 64 --layers 10
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.vision import extract_features, load_backbone  # noqa: E402


def _images(n: int, size: int = 256) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _rate(backbone, images, layers, batch_size: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        extract_features(backbone, images, layers, batch_size=batch_size)
        best = min(best, time.perf_counter() - t0)
    return len(images) / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="vit_tiny_patch16_224")
    parser.add_argument("--weights", default="random", help="'random', 'hub' or a local weights file")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--layers", type=int, default=10, help="number of evenly spaced layers in the multi-layer run")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs per setting (best is reported)")
    args = parser.parse_args(argv)

    backbone = load_backbone(args.backbone, args.weights, device=args.device)
    images = _images(args.n_images)
    n = backbone.n_layers
    count = max(1, min(args.layers, n))
    many = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)}) if count > 1 else [n // 2]
    one = [many[len(many) // 2]]

    extract_features(backbone, images[: args.batch_size], one, batch_size=args.batch_size)  # warm-up
    r_one = _rate(backbone, images, one, args.batch_size, args.repeats)
    r_many = _rate(backbone, images, [*many, "final"], args.batch_size, args.repeats)
    print(f"backbone {backbone.name} ({backbone.n_params / 1e6:.1f}M params, {n} layers) on {backbone.device}, "
          f"{args.n_images} images, batch {args.batch_size}")
    label_one = f"1 layer {one} (stops early)"
    label_many = f"{len(many)} layers {many} + final"
    width = max(len(label_one), len(label_many))
    print(f"{label_one:<{width}}  {r_one:8.1f} images/s")
    print(f"{label_many:<{width}}  {r_many:8.1f} images/s")
    print(f"ratio (1 layer / {len(many)} layers + final): {r_one / r_many:.2f}x")


if __name__ == "__main__":
    main()
