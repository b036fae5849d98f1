"""The CLIP loss against a hand computation, its symmetry and limits, and the logit scale."""

import math

import numpy as np
import pytest
import torch

from trainer.errors import UsageError, UsageTypeError
from trainer.losses import LogitScale, clip_loss

EEG = [[1.0, 0.0], [0.6, 0.8], [-1.0, 1.0]]
IMG = [[2.0, 1.0], [0.0, 1.0], [-3.0, -1.0]]


def _hand_clip_loss(eeg, img, log_scale):
    """Symmetric InfoNCE with explicit loops and a hand-written log-sum-exp."""
    def unit(v):
        n = math.sqrt(sum(a * a for a in v))
        return [a / n for a in v]

    e = [unit(v) for v in eeg]
    m = [unit(v) for v in img]
    s = math.exp(log_scale)
    n = len(e)
    logits = [[s * sum(a * b for a, b in zip(e[i], m[j])) for j in range(n)] for i in range(n)]

    def ce(rows):
        total = 0.0
        for i, row in enumerate(rows):
            top = max(row)
            lse = top + math.log(sum(math.exp(v - top) for v in row))
            total += lse - row[i]
        return total / len(rows)

    columns = [[logits[i][j] for i in range(n)] for j in range(n)]
    return (ce(logits) + ce(columns)) / 2


def test_matches_hand_computation():
    log_scale = math.log(1 / 0.07)
    expected = _hand_clip_loss(EEG, IMG, log_scale)
    # sanity of the hand value itself with numpy
    e = np.array(EEG) / np.linalg.norm(EEG, axis=1, keepdims=True)
    m = np.array(IMG) / np.linalg.norm(IMG, axis=1, keepdims=True)
    logits = np.exp(log_scale) * e @ m.T
    rows = np.mean(np.log(np.exp(logits).sum(1)) - np.diag(logits))
    cols = np.mean(np.log(np.exp(logits).sum(0)) - np.diag(logits))
    assert expected == pytest.approx((rows + cols) / 2, rel=1e-12)

    got = clip_loss(torch.tensor(EEG, dtype=torch.float64), torch.tensor(IMG, dtype=torch.float64),
                    torch.tensor(log_scale, dtype=torch.float64))
    assert got.ndim == 0
    assert float(got) == pytest.approx(expected, rel=1e-10)
    got32 = clip_loss(torch.tensor(EEG), torch.tensor(IMG), torch.tensor(log_scale))
    assert float(got32) == pytest.approx(expected, rel=1e-5)
    # a plain float scale works too, and the magnitude of the inputs does not matter
    assert float(clip_loss(torch.tensor(EEG) * 7, torch.tensor(IMG) / 3, log_scale)) == pytest.approx(expected, rel=1e-5)


def test_aligned_embeddings_give_near_zero_loss():
    x = torch.eye(8)
    assert float(clip_loss(x, 5 * x, torch.tensor(math.log(100.0)))) < 1e-6
    # with scale 1 the same pairs give a clearly positive loss
    assert float(clip_loss(x, x, torch.tensor(0.0))) > 1.0


def test_symmetric():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    scale = torch.tensor(2.0)
    torch.testing.assert_close(clip_loss(a, b, scale), clip_loss(b, a, scale))


def test_gradients_reach_both_sides():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=g, requires_grad=True)
    b = torch.randn(4, 3, generator=g, requires_grad=True)
    clip_loss(a, b, torch.tensor(1.0)).backward()
    assert a.grad is not None and b.grad is not None
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


@pytest.mark.parametrize("eeg_shape, img_shape, match", [
    ((4, 3), (5, 3), "batch size"),
    ((4, 3), (4, 2), "embedding size"),
    ((4,), (4, 3), r"eeg: expected shape \(B, D\)"),
    ((4, 3), (4, 3, 1), r"img: expected shape \(B, D\)"),
    ((0, 3), (0, 3), "empty"),
])
def test_bad_shapes(eeg_shape, img_shape, match):
    with pytest.raises(ValueError, match=match):
        clip_loss(torch.zeros(eeg_shape), torch.zeros(img_shape), torch.tensor(1.0))


