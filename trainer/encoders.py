"""EEG/MEG encoders: one trial ``(B, n_chans, n_times)`` → one embedding ``(B, embed_dim)``.

Encoders live in a registry so that a model bundle can name its encoder and rebuild it:

>>> enc = create_encoder("eegproject", n_chans=17, n_times=250, embed_dim=1024)
>>> cfg = encoder_config(enc)              # {'name': 'eegproject', 'n_chans': 17, ...}
>>> same = create_encoder(**cfg)           # same architecture; load the weights into it

Registered encoders:

- ``eegproject``: flatten → Linear → residual [GELU, Linear, Dropout] → LayerNorm, the
  best EEG encoder of the shallow-alignment paper;
- ``tsconv``: NICE's temporal-spatial convolution (ShallowNet-like) with the same residual
  projection head;
- ``eegnet``: a compact EEGNet-v4 (temporal conv, depthwise spatial conv, separable conv)
  followed by a linear map to the embedding;
- ``linear``: flatten → Linear, a baseline.

Every encoder is a subclass of :class:`EEGEncoder`, whose ``forward`` checks the input
shape before encoding. A new encoder subclasses it, passes its own architecture arguments
to ``super().__init__`` (so that :func:`encoder_config` can record them) and is decorated
with :func:`register_encoder`.
"""

from __future__ import annotations

import inspect
import json
import numbers
from typing import Any, Callable, TypeVar

import torch
from torch import Tensor, nn

from ._checks import check_type
from .errors import UsageError, UsageTypeError

__all__ = [
    "EEGEncoder",
    "EEGNet",
    "EEGProject",
    "LinearEncoder",
    "TSConv",
    "create_encoder",
    "encoder_config",
    "fold_channel_mixing",
    "list_encoders",
    "register_encoder",
]

_REGISTRY: dict[str, type["EEGEncoder"]] = {}
_COMMON = ("n_chans", "n_times", "embed_dim")

E = TypeVar("E", bound=type)


# --------------------------------------------------------------------------- checkers


# (numpy integers and floats are accepted too, unlike trainer._checks: shapes often come
# from arrays)
def _check_int(value: Any, name: str, *, minimum: int = 1) -> int:
    """An integer (not a bool) >= ``minimum``, returned as a plain ``int``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise UsageTypeError(f"{name} must be of type int, got {type(value).__name__} ({value!r:.80})")
    value = int(value)
    if value < minimum:
        raise UsageError(f"{name} must be >= {minimum}, got {value!r}")
    return value


def _check_prob(value: Any, name: str) -> float:
    """A probability in [0, 1), returned as a plain ``float``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UsageTypeError(f"{name} must be of type float, got {type(value).__name__} ({value!r:.80})")
    value = float(value)
    if not 0.0 <= value < 1.0:  # also rejects NaN
        raise UsageError(f"{name} must be in [0, 1), got {value!r}")
    return value


# --------------------------------------------------------------------------- registry


def register_encoder(name: str) -> Callable[[E], E]:
    """Class decorator that registers an :class:`EEGEncoder` subclass under ``name``.

    Names are case-insensitive (stored in lower case) and must be unique.
    """
    check_type(name, str, "name")
    key = name.strip().lower()
    if not key:
        raise ValueError("name must be a non-empty string")

    def decorator(cls: E) -> E:
        if not (isinstance(cls, type) and issubclass(cls, EEGEncoder)):
            raise TypeError(f"register_encoder({name!r}) decorates EEGEncoder subclasses, got {cls!r}")
        if key in _REGISTRY and _REGISTRY[key] is not cls:
            raise ValueError(f"an encoder named {key!r} is already registered ({_REGISTRY[key].__qualname__})")
        params = inspect.signature(cls.__init__).parameters
        missing = [arg for arg in _COMMON if arg not in params]
        if missing:
            raise TypeError(f"{cls.__qualname__}.__init__ must accept {', '.join(missing)}")
        cls.encoder_name = key
        _REGISTRY[key] = cls
        return cls

    return decorator


def list_encoders() -> list[str]:
    """Names of the registered encoders, sorted."""
    return sorted(_REGISTRY)


def _lookup(name: Any) -> type["EEGEncoder"]:
    check_type(name, str, "name")
    cls = _REGISTRY.get(name.strip().lower())
    if cls is None:
        raise UsageError(f"encoder: unknown {name!r} (--encoder); valid names: {', '.join(list_encoders())}")
    return cls


def _architecture_args(cls: type) -> dict[str, inspect.Parameter]:
    """The encoder-specific constructor arguments of ``cls`` (beyond the common three)."""
    params = dict(inspect.signature(cls.__init__).parameters)
    params.pop("self", None)
    for arg in _COMMON:
        params.pop(arg, None)
    return params


