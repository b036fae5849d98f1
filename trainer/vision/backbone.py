"""A frozen vision backbone, whoever provides it: what is needed to feed it images and to
read its intermediate layers.

:class:`Backbone` is the interface the rest of the trainer sees.  Two providers implement
it: timm (:mod:`trainer.vision.timm_models`, names like ``vit_base_patch16_clip_224.openai``)
and Hugging Face transformers (:mod:`trainer.vision.hf_models`, names ``hf:FOLDER`` for a
local model folder).  :func:`load_backbone` picks the provider by the name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .._checks import check_type
from ..config import FEATURE_PRECISIONS
from ..errors import BCIError, UsageError

__all__ = ["Backbone", "FEATURE_PRECISIONS", "HF_PREFIX", "check_model_name", "check_memory", "count_gflops",
           "describe_backbone", "dtype_name", "feature_dtype", "file_digest", "load_backbone", "precision_of",
           "resolve_device"]

logger = logging.getLogger("trainer")

#: names of Hugging Face transformers backbones start with this, followed by a local folder
HF_PREFIX = "hf:"
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"``: how bundles and cache metadata name a dtype."""
    return str(dtype).removeprefix("torch.")


def precision_of(name: str) -> str:
    """The ``precision`` (:data:`FEATURE_PRECISIONS`) whose dtype :func:`dtype_name` names
    ``name``; ``"fp32"`` for a name it does not know."""
    return next((p for p, d in _DTYPES.items() if dtype_name(d) == name), "fp32")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; also ``"cpu"``, ``"cuda"``, ``"cuda:N"``.

    A malformed string is a :class:`~trainer.errors.UsageError` (a ValueError) naming it;
    asking for CUDA on a machine without it (or for a GPU index that does not exist) is a
    BCIError.
    """
    if isinstance(device, torch.device):
        device = str(device)
    check_type(device, str, "device")
    spec = device.strip().lower()
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if m is None:
        raise UsageError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N'; got {device!r}")
    if not torch.cuda.is_available():
        raise BCIError(f"device {device!r} was requested but CUDA is not available here; "
                       f"use --device cpu or auto (device='cpu' or 'auto' in Python)")
    index = int(m.group(1)) if m.group(1) is not None else None
    if index is not None and index >= torch.cuda.device_count():
        raise BCIError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) are visible")
    return torch.device("cuda" if index is None else f"cuda:{index}")


def feature_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype of a backbone's weights and pass for ``precision`` (:data:`FEATURE_PRECISIONS`)
    on ``device``."""
    from .._checks import check_option

    check_option(precision, FEATURE_PRECISIONS, "--feature-precision (precision)")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return _DTYPES[precision]


def check_memory(name: str, n_params: int, dtype: torch.dtype, device: torch.device) -> None:
    """Raise a BCIError naming the memory needed when a CUDA device has too little free
    for the weights of ``n_params`` parameters in ``dtype`` (with a tenth to spare for a
    batch's activations)."""
    if device.type != "cuda":
        return
    free, total = torch.cuda.mem_get_info(device)
    need = n_params * torch.empty((), dtype=dtype).element_size()
    if need * 1.1 > free:
        raise BCIError(
            f"backbone {name!r} needs {need / 1e9:.1f} GB for its {n_params / 1e9:.2f} B parameters in "
            f"{dtype_name(dtype)} (and room for a batch), but {device} has {free / 1e9:.1f} GB free "
            f"of {total / 1e9:.1f} GB. Use a GPU with more memory, --feature-precision bf16 or fp16 (half of fp32's), "
            f"another GPU (--device cuda:N), or --device cpu (slow)")


