"""Pooled features of a backbone's intermediate layers, in one pass, and their cache.

* :func:`extract_features` computes, in **one** forward pass per image batch, every
  requested intermediate layer and the model's own final embedding;
* :func:`cached_features` keeps each (backbone, weights, layer, pooling, preprocessing,
  image set) result as one safetensors file, so a layer sweep pays for the images once.

Layers
    Index ``k`` is the backbone's ``k``-th intermediate layer (0-based, negative indices
    count from the end); what a layer is depends on the provider (a timm model's blocks
    or stages, a transformers model's encoder layers).  ``"final"`` is the model's own
    final embedding; it does not depend on ``pooling``.

Pooling (:data:`POOLINGS`)
    ViT-like models (``kind == "vit"``, intermediates are token sequences):
    ``"mean"`` averages the patch tokens (class/register/distillation tokens excluded),
    ``"cls"`` takes the class token, ``"mean+cls"`` concatenates both (``2 * D`` features).
    CNN-like models (``kind == "cnn"``, intermediates are NCHW maps): the only pooling is
    global average pooling, spelled ``"mean"``; ``"cls"`` and ``"mean+cls"`` raise a
    UsageError (a ValueError) because there is no class token.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._checks import check_option, check_path, check_positive, check_type
from ..config import FINAL, POOLINGS, layer_key, layer_of_key
from ..data.images import open_rgb
from ..errors import BCIError, UsageError, UsageTypeError
from ..files import atomic_path
from .backbone import Backbone, dtype_name, short_hash

__all__ = ["CPU_BATCH_SIZE", "POOLINGS", "SHARD_SIZE", "auto_batch_size", "cached_features", "check_pooling",
           "compute_feature_shards", "extract_features", "feature_cache_key", "pool"]

logger = logging.getLogger("trainer")

_CACHE_FORMAT = "v1"  # bump when the meaning of a cached file changes
_TENSOR_NAME = "features"


# --------------------------------------------------------------------------- layers / pooling

def _parse_layers(backbone: Backbone, layers) -> tuple[list[str], list[int]]:
    """Return (result keys in request order without duplicates, sorted block indices)."""
    if isinstance(layers, (int, str)) and not isinstance(layers, bool):
        layers = [layers]
    if not isinstance(layers, (list, tuple)):
        raise UsageTypeError(f"layers must be a list of ints and/or 'final', got {type(layers).__name__} ({layers!r:.80})")
    if not layers:
        raise UsageError("layers must not be empty")
    n = backbone.n_layers
    keys: list[str] = []
    indices: set[int] = set()
    for item in layers:
        if isinstance(item, str):
            if item != FINAL:
                raise UsageError(f"layers: {item!r} is not a layer; use an int index or 'final'")
            key = FINAL
        elif isinstance(item, (int, np.integer)) and not isinstance(item, bool):
            k = int(item)
            if not -n <= k < n:
                raise UsageError(f"layer {k} is out of range for {backbone.name} ({n} layers): "
                                 f"valid indices are 0..{n - 1} (or -{n}..-1 from the end), or 'final'")
            k %= n
            indices.add(k)
            key = layer_key(k)
        else:
            raise UsageTypeError(f"layers: each entry must be an int or 'final', got {type(item).__name__} ({item!r:.80})")
        if key not in keys:
            keys.append(key)
    return keys, sorted(indices)


def check_pooling(backbone: Backbone, pooling: str) -> None:
    """Raise a UsageError unless ``pooling`` (:data:`POOLINGS`) applies to ``backbone``'s layers."""
    check_option(pooling, POOLINGS, "pooling")
    if backbone.kind == "cnn" and pooling != "mean":
        raise UsageError(f"pooling {pooling!r} needs a class token, but {backbone.name} gives feature maps "
                         f"(kind 'cnn'); use --pooling mean (pooling='mean' in Python: global average pooling)")
    if backbone.kind == "vit" and pooling != "mean" and backbone.num_prefix_tokens == 0:
        raise UsageError(f"pooling {pooling!r} needs a class token, but {backbone.name} has none; "
                         f"use --pooling mean (pooling='mean' in Python)")


