"""The synthetic data set: determinism, THINGS layout, and a brain that behaves like one."""

import hashlib
import json

import numpy as np
import pytest

from trainer.cli import main
from trainer.data import ThingsEEG2, load_image_set
from trainer.errors import UsageError
from trainer.synth import PRESETS, SynthConfig, generate
from trainer.synth.images import image_statistics, make_concept_names, make_concept_styles

MICRO = SynthConfig(n_train_concepts=12, images_per_concept=2, n_test_concepts=4, n_sessions=2,
                    test_reps_per_session=2, subjects=1, image_size=32)


def _digest(root):
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != "synth.json":
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_deterministic_for_a_seed(tmp_path):
    a = _digest_of(tmp_path / "a", seed=5)
    b = _digest_of(tmp_path / "b", seed=5)
    c = _digest_of(tmp_path / "c", seed=6)
    assert a == b
    assert a.keys() != c.keys() or a != c
    assert len(a) > 10


def _digest_of(root, seed):
    generate(root, MICRO, seed=seed)
    return _digest(root)


def test_summary_and_layout(tmp_path):
    summary = generate(tmp_path, MICRO, seed=1)
    assert json.loads((tmp_path / "synth.json").read_text())["n_training_images"] == 24 == summary["n_training_images"]
    assert summary["training_repetitions"] == 2 and summary["test_repetitions"] == 4
    ds = ThingsEEG2(tmp_path)
    assert ds.subjects() == [1]
    assert [p.parent.name for p in ds.raw_paths(1, "training")] == ["ses-01", "ses-02"]
    train = ds.preprocessed(1, "training")
    assert train.data.shape == (24, 2, 17, 100)


def test_preset_sizes():
    full = PRESETS["full"]
    assert full.n_train_images == 16540 and full.n_test_concepts == 200
    assert full.n_sessions * full.test_reps_per_session == 80
    assert PRESETS["tiny"].n_train_images < PRESETS["small"].n_train_images < full.n_train_images


def test_bad_arguments(tmp_path):
    with pytest.raises(UsageError, match="preset"):
        generate(tmp_path, "huge")
    with pytest.raises(UsageError, match="subjects"):
        generate(tmp_path, MICRO, subjects=0)
    with pytest.raises(UsageError, match="variants"):
        generate(tmp_path, MICRO, variants=("nope",))
    with pytest.raises(UsageError, match="variants"):
        generate(tmp_path, MICRO, variants=())


def _ridge(x, y, lam):
    m, s = x.mean(0), x.std(0) + 1e-12
    xs = (x - m) / s
    w = np.linalg.solve(xs.T @ xs + lam * np.eye(xs.shape[1]), xs.T @ y)
    return lambda z: ((z - m) / s) @ w


def _top1(pred, target):
    pred = pred / np.linalg.norm(pred, axis=1, keepdims=True)
    target = target / np.linalg.norm(target, axis=1, keepdims=True)
    return float(((pred @ target.T).argmax(1) == np.arange(len(target))).mean())


def test_brain_is_decodable_zero_shot_like_real_eeg(tiny_dataset):
    """A linear map from EEG to the stimulus features the brain model is driven by
    (pixel statistics + shared concept attributes), fitted on training concepts,
    retrieves unseen test images: averaged repetitions well, single trials weakly but
    above chance, another subject's EEG worse than the same subject's."""
    cfg = json.loads((tiny_dataset / "synth.json").read_text())["config"]
    rng = np.random.default_rng([cfg["seed"], 1])
    n = cfg["n_train_concepts"] + cfg["n_test_concepts"]
    styles = dict(zip(make_concept_names(n, rng), make_concept_styles(n, rng)))

    def features(part):
        images = load_image_set(tiny_dataset / "image_set", part)
        low = np.array([image_statistics(np.asarray(images.open(i))) for i in range(len(images))])
        attr = np.array([styles[c].attributes() for c in images.concept_names])
        return np.hstack([low, attr])

    f_train, f_test = features("training"), features("test")
    mu, sd = f_train.mean(0), f_train.std(0) + 1e-6
    f_train, f_test = (f_train - mu) / sd, (f_test - mu) / sd
    ds = ThingsEEG2(tiny_dataset)
    chance = 1 / len(f_test)
    results = {}
    for sub in (1, 2):
        x = ds.preprocessed(sub, "training").average_repetitions()
        decode = _ridge(x.reshape(len(x), -1), f_train, 1e3)
        test = ds.preprocessed(sub, "test")
        avg = test.average_repetitions()
        results[sub] = {
            "avg": _top1(decode(avg.reshape(len(avg), -1)), f_test),
            "single": np.mean([_top1(decode(np.asarray(test.data[:, r]).reshape(len(avg), -1)), f_test)
                               for r in range(test.n_repetitions)]),
            "decode": decode,
        }
    for sub, other in ((1, 2), (2, 1)):
        r = results[sub]
        other_avg = ds.preprocessed(other, "test").average_repetitions()
        inter = _top1(r["decode"](other_avg.reshape(len(other_avg), -1)), f_test)
        assert r["avg"] >= 8 * chance, r
        assert 1.5 * chance < r["single"] < r["avg"], r
        assert inter < r["avg"], (inter, r)


def test_cli_synth_and_info(tmp_path, capsys):
    out = tmp_path / "set"
    assert main(["synth", str(out), "--preset", "tiny", "--subjects", "1", "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert "wrote a synthetic THINGS-like data set" in text
    assert "sub-01" in text and "960 images x 2 repetitions x 17 channels x 100 times" in text
    assert main(["info", str(out)]) == 0
    assert "training images: 960 in 240 concepts" in capsys.readouterr().out