@dataclass(repr=False)
class Backbone:
    """A frozen vision model in eval mode plus what is needed to feed it and name its output.

    Attributes
    ----------
    name : str
        The model name as given: a timm name (may carry a pretrained tag, ``arch.tag``) or
        ``hf:FOLDER``.
    weights : str
        As given to :func:`load_backbone`: ``"random"``, ``"hub"`` or a local weights path.
    weights_id : str
        Stable identity of the weights: ``"random-seed0"``, ``"file-<sha256[:16]>"``,
        ``"hub-<pretrained tag>"`` or ``"folder-<sha256[:16]>"``.  Part of every feature
        cache key.
    model : torch.nn.Module
    device : torch.device
    data_config : dict
        timm's data config keys (input size, interpolation, mean, std, crop pct, crop
        mode): how an image becomes the model's input (:meth:`transform`).
    n_layers : int
        How many intermediate layers can be read (indices ``0 .. n_layers - 1``).
    kind : 'vit' | 'cnn'
        ``'vit'`` when intermediates are token sequences with separable prefix (class)
        tokens, ``'cnn'`` when they are NCHW feature maps.
    n_params : int
    model_kwargs : dict
        Extra model arguments (part of the cache key).
    provider : 'timm' | 'hf'
    dtype : torch.dtype
        Of the weights and the pass (:func:`feature_dtype`); features come out float32.
    """

    name: str
    weights: str
    weights_id: str
    model: torch.nn.Module
    device: torch.device
    data_config: dict
    n_layers: int
    kind: str
    n_params: int
    model_kwargs: dict = field(default_factory=dict)
    provider: str = "timm"
    dtype: torch.dtype = torch.float32
    # a backbone loaded lazily (load_backbone(lazy=True)) holds its architecture on the meta
    # device and this loader of the real one, called by ensure_loaded()
    _loader: Callable[[], "Backbone"] | None = None

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(name={self.name!r}, weights_id={self.weights_id!r}, kind={self.kind!r}, "
                f"n_layers={self.n_layers}, n_params={self.n_params}, device={str(self.device)!r})")

    # -- what a provider defines

    @property
    def num_prefix_tokens(self) -> int:
        """Class/register/distillation tokens in front of the patch tokens (0 for CNNs)."""
        raise NotImplementedError

    @property
    def cache_name(self) -> str:
        """The model's identity in a feature cache key (weights apart: see ``weights_id``)."""
        return self.name

    def forward_layers(self, x: torch.Tensor, indices: list[int], want_final: bool) -> tuple[list[Any], torch.Tensor | None]:
        """One forward pass over the batch ``x``: the intermediates at the sorted
        ``indices`` (each a ``(tokens, prefix tokens)`` pair, a token tensor or an NCHW
        map, as :func:`trainer.vision.features.pool` takes them), and the final embedding
        (B, D) when ``want_final``, else None.  Without ``want_final`` the pass may stop
        after the deepest index."""
        raise NotImplementedError

    def features_forward(self, x: torch.Tensor) -> Any:
        """The model's own pass up to its last layer (no head): what its GFLOPs per image
        count (:func:`count_gflops`)."""
        raise NotImplementedError

    # -- shared

    @property
    def loaded(self) -> bool:
        """Whether the weights are in memory (False for a lazy backbone not yet used)."""
        return self._loader is None

    def ensure_loaded(self) -> None:
        """Load the weights of a lazy backbone (:func:`load_backbone` with ``lazy=True``), in
        place; nothing for a loaded one.  A BCIError if the weights found are not the ones
        its ``weights_id`` named."""
        if self._loader is None:
            return
        real = self._loader()
        if real.weights_id != self.weights_id:
            raise BCIError(f"backbone {self.name}: the weights loaded ({real.weights_id}) are not the ones described "
                           f"({self.weights_id}); did the weights change while this ran?")
        self.__dict__.update(real.__dict__)

    def transform(self):
        """timm's evaluation transform for this model's data config (PIL RGB image -> CHW
        float tensor)."""
        from timm.data import create_transform

        return create_transform(**self.data_config, is_training=False)

    def loader_transform(self) -> Callable[[Any], torch.Tensor]:
        """:meth:`transform` with its last two steps (to tensor, normalise) done in numpy:
        bitwise the same tensor, but without torch operations, so that the threads that
        prepare the next batch do not each start torch's intra-op thread pool beside the
        model's (on a busy 2-core machine that made the preparation ~10x dearer in CPU
        time than the numpy steps).  Falls back to :meth:`transform` for other shapes of
        timm transform and for images that are not 8-bit RGB."""
        from torchvision.transforms import Compose, Normalize, ToTensor

        full = self.transform()
        steps = list(full.transforms) if isinstance(full, Compose) else []
        if len(steps) < 2 or not isinstance(steps[-2], ToTensor) or not isinstance(steps[-1], Normalize):
            return full
        head, norm = steps[:-2], steps[-1]
        mean = np.asarray(norm.mean, dtype=np.float32).reshape(-1, 1, 1)
        std = np.asarray(norm.std, dtype=np.float32).reshape(-1, 1, 1)

        def transform(image) -> torch.Tensor:
            for step in head:
                image = step(image)
            if getattr(image, "mode", None) != "RGB":
                return steps[-1](steps[-2](image))
            x = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32) / np.float32(255)
            return torch.from_numpy((x - mean) / std)

        return transform

    def layer_depths(self) -> list[float]:
        """Relative depth ``(k + 1) / n_layers`` of each layer index ``k``."""
        return [(k + 1) / self.n_layers for k in range(self.n_layers)]

    def preprocessing_id(self) -> str:
        """A stable string of the data config: input size, interpolation, mean, std, crop."""
        c = self.data_config

        def nums(values) -> str:
            return ",".join(f"{float(v):.6g}" for v in values)

        size = "x".join(str(int(v)) for v in c.get("input_size", ()))
        crop_pct = c.get("crop_pct")
        return (f"size{size}_{c.get('interpolation', '')}_mean{nums(c.get('mean', ()))}"
                f"_std{nums(c.get('std', ()))}_crop{'none' if crop_pct is None else f'{float(crop_pct):.6g}'}"
                f"_{c.get('crop_mode') or 'center'}")