def pool(item, pooling: str) -> torch.Tensor:
    """Pool one intermediate: a (tokens, prefix) pair / token tensor (ViT) or an NCHW map."""
    if isinstance(item, (tuple, list)):  # ViT with prefix tokens: (B, L, C), (B, P, C)
        tokens, prefix = item
    else:
        tokens, prefix = item, None
    # pooled in float32 whatever the pass's dtype (a bf16 mean over hundreds of tokens loses digits)
    if tokens.ndim == 4:
        mean = tokens.mean(dim=(2, 3), dtype=torch.float32)
    elif tokens.ndim == 3:
        mean = tokens.mean(dim=1, dtype=torch.float32)
    elif tokens.ndim == 2:
        mean = tokens.float()
    else:
        raise RuntimeError(f"unexpected intermediate feature shape {tuple(tokens.shape)}")
    if pooling == "mean":
        return mean
    cls = prefix[:, 0].float()
    return cls if pooling == "cls" else torch.cat([mean, cls], dim=1)


# --------------------------------------------------------------------------- images

def _image_source(images) -> tuple[int, Callable[[int], Any]]:
    """(number of images, function index -> RGB PIL image) for the accepted inputs."""
    from PIL import Image

    if hasattr(images, "open") and hasattr(images, "__len__") and not isinstance(images, (str, os.PathLike)):
        return len(images), images.open
    if isinstance(images, (str, os.PathLike)) or not isinstance(images, Sequence):
        raise UsageTypeError("images must be an ImageSet or a sequence of PIL images or paths, "
                        f"got {type(images).__name__}")

    def load(i: int):
        item = images[i]
        if isinstance(item, Image.Image):
            return item if item.mode == "RGB" else item.convert("RGB")
        if isinstance(item, (str, os.PathLike)):
            return open_rgb(item, f"image {i}")
        raise UsageTypeError(f"images[{i}] must be a PIL image or a path, got {type(item).__name__}")

    return len(images), load


# --------------------------------------------------------------------------- extraction

#: batch size of ``batch_size=0`` (automatic) on a CPU
CPU_BATCH_SIZE = 32
_MAX_AUTO_BATCH = 512
_OOM = tuple({getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError})


