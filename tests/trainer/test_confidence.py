"""Calibrated confidence (trainer.confidence): the temperature fit, the calibration error,
and what a bundle carries of it."""

import math

import numpy as np
import pytest

from trainer.confidence import (
    calibration_record,
    expected_calibration_error,
    fit_temperature,
    nway_subsets,
    reliability,
    reliability_plot,
    softmax_top1,
)


def _queries(n_queries: int, n_cand: int, temperature: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Similarities and targets drawn so that P(target = j) is exactly softmax(sim / temperature)."""
    rng = np.random.default_rng(seed)
    sim = rng.uniform(-0.3, 0.6, size=(n_queries, n_cand))
    logits = sim / temperature
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    targets = np.array([rng.choice(n_cand, p=row) for row in p])
    return sim, targets


@pytest.mark.parametrize("true", [0.02, 0.1, 0.5])
def test_fit_temperature_finds_the_temperature_the_targets_were_drawn_with(true):
    sim, targets = _queries(3000, 20, true)
    assert fit_temperature(sim, targets, n_way=20) == pytest.approx(true, rel=0.1)


def test_a_calibrated_temperature_has_a_small_error_and_a_wrong_one_a_large_one():
    sim, targets = _queries(4000, 20, 0.1, seed=1)
    records = calibration_record(sim, targets, {"right": 0.1, "too sharp": 0.02, "too flat": 1.0})
    assert records["right"]["ece"] < 0.03
    assert records["too sharp"]["ece"] > 0.1 and records["too sharp"]["mean_confidence"] > records["right"]["mean_confidence"]
    assert records["too flat"]["ece"] > 0.1 and records["too flat"]["mean_confidence"] < records["right"]["mean_confidence"]
    assert records["right"]["top1"] == records["too flat"]["top1"]  # a temperature never changes the ranking


def test_ece_by_hand():
    conf = np.array([0.05, 0.1, 0.95, 0.9])
    correct = np.array([0, 1, 1, 1])
    rel = reliability(conf, correct, n_bins=2)
    assert rel.count.tolist() == [2, 2]
    assert rel.accuracy.tolist() == [0.5, 1.0]
    # bin 1: |0.5 - 0.075| = 0.425, bin 2: |1 - 0.925| = 0.075; weighted by 2/4 each
    assert rel.ece == pytest.approx(0.25)
    assert expected_calibration_error(conf, correct, n_bins=2) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        reliability(conf, correct[:3])


def test_nway_subsets_put_the_target_first_and_draw_others():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(5, 30))
    targets = np.array([0, 7, 29, 3, 3])
    rows = nway_subsets(sim, targets, 10, draws=4)
    assert rows.shape == (20, 10)
    np.testing.assert_array_equal(rows[:, 0], np.tile(sim[np.arange(5), targets], 4))
    for r, q in zip(rows, np.tile(np.arange(5), 4)):  # the others are the query's other candidates, each once
        others = np.delete(sim[q], targets[q])
        assert np.isin(r[1:], others).all() and len(set(r[1:].tolist())) == 9
    small = nway_subsets(sim[:, :8], np.array([0, 7, 1, 3, 3]), 10)
    assert small.shape == (5, 8)  # a gallery no larger than n_way: all of it, once


def test_softmax_top1_is_a_probability():
    sim = np.array([[0.1, 0.5, 0.2], [0.3, 0.3, 0.3]])
    conf, top = softmax_top1(sim, 0.1)
    assert top.tolist()[0] == 1 and conf[1] == pytest.approx(1 / 3)
    expected = math.exp(5) / (math.exp(1) + math.exp(5) + math.exp(2))
    assert conf[0] == pytest.approx(expected)


def test_reliability_plot_is_written(tmp_path):
    sim, targets = _queries(500, 20, 0.1)
    panels = {"single trials": calibration_record(sim, targets, {"before": 0.03, "after": 0.1}),
              "averaged": calibration_record(sim, targets, {"before": 0.03, "after": 0.1})}
    reliability_plot(panels, tmp_path / "reliability.png", title="test")
    assert (tmp_path / "reliability.png").stat().st_size > 10_000


# -- in a bundle ------------------------------------------------------------------------------


def test_a_bundle_without_calibration_still_loads_and_decodes_at_its_training_temperature(tiny_bundle, edited_bundle):
    from bci_app.decoder import Decoder
    from trainer.bundle import load_bundle

    calibrated = load_bundle(tiny_bundle)
    assert calibrated.confidence is not None and calibrated.confidence["method"] == "temperature"
    assert calibrated.confidence_temperature("single_trial") != calibrated.temperature
    bundle = load_bundle(edited_bundle(tiny_bundle, lambda c: c.pop("confidence")))
    assert bundle.confidence is None
    assert bundle.confidence_temperature("single_trial") == bundle.confidence_temperature("averaged") == bundle.temperature
    decoder = Decoder(bundle, device="cpu", top_k=3)
    assert decoder.calibrated is False and decoder.temperature == bundle.temperature
    assert Decoder(calibrated, device="cpu").calibrated is True


def test_the_decoder_shows_calibrated_confidences(tiny_bundle):
    """Single trials at the single-trial temperature, averages at the averaged one: the
    decoder's confidences are the softmax of the similarities at those temperatures."""
    import torch

    from bci_app.decoder import Decoder
    from trainer.bundle import load_bundle

    bundle = load_bundle(tiny_bundle)
    rng = np.random.default_rng(0)
    epochs = rng.normal(size=(2, bundle.n_chans, bundle.n_times)).astype(np.float32)
    decoder = Decoder(bundle, device="cpu", top_k=3)
    preds = decoder.decode(epochs, [1, None])
    emb = bundle.embed(epochs)
    sim = emb @ bundle.gallery.T
    for pred, z, temperature in ((preds[0], sim[0], bundle.confidence_temperature("single_trial")),
                                 (preds[1], sim[1], bundle.confidence_temperature("single_trial"))):
        p = torch.softmax(torch.from_numpy(z / temperature), 0).numpy()
        np.testing.assert_allclose(pred.confidence, np.sort(p)[::-1][:3], rtol=1e-4)
    # the first repetition's average is the epoch itself, at the averaged temperature
    p = torch.softmax(torch.from_numpy(sim[0] / bundle.confidence_temperature("averaged")), 0).numpy()
    np.testing.assert_allclose(preds[0].avg_confidence, np.sort(p)[::-1][:3], rtol=1e-4)


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["confidence"]["single_trial"].update(temperature=-1), "confidence.single_trial.temperature"),
    (lambda c: c["confidence"]["single_trial"].update(temperature=float("nan")), "confidence.single_trial.temperature"),
    (lambda c: c["confidence"].update(method="isotonic"), "confidence.method"),
    (lambda c: c["confidence"].pop("single_trial"), "confidence.single_trial"),
    (lambda c: c.update(confidence=[0.1]), "confidence"),
])
def test_a_bad_calibration_is_refused_by_name(tiny_bundle, edited_bundle, edit, field):
    from trainer.bundle import load_bundle
    from trainer.errors import DataFormatError

    with pytest.raises(DataFormatError) as err:
        load_bundle(edited_bundle(tiny_bundle, edit))
    assert field in str(err.value)