_DIGESTS = "weight-digests.json"


def file_digest(path: str | os.PathLike) -> str:
    """The SHA-256 of a (weights) file, remembered in ``weight-digests.json`` of the default
    cache folder by its absolute path, size and modification time: a 20 GB file is read
    once, not by every run that names its weights."""
    from ..config import default_cache_dir
    from ..files import atomic_write_text, sha256_file

    path = Path(path).expanduser().resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = default_cache_dir() / _DIGESTS
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    if not isinstance(memo, dict):
        memo = {}
    digest = memo.get(key)
    if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest):
        return digest
    digest = sha256_file(path)
    memo[key] = digest
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(memo_path, json.dumps(memo, indent=0) + "\n")
    except OSError as err:  # a read-only cache: the digest is still right, only not remembered
        logger.debug("could not remember the digest of %s in %s: %s", path, memo_path, err)
    return digest


def short_hash(text: str, n: int = 10) -> str:
    """The first ``n`` hex digits of the SHA-256 of ``text``."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:n]


def check_model_name(name: str) -> None:
    """Raise a BCIError unless ``name`` names a backbone: a timm model (optionally
    ``arch.tag``; close matches are named) or ``hf:FOLDER``, a folder with a transformers
    ``config.json``."""
    check_type(name, str, "backbone")
    if name.startswith(HF_PREFIX):
        from .hf_models import check_hf_name

        check_hf_name(name)
    else:
        from .timm_models import check_timm_name

        check_timm_name(name)


def load_backbone(
    name: str,
    weights: str = "random",
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    model_kwargs: dict | None = None,
    trust_remote_code: bool = False,
    precision: str = "fp32",
    lazy: bool = False,
) -> Backbone:
    """Create a frozen backbone: a timm model, or a transformers model for ``hf:FOLDER``.

    Parameters
    ----------
    name : str
        timm model name (``timm.list_models()``), optionally with a pretrained tag; or
        ``hf:FOLDER``, a local transformers model folder (``config.json``, the weights,
        ``preprocessor_config.json``).
    weights : str
        ``"random"``: random weights initialised deterministically from ``seed`` (the
        caller's global torch RNG is left untouched).  ``"hub"``: timm's pretrained
        weights from the Hugging Face hub (or its local cache); for ``hf:`` names, the
        folder's own weights.  Anything else: a local weights file for a timm model
        (``.safetensors``, ``.bin``, ``.pth``, a timm ``.npz``), or the folder an ``hf:``
        model has moved to.
    device : 'auto' | 'cpu' | 'cuda' | 'cuda:N'
    seed : int
        Initialisation seed for ``weights="random"``.
    model_kwargs : dict, optional
        Extra ``timm.create_model`` arguments (e.g. ``img_size=64`` for a small ViT);
        timm only.
    trust_remote_code : bool
        ``hf:`` only: allow a folder that ships its own model code (InternViT-6B does) to
        run it.  Off by default: that code runs with your rights.
    precision : 'fp32' | 'bf16' | 'fp16' | 'auto'
        The dtype of the weights and of the pass (:func:`feature_dtype`: ``'auto'`` is
        bf16 or fp16 on a CUDA GPU, fp32 on a CPU).  On a GPU with too little free memory
        for the weights, a BCIError says how much is needed.
    lazy : bool
        Describe the backbone (its layers, data config, weights id: what feature cache keys
        need) without loading its weights, which the first pass that needs them loads
        (:meth:`Backbone.ensure_loaded`): a run whose features are all cached never reads
        a 6-billion-parameter model.

    Raises
    ------
    BCIError
        Unknown model name, missing or incompatible weights, a folder with its own code
        and no ``trust_remote_code``, or a model whose layers cannot be read.
    """
    check_type(name, str, "name")
    check_type(trust_remote_code, bool, "trust_remote_code")
    if name.startswith(HF_PREFIX):
        from .hf_models import load_hf_backbone

        return load_hf_backbone(name, weights, device=device, seed=seed, model_kwargs=model_kwargs,
                                trust_remote_code=trust_remote_code, precision=precision, lazy=lazy)
    from .timm_models import load_timm_backbone

    if trust_remote_code:
        raise UsageError("trust_remote_code (--trust-remote-code) applies to hf: backbones only; "
                         f"{name!r} is a timm model")
    return load_timm_backbone(name, weights, device=device, seed=seed, model_kwargs=model_kwargs, precision=precision,
                              lazy=lazy)


def count_gflops(forward: Callable[[torch.Tensor], Any], input_size) -> float | None:
    """Floating-point operations (10^9, multiply and add counted apart) of ``forward`` on
    one image of ``input_size`` (C, H, W), counted by torch's FlopCounterMode on the meta
    device (matrix products and convolutions; no weights, no time); None when the forward
    cannot run there."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        x = torch.empty(1, *input_size, device="meta")
        with FlopCounterMode(display=False) as counter, torch.inference_mode():
            forward(x)
        return counter.get_total_flops() / 1e9
    except Exception:  # a model whose code does something the meta device cannot
        return None


def describe_backbone(name: str, *, model_kwargs: dict | None = None, trust_remote_code: bool = False,
                      flops: bool = False) -> dict[str, Any]:
    """What :func:`load_backbone` would report of ``name`` (provider, kind, number of
    layers, number of parameters, input size), and with ``flops`` the GFLOPs of its whole
    pass over one image (``gflops``, see :func:`count_gflops`; a few seconds for the
    largest models), from the architecture alone: the lazy backbone (built on PyTorch's
    meta device, without weights or memory), so that a 6-billion-parameter model is
    described on any machine."""
    backbone = load_backbone(name, "random", model_kwargs=model_kwargs, trust_remote_code=trust_remote_code, lazy=True)
    input_size = list(backbone.data_config["input_size"])
    return {"name": name, "provider": backbone.provider, "kind": backbone.kind, "n_layers": backbone.n_layers,
            "n_params": backbone.n_params, "input_size": input_size, "prefix_tokens": backbone.num_prefix_tokens,
            "gflops": count_gflops(backbone.features_forward, input_size) if flops else None}