def create_encoder(name: str, *, n_chans: int, n_times: int, embed_dim: int, **kwargs: Any) -> nn.Module:
    """Build the registered encoder ``name`` for inputs ``(B, n_chans, n_times)``.

    Parameters
    ----------
    name : str
        One of :func:`list_encoders` (case-insensitive).
    n_chans, n_times : int
        Channels and time samples of one trial.
    embed_dim : int
        Size of the output embedding.
    **kwargs
        Encoder-specific architecture arguments (e.g. ``dropout``); an unknown one is a
        TypeError that lists the accepted ones.
    """
    cls = _lookup(name)
    n_chans = _check_int(n_chans, "n_chans")
    n_times = _check_int(n_times, "n_times")
    embed_dim = _check_int(embed_dim, "embed_dim")
    accepted = _architecture_args(cls)
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        unknown = sorted(set(kwargs) - set(accepted))
        if unknown:
            valid = ", ".join(accepted) or "none"
            raise UsageTypeError(
                f"unknown argument(s) for encoder {cls.encoder_name!r}: {', '.join(unknown)} (accepted: {valid})"
            )
    return cls(n_chans=n_chans, n_times=n_times, embed_dim=embed_dim, **kwargs)


def encoder_config(module: nn.Module) -> dict[str, Any]:
    """The name and every constructor argument of an encoder, JSON-serialisable.

    ``create_encoder(**encoder_config(m))`` rebuilds the same architecture (fresh weights),
    into which ``m.state_dict()`` loads.
    """
    if not isinstance(module, EEGEncoder):
        raise TypeError(f"module must be an EEGEncoder, got {type(module).__name__}")
    name = getattr(type(module), "encoder_name", None)
    if name is None or _REGISTRY.get(name) is not type(module):
        raise ValueError(f"module: {type(module).__qualname__} is not a registered encoder")
    config = {"name": name, **module.config}
    json.dumps(config)  # fail here, not when a bundle is written
    return config


# --------------------------------------------------------------------------- base class


