"""The alignment loss: symmetric InfoNCE (the CLIP loss) on cosine similarities, and the
(learnable or fixed) logit scale ``log(1 / temperature)`` it is multiplied by."""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import MAX_LOGIT_SCALE
from .errors import UsageError, UsageTypeError

__all__ = ["LogitScale", "clip_loss"]


def _as_scale(logit_scale: Tensor | float, like: Tensor) -> Tensor:
    if isinstance(logit_scale, Tensor):
        if logit_scale.numel() != 1:
            raise ValueError(f"logit_scale must be a scalar tensor, got shape {tuple(logit_scale.shape)}")
        return logit_scale.reshape(())
    if isinstance(logit_scale, numbers.Real) and not isinstance(logit_scale, bool):
        return torch.tensor(float(logit_scale), dtype=like.dtype, device=like.device)
    raise TypeError(f"logit_scale must be a scalar tensor, got {type(logit_scale).__name__}")


def clip_loss(eeg: Tensor, img: Tensor, logit_scale: Tensor) -> Tensor:
    """Symmetric InfoNCE between paired EEG and image embeddings.

    Both sides are L2-normalised; ``logits = exp(logit_scale) · eeg_n @ img_n.T``; the loss
    is the mean of the cross-entropies of rows (EEG → image) and columns (image → EEG)
    against the diagonal: ``(CE(logits, arange) + CE(logits.T, arange)) / 2``.

    Parameters
    ----------
    eeg, img : Tensor, shape (B, D)
        Row ``i`` of ``eeg`` is paired with row ``i`` of ``img``.
    logit_scale : Tensor
        Scalar ``log(1 / temperature)``, e.g. the output of :class:`LogitScale`.

    Returns
    -------
    Tensor
        The scalar loss (0-d).
    """
    for name, value in (("eeg", eeg), ("img", img)):
        if not isinstance(value, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        if value.ndim != 2:
            raise ValueError(f"{name}: expected shape (B, D), got {tuple(value.shape)}")
        if value.shape[0] < 1:
            raise ValueError(f"{name}: empty batch, shape {tuple(value.shape)}")
    if eeg.shape[0] != img.shape[0]:
        raise ValueError(
            f"eeg and img must have the same batch size, got {eeg.shape[0]} (eeg {tuple(eeg.shape)}) "
            f"and {img.shape[0]} (img {tuple(img.shape)})"
        )
    if eeg.shape[1] != img.shape[1]:
        raise ValueError(
            f"eeg and img must have the same embedding size, got {eeg.shape[1]} (eeg {tuple(eeg.shape)}) "
            f"and {img.shape[1]} (img {tuple(img.shape)})"
        )
    scale = _as_scale(logit_scale, eeg)
    eeg_n = F.normalize(eeg, dim=-1)
    img_n = F.normalize(img, dim=-1)
    logits = scale.exp() * (eeg_n @ img_n.T)
    target = torch.arange(eeg.shape[0], device=eeg.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


class LogitScale(nn.Module):
    """The log of the logit scale, ``log(1 / temperature)``.

    Parameters
    ----------
    temperature : float
        Initial temperature (CLIP: 0.07, i.e. a scale of about 14.3); must lie within
        ``[1 / max_scale, max_scale]``.
    learnable : bool
        A trained parameter when True, a fixed buffer when False. Either way the value is
        stored under the same ``state_dict`` key, ``log_scale``.
    max_scale : float
        ``forward`` clamps the log-scale so that ``exp(scale) <= max_scale`` (CLIP: 100),
        and (so that a model always has a temperature a bundle accepts) so that
        ``exp(scale) >= 1 / max_scale``: a temperature above ``max_scale`` leaves the
        confidences uniform anyway.

    Notes
    -----
    The clamp passes no gradient once the parameter exceeds the bound; as in CLIP, call
    :meth:`clamp_` after each optimiser step to keep the stored value within it.
    """

    def __init__(self, temperature: float = 0.07, *, learnable: bool = True, max_scale: float = MAX_LOGIT_SCALE):
        super().__init__()
        for name, value in (("temperature", temperature), ("max_scale", max_scale)):
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise UsageTypeError(f"{name} must be of type float, got {type(value).__name__} ({value!r:.80})")
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a finite number > 0, got {value!r}")
        if not isinstance(learnable, bool):
            raise UsageTypeError(f"learnable must be of type bool, got {type(learnable).__name__} ({learnable!r:.80})")
        if temperature * max_scale < 1 - 1e-9 or temperature > max_scale * (1 + 1e-9):
            raise UsageError(
                f"temperature must be within 1 / max_scale = {1 / max_scale:g} and max_scale = {max_scale:g}, "
                f"got {temperature!r}"
            )
        self.learnable = learnable
        self.max_log_scale = math.log(float(max_scale))
        init = torch.tensor(math.log(1.0 / float(temperature)), dtype=torch.float32)
        if learnable:
            self.log_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_scale", init)

    def forward(self) -> Tensor:
        """The scalar log-scale, clamped to ``[-log(max_scale), log(max_scale)]``."""
        return self.log_scale.clamp(min=-self.max_log_scale, max=self.max_log_scale)

    @torch.no_grad()
    def clamp_(self) -> "LogitScale":
        """Clamp the stored value in place (call after an optimiser step)."""
        self.log_scale.clamp_(min=-self.max_log_scale, max=self.max_log_scale)
        return self

    @property
    def scale(self) -> float:
        """``exp(log_scale)`` after the clamp."""
        return float(self.forward().detach().exp())

    @property
    def temperature(self) -> float:
        """``1 / exp(log_scale)`` after the clamp."""
        return 1.0 / self.scale

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:.4g}, learnable={self.learnable}, max_scale={math.exp(self.max_log_scale):g}"
