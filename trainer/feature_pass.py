"""``bci-train features``: the backbone's feature pass over a data set's images, ahead of
``fit`` and ``sweep`` and apart from them: on several GPUs of one machine, or as one
worker of many on a cluster sharing the cache's storage.

The pass writes exactly what :func:`trainer.fit.image_features` reads (the same cache keys),
in shards of :data:`trainer.vision.SHARD_SIZE` images: a killed pass resumes at its first
missing shard, workers split the shards by rank, and the shards of each layer are merged
in image order by whoever finishes last.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from ._checks import check_positive
from .config import FitConfig, default_cache_dir, layer_key, layer_list
from .errors import BCIError, UsageError
from .progress import Progress

__all__ = ["feature_pass"]

logger = logging.getLogger("trainer")


def feature_pass(
    cfg: FitConfig,
    *,
    devices: Sequence[str] = (),
    rank: int = 0,
    world: int = 1,
    shard_size: int = 0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Compute the features ``fit`` would compute for ``cfg`` (its data, backbone, weights,
    pooling, feature precision) of the layers ``cfg.layers`` ('auto' when empty, 'all' or a
    list, as ``--layers``) into the cache.

    ``devices`` (two or more, e.g. ``["cuda:0", "cuda:1"]``): one worker process per
    device, each its share of the shards, then the merge.  Otherwise this process is
    worker ``rank`` of ``world`` on ``cfg.device`` (a cluster runs the other ranks).
    ``shard_size``: images per shard (0: :data:`trainer.vision.SHARD_SIZE`; every worker
    of a pass must use the same).
    Returns a summary: the layers, images, workers, seconds, images per second of this
    process's own pass, and whether every layer is now complete in the cache."""
    from .datasets import load_image_sets
    from .fit import feature_image_sets
    from .vision import compute_feature_shards, load_backbone

    dataclasses.replace(cfg, out=cfg.out or "-").validate()
    check_positive(world, "--world (world)", integer=True)
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise UsageError(f"--rank must be within 0..{world - 1} (--world {world}), got {rank!r}")
    devices = [d.strip() for d in devices if d.strip()]
    if devices and world > 1:
        raise UsageError("give either --devices (workers on this machine) or --rank/--world (one worker of a cluster)")
    cache = Path(cfg.cache).expanduser() if cfg.cache else default_cache_dir()
    cfg = dataclasses.replace(cfg, cache=str(cache))
    train_images, test_images = load_image_sets(cfg.data, cfg.source)
    n_images = len(train_images) + len(test_images)
    started = time.perf_counter()
    layers = cfg.layers or "auto"
    workers = max(world, len(devices))
    if len(devices) > 1:
        _run_workers(cfg, devices, shard_size)
        devices = devices[:1]  # the merge (everything computed: no pass) runs here
        world = 1
    backbone = load_backbone(cfg.backbone, cfg.weights, device=devices[0] if devices else cfg.device, seed=0,
                             model_kwargs={"img_size": cfg.image_size} if cfg.image_size else None,
                             trust_remote_code=cfg.trust_remote_code, precision=cfg.feature_precision,
                             lazy=True)  # read only if a shard is missing
    swept = layer_list(layers, backbone.n_layers, name=f"--layers for {cfg.backbone}")
    complete = True
    for part, images, image_set_id in feature_image_sets(cfg, train_images, test_images):
        part_started = time.perf_counter()

        def report(n: int, total: int, part=part, part_started=part_started) -> None:
            if progress is not None:  # this worker's images of this part
                rate = n / max(time.perf_counter() - part_started, 1e-9)
                progress(f"image features of {backbone.name} ({part} images, worker {rank + 1}/{world}, "
                         f"{rate:.1f} images/s)", n, total)

        complete &= compute_feature_shards(backbone, images, swept, pooling=cfg.pooling, cache_dir=cache / "features",
                                           image_set_id=image_set_id, batch_size=cfg.image_batch_size,
                                           progress=report, rank=rank, world=world, shard_size=shard_size)
    seconds = time.perf_counter() - started
    summary = {"backbone": cfg.backbone, "layers": [layer_key(k) for k in swept], "n_images": n_images,
               "workers": workers, "rank": rank, "complete": bool(complete),
               "seconds": round(seconds, 3), "cache": str(cache / "features")}
    logger.info("features of %s: %s for %d images in %.1f s (%s)", cfg.backbone, ", ".join(summary["layers"]), n_images,
                seconds, "complete" if complete else "this worker's shards; the other workers' are still missing")
    return summary


def _run_workers(cfg: FitConfig, devices: list[str], shard_size: int) -> None:
    """``bci-train features`` once per device (worker ``i`` of ``len(devices)`` on
    ``devices[i]``), all at once; their output goes to this process's stderr."""
    import json

    config = Path(cfg.cache) / "features" / f"pass-{os.getpid()}.json"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(json.dumps({k: v for k, v in dataclasses.asdict(cfg).items() if k != "out"}))
    threads = max(1, (os.cpu_count() or 1) // len(devices))
    procs = []
    try:
        for i, device in enumerate(devices):
            cmd = [sys.executable, "-m", "trainer.cli", "features", "--config", str(config), "--data", cfg.data,
                   "--device", device, "--rank", str(i), "--world", str(len(devices)), "--shard-size", str(shard_size)]
            procs.append((device, subprocess.Popen(cmd, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))))
        failed = [(device, p.wait()) for device, p in procs]
    finally:
        for _, p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait()
        config.unlink(missing_ok=True)
    failed = [(d, code) for d, code in failed if code != 0]
    if failed:
        raise BCIError("feature workers failed: " + ", ".join(f"{d} (exit {code})" for d, code in failed)
                       + "; run the same command again to resume (the shards they wrote are kept)")
