"""Calibrated confidence: a temperature fitted after training, on validation concepts.

The contrastive temperature training learns makes the InfoNCE loss small over a batch of
hundreds of pairs; its softmax over a gallery is not a probability that the top candidate
is the image shown.  :func:`fit_temperature` finds the temperature that minimises the
negative log-likelihood of the shown image among an ``n_way`` gallery of *validation*
images (concepts held out from training, never the test images), as the live app will
rank against a gallery of that size: each validation query is scored against its image and
``n_way - 1`` other validation images drawn at random (several draws), so the normaliser
of the softmax has as many terms as the app's will.

Two temperatures are fitted, as the app shows two predictions: one for **single trials**,
one for **averaged repetitions** (validation epochs averaged over the training set's
repetitions).  :func:`expected_calibration_error` and :func:`reliability` measure the
result; :func:`reliability_plot` draws the diagram (``reliability.png`` in a run folder).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import MAX_TEMPERATURE, MIN_TEMPERATURE

__all__ = ["N_BINS", "Reliability", "calibrate", "calibration_record", "expected_calibration_error", "fit_temperature",
           "nway_subsets", "reliability", "reliability_plot", "softmax_top1"]

#: equal-width confidence bins of the expected calibration error and the diagram
N_BINS = 15
#: random galleries drawn per validation query when the validation gallery is larger than
#: the app's: up to N_DRAWS, fewer for many queries (at most about MAX_ROWS rows in all)
N_DRAWS = 20
MAX_ROWS = 20_000


def softmax_top1(similarity: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
    """(confidence of the top candidate, its index) per row of cosine similarities, at ``temperature``."""
    logits = np.asarray(similarity, dtype=np.float64) / float(temperature)
    top = logits.max(axis=1)
    norm = top + np.log(np.exp(logits - top[:, None]).sum(axis=1))
    return np.exp(top - norm), logits.argmax(axis=1)


def nway_subsets(similarity: np.ndarray, targets: np.ndarray, n_way: int, *, draws: int | None = None,
                 seed: int = 0) -> np.ndarray:
    """Rows of ``n_way`` similarities, the target's first: each query against its target and
    ``n_way - 1`` others drawn at random (``draws`` times; by default :data:`N_DRAWS`, fewer
    when there are many queries); all candidates, target first, when there are no more than
    ``n_way``."""
    sim = np.asarray(similarity, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    n_q, n_c = sim.shape
    if draws is None:
        draws = min(N_DRAWS, max(1, math.ceil(MAX_ROWS / max(n_q, 1))))
    rows = np.arange(n_q)
    if n_c <= n_way:
        keep = np.ones(sim.shape, dtype=bool)
        keep[rows, targets] = False
        return np.concatenate([sim[rows, targets][:, None], sim[keep].reshape(n_q, n_c - 1)], axis=1)
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(draws):
        keys = rng.random((n_q, n_c))
        keys[rows, targets] = np.inf  # never drawn as a distractor
        cols = np.argpartition(keys, n_way - 1, axis=1)[:, : n_way - 1]
        out.append(np.concatenate([sim[rows, targets][:, None], np.take_along_axis(sim, cols, axis=1)], axis=1))
    return np.concatenate(out)


def _nll(rows: np.ndarray, temperature: float) -> float:
    """Mean negative log-likelihood of column 0 under the softmax of ``rows / temperature``."""
    logits = rows / temperature
    top = logits.max(axis=1)
    return float(np.mean(top + np.log(np.exp(logits - top[:, None]).sum(axis=1)) - logits[:, 0]))


def fit_temperature(similarity: np.ndarray, targets: np.ndarray, n_way: int, *, seed: int = 0) -> float:
    """The temperature (within the range a bundle holds) that minimises the negative
    log-likelihood of each query's target among ``n_way`` candidates (:func:`nway_subsets`).

    The likelihood is convex in 1 / temperature, so a bounded scalar search over its log finds
    the optimum; a ValueError when there is no query."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or len(sim) == 0 or sim.shape[1] < 2:
        raise ValueError(f"fit_temperature needs (n_queries >= 1, n_candidates >= 2) similarities, got {sim.shape}")
    return _fit_rows(nway_subsets(sim, targets, n_way, seed=seed))


def _fit_rows(rows: np.ndarray) -> float:
    """The temperature minimising the NLL of column 0 of ``rows`` (:func:`nway_subsets`)."""
    from scipy.optimize import minimize_scalar

    lo, hi = math.log(MIN_TEMPERATURE), math.log(MAX_TEMPERATURE)
    res = minimize_scalar(lambda lt: _nll(rows, math.exp(lt)), bounds=(lo, hi), method="bounded",
                          options={"xatol": 1e-4})
    return float(min(max(math.exp(res.x), MIN_TEMPERATURE), MAX_TEMPERATURE))