def test_bad_scale():
    with pytest.raises(ValueError, match="logit_scale"):
        clip_loss(torch.ones(2, 2), torch.ones(2, 2), torch.ones(2))
    with pytest.raises(TypeError, match="logit_scale"):
        clip_loss(torch.ones(2, 2), torch.ones(2, 2), "1")
    with pytest.raises(TypeError, match="eeg"):
        clip_loss(np.ones((2, 2)), torch.ones(2, 2), torch.tensor(1.0))


def test_logit_scale_learnable():
    ls = LogitScale()
    assert [name for name, _ in ls.named_parameters()] == ["log_scale"]
    assert float(ls().detach()) == pytest.approx(math.log(1 / 0.07), rel=1e-6)
    assert ls.temperature == pytest.approx(0.07, rel=1e-6)
    loss = clip_loss(torch.eye(3), torch.ones(3, 3) + torch.eye(3), ls())
    loss.backward()
    assert ls.log_scale.grad is not None and float(ls.log_scale.grad) != 0.0


def test_logit_scale_fixed():
    ls = LogitScale(0.1, learnable=False)
    assert list(ls.parameters()) == []
    assert "log_scale" in dict(ls.named_buffers())
    assert ls.temperature == pytest.approx(0.1, rel=1e-6)
    out = ls()
    assert not out.requires_grad
    a = torch.randn(3, 2, requires_grad=True)
    clip_loss(a, torch.randn(3, 2), out).backward()
    assert a.grad is not None and ls.log_scale.grad is None
    # the same state_dict key either way: fixed and learnable scales load into each other
    learnable = LogitScale()
    learnable.load_state_dict(ls.state_dict())
    assert learnable.temperature == pytest.approx(0.1, rel=1e-6)


def test_logit_scale_clamped_at_100():
    ls = LogitScale(0.01)  # exactly at the bound
    assert math.exp(float(ls().detach())) == pytest.approx(100.0, rel=1e-5)
    with torch.no_grad():
        ls.log_scale.fill_(10.0)  # as if an optimiser step overshot
    assert math.exp(float(ls().detach())) == pytest.approx(100.0, rel=1e-5)
    assert ls.temperature == pytest.approx(0.01, rel=1e-5)
    assert float(ls.log_scale.detach()) == 10.0
    ls.clamp_()
    assert float(ls.log_scale.detach()) == pytest.approx(math.log(100.0), rel=1e-6)
    assert LogitScale(0.5, max_scale=10.0).scale == pytest.approx(2.0, rel=1e-6)


@pytest.mark.parametrize("kwargs, error, match", [  # a user's --temperature: one-line errors
    (dict(temperature=0.0), UsageError, "temperature"),
    (dict(temperature=-1.0), UsageError, "temperature"),
    (dict(temperature=float("nan")), UsageError, "temperature"),
    (dict(temperature=0.005), UsageError, "temperature"),  # scale 200 > 100
    (dict(temperature="0.07"), UsageTypeError, "temperature"),
    (dict(learnable=1), UsageTypeError, "learnable"),
    (dict(max_scale=0), UsageError, "max_scale"),
])
def test_logit_scale_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        LogitScale(**kwargs)


def test_the_learned_temperature_stays_where_a_bundle_accepts_it():
    """The scale is clamped from both sides: a run cannot end with a temperature the
    bundle refuses (trainer.bundle.TEMPERATURE_RANGE)."""
    from trainer.bundle import TEMPERATURE_RANGE

    scale = LogitScale(temperature=0.07)
    for value in (-20.0, 20.0):
        with torch.no_grad():
            scale.log_scale.fill_(value)
        assert TEMPERATURE_RANGE[0] <= scale.temperature <= TEMPERATURE_RANGE[1]
        scale.clamp_()
        assert abs(float(scale.log_scale.detach())) <= math.log(100.0) + 1e-6
    with pytest.raises(UsageError, match="within"):
        LogitScale(temperature=150.0)
