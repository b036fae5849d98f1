"""Zero-shot retrieval metrics: rank candidates by cosine similarity, count hits."""

from __future__ import annotations

from typing import Sequence

import numpy as np

__all__ = ["cosine_similarity", "kway_accuracy", "mean_rank", "topk_accuracy"]


def cosine_similarity(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """(n_queries, n_candidates) cosine similarities of row vectors."""
    q = np.asarray(queries, dtype=np.float64)
    c = np.asarray(candidates, dtype=np.float64)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(f"queries and candidates must be (n, D) with the same D, got {q.shape} and {c.shape}")
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    return q @ c.T


def _check(similarity: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    similarity = np.asarray(similarity, dtype=np.float64)
    targets = np.asarray(targets)
    if similarity.ndim != 2:
        raise ValueError(f"similarity must be (n_queries, n_candidates), got shape {similarity.shape}")
    if targets.shape != (similarity.shape[0],):
        raise ValueError(f"targets must be ({similarity.shape[0]},), got shape {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= similarity.shape[1]):
        raise ValueError(f"targets must index the {similarity.shape[1]} candidates")
    if not np.isfinite(similarity).all():
        raise ValueError("similarity has non-finite values")
    return similarity, targets.astype(np.int64)


def topk_accuracy(similarity: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Share of queries whose target is among the k most similar candidates.

    Ties count against the query (a candidate scoring equal to the target ranks ahead),
    so a constant similarity gives 0, not a lucky 1.
    """
    similarity, targets = _check(similarity, targets)
    target_score = similarity[np.arange(len(targets)), targets]
    others = similarity.copy()
    others[np.arange(len(targets)), targets] = -np.inf
    rank = (others >= target_score[:, None]).sum(axis=1)  # candidates ranked at or above the target
    return {f"top{k}": float((rank < k).mean()) if len(targets) else float("nan") for k in ks}


def mean_rank(similarity: np.ndarray, targets: np.ndarray) -> float:
    """Mean percentile rank of each query's target among the candidates: 1 when it is always
    first, 0 always last, 0.5 chance (ties count in the target's favour).  Finer than top-1
    when few queries hit: every query counts, not only the hits."""
    similarity, targets = _check(similarity, targets)
    true = similarity[np.arange(len(targets)), targets]
    above = (similarity > true[:, None]).sum(axis=1)
    return float(np.mean(1.0 - above / max(similarity.shape[1] - 1, 1)))


def kway_accuracy(
    similarity: np.ndarray,
    targets: np.ndarray,
    k: int,
    *,
    ks: Sequence[int] = (1,),
    repeats: int = 20,
    seed: int = 0,
) -> dict[str, float]:
    """k-way retrieval: each query against its target and k-1 random other candidates,
    averaged over ``repeats`` draws (seeded)."""
    similarity, targets = _check(similarity, targets)
    n_cand = similarity.shape[1]
    if not 2 <= k <= n_cand:
        raise ValueError(f"k must be 2..{n_cand}, got {k}")
    rng = np.random.default_rng(seed)
    hits = {kk: 0.0 for kk in ks}
    for _ in range(repeats):
        # choose k-1 distractors per query among the candidates other than its target
        keys = rng.random((len(targets), n_cand))
        keys[np.arange(len(targets)), targets] = np.inf
        distractors = np.argsort(keys, axis=1)[:, : k - 1]
        cols = np.concatenate([targets[:, None], distractors], axis=1)
        sub = np.take_along_axis(similarity, cols, axis=1)
        res = topk_accuracy(sub, np.zeros(len(targets), dtype=np.int64), ks=[kk for kk in ks if kk <= k])
        for kk in ks:
            hits[kk] += res.get(f"top{kk}", 1.0)
    return {f"top{kk}": hits[kk] / repeats for kk in ks}
