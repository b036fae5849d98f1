"""The aligned model: an EEG/MEG encoder with its linear projector, the image-side
projector over frozen backbone features, and the contrastive temperature.

The image side takes one layer's pooled features through a linear projector, or several
layers' features side by side (``--fusion``): "concat" is the same linear projector over
the concatenated features; "weighted" (:class:`WeightedLayerFusion`) projects each layer
on its own and mixes the unit-length projections with learned, softmax-normalised layer
weights."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .encoders import create_encoder
from .losses import LogitScale

__all__ = ["FUSIONS", "AlignmentModel", "BrainEmbedder", "WeightedLayerFusion", "embed_epochs", "image_projector",
           "normalised_embedding"]

#: how several layers' features are combined on the image side: side by side into one
#: linear projector ("concat"), or by learned layer weights ("weighted")
FUSIONS = ("concat", "weighted")


class BrainEmbedder(nn.Module):
    """EEG/MEG epochs (B, C, T) -> aligned embedding (B, D): encoder + linear projector.

    This is what the live decoder runs; the bundle stores its weights and arguments."""

    def __init__(self, encoder_config: dict[str, Any], proj_dim: int):
        super().__init__()
        self.encoder_config = dict(encoder_config)
        self.proj_dim = int(proj_dim)
        self.encoder = create_encoder(**self.encoder_config)
        self.projector = nn.Linear(int(self.encoder_config["embed_dim"]), self.proj_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


@torch.no_grad()
def _fold_into_linear(lin: nn.Linear, mean: torch.Tensor, std: torch.Tensor) -> None:
    """``lin`` was trained on ``(x - mean) / std``: make it take ``x``."""
    w = lin.weight / std.to(lin.weight)[None, :]
    lin.bias -= w @ mean.to(w)
    lin.weight.copy_(w)


class WeightedLayerFusion(nn.Module):
    """Several layers' features (concatenated, in the order of ``feature_dims``) -> one
    embedding: ``sum_l w_l * normalize(P_l f_l)``, ``P_l`` a linear projector per layer and
    ``w = softmax(logits)`` learned layer weights (uniform at first).  Each layer enters
    with unit length, so a weight is that layer's share of the embedding."""

    def __init__(self, feature_dims: list[int], proj_dim: int):
        super().__init__()
        if len(feature_dims) < 2:
            raise ValueError(f"a fusion needs at least two layers, got {len(feature_dims)}")
        self.feature_dims = [int(d) for d in feature_dims]
        self.layers = nn.ModuleList(nn.Linear(d, int(proj_dim)) for d in self.feature_dims)
        self.logits = nn.Parameter(torch.zeros(len(self.feature_dims)))

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, dim=0)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        w = self.weights()
        parts = torch.split(features, self.feature_dims, dim=-1)
        return sum(w[i] * nn.functional.normalize(lin(x), dim=-1) for i, (lin, x) in enumerate(zip(self.layers, parts)))

    @torch.no_grad()
    def fold_feature_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        for lin, m, s in zip(self.layers, torch.split(mean, self.feature_dims), torch.split(std, self.feature_dims)):
            _fold_into_linear(lin, m, s)


def image_projector(feature_dims: list[int], proj_dim: int, fusion: str | None = None) -> nn.Module:
    """The image side over ``feature_dims`` (one entry per layer, concatenated in that order):
    a linear layer (one layer, or ``fusion="concat"``), or :class:`WeightedLayerFusion`."""
    if fusion == "weighted":
        return WeightedLayerFusion(feature_dims, proj_dim)
    if fusion not in (None, "concat"):
        raise ValueError(f"fusion must be one of {', '.join(FUSIONS)} or None, got {fusion!r}")
    if fusion is None and len(feature_dims) != 1:
        raise ValueError(f"several layers ({len(feature_dims)}) need a fusion")
    return nn.Linear(int(sum(feature_dims)), int(proj_dim))


class AlignmentModel(nn.Module):
    """Both sides of the shallow alignment, trained with symmetric InfoNCE.

    Parameters
    ----------
    encoder_config : dict
        ``name`` and arguments for :func:`trainer.encoders.create_encoder` (must include
        ``n_chans``, ``n_times`` and ``embed_dim``).
    feature_dim : int or list of int
        Size of the pooled backbone features of the chosen layer, or of each fused layer
        (their features concatenated in that order).
    proj_dim : int
        Size of the shared embedding space.
    temperature : float
        Initial temperature (0.07 as in CLIP).
    learn_temperature : bool
        Learn the logit scale, or keep it fixed.
    fusion : "concat" | "weighted" | None
        How several layers are combined (:func:`image_projector`).
    """

    def __init__(self, encoder_config: dict[str, Any], feature_dim: int | list[int], proj_dim: int = 512, *,
                 temperature: float = 0.07, learn_temperature: bool = True, fusion: str | None = None):
        super().__init__()
        dims = [int(d) for d in (feature_dim if isinstance(feature_dim, (list, tuple)) else [feature_dim])]
        self.brain = BrainEmbedder(encoder_config, proj_dim)
        self.image_projector = image_projector(dims, proj_dim, fusion)
        self.logit_scale = LogitScale(temperature=temperature, learnable=learn_temperature)
        self.feature_dims, self.fusion = dims, fusion
        self.feature_dim = int(sum(dims))

    def embed_brain(self, x: torch.Tensor) -> torch.Tensor:
        return self.brain(x)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_projector(features)

    @torch.no_grad()
    def fold_feature_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The image projector was trained on ``(features - mean) / std``: fold the
        standardisation into its weights, so that it takes raw backbone features (what the
        bundle's gallery and ``retarget`` feed it)."""
        if isinstance(self.image_projector, WeightedLayerFusion):
            self.image_projector.fold_feature_standardisation(mean, std)
        else:
            _fold_into_linear(self.image_projector, mean, std)


def normalised_embedding(embed: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``embed(x)`` as float32, L2-normalised per row: the one encode-and-normalise step
    that training, evaluation, bundles and the live decoder share (call it under
    ``torch.inference_mode()`` outside training)."""
    return nn.functional.normalize(embed(x).float(), dim=1)


def embed_epochs(embed: Callable[[torch.Tensor], torch.Tensor], epochs: np.ndarray, *, device: torch.device | str,
                 batch_size: int = 1024) -> np.ndarray:
    """L2-normalised embeddings (n, D) float32 of epochs (n, C, T), in batches on ``device``
    (where ``embed``'s weights must already be)."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(epochs), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(epochs[i : i + batch_size], dtype=np.float32)).to(device)
            out.append(normalised_embedding(embed, x).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)
