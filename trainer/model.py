"""The aligned model: an EEG/MEG encoder with its linear projector, the image-side
linear projector over frozen backbone features, and the contrastive temperature."""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .encoders import create_encoder
from .losses import LogitScale

__all__ = ["AlignmentModel", "BrainEmbedder", "embed_epochs", "normalised_embedding"]


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


class AlignmentModel(nn.Module):
    """Both sides of the shallow alignment, trained with symmetric InfoNCE.

    Parameters
    ----------
    encoder_config : dict
        ``name`` and arguments for :func:`trainer.encoders.create_encoder` (must include
        ``n_chans``, ``n_times`` and ``embed_dim``).
    feature_dim : int
        Size of the pooled backbone features of the chosen layer.
    proj_dim : int
        Size of the shared embedding space.
    temperature : float
        Initial temperature (0.07 as in CLIP).
    learn_temperature : bool
        Learn the logit scale, or keep it fixed.
    """

    def __init__(self, encoder_config: dict[str, Any], feature_dim: int, proj_dim: int = 512, *,
                 temperature: float = 0.07, learn_temperature: bool = True):
        super().__init__()
        self.brain = BrainEmbedder(encoder_config, proj_dim)
        self.image_projector = nn.Linear(int(feature_dim), int(proj_dim))
        self.logit_scale = LogitScale(temperature=temperature, learnable=learn_temperature)
        self.feature_dim = int(feature_dim)

    def embed_brain(self, x: torch.Tensor) -> torch.Tensor:
        return self.brain(x)

    def embed_images(self, features: torch.Tensor) -> torch.Tensor:
        return self.image_projector(features)

    @torch.no_grad()
    def fold_feature_standardisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """The image projector was trained on ``(features - mean) / std``: fold the
        standardisation into its weights, so that it takes raw backbone features (what the
        bundle's gallery and ``retarget`` feed it)."""
        lin = self.image_projector
        w = lin.weight / std.to(lin.weight)[None, :]
        lin.bias -= w @ mean.to(w)
        lin.weight.copy_(w)


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