def auto_batch_size(backbone: Backbone, layers) -> int:
    """A batch size for :func:`extract_features` of ``layers`` on the backbone's device:
    :data:`CPU_BATCH_SIZE` on a CPU; on a CUDA GPU, what fits in 80 % of its free memory,
    from the peak memory of a probe batch of 4 (at most 512).  A batch that runs out of
    memory later is halved and run again anyway."""
    check_type(backbone, Backbone, "backbone")
    if backbone.device.type != "cuda":
        return CPU_BATCH_SIZE
    backbone.ensure_loaded()
    keys, indices = _parse_layers(backbone, layers)
    want_final = FINAL in keys
    probe = 4
    x = torch.zeros(probe, *backbone.data_config["input_size"], device=backbone.device)
    torch.cuda.synchronize(backbone.device)
    torch.cuda.reset_peak_memory_stats(backbone.device)
    before = torch.cuda.memory_allocated(backbone.device)
    with torch.inference_mode():
        backbone.forward_layers(x, indices, want_final)
    per_image = max(1, (torch.cuda.max_memory_allocated(backbone.device) - before) // probe)
    free, _ = torch.cuda.mem_get_info(backbone.device)
    size = int(max(1, min(_MAX_AUTO_BATCH, 0.8 * free // per_image)))
    logger.info("image batch size %d (%.0f MB per image, %.1f GB free on %s)", size, per_image / 1e6, free / 1e9,
                backbone.device)
    return size


class _Rows:
    """Images ``start:stop`` of an image source, as an image source."""

    def __init__(self, load: Callable[[int], Any], start: int, stop: int):
        self._load, self._start, self._n = load, start, stop - start

    def __len__(self) -> int:
        return self._n

    def open(self, i: int):
        return self._load(self._start + i)


def extract_features(
    backbone: Backbone,
    images,
    layers,
    *,
    pooling: str = "mean",
    batch_size: int = 64,
    progress: Callable[[int, int], Any] | None = None,
    num_workers: int = 4,
) -> dict[str, np.ndarray]:
    """Pooled features of several layers (and the final embedding) in one pass per batch.

    Parameters
    ----------
    backbone : Backbone
    images : ImageSet | sequence of PIL images or paths
        Loaded and transformed batch by batch (at most two batches in memory).
    layers : list of int and/or 'final'
        Block/stage indices (negative from the end) and ``'final'``.
    pooling : 'mean' | 'cls' | 'mean+cls'
        For intermediate layers; see the module docstring.
    batch_size : int
        Images per forward pass; 0: :func:`auto_batch_size`.  A batch that runs out of
        GPU memory is halved and run again (logged).
    progress : callable(n_done, n_total), optional
        Called after every batch.
    num_workers : int
        Threads that decode and transform the next batch while the model runs (0: none).

    Returns
    -------
    dict
        ``"layer_{k}"`` (``k`` non-negative) and/or ``"final"`` -> float32 array (N, D),
        whatever the backbone's dtype.
    """
    check_type(backbone, Backbone, "backbone")
    keys, indices = _parse_layers(backbone, layers)
    want_final = FINAL in keys
    if indices:
        check_pooling(backbone, pooling)
    else:
        check_option(pooling, POOLINGS, "pooling")
    check_positive(batch_size, "batch_size (0: automatic)", strict=False, integer=True)
    check_positive(num_workers, "num_workers", strict=False, integer=True)
    if progress is not None and not callable(progress):
        raise UsageTypeError(f"progress must be callable, got {type(progress).__name__}")
    n_total, load = _image_source(images)
    if n_total == 0:
        raise UsageError("images is empty")
    backbone.ensure_loaded()  # a lazy backbone's weights are read now, when a pass needs them
    size = batch_size or auto_batch_size(backbone, layers)

    transform = backbone.loader_transform()
    job = lambda i: transform(load(i))  # noqa: E731
    out: dict[str, np.ndarray] = {}
    queued: deque = deque()  # the next images in order: futures (or tensors without workers)
    next_image = 0

    def queue_up_to(n: int) -> None:
        nonlocal next_image
        while len(queued) < n and next_image < n_total:
            queued.append(executor.submit(job, next_image) if executor is not None else job(next_image))
            next_image += 1

    def store(key: str, start: int, values: torch.Tensor) -> None:
        arr = values.detach().float().cpu().numpy()
        if key not in out:
            out[key] = np.empty((n_total, arr.shape[1]), dtype=np.float32)
        out[key][start:start + len(arr)] = arr

    executor = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 0 else None
    try:
        with torch.inference_mode():
            start = 0
            while start < n_total:
                queue_up_to(size)
                batch = [queued[i] for i in range(min(size, len(queued)))]
                x = torch.stack([b.result() if hasattr(b, "result") else b for b in batch])
                x = x.to(backbone.device, non_blocking=True)
                queue_up_to(2 * size)  # the next batch is prepared while this one runs
                try:
                    inters, final = backbone.forward_layers(x, indices, want_final)
                except _OOM:
                    if size == 1:
                        raise BCIError(f"{backbone.name}: one image does not fit in the memory of {backbone.device}; "
                                       f"use --feature-precision bf16 or fp16, or another device") from None
                    del x
                    if backbone.device.type == "cuda":
                        torch.cuda.empty_cache()
                    size = max(1, size // 2)
                    logger.warning("%s: out of memory on %s; image batch size now %d", backbone.name, backbone.device, size)
                    continue
                for k, item in zip(indices, inters):
                    store(layer_key(k), start, pool(item, pooling))
                if want_final:
                    store(FINAL, start, final)
                for _ in batch:
                    queued.popleft()
                start += len(batch)
                if progress is not None:
                    progress(start, n_total)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return {key: out[key] for key in keys}


# --------------------------------------------------------------------------- cache

#: images per shard of a feature pass over a large image set (each shard a file, written
#: as soon as it is computed: a killed pass resumes at the first missing shard, and
#: several processes can share a pass)
SHARD_SIZE = 2048
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")
_FP16_MAX = float(np.finfo(np.float16).max)


def _slug(text: str, max_len: int = 40) -> str:
    """Filesystem-safe rendering; a hash of the original is appended whenever characters
    were replaced or the text was cut, so distinct inputs stay distinct."""
    safe = _SAFE.sub("_", text).strip(".")
    if safe == text and len(text) <= max_len:
        return text
    return f"{safe[:max_len]}-{short_hash(text)}"


def feature_cache_key(backbone: Backbone, layer_key: str, pooling: str, image_ids: str) -> str:
    """Filesystem-safe cache key: backbone (its ``cache_name``), weights id, layer, pooling,
    a hash of the preprocessing (and model arguments, and the pass's dtype when it is not
    float32), and the caller's image-set identity string.

    ``image_ids`` must change whenever the images or their order change (e.g. a hash of
    the file list).  The final embedding does not depend on ``pooling``; its key uses
    ``"pooled"`` so that all poolings share one file.
    """
    check_type(backbone, Backbone, "backbone")
    check_type(layer_key, str, "layer_key")
    check_type(image_ids, str, "image_ids")
    layer_of_key(layer_key)  # 'layer_K' or 'final'
    check_option(pooling, POOLINGS, "pooling")
    if not image_ids:
        raise UsageError("image_ids must be a non-empty string identifying the image set")
    pool_part = "pooled" if layer_key == FINAL else pooling
    config = backbone.preprocessing_id()
    if backbone.model_kwargs:
        config += "|" + repr(sorted(backbone.model_kwargs.items()))
    if backbone.dtype != torch.float32:
        config += "|" + dtype_name(backbone.dtype)
    parts = [_slug(backbone.cache_name, 60), _slug(backbone.weights_id, 40), layer_key, pool_part,
             "pre" + short_hash(config, 12), _slug(image_ids, 40), _CACHE_FORMAT]
    return "__".join(parts)


def _read_cache(path: Path, n_images: int, expected_meta: dict[str, str], *, quiet: bool = False) -> np.ndarray | None:
    """The cached array as float32, or None (with a warning unless ``quiet``) when the file
    is unusable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if _TENSOR_NAME not in f.keys():
                raise ValueError(f"no {_TENSOR_NAME!r} tensor")
            arr = f.get_tensor(_TENSOR_NAME)
    except Exception as err:  # corrupt or truncated file: safetensors raises various types
        if not quiet:
            logger.warning("ignoring unreadable feature cache %s (%s); recomputing", path, err)
        return None
    problem = None
    if arr.dtype not in (np.float32, np.float16):
        problem = f"dtype {arr.dtype}, expected float32 or float16"
    elif arr.ndim != 2 or arr.shape[0] != n_images:
        problem = f"shape {arr.shape}, expected ({n_images}, D)"
    elif not np.isfinite(arr).all():
        problem = "non-finite values"
    else:
        for k, v in expected_meta.items():
            if meta.get(k) != v:
                problem = f"metadata {k}={meta.get(k)!r}, expected {v!r}"
                break
    if problem is not None:
        if not quiet:
            logger.warning("ignoring feature cache %s: %s; recomputing", path, problem)
        return None
    return arr.astype(np.float32, copy=False)


def _write_cache(path: Path, arr: np.ndarray, metadata: dict[str, str], half: bool = False) -> None:
    """Write ``arr`` as float16 when ``half`` (a pass in bf16/fp16: float16 keeps its
    digits) and its values fit, else as float32."""
    from safetensors.numpy import save_file

    dtype = np.float16 if half and float(np.abs(arr).max(initial=0.0)) < _FP16_MAX else np.float32
    with atomic_path(path) as tmp:
        save_file({_TENSOR_NAME: np.ascontiguousarray(arr, dtype=dtype)}, str(tmp), metadata=metadata)


def _shard_bounds(n_images: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, n_images)) for a in range(0, n_images, size)]


def _shard_path(path: Path, a: int, b: int) -> Path:
    return path.with_name(path.name.removesuffix(".safetensors") + ".shards") / f"{a:09d}-{b:09d}.safetensors"


class _CachePlan:
    """The files of one cached feature request: per layer key its path and metadata."""

    def __init__(self, backbone: Backbone, images, layers, pooling: str, cache_dir, image_set_id: str):
        check_type(backbone, Backbone, "backbone")
        check_type(image_set_id, str, "image_set_id")
        self.keys, indices = _parse_layers(backbone, layers)
        if indices:
            check_pooling(backbone, pooling)
        else:
            check_option(pooling, POOLINGS, "pooling")
        self.cache_dir = check_path(cache_dir, "cache_dir")
        self.n_images, self.load = _image_source(images)
        self.half = backbone.dtype != torch.float32
        self.paths: dict[str, Path] = {}
        self.metas: dict[str, dict[str, str]] = {}
        for key in self.keys:
            self.paths[key] = self.cache_dir / f"{feature_cache_key(backbone, key, pooling, image_set_id)}.safetensors"
            self.metas[key] = {
                "backbone": backbone.cache_name,
                "weights_id": backbone.weights_id,
                "layer": key,
                "pooling": "pooled" if key == FINAL else pooling,
                "preprocessing_id": backbone.preprocessing_id(),
                "n_images": str(self.n_images),
                "image_set_id": image_set_id,
            }
            if self.half:
                self.metas[key]["dtype"] = dtype_name(backbone.dtype)

    def read(self, key: str) -> np.ndarray | None:
        path = self.paths[key]
        return _read_cache(path, self.n_images, self.metas[key]) if path.is_file() else None

    def read_shard(self, key: str, a: int, b: int) -> np.ndarray | None:
        """Images ``a:b`` of the layer, from their shard file; None when it is not (yet) usable."""
        path = _shard_path(self.paths[key], a, b)
        return _read_cache(path, b - a, self.metas[key], quiet=True) if path.is_file() else None

    def merge(self, key: str, shard_size: int) -> np.ndarray | None:
        """Join the layer's shards into its cache file (and delete them) once all are there."""
        parts = []
        for a, b in _shard_bounds(self.n_images, shard_size):
            arr = self.read_shard(key, a, b)
            if arr is None:
                return None
            parts.append(arr)
        whole = np.concatenate(parts)
        _write_cache(self.paths[key], whole, self.metas[key], self.half)
        shutil.rmtree(_shard_path(self.paths[key], 0, 1).parent, ignore_errors=True)
        return whole


def compute_feature_shards(
    backbone: Backbone,
    images,
    layers,
    *,
    pooling: str,
    cache_dir: str | os.PathLike,
    image_set_id: str,
    batch_size: int = 64,
    progress: Callable[[int, int], Any] | None = None,
    rank: int = 0,
    world: int = 1,
    shard_size: int = 0,
) -> bool:
    """One worker's share of a sharded feature pass: the shards ``rank, rank + world, ...``
    (of ``shard_size`` images each, default :data:`SHARD_SIZE`; all workers of a pass must
    use the same) of every layer not yet in the cache, each written
    to ``<cache file>.shards/`` as soon as it is computed; shards already there are kept.
    Then every layer whose shards are all there is merged into its cache file, in image
    order.  Returns whether every layer is now in the cache.

    Workers on other devices or machines sharing ``cache_dir`` (its storage) run the other
    ranks; whoever finishes last merges (merging is atomic and may happen twice).  A
    killed worker run again resumes at its first missing shard.  ``progress(done, total)``
    counts this worker's images."""
    check_positive(world, "world", integer=True)
    check_positive(shard_size, "shard_size (0: the default)", strict=False, integer=True)
    shard_size = shard_size or SHARD_SIZE
    if not isinstance(rank, int) or not 0 <= rank < world:
        raise UsageError(f"rank must be within 0..{world - 1} (world {world}), got {rank!r}")
    plan = _CachePlan(backbone, images, layers, pooling, cache_dir, image_set_id)
    plan.cache_dir.mkdir(parents=True, exist_ok=True)
    missing = [k for k in plan.keys if plan.read(k) is None]
    merged = _run_shards(backbone, plan, missing, pooling, batch_size, progress, rank, world, shard_size)
    return all(merged[k] is not None for k in missing)


def _run_shards(backbone: Backbone, plan: _CachePlan, missing: list[str], pooling: str, batch_size: int,
                progress: Callable[[int, int], Any] | None, rank: int, world: int, shard_size: int
                ) -> dict[str, np.ndarray | None]:
    """Compute worker ``rank``'s missing shards of the layers ``missing`` (see
    :func:`compute_feature_shards`), then merge each layer whose shards are all there; per
    layer its merged features, or None while other workers' shards are missing."""
    mine = [(a, b) for i, (a, b) in enumerate(_shard_bounds(plan.n_images, shard_size)) if i % world == rank]
    todo = [(a, b, [k for k in missing if plan.read_shard(k, a, b) is None]) for a, b in mine]
    todo = [(a, b, keys) for a, b, keys in todo if keys]
    total = sum(b - a for a, b, _ in todo)
    if todo:
        logger.info("computing %s of %s for %d of %d images (worker %d of %d, %d shard(s) of %d)",
                    ", ".join(missing), backbone.name, total, plan.n_images, rank + 1, world, len(todo), shard_size)
        # one batch size for the whole pass (a GPU's memory is probed once, not per shard)
        batch_size = batch_size or auto_batch_size(backbone, [layer_of_key(k) for k in missing])
    done = 0
    for a, b, keys in todo:
        def shard_progress(n: int, _total: int, done=done) -> None:
            if progress is not None:
                progress(done + n, total)

        computed = extract_features(backbone, _Rows(plan.load, a, b), [layer_of_key(k) for k in keys], pooling=pooling,
                                    batch_size=batch_size, progress=shard_progress)
        for key in keys:
            path = _shard_path(plan.paths[key], a, b)
            path.parent.mkdir(parents=True, exist_ok=True)
            _write_cache(path, computed[key], plan.metas[key], plan.half)
        done += b - a
    return {key: plan.merge(key, shard_size) for key in missing}


def cached_features(
    backbone: Backbone,
    images,
    layers,
    *,
    pooling: str,
    cache_dir: str | os.PathLike,
    image_set_id: str,
    batch_size: int = 64,
    progress: Callable[[int, int], Any] | None = None,
) -> dict[str, np.ndarray]:
    """:func:`extract_features` with one safetensors file per layer under ``cache_dir``.

    Layers found in the cache (and valid: one row per image, finite, matching metadata)
    are loaded; all missing ones are computed together, in one pass per shard of
    :data:`SHARD_SIZE` images, each shard written as soon as it is computed (so a killed
    pass resumes where it stopped; see :func:`compute_feature_shards`), then merged.  An
    unusable cache file is logged as a warning and recomputed.  ``image_set_id`` must
    identify the images and their order (see :func:`feature_cache_key`).  A backbone
    running in bf16 or fp16 has its features stored as float16 (read back as float32).
    """
    plan = _CachePlan(backbone, images, layers, pooling, cache_dir, image_set_id)
    plan.cache_dir.mkdir(parents=True, exist_ok=True)
    result = {k: arr for k in plan.keys if (arr := plan.read(k)) is not None}
    missing = [k for k in plan.keys if k not in result]
    if not missing:
        logger.info("all %d layer(s) of %s loaded from %s", len(plan.keys), backbone.name, plan.cache_dir)
        return {key: result[key] for key in plan.keys}
    if plan.n_images <= SHARD_SIZE:  # one shard: straight to the cache files
        logger.info("computing %s of %s for %d images (%d layer(s) cached)",
                    ", ".join(missing), backbone.name, plan.n_images, len(plan.keys) - len(missing))
        computed = extract_features(backbone, images, [layer_of_key(k) for k in missing], pooling=pooling,
                                    batch_size=batch_size, progress=progress)
        for key in missing:
            _write_cache(plan.paths[key], computed[key], plan.metas[key], plan.half)
            result[key] = plan.read(key) if plan.half else computed[key]
        return {key: result[key] for key in plan.keys}
    merged = _run_shards(backbone, plan, missing, pooling, batch_size, progress, 0, 1, SHARD_SIZE)
    for key in missing:
        if merged[key] is None:
            raise RuntimeError(f"feature cache {plan.paths[key]} missing after its pass")
        result[key] = merged[key]
    return {key: result[key] for key in plan.keys}
