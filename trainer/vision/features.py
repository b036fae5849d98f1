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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .._checks import check_option, check_path, check_positive, check_type
from ..config import FINAL, POOLINGS, layer_key, layer_of_key
from ..data.images import open_rgb
from ..errors import UsageError, UsageTypeError
from ..files import atomic_path
from .backbone import Backbone, short_hash

__all__ = ["POOLINGS", "cached_features", "check_pooling", "extract_features", "feature_cache_key", "pool"]

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
    if tokens.ndim == 4:
        mean = tokens.mean(dim=(2, 3))
    elif tokens.ndim == 3:
        mean = tokens.mean(dim=1)
    elif tokens.ndim == 2:
        mean = tokens
    else:
        raise RuntimeError(f"unexpected intermediate feature shape {tuple(tokens.shape)}")
    if pooling == "mean":
        return mean
    cls = prefix[:, 0]
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
    progress : callable(n_done, n_total), optional
        Called after every batch.
    num_workers : int
        Threads that decode and transform the next batch while the model runs (0: none).

    Returns
    -------
    dict
        ``"layer_{k}"`` (``k`` non-negative) and/or ``"final"`` -> float32 array (N, D).
    """
    check_type(backbone, Backbone, "backbone")
    keys, indices = _parse_layers(backbone, layers)
    want_final = FINAL in keys
    if indices:
        check_pooling(backbone, pooling)
    else:
        check_option(pooling, POOLINGS, "pooling")
    check_positive(batch_size, "batch_size", integer=True)
    check_positive(num_workers, "num_workers", strict=False, integer=True)
    if progress is not None and not callable(progress):
        raise UsageTypeError(f"progress must be callable, got {type(progress).__name__}")
    n_total, load = _image_source(images)
    if n_total == 0:
        raise UsageError("images is empty")

    transform = backbone.loader_transform()
    out: dict[str, np.ndarray] = {}

    def load_batch(start: int, pool: ThreadPoolExecutor | None):
        idx = range(start, min(start + batch_size, n_total))
        job = lambda i: transform(load(i))  # noqa: E731
        if pool is None:
            return [job(i) for i in idx]
        return [pool.submit(job, i) for i in idx]

    def gather(batch) -> torch.Tensor:
        tensors = [b.result() if hasattr(b, "result") else b for b in batch]
        return torch.stack(tensors).to(backbone.device, non_blocking=True)

    def store(key: str, start: int, values: torch.Tensor) -> None:
        arr = values.detach().float().cpu().numpy()
        if key not in out:
            out[key] = np.empty((n_total, arr.shape[1]), dtype=np.float32)
        out[key][start:start + len(arr)] = arr

    executor = ThreadPoolExecutor(max_workers=num_workers) if num_workers > 0 else None
    try:
        with torch.inference_mode():
            pending = load_batch(0, executor)
            for start in range(0, n_total, batch_size):
                x = gather(pending)
                nxt = start + batch_size
                pending = load_batch(nxt, executor) if nxt < n_total else None  # prefetch
                inters, final = backbone.forward_layers(x, indices, want_final)
                for k, item in zip(indices, inters):
                    store(layer_key(k), start, pool(item, pooling))
                if want_final:
                    store(FINAL, start, final)
                done = min(nxt, n_total)
                if progress is not None:
                    progress(done, n_total)
    finally:
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)
    return {key: out[key] for key in keys}


# --------------------------------------------------------------------------- cache

_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _slug(text: str, max_len: int = 40) -> str:
    """Filesystem-safe rendering; a hash of the original is appended whenever characters
    were replaced or the text was cut, so distinct inputs stay distinct."""
    safe = _SAFE.sub("_", text).strip(".")
    if safe == text and len(text) <= max_len:
        return text
    return f"{safe[:max_len]}-{short_hash(text)}"


def feature_cache_key(backbone: Backbone, layer_key: str, pooling: str, image_ids: str) -> str:
    """Filesystem-safe cache key: backbone (its ``cache_name``), weights id, layer, pooling, a hash of the
    preprocessing (and model arguments), and the caller's image-set identity string.

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
    parts = [_slug(backbone.cache_name, 60), _slug(backbone.weights_id, 40), layer_key, pool_part,
             "pre" + short_hash(config, 12), _slug(image_ids, 40), _CACHE_FORMAT]
    return "__".join(parts)


def _read_cache(path: Path, n_images: int, expected_meta: dict[str, str]) -> np.ndarray | None:
    """The cached array, or None (with a warning) when the file is unusable."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
            if _TENSOR_NAME not in f.keys():
                raise ValueError(f"no {_TENSOR_NAME!r} tensor")
            arr = f.get_tensor(_TENSOR_NAME)
    except Exception as err:  # corrupt or truncated file: safetensors raises various types
        logger.warning("ignoring unreadable feature cache %s (%s); recomputing", path, err)
        return None
    problem = None
    if arr.dtype != np.float32:
        problem = f"dtype {arr.dtype}, expected float32"
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
        logger.warning("ignoring feature cache %s: %s; recomputing", path, problem)
        return None
    return arr


def _write_cache(path: Path, arr: np.ndarray, metadata: dict[str, str]) -> None:
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({_TENSOR_NAME: np.ascontiguousarray(arr, dtype=np.float32)}, str(tmp), metadata=metadata)


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

    Layers found in the cache (and valid: float32, one row per image, matching metadata)
    are loaded; all missing ones are computed together in a single
    :func:`extract_features` call and written atomically.  An unusable cache file is
    logged as a warning and recomputed.  ``image_set_id`` must identify the images and
    their order (see :func:`feature_cache_key`).
    """
    check_type(backbone, Backbone, "backbone")
    check_type(image_set_id, str, "image_set_id")
    keys, indices = _parse_layers(backbone, layers)
    if indices:
        check_pooling(backbone, pooling)
    else:
        check_option(pooling, POOLINGS, "pooling")
    cache_dir = check_path(cache_dir, "cache_dir")
    n_images, _ = _image_source(images)
    cache_dir.mkdir(parents=True, exist_ok=True)

    result: dict[str, np.ndarray] = {}
    missing: list[str] = []
    paths: dict[str, Path] = {}
    metas: dict[str, dict[str, str]] = {}
    for key in keys:
        paths[key] = cache_dir / f"{feature_cache_key(backbone, key, pooling, image_set_id)}.safetensors"
        metas[key] = {
            "backbone": backbone.cache_name,
            "weights_id": backbone.weights_id,
            "layer": key,
            "pooling": "pooled" if key == FINAL else pooling,
            "preprocessing_id": backbone.preprocessing_id(),
            "n_images": str(n_images),
            "image_set_id": image_set_id,
        }
        arr = _read_cache(paths[key], n_images, metas[key]) if paths[key].is_file() else None
        if arr is None:
            missing.append(key)
        else:
            result[key] = arr
    if missing:
        logger.info("computing %s of %s for %d images (%d layer(s) cached)",
                    ", ".join(missing), backbone.name, n_images, len(keys) - len(missing))
        request = [layer_of_key(k) for k in missing]
        computed = extract_features(backbone, images, request, pooling=pooling, batch_size=batch_size,
                                    progress=progress)
        for key in missing:
            _write_cache(paths[key], computed[key], metas[key])
            result[key] = computed[key]
    else:
        logger.info("all %d layer(s) of %s loaded from %s", len(keys), backbone.name, cache_dir)
    return {key: result[key] for key in keys}
