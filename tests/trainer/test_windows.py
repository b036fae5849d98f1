"""Deciding before the epoch ends (--windows): stages, masked training, calibrated
provisional decisions in the bundle."""

import json

import numpy as np
import pytest

from trainer.bundle import load_bundle
from trainer.errors import DataFormatError, UsageError
from trainer.preprocessing import PreprocessingSpec
from trainer.windows import parse_windows, stage_ends, stage_masks, stage_samples, stage_spec, zero_padded

SPEC = PreprocessingSpec(channels=("Pz", "Oz", "O1"), sfreq=250.0, tmin=0.0, tmax=1.0, baseline=(-0.2, 0.0),
                         l_freq=0.5, h_freq=40.0, pad=0.3)


def test_windows_parse_and_become_stages_ending_with_the_epoch():
    assert parse_windows("") == [] and parse_windows("0.5, 0.3,0.5") == [0.3, 0.5]
    for bad in ("x", "0.3,-1", "0", "nan"):
        with pytest.raises(UsageError, match="--windows"):
            parse_windows(bad)
    assert stage_ends(SPEC, [0.3, 0.5]) == [0.3, 0.5, 1.0]
    assert stage_ends(SPEC, [0.3, 1.0]) == [0.3, 1.0]  # the epoch's end is not a provisional stage
    with pytest.raises(UsageError, match="1.5 s does not end inside the epoch"):
        stage_ends(SPEC, [0.3, 1.5])
    masks = stage_masks(SPEC, [0.3, 1.0])
    assert masks.shape == (2, 250) and masks[0].sum() == 75 and masks[0, :75].all() and masks[1].all()
    assert zero_padded(np.ones((2, 3, 75)), 250)[:, :, 75:].sum() == 0


@pytest.mark.parametrize("sfreq_in", [250.0, 1000.0, 512.0])
def test_a_stage_epoch_is_the_first_samples_of_the_whole_epoch(sfreq_in):
    """What the app preprocesses when a stage's raw window is in equals the start of what it
    preprocesses when the whole window is in (causal filter, baseline before the onset,
    resampling within the kernel's reach): the model sees at each stage what it learnt."""
    start, n_in = SPEC.window(sfreq_in)
    raw = np.random.default_rng(0).normal(size=(2, 3, n_in)) * 1e-5 + 3e-5
    full = SPEC.apply(raw, sfreq_in)
    for end in (0.1, 0.3, 0.5, 0.77):
        stage = stage_spec(SPEC, end)
        s_start, s_n = stage.window(sfreq_in)
        assert s_start == start and s_n < n_in
        part = stage.apply(raw[..., :s_n], sfreq_in)
        n = stage_samples(SPEC, end)
        assert part.shape == (2, 3, n)
        np.testing.assert_allclose(part, full[..., :n], rtol=1e-6, atol=1e-12)


def test_a_windows_run_reports_and_records_every_stage(windows_bundle, tiny_dataset):
    from trainer.fit import evaluate_bundle

    metrics = json.loads((windows_bundle / "metrics.json").read_text())
    stages = metrics["windows"]
    assert [(w["end"], w["n_times"]) for w in stages] == [(0.3, 75), (0.5, 125), (1.0, 250)]
    assert stages[-1]["averaged"] == metrics["averaged"]
    assert all({"averaged", "single_trial", "confidence"} <= set(w) for w in stages)
    assert all(len(h["val_top1_stages"]) == 3 for h in metrics["history"])
    for h in metrics["history"]:  # the best epoch is chosen on the mean over the stages
        assert h["val_top1"] == pytest.approx(np.mean(h["val_top1_stages"]))
    bundle = load_bundle(windows_bundle)
    assert [(w["end"], w["n_times"]) for w in bundle.windows] == [(0.3, 75), (0.5, 125)]
    for w, m in zip(bundle.windows, stages):
        assert w["single_trial"]["temperature"] == m["confidence"]["single_trial"]["after"]["temperature"]
    again = evaluate_bundle(windows_bundle, tiny_dataset, 1, device="cpu")
    assert [(w["end"], w["averaged"], w["single_trial"]) for w in again["windows"]] == \
        [(w["end"], w["averaged"], w["single_trial"]) for w in stages]


def test_a_provisional_decision_is_the_model_on_the_zero_padded_start(windows_bundle):
    import torch

    from bci_app.decoder import Decoder

    bundle = load_bundle(windows_bundle)
    decoder = Decoder(bundle, device="cpu", top_k=3)
    x = np.random.default_rng(0).standard_normal((4, bundle.n_chans, 75)).astype(np.float32)
    preds = decoder.decode_stage(x, 0)
    sim = bundle.embed(zero_padded(x, bundle.n_times)) @ bundle.gallery.T
    p = torch.softmax(torch.from_numpy(sim / bundle.windows[0]["single_trial"]["temperature"]), 1).numpy()
    for pred, row in zip(preds, p):
        assert pred.topk == [int(bundle.gallery_ids[i]) for i in np.argsort(-row)[:3]]
        np.testing.assert_allclose(pred.confidence, np.sort(row)[::-1][:3], rtol=1e-4)
        assert pred.avg_topk is None
    with pytest.raises(UsageError, match=r"must be \(n, 17, 125\)"):
        decoder.decode_stage(x, 1)
    with pytest.raises(UsageError, match="stage must be 0..1"):
        decoder.decode_stage(x, 2)


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["windows"][0].update(n_times=80), "windows[0].n_times"),
    (lambda c: c["windows"][1].update(end=0.2), "windows[1].end"),
    (lambda c: c["windows"][0].update(end=1.0), "windows[0].end"),
    (lambda c: c["windows"][0]["single_trial"].update(temperature=0), "windows[0].single_trial.temperature"),
    (lambda c: c.update(windows={"0.3": 75}), "windows"),
])
def test_a_bad_windows_record_is_refused_by_name(windows_bundle, edited_bundle, edit, field):
    with pytest.raises(DataFormatError) as err:
        load_bundle(edited_bundle(windows_bundle, edit))
    assert field in str(err.value)


def test_windows_outside_the_epoch_are_refused_before_any_image_work(tiny_dataset, tiny_cache, tmp_path, monkeypatch):
    import trainer.fit
    from trainer.fit import FitConfig, fit

    monkeypatch.setattr(trainer.fit, "image_features", lambda *a, **k: pytest.fail("image features computed"))
    with pytest.raises(UsageError, match="2 s does not end inside the epoch"):
        fit(FitConfig(data=str(tiny_dataset), subject=1, out=str(tmp_path / "run"), backbone="resnet10t", weights="random",
                      layers="1", epochs=1, cache=str(tiny_cache), device="cpu", windows="0.3,2"))
