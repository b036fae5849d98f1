"""Choosing the layer cheaply: a closed-form ridge proxy for ``bci-train fit --layer auto``.

Why: the full search trains one model per candidate layer, so a ResNet's 5 stages + final
cost about 5-6 trainings and a ViT's ~11 candidates eleven.  What a trained model exploits
is, to a first approximation, how much of a layer's pooled features the EEG predicts
*linearly* in a way that tells unseen concepts apart (the image side is a linear projector,
and EEGProject starts with a linear layer).  Ridge regression answers that in closed form.

The proxy, per candidate layer:

1. Standardise the layer's features with the fitting images' statistics (as training does)
   and regress them on the flattened, centred EEG of the fitting rows (ridge, several
   penalties).
2. Predict the features of every validation row and rank the validation images by the
   cosine similarity of predicted and true features: the retrieval that validation does
   for a trained model, on the same held-out training concepts.
3. Score by the mean percentile rank of the true image (1: always first, 0.5: chance); a
   layer's score is its best over the penalties (the same grid for every layer).

The largest score chooses the layer; only that layer is then trained.  The mean rank rather
than top-1 because it uses every validation row: on a few hundred validation concepts a
top-1 of a few per cent is a handful of hits, and a handful of hits is noise.

Cost: one eigendecomposition of the EEG Gram matrix of the fitting rows, in whichever of
the dual (rows x rows) or primal (features x features) forms is smaller, serves every layer
and every penalty; each layer then costs a few matrix products.  Seconds, against minutes
for a training.

Only training rows enter: the fitting rows and the validation rows fit() splits off.  Test
EEG and test-image features are never arguments here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from .metrics import mean_rank

__all__ = ["ALPHAS", "LayerScore", "RidgeBasis", "choose_layer", "rank_layers", "ridge_layer_scores"]

#: ridge penalties, relative to the mean eigenvalue of the EEG Gram matrix (so the grid
#: does not depend on the scale or the number of rows of the EEG)
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)


@dataclass
class LayerScore:
    """The proxy's verdict on one layer: validation retrieval from ridge-predicted features."""

    layer: str
    mean_rank: float  # mean percentile rank of the true validation image, 1 = always first, 0.5 = chance
    top1: float  # share of validation rows whose true image ranks first
    alpha: float  # the penalty (relative to the mean eigenvalue) that gave ``mean_rank``

    def to_dict(self) -> dict[str, float]:
        return {"proxy_mean_rank": self.mean_rank, "proxy_top1": self.top1, "proxy_alpha": self.alpha}


class RidgeBasis:
    """Ridge regression from the EEG of the fitting rows, for any targets and penalties.

    With centred fitting EEG ``X`` (n x p) and validation EEG ``Z`` (centred by the fitting
    mean), the ridge prediction of targets ``Y`` at penalty ``a`` is
    ``Z (X'X + a I)^-1 X' Y = Z X' (X X' + a I)^-1 Y``.  One eigendecomposition, of
    ``X X'`` (dual, n <= p) or ``X'X`` (primal), writes it as ``A diag(1 / (s + a)) B(Y)``
    with ``A`` and ``s`` shared by every target and penalty.
    """

    def __init__(self, x_fit: np.ndarray, x_val: np.ndarray):
        x = np.asarray(x_fit, dtype=np.float32).reshape(len(x_fit), -1)
        z = np.asarray(x_val, dtype=np.float32).reshape(len(x_val), -1)
        mean = x.mean(axis=0)
        x, z = x - mean, z - mean
        self.dual = x.shape[0] <= x.shape[1]
        gram = (x @ x.T if self.dual else x.T @ x).astype(np.float64)
        s, vecs = np.linalg.eigh(gram)
        self.s = np.clip(s, 0.0, None)
        self.scale = float(self.s.mean()) or 1.0  # penalties are relative to it
        if self.dual:  # Z X' U: the validation rows in the basis of the fitting rows
            self.a = (z @ x.T).astype(np.float64) @ vecs
            self._x, self._v = None, vecs
        else:  # Z V
            self.a = z.astype(np.float64) @ vecs
            self._x, self._v = x, vecs

    def project(self, y: np.ndarray) -> np.ndarray:
        """``B(Y)``: the targets of the fitting rows in the eigenbasis (U'Y, or V'X'Y)."""
        y = np.asarray(y, dtype=np.float64)
        if self.dual:
            return self._v.T @ y
        return self._v.T @ (self._x.T @ y.astype(np.float32)).astype(np.float64)  # X stays float32: no copy of it

    def predict(self, b: np.ndarray, alpha: float) -> np.ndarray:
        """Predicted validation targets at penalty ``alpha`` (relative to the mean eigenvalue)."""
        return (self.a / (self.s + alpha * self.scale)) @ b