def calibrate(similarity: np.ndarray, targets: np.ndarray, n_way: int, trained: float, *, seed: int = 0) -> dict:
    """:func:`fit_temperature` on validation queries, and the expected calibration error
    among the same ``n_way``-image galleries at the ``trained`` temperature and at the
    fitted one: ``{"temperature", "n_trials", "val_ece_before", "val_ece_after"}``."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or len(sim) == 0 or sim.shape[1] < 2:
        raise ValueError(f"calibrate needs (n_queries >= 1, n_candidates >= 2) similarities, got {sim.shape}")
    rows = nway_subsets(sim, targets, n_way, seed=seed)
    temperature = _fit_rows(rows)
    rec = calibration_record(rows, np.zeros(len(rows), np.int64), {"before": trained, "after": temperature})
    return {"temperature": temperature, "n_trials": int(len(sim)), "val_ece_before": rec["before"]["ece"],
            "val_ece_after": rec["after"]["ece"]}


@dataclass
class Reliability:
    """Per confidence bin: the number of queries, their mean confidence and their accuracy
    (NaN in empty bins); ``ece`` the expected calibration error, ``n`` the queries."""

    edges: np.ndarray
    count: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float
    n: int


def reliability(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> Reliability:
    """Bin the top-1 confidences into ``n_bins`` equal-width bins over [0, 1]."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"confidence and correct must be 1-D of one length, got {conf.shape} and {hit.shape}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, weights=conf, minlength=n_bins) / count
        acc = np.bincount(idx, weights=hit, minlength=n_bins) / count
    filled = count > 0
    ece = float(np.sum(count[filled] * np.abs(acc[filled] - mean_conf[filled])) / max(len(conf), 1))
    return Reliability(edges=edges, count=count, confidence=mean_conf, accuracy=acc, ece=ece, n=int(len(conf)))


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> float:
    """Sum over equal-width confidence bins of (share of queries) x |accuracy - mean confidence|."""
    return reliability(confidence, correct, n_bins).ece


def calibration_record(similarity: np.ndarray, targets: np.ndarray, temperatures: dict[str, float]) -> dict[str, dict]:
    """For each named temperature: the ECE, the mean top-1 confidence and the top-1
    accuracy of ``similarity`` (queries x the whole gallery) with ``targets``; and the
    :class:`Reliability` under the key ``"bins"`` of each (not JSON: for the plot)."""
    out = {}
    for name, temperature in temperatures.items():
        conf, top = softmax_top1(similarity, temperature)
        hit = top == np.asarray(targets)
        rel = reliability(conf, hit)
        out[name] = {"temperature": float(temperature), "ece": rel.ece, "mean_confidence": float(conf.mean()),
                     "top1": float(hit.mean()), "n": rel.n, "bins": rel}
    return out


def reliability_plot(panels: dict[str, dict[str, dict]], path: Path, title: str = "") -> None:
    """One reliability diagram per panel (e.g. "single trial", "averaged"), each with a curve
    per record of :func:`calibration_record` (e.g. "before", "after"): accuracy against mean
    confidence per bin, the diagonal being perfect calibration, the bin counts as bars."""
    from .plots import new_figure, save_figure

    fig, axes = new_figure(ncols=len(panels), size=(4.2 * len(panels), 4.0))
    for ax, (panel, records) in zip(np.atleast_1d(axes), panels.items()):
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
        for (name, rec), marker in zip(records.items(), "os^v"):
            rel: Reliability = rec["bins"]
            filled = rel.count > 0
            ax.plot(rel.confidence[filled], rel.accuracy[filled], marker=marker, ms=4,
                    label=f"{name}: T = {rec['temperature']:.3g}, ECE {100 * rel.ece:.1f} %")
        twin = ax.twinx()
        first: Reliability = next(iter(records.values()))["bins"]
        twin.bar(first.edges[:-1], first.count / max(first.n, 1), width=np.diff(first.edges), align="edge",
                 color="0.85", zorder=0)
        twin.set_ylim(0, 4)
        twin.set_yticks([])
        ax.set_zorder(twin.get_zorder() + 1)
        ax.patch.set_visible(False)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(panel, fontsize=9)
        ax.set_xlabel("confidence of the top candidate")
        ax.set_ylabel("accuracy (top-1)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    if title:
        fig.suptitle(title, fontsize=9)
    save_figure(fig, path)
