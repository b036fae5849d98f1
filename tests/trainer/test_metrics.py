"""Retrieval metrics against a brute-force count."""

import numpy as np
import pytest

from trainer.metrics import cosine_similarity, kway_accuracy, topk_accuracy


def _brute_topk(sim, targets, k):
    hits = 0
    for i, t in enumerate(targets):
        # rank = number of other candidates scoring at least as high as the target
        rank = sum(1 for j in range(sim.shape[1]) if j != t and sim[i, j] >= sim[i, t])
        hits += rank < k
    return hits / len(targets)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_topk_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    sim = rng.standard_normal((40, 25)).round(1)  # rounding makes ties
    targets = rng.integers(0, 25, size=40)
    res = topk_accuracy(sim, targets, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert res[f"top{k}"] == pytest.approx(_brute_topk(sim, targets, k))


def test_ties_and_perfect_scores():
    assert topk_accuracy(np.zeros((4, 4)), np.arange(4))["top1"] == 0.0
    assert topk_accuracy(np.eye(5), np.arange(5))["top1"] == 1.0


def test_kway_matches_brute_force_on_fixed_draws():
    rng = np.random.default_rng(3)
    sim = rng.standard_normal((30, 12))
    targets = rng.integers(0, 12, size=30)
    # with k = all candidates the k-way accuracy is the ordinary top-1
    assert kway_accuracy(sim, targets, 12)["top1"] == pytest.approx(topk_accuracy(sim, targets)["top1"])
    # 2-way: a query wins against a distractor when the target scores higher; averaged over
    # many draws this approaches the share of candidates the target beats
    expected = np.mean([np.mean([sim[i, t] > sim[i, j] for j in range(12) if j != t]) for i, t in enumerate(targets)])
    assert kway_accuracy(sim, targets, 2, repeats=400)["top1"] == pytest.approx(expected, abs=0.03)
    assert kway_accuracy(sim, targets, 4, repeats=5, seed=9) == kway_accuracy(sim, targets, 4, repeats=5, seed=9)


def test_cosine_similarity():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[2.0, 0.0], [0.0, 3.0]])
    np.testing.assert_allclose(cosine_similarity(a, b), [[1, 0], [2**-0.5, 2**-0.5]])


def test_bad_arguments():
    with pytest.raises(ValueError, match="targets"):
        topk_accuracy(np.zeros((3, 4)), np.array([0, 1]))
    with pytest.raises(ValueError, match="index"):
        topk_accuracy(np.zeros((2, 4)), np.array([0, 4]))
    with pytest.raises(ValueError, match="non-finite"):
        topk_accuracy(np.full((2, 2), np.nan), np.array([0, 1]))
    with pytest.raises(ValueError, match="k must be"):
        kway_accuracy(np.zeros((2, 4)), np.array([0, 1]), 5)