def _standardise(fit: np.ndarray, other: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both z-scored with the fitting rows' statistics (as training feeds the image projector)."""
    fit = np.asarray(fit, dtype=np.float64)
    mean, std = fit.mean(axis=0), fit.std(axis=0)
    std = np.maximum(std, 1e-6 * float(std.mean()) + 1e-12)
    return (fit - mean) / std, (np.asarray(other, dtype=np.float64) - mean) / std


def _retrieval(pred: np.ndarray, gallery: np.ndarray, targets: np.ndarray) -> tuple[float, float]:
    """(mean percentile rank, top-1) of ``targets`` when ``gallery`` rows are ranked by
    cosine similarity to each ``pred`` row."""
    def unit(a: np.ndarray) -> np.ndarray:
        return a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    sim = unit(pred) @ unit(gallery).T
    true = sim[np.arange(len(targets)), targets]
    above = (sim > true[:, None]).sum(axis=1)  # ties count in the row's favour
    return mean_rank(sim, targets), float(np.mean(above == 0))


def ridge_layer_scores(
    x_fit: np.ndarray,
    x_val: np.ndarray,
    features_fit: Mapping[str, np.ndarray],
    features_val: Mapping[str, np.ndarray],
    val_targets: np.ndarray,
    *,
    alphas: tuple[float, ...] = ALPHAS,
) -> list[LayerScore]:
    """Score every layer by ridge retrieval on the validation concepts (see the module doc).

    Parameters
    ----------
    x_fit : array (n_fit, C, T) or (n_fit, C*T)
        EEG of the fitting rows.
    x_val : array (n_val, C, T) or (n_val, C*T)
        EEG of the validation rows.
    features_fit : mapping layer key -> array (n_fit, D)
        Each layer's features of the image each fitting row shows.
    features_val : mapping layer key -> array (n_gallery, D)
        Each layer's features of the validation images (the gallery).
    val_targets : array of int (n_val,)
        Row i of ``x_val`` shows gallery image ``val_targets[i]``.

    Returns
    -------
    list of LayerScore, in the order of ``features_fit``.
    """
    val_targets = np.asarray(val_targets)
    if len(x_fit) < 2 or len(x_val) != len(val_targets):
        raise ValueError(f"need >= 2 fitting rows and one target per validation row, got {len(x_fit)} fitting rows, "
                         f"{len(x_val)} validation rows and {len(val_targets)} targets")
    basis = RidgeBasis(x_fit, x_val)
    scores = []
    for key, fit_feats in features_fit.items():
        if len(fit_feats) != len(x_fit):
            raise ValueError(f"{key}: {len(fit_feats)} feature rows for {len(x_fit)} fitting rows")
        y_fit, y_val = _standardise(fit_feats, features_val[key])
        b = basis.project(y_fit)
        best = None
        for alpha in alphas:
            mean_rank, top1 = _retrieval(basis.predict(b, alpha), y_val, val_targets)
            if best is None or mean_rank > best.mean_rank:
                best = LayerScore(layer=key, mean_rank=mean_rank, top1=top1, alpha=float(alpha))
        scores.append(best)
    return scores


def rank_layers(scores: list[LayerScore]) -> list[str]:
    """The layer keys, best proxy score first (equals in their given order, as the full
    search keeps the first of equal validation top-1s)."""
    return [s.layer for s in sorted(scores, key=lambda s: -s.mean_rank)]


def choose_layer(scores: list[LayerScore]) -> str:
    """The key of the layer with the largest proxy score (the first of equals)."""
    if not scores:
        raise ValueError("no layer scores to choose from")
    return rank_layers(scores)[0]
