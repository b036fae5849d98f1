"""Throughput of trainer.vision.extract_features: one layer vs many layers (+ final) in one pass,
and the CPU cost of preparing an image (timm's transform vs the loader's numpy tail).

Random weights and random images, so it runs offline; e.g.

    python benchmarks/feature_extraction.py --backbone vit_tiny_patch16_224 --n-images 64 --layers 10
    python benchmarks/feature_extraction.py --backbone resnet10t --image-size 64   # the demo's images
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


def _preparation_ms(transform, images) -> float:
    """CPU milliseconds (all threads of the process) per image prepared."""
    t0 = time.process_time()
    for image in images:
        transform(image)
    return 1000 * (time.process_time() - t0) / len(images)


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
    parser.add_argument("--image-size", type=int, default=256, help="size of the random source images (default 256)")
    args = parser.parse_args(argv)

    backbone = load_backbone(args.backbone, args.weights, device=args.device)
    images = _images(args.n_images, args.image_size)
    n = backbone.n_layers
    count = max(1, min(args.layers, n))
    many = sorted({round(i * (n - 1) / max(count - 1, 1)) for i in range(count)}) if count > 1 else [n // 2]
    one = [many[len(many) // 2]]

    extract_features(backbone, images[: args.batch_size], one, batch_size=args.batch_size)  # warm-up
    r_one = _rate(backbone, images, one, args.batch_size, args.repeats)
    r_last = _rate(backbone, images, ["final"], args.batch_size, args.repeats)
    r_many = _rate(backbone, images, [*many, "final"], args.batch_size, args.repeats)
    # what probing the same layers would cost with one pass per layer
    separate = sum(1.0 / _rate(backbone, images, [k], args.batch_size, 1) for k in many) + 1.0 / r_last
    print(f"backbone {backbone.name} ({backbone.n_params / 1e6:.1f}M params, {n} layers) on {backbone.device}, "
          f"{args.n_images} images, batch {args.batch_size}")
    rows = [
        (f"1 layer {one} (stops early)", r_one),
        ("final embedding only (full pass)", r_last),
        (f"{len(many)} layers {many} + final, one pass", r_many),
        ("the same, one pass per layer", 1.0 / separate),
    ]
    width = max(len(label) for label, _ in rows)
    for label, rate in rows:
        print(f"{label:<{width}}  {rate:8.1f} images/s")
    print(f"cost of {len(many)} layers + final in one pass relative to the final layer alone: {r_last / r_many:.2f}x "
          f"(one pass per layer: {r_last * separate:.2f}x)")
    timm_ms = _preparation_ms(backbone.transform(), images)
    ours_ms = _preparation_ms(backbone.loader_transform(), images)
    print(f"preparing an image ({args.image_size} px -> {backbone.data_config['input_size'][1]} px), CPU time: "
          f"timm's transform {timm_ms:.2f} ms, loader_transform (numpy tail, the same tensor) {ours_ms:.2f} ms")

if __name__ == "__main__":
    main()
