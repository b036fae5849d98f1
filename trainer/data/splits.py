"""Validation split: held-out *training* concepts (test concepts never select models)."""

from __future__ import annotations

import numpy as np

from .._checks import check_type
from ..errors import UsageError

__all__ = ["validation_split"]


def validation_split(
    concept_index: np.ndarray,
    *,
    fraction: float = 0.1,
    max_concepts: int = 200,
    min_concepts: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Split training images into fit and validation sets by whole concepts.

    Parameters
    ----------
    concept_index : array of int (n_images,)
        Concept of each training image.
    fraction : float
        Share of concepts held out (capped by ``max_concepts``, at least ``min_concepts``).
    seed : int
        The held-out concepts are a seeded random draw, the same for every subject.

    Returns
    -------
    fit_rows, val_rows : arrays of int
        Row positions; no concept appears in both.
    """
    concept_index = np.asarray(concept_index)
    if concept_index.ndim != 1 or concept_index.size == 0:
        raise ValueError(f"concept_index must be a non-empty 1-D array, got shape {concept_index.shape}")
    check_type(fraction, (int, float), "fraction")
    if not 0 < fraction < 1:
        raise UsageError(f"fraction must be between 0 and 1, got {fraction!r}")
    concepts = np.unique(concept_index)
    n_val = int(np.clip(round(fraction * len(concepts)), min_concepts, max_concepts))
    if n_val >= len(concepts):
        raise UsageError(f"cannot hold out {n_val} of {len(concepts)} training concepts for validation "
                         f"(fraction {fraction:g}, at least {min_concepts}): the training set needs more concepts")
    held = np.random.default_rng(seed).choice(concepts, size=n_val, replace=False)
    is_val = np.isin(concept_index, held)
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)