class EEGEncoder(nn.Module):
    """Base class: stores the architecture arguments and checks the input of ``forward``.

    Subclasses call ``super().__init__(n_chans, n_times, embed_dim, **architecture_args)``
    with every argument of their own constructor (JSON-serialisable values), and implement
    :meth:`encode` on an already checked ``(B, n_chans, n_times)`` tensor.
    """

    encoder_name: str | None = None

    def __init__(self, n_chans: int, n_times: int, embed_dim: int, **architecture_args: Any):
        super().__init__()
        self.n_chans = _check_int(n_chans, "n_chans")
        self.n_times = _check_int(n_times, "n_times")
        self.embed_dim = _check_int(embed_dim, "embed_dim")
        self._architecture_args = dict(architecture_args)

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments (without the registry name)."""
        return {"n_chans": self.n_chans, "n_times": self.n_times, "embed_dim": self.embed_dim,
                **self._architecture_args}

    def extra_repr(self) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in self.config.items())

    def check_input(self, x: Any) -> Tensor:
        """Raise unless ``x`` is a floating tensor of shape ``(B, n_chans, n_times)``."""
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim != 3 or x.shape[1] != self.n_chans or x.shape[2] != self.n_times:
            raise ValueError(
                f"x: expected shape (B, C, T) = (B, {self.n_chans}, {self.n_times}), got {tuple(x.shape)}"
            )
        return x

    def forward(self, x: Tensor) -> Tensor:
        """``(B, n_chans, n_times)`` → ``(B, embed_dim)``."""
        return self.encode(self.check_input(x))

    def encode(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def input_linear(self) -> nn.Linear | None:
        """The linear layer applied first, to the flattened ``(C·T)`` input (channel-major),
        when the encoder begins with one; None otherwise.  ``bci-train adapt --adapt input``
        folds a per-person channel re-mixing into it (:func:`fold_channel_mixing`), and the
        live decoder averages repetitions after it (it is linear: the mean of its outputs is
        its output on the mean epoch)."""
        return None

    def after_input_linear(self, h: Tensor) -> Tensor:
        """The rest of :meth:`encode` on the output of :meth:`input_linear`:
        ``encode(x) == after_input_linear(input_linear()(x.flatten(1)))``."""
        raise NotImplementedError(f"{type(self).__name__} has no input linear layer")


def fold_channel_mixing(linear: nn.Linear, mixing: Tensor, offset: Tensor, n_chans: int, n_times: int) -> None:
    """Make ``linear`` (on flattened ``(C, T)`` inputs) compute on ``x`` what it computed on
    ``mixing @ x + offset[:, None]``: ``W'[d, c', t] = sum_c W[d, c, t] mixing[c, c']`` and
    ``b' = b + sum_{c, t} W[d, c, t] offset[c]``.  In place."""
    with torch.no_grad():
        w = linear.weight.view(linear.out_features, n_chans, n_times)
        bias_shift = torch.einsum("dct,c->d", w, offset.to(w))
        folded = torch.einsum("dct,ce->det", w, mixing.to(w))
        linear.weight.copy_(folded.reshape(linear.out_features, n_chans * n_times))
        if linear.bias is not None:
            linear.bias.add_(bias_shift)


class ResidualProjection(nn.Module):
    """``Linear(in, d)`` → ``x + Dropout(Linear(GELU(x)))`` → ``LayerNorm(d)``.

    The projection head of NICE/ATM and the body of EEGProject.
    """

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)
        self.residual = nn.Sequential(nn.GELU(), nn.Linear(out_features, out_features), nn.Dropout(dropout))
        self.norm = nn.LayerNorm(out_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.after_proj(self.proj(x))

    def after_proj(self, x: Tensor) -> Tensor:
        """Everything after the first ``Linear``."""
        return self.norm(x + self.residual(x))


def _flat_size(features: nn.Module, n_chans: int, n_times: int) -> int:
    """Flattened output size of ``features`` on one ``(1, 1, C, T)`` input.

    Dry run in eval mode without gradients, so BatchNorm running statistics are untouched
    and no random numbers are drawn.
    """
    was_training = features.training
    features.eval()
    try:
        with torch.no_grad():
            out = features(torch.zeros(1, 1, n_chans, n_times))
    finally:
        features.train(was_training)
    return int(out[0].numel())


# --------------------------------------------------------------------------- encoders


@register_encoder("linear")
class LinearEncoder(EEGEncoder):
    """Flatten ``C × T`` → ``Linear(C·T, embed_dim)``: a baseline."""

    def __init__(self, n_chans: int, n_times: int, embed_dim: int):
        super().__init__(n_chans, n_times, embed_dim)
        self.linear = nn.Linear(self.n_chans * self.n_times, self.embed_dim)

    def encode(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(1))

    def input_linear(self) -> nn.Linear:
        return self.linear

    def after_input_linear(self, h: Tensor) -> Tensor:
        return h


@register_encoder("eegproject")
class EEGProject(EEGEncoder):
    """The shallow-alignment paper's best EEG encoder.

    Flatten ``C × T`` → ``Linear(C·T, embed_dim)`` → ``x + Dropout(Linear(GELU(x)))`` →
    ``LayerNorm(embed_dim)``.

    Parameters
    ----------
    dropout : float
        Dropout of the residual branch (paper: 0.3).
    """

    def __init__(self, n_chans: int, n_times: int, embed_dim: int, dropout: float = 0.3):
        dropout = _check_prob(dropout, "dropout")
        super().__init__(n_chans, n_times, embed_dim, dropout=dropout)
        self.head = ResidualProjection(self.n_chans * self.n_times, self.embed_dim, dropout)

    def encode(self, x: Tensor) -> Tensor:
        return self.head(x.flatten(1))

    def input_linear(self) -> nn.Linear:
        return self.head.proj

    def after_input_linear(self, h: Tensor) -> Tensor:
        return self.head.after_proj(h)


@register_encoder("tsconv")
class TSConv(EEGEncoder):
    """NICE's temporal-spatial convolution (ShallowNet-like) with a residual projection head.

    ``Conv2d(1, F, (1, temporal_kernel))`` → ``AvgPool2d((1, pool_size), (1, pool_stride))``
    → BatchNorm → ELU → ``Conv2d(F, F, (n_chans, 1))`` (spatial) → BatchNorm → ELU →
    ``Dropout(dropout)`` → ``Conv2d(F, F, 1)`` → flatten → ``Linear`` to ``embed_dim`` →
    ``x + Dropout(Linear(GELU(x)))`` (``proj_dropout``) → LayerNorm.

    The flattened size is measured by a dry run, so any ``n_times`` works from
    ``temporal_kernel + pool_size - 1`` (75 with the defaults) on; 63 × 250 gives 40 × 36
    = 1440 features as in NICE.
    """

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        embed_dim: int,
        n_filters: int = 40,
        temporal_kernel: int = 25,
        pool_size: int = 51,
        pool_stride: int = 5,
        dropout: float = 0.5,
        proj_dropout: float = 0.5,
    ):
        n_filters = _check_int(n_filters, "n_filters")
        temporal_kernel = _check_int(temporal_kernel, "temporal_kernel")
        pool_size = _check_int(pool_size, "pool_size")
        pool_stride = _check_int(pool_stride, "pool_stride")
        dropout = _check_prob(dropout, "dropout")
        proj_dropout = _check_prob(proj_dropout, "proj_dropout")
        super().__init__(
            n_chans, n_times, embed_dim, n_filters=n_filters, temporal_kernel=temporal_kernel,
            pool_size=pool_size, pool_stride=pool_stride, dropout=dropout, proj_dropout=proj_dropout,
        )
        min_times = temporal_kernel + pool_size - 1
        if self.n_times < min_times:
            raise UsageError(
                f"n_times: tsconv needs at least {min_times} samples (temporal_kernel {temporal_kernel} "
                f"+ pool_size {pool_size} - 1), got {self.n_times}"
            )
        self.features = nn.Sequential(
            nn.Conv2d(1, n_filters, (1, temporal_kernel)),
            nn.AvgPool2d((1, pool_size), (1, pool_stride)),
            nn.BatchNorm2d(n_filters),
            nn.ELU(),
            nn.Conv2d(n_filters, n_filters, (self.n_chans, 1)),
            nn.BatchNorm2d(n_filters),
            nn.ELU(),
            nn.Dropout(dropout),
            nn.Conv2d(n_filters, n_filters, 1),
        )
        self.n_features = _flat_size(self.features, self.n_chans, self.n_times)
        self.head = ResidualProjection(self.n_features, self.embed_dim, proj_dropout)

    def encode(self, x: Tensor) -> Tensor:
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


@register_encoder("eegnet")
class EEGNet(EEGEncoder):
    """A compact EEGNet-v4 (Lawhern et al. 2018) mapped linearly to ``embed_dim``.

    Temporal ``Conv2d(1, F1, (1, kernel_length))`` ('same' padding) → BatchNorm → depthwise
    spatial ``Conv2d(F1, F1·D, (n_chans, 1), groups=F1)`` → BatchNorm → ELU →
    ``AvgPool(1, pool1)`` → Dropout → separable conv (depthwise ``(1, separable_kernel)``
    + pointwise to ``F2``) → BatchNorm → ELU → ``AvgPool(1, pool2)`` → Dropout → flatten →
    ``Linear`` to ``embed_dim``. ``F2=None`` means ``F1·D``. Needs ``n_times >= pool1·pool2``.
    The original's max-norm weight constraints are not applied.
    """

    def __init__(
        self,
        n_chans: int,
        n_times: int,
        embed_dim: int,
        F1: int = 8,
        D: int = 2,
        F2: int | None = None,
        kernel_length: int = 64,
        separable_kernel: int = 16,
        pool1: int = 4,
        pool2: int = 8,
        dropout: float = 0.25,
    ):
        F1 = _check_int(F1, "F1")
        D = _check_int(D, "D")
        F2 = F1 * D if F2 is None else _check_int(F2, "F2")
        kernel_length = _check_int(kernel_length, "kernel_length")
        separable_kernel = _check_int(separable_kernel, "separable_kernel")
        pool1 = _check_int(pool1, "pool1")
        pool2 = _check_int(pool2, "pool2")
        dropout = _check_prob(dropout, "dropout")
        super().__init__(
            n_chans, n_times, embed_dim, F1=F1, D=D, F2=F2, kernel_length=kernel_length,
            separable_kernel=separable_kernel, pool1=pool1, pool2=pool2, dropout=dropout,
        )
        if self.n_times < pool1 * pool2:
            raise UsageError(
                f"n_times: eegnet needs at least {pool1 * pool2} samples (pool1 {pool1} × pool2 {pool2}), "
                f"got {self.n_times}"
            )
        bn = dict(momentum=0.01, eps=1e-3)
        self.features = nn.Sequential(
            _same_pad(kernel_length),
            nn.Conv2d(1, F1, (1, kernel_length), bias=False),
            nn.BatchNorm2d(F1, **bn),
            nn.Conv2d(F1, F1 * D, (self.n_chans, 1), groups=F1, bias=False),
            nn.BatchNorm2d(F1 * D, **bn),
            nn.ELU(),
            nn.AvgPool2d((1, pool1)),
            nn.Dropout(dropout),
            _same_pad(separable_kernel),
            nn.Conv2d(F1 * D, F1 * D, (1, separable_kernel), groups=F1 * D, bias=False),
            nn.Conv2d(F1 * D, F2, 1, bias=False),
            nn.BatchNorm2d(F2, **bn),
            nn.ELU(),
            nn.AvgPool2d((1, pool2)),
            nn.Dropout(dropout),
        )
        self.n_features = _flat_size(self.features, self.n_chans, self.n_times)
        self.proj = nn.Linear(self.n_features, self.embed_dim)

    def encode(self, x: Tensor) -> Tensor:
        return self.proj(self.features(x.unsqueeze(1)).flatten(1))


def _same_pad(kernel: int) -> nn.ZeroPad2d:
    """Zero padding along time that keeps the length through a stride-1 conv of ``kernel``
    (explicit, since ``padding='same'`` warns for even kernels)."""
    left = (kernel - 1) // 2
    return nn.ZeroPad2d((left, kernel - 1 - left, 0, 0))
