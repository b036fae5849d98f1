"""bci-train fit / eval end to end on the tiny synthetic set (a tiny random ViT)."""

import json

import numpy as np
import pytest

from trainer import fit as fit_module
from trainer.bundle import load_bundle
from trainer.cli import main
from trainer.errors import BCIError, DataFormatError, UsageError
from trainer.fit import FitConfig, evaluate_bundle, fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _config(data, out, cache, **kw):
    base = dict(data=str(data), subject=1, out=str(out), backbone="vit_tiny_patch16_224", weights="random",
                image_size=32, layers="1,final", epochs=3, batch_size=128, proj_dim=32, embed_dim=64,
                cache=str(cache), device="cpu")
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory, cache):
    root = tmp_path_factory.mktemp("run")
    metrics = fit(_config(tiny_dataset, root / "run", cache))
    return root / "run", cache, metrics


def test_fit_writes_bundle_and_metrics(tiny_run):
    run, _, metrics = tiny_run
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["n_way"] == 20 and saved["n_repetitions"] == 20
    assert {"top1", "top5"} <= set(saved["averaged"]) and {"top1", "top5"} <= set(saved["single_trial"])
    assert set(saved["kway"]) == {"2", "4", "10"}
    assert [r["layer"] for r in saved["layer_sweep"]] == [1, "final"]
    assert saved["layer"] in (1, "final")
    assert len(saved["history"]) == 3
    config = json.loads((run / "config.json").read_text())
    assert config["backbone"] == "vit_tiny_patch16_224" and config["epochs"] == 3
    for name in ("bundle.json", "encoder.safetensors", "gallery.safetensors", "gallery.json"):
        assert (run / name).is_file()
    # no pickle-capable file anywhere in the run folder
    assert not [p for p in run.rglob("*") if p.suffix in (".pt", ".pth", ".pkl", ".pickle", ".npy", ".ckpt")]
    bundle = load_bundle(run)
    assert bundle.gallery.shape == (20, 32)
    assert bundle.gallery_ids.tolist() == list(range(1, 21))
    assert bundle.spec.norm_mean is not None and len(bundle.spec.channels) == 17
    assert bundle.thumbnail_path(0).is_file()


def test_calibration_lowers_the_calibration_error_on_the_held_out_test_set(tiny_run):
    """The temperatures are fitted on validation concepts only; on the test set (unseen
    concepts, single trials) the calibrated confidences are closer to the accuracy than
    those at the training temperature, and the ranking is the same."""
    run, _, metrics = tiny_run
    saved = json.loads((run / "metrics.json").read_text())
    single = saved["confidence"]["single_trial"]
    assert single["after"]["ece"] <= single["before"]["ece"]
    assert single["after"]["top1"] == single["before"]["top1"] == saved["single_trial"]["top1"]
    fitted = saved["confidence_fit"]
    assert single["after"]["temperature"] == fitted["single_trial"]["temperature"]
    assert fitted["fitted_on"] == "validation concepts" and fitted["n_way"] == 20
    assert fitted["single_trial"]["val_ece_after"] <= fitted["single_trial"]["val_ece_before"]
    bundle = load_bundle(run)
    assert bundle.confidence["single_trial"]["temperature"] == fitted["single_trial"]["temperature"]
    assert bundle.config["metrics"]["confidence"] == saved["confidence"]
    assert (run / "reliability.png").stat().st_size > 10_000
    # eval --bundle measures the same with the bundle alone
    assert metrics["confidence"] == saved["confidence"]


def test_eval_reproduces_fit_metrics(tiny_run, tiny_dataset, capsys):
    run, cache, metrics = tiny_run
    again = evaluate_bundle(run, tiny_dataset, 1, device="cpu", cache=cache)
    for key in ("averaged", "single_trial", "kway", "n_way"):
        assert again[key] == metrics[key], key
    for cond in ("single_trial", "averaged"):  # the gallery is stored in float32: equal to float rounding
        for when in ("before", "after"):
            assert again["confidence"][cond][when] == pytest.approx(metrics["confidence"][cond][when], rel=1e-6, abs=1e-7)
    assert main(["eval", "--bundle", str(run), "--data", str(tiny_dataset), "--subject", "1", "--cache", str(cache), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["averaged"] == metrics["averaged"]


def test_layer_choice_never_reads_test_data(tiny_dataset, tmp_path, monkeypatch, cache):
    """Replacing the test EEG by noise changes nothing in training, layer and fusion choice
    or calibration."""
    real_loader = fit_module.load_fit_data
    runs = {}
    for name, scramble in (("real", False), ("noise", True)):
        def loader(*args, scramble=scramble, **kwargs):
            data = real_loader(*args, **kwargs)
            if scramble:
                data.test = np.random.default_rng(0).standard_normal(data.test.shape).astype(np.float32)
            return data

        monkeypatch.setattr(fit_module, "load_fit_data", loader)
        runs[name] = fit(_config(tiny_dataset, tmp_path / name, cache, layer="auto", layers="0,2,final", epochs=2,
                                 fusion="auto"))
    for key in ("layer_sweep", "fusion_sweep", "layer", "history", "confidence_fit"):
        assert runs["real"][key] == runs["noise"][key], key
    assert runs["real"]["averaged"] != runs["noise"]["averaged"] or runs["real"]["single_trial"] != runs["noise"]["single_trial"]


class _Interrupt(Exception):
    pass


def _stop_after_epoch(n):
    """A progress callback that interrupts a fit once epoch ``n`` of its first layer is reported."""
    def progress(phase, done, total):
        if f"epoch {n}/" in phase:
            raise _Interrupt(phase)
    return progress


def test_resume_continues_where_it_stopped(tiny_dataset, tmp_path, caplog, monkeypatch, cache):
    full = fit(_config(tiny_dataset, tmp_path / "full", cache, layers="1", epochs=4))
    monkeypatch.setattr(fit_module, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every epoch
    with pytest.raises(_Interrupt):  # as Ctrl-C or a cancelled demo would
        fit(_config(tiny_dataset, tmp_path / "part", cache, layers="1", epochs=4), _stop_after_epoch(2))
    assert not (tmp_path / "part" / "bundle.json").exists()
    # the checkpoints are in the cache, not in the run folder
    assert list(fit_module.checkpoint_dir(tmp_path / "part", cache).glob("layer_1.*"))
    assert not (tmp_path / "part" / "checkpoints").exists()
    # other settings would lose the interrupted run: refused, nothing touched
    with pytest.raises(UsageError, match=r"interrupted run with other settings \(seed: 0 -> 1\).*--overwrite"):
        fit(_config(tiny_dataset, tmp_path / "part", cache, layers="1", epochs=4, seed=1))
    with caplog.at_level("INFO", logger="trainer"):
        resumed = fit(_config(tiny_dataset, tmp_path / "part", cache, layers="1", epochs=4))
    assert "resuming after epoch 2" in caplog.text
    assert [h["epoch"] for h in resumed["history"]] == [0, 1, 2, 3]
    np.testing.assert_allclose([h["loss"] for h in resumed["history"]], [h["loss"] for h in full["history"]], rtol=1e-4)
    assert resumed["averaged"] == full["averaged"]
    # finished: no checkpoint left, and the run folder is the bundle, its two JSON files and the reliability diagram
    for run in ("full", "part"):
        assert not fit_module.checkpoint_dir(tmp_path / run, cache).exists()
    names = {p.relative_to(tmp_path / "part").parts[0] for p in (tmp_path / "part").rglob("*")}
    assert names == {"bundle.json", "encoder.safetensors", "gallery.safetensors", "gallery.json", "thumbnails",
                     "config.json", "metrics.json", "reliability.png"}


def test_run_folder_is_the_bundle_and_a_few_files(tiny_run):
    """Checkpoints (model, best model and optimiser state per layer: several times the
    bundle) are not kept in the run folder, nor in the cache once the run is finished."""
    run, cache, _ = tiny_run
    assert not (run / "checkpoints").exists()
    assert not fit_module.checkpoint_dir(run, cache).exists()
    size = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    assert size < 2 * (run / "encoder.safetensors").stat().st_size + 1_000_000


def test_a_finished_run_of_other_settings_is_refused_unless_overwrite(tiny_dataset, tmp_path, capsys, cache):
    run = tmp_path / "run"
    first = fit(_config(tiny_dataset, run, cache, layers="1", epochs=1))
    bundle_before = (run / "encoder.safetensors").read_bytes()
    args = ["fit", "--data", str(tiny_dataset), "--out", str(run), "--backbone", "vit_tiny_patch16_224", "--weights",
            "random", "--image-size", "32", "--layers", "1", "--batch-size", "128", "--proj-dim", "32",
            "--embed-dim", "64", "--cache", str(cache), "--device", "cpu"]
    capsys.readouterr()
    assert main([*args, "--epochs", "2", "--lr", "0.001"]) == 2
    err = _one_line_error(capsys.readouterr().err)
    assert str(run) in err and "epochs: 1 -> 2" in err and "lr: 0.0001 -> 0.001" in err and "--overwrite" in err
    assert (run / "encoder.safetensors").read_bytes() == bundle_before  # nothing touched
    assert json.loads((run / "config.json").read_text())["epochs"] == 1
    # the same settings: nothing is trained, the finished run's metrics are shown
    assert main([*args, "--epochs", "1", "--device", "auto", "--image-batch-size", "7"]) == 0
    assert "20-way zero-shot retrieval" in capsys.readouterr().out
    assert json.loads((run / "metrics.json").read_text()) == first
    assert (run / "encoder.safetensors").read_bytes() == bundle_before
    # --overwrite: trained again with the new settings
    assert main([*args, "--epochs", "2", "--overwrite"]) == 0
    assert len(json.loads((run / "metrics.json").read_text())["history"]) == 2
    assert json.loads((run / "config.json").read_text())["epochs"] == 2


def test_a_bundle_without_settings_is_refused(tiny_run, tiny_dataset, tmp_path):
    import shutil

    run, cache, _ = tiny_run
    other = tmp_path / "bundle"
    shutil.copytree(run, other)
    (other / "config.json").unlink()
    with pytest.raises(UsageError, match="unknown settings"):
        fit(_config(tiny_dataset, other, cache))


@pytest.mark.parametrize(
    "change, error, words",
    [
        (dict(backbone="vit_tinyy_patch16_224"), BCIError, ["vit_tiny_patch16_224"]),
        (dict(encoder="eegprojekt"), ValueError, ["eegproject", "tsconv"]),
        (dict(layer="40", layers=""), ValueError, ["0..11"]),
        (dict(layers="1,99"), ValueError, ["99", "0..11"]),
        (dict(subject=7), DataFormatError, ["subject 7", "1, 2"]),
        (dict(pooling="max"), ValueError, ["pooling"]),
    ],
)
def test_bad_fit_input(tiny_dataset, tmp_path, change, error, words):
    with pytest.raises(error) as info:
        fit(_config(tiny_dataset, tmp_path / "run", tmp_path / "cache", **change))
    for word in words:
        assert word in str(info.value)


def _one_line_error(stderr):
    """The error line of a command's stderr, checking that it is one line (log lines may precede it)."""
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr and lines and lines[-1].startswith("bci-train fit: error: "), stderr
    assert all(line.startswith(("INFO:", "WARNING:")) for line in lines[:-1]), stderr
    return lines[-1]


@pytest.mark.parametrize(
    "options, words",
    [
        (["--backbone", "nonexistent_net"], ["nonexistent_net"]),
        (["--device", "gpu0"], ["'gpu0'"]),
        (["--encoder", "eegprojekt"], ["--encoder", "eegproject"]),
        (["--layer", "40", "--layers", ""], ["--layer", "0..11"]),
        (["--layers", "1,99"], ["--layers", "99", "0..11"]),
        (["--pooling", "max"], ["--pooling", "'mean'"]),
        (["--spec", "papper"], ["--spec", "paper"]),
        (["--source", "eeg"], ["--source", "raw"]),
        (["--epochs", "0"], ["--epochs", "> 0"]),
        (["--temperature", "0.005"], ["--temperature", "0.01"]),
        (["--val-fraction", "1.5"], ["--val-fraction"]),
        (["--subject", "7"], ["subject 7"]),
        (["--config", "missing.toml"], ["missing.toml"]),
        (["--config", "bad.toml"], ["bad.toml", "TOML"]),
        (["--config", "typed.toml"], ["--epochs (epochs)", "int", "'5'"]),
    ],
)
def test_cli_fit_errors_are_one_line(tiny_dataset, tmp_path, capsys, monkeypatch, options, words):
    """A user's bad option, config file or data is one line on stderr and exit code 2."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.toml").write_text("epochs = = 5\n")
    (tmp_path / "typed.toml").write_text('epochs = "5"\n')
    code = main(["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--backbone", "vit_tiny_patch16_224",
                 "--weights", "random", "--image-size", "32", "--cache", str(tmp_path / "cache"), *options])
    err = _one_line_error(capsys.readouterr().err)
    assert code == 2
    for word in words:
        assert word in err
    assert not (tmp_path / "r" / "bundle.json").exists()


def test_cli_pooling_that_the_backbone_lacks_fails_before_any_data_work(tiny_dataset, tmp_path, capsys, monkeypatch):
    import trainer.fit

    monkeypatch.setattr(trainer.fit, "load_fit_data", lambda *a, **k: pytest.fail("data loaded"))
    assert main(["fit", "--data", str(tiny_dataset), "--out", str(tmp_path / "r"), "--backbone", "resnet10t",
                 "--weights", "random", "--pooling", "cls", "--cache", str(tmp_path / "cache")]) == 2
    assert "--pooling mean" in capsys.readouterr().err


def test_eval_refuses_data_without_the_bundle_channels(tiny_run, tiny_dataset, tmp_path):
    import shutil

    run, cache, _ = tiny_run
    bad = tmp_path / "bundle"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("checkpoints"))
    config = json.loads((bad / "bundle.json").read_text())
    config["preprocessing"]["channels"][0] = "XYZ1"
    (bad / "bundle.json").write_text(json.dumps(config))
    with pytest.raises(DataFormatError, match="missing required channel.*XYZ1"):
        evaluate_bundle(bad, tiny_dataset, 1, cache=cache)


def test_meg_trains_and_evaluates_through_the_same_commands(tiny_meg_dataset, tmp_path):
    meg = tiny_meg_dataset / "THINGS-MEG"
    cache = tmp_path / "cache"
    metrics = fit(_config(meg, tmp_path / "meg", cache, source="meg", layers="1", epochs=2, batch_size=32))
    assert metrics["n_way"] == 8 and metrics["n_repetitions"] == 12
    bundle = load_bundle(tmp_path / "meg")
    assert bundle.spec.sfreq == 200 and bundle.n_times == 200
    assert all(name.startswith(("MLO", "MRO", "MZO", "MLP", "MRP", "MZP")) for name in bundle.spec.channels)
    again = evaluate_bundle(tmp_path / "meg", meg, 1, cache=cache)
    assert again["averaged"] == metrics["averaged"] and again["single_trial"] == metrics["single_trial"]


def test_non_finite_data_is_refused(tmp_path):
    from trainer.data import read_preprocessed, write_preprocessed
    from trainer.synth import SynthConfig, generate

    root = tmp_path / "data"
    generate(root, SynthConfig(n_train_concepts=12, images_per_concept=2, n_test_concepts=4, n_sessions=2,
                               test_reps_per_session=2, subjects=1, image_size=32))
    path = root / "preprocessed_data" / "sub-01" / "preprocessed_eeg_training.npy"
    trials = read_preprocessed(path, mmap=False)
    data = np.array(trials.data)
    data[5, 1, 3, 40] = np.nan
    import dataclasses

    write_preprocessed(path, dataclasses.replace(trials, data=data))
    with pytest.raises(DataFormatError, match="non-finite.*image row 5"):
        fit(_config(root, tmp_path / "run", tmp_path / "cache", source="preprocessed", layers="1", epochs=1))


def test_config_file_sets_defaults_and_flags_override(tiny_dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    toml = tmp_path / "train.toml"
    toml.write_text(f'backbone = "vit_tiny_patch16_224"\nweights = "random"\nimage_size = 32\nlayers = "1"\n'
                    f'epochs = 5\nbatch_size = 128\nproj_dim = 16\nembed_dim = 32\ncache = "{cache}"\n')
    out = tmp_path / "run"
    assert main(["fit", "--config", str(toml), "--data", str(tiny_dataset), "--out", str(out), "--epochs", "1"]) == 0
    resolved = json.loads((out / "config.json").read_text())
    assert resolved["epochs"] == 1 and resolved["proj_dim"] == 16 and resolved["backbone"] == "vit_tiny_patch16_224"
    assert "20-way zero-shot retrieval" in capsys.readouterr().out
    toml.write_text('epoks = 3\n')
    assert main(["fit", "--config", str(toml), "--data", str(tiny_dataset), "--out", str(out)]) == 2
    assert "unknown setting(s) epoks" in capsys.readouterr().err


def test_retarget_to_the_same_images_reproduces_the_gallery(tiny_run, tiny_dataset, tmp_path, capsys):
    run, _, _ = tiny_run
    images = sorted((tiny_dataset / "image_set" / "test_images").glob("*/*.jpg"))
    assert main(["retarget", "--bundle", str(run), "--images", str(tiny_dataset / "image_set" / "test_images"),
                 "--out", str(tmp_path / "same")]) == 0
    original, same = load_bundle(run), load_bundle(tmp_path / "same")
    np.testing.assert_allclose(same.gallery, original.gallery, atol=1e-5)
    assert same.gallery_ids.tolist() == original.gallery_ids.tolist()
    assert [i.concept for i in same.items] == [p.parent.name for p in images]
    # a smaller gallery of other images (training images), embedded by the same model
    from trainer.bundle import retarget_bundle

    train = sorted((tiny_dataset / "image_set" / "training_images").glob("*/*.jpg"))[:7]
    small = load_bundle(retarget_bundle(run, tmp_path / "other", train, ids=[11, 12, 13, 14, 15, 16, 17]))
    assert small.gallery.shape == (7, original.gallery.shape[1]) and small.gallery_ids[0] == 11
    x = np.random.default_rng(0).standard_normal((2, 17, 250)).astype(np.float32)
    np.testing.assert_allclose(small.embed(x), original.embed(x), atol=1e-6)  # same brain encoder


def test_retarget_refuses_other_weights(tiny_run, tiny_dataset, tmp_path):
    import json as _json

    run, _, _ = tiny_run
    import shutil

    bad = tmp_path / "bundle"
    shutil.copytree(run, bad, ignore=shutil.ignore_patterns("checkpoints"))
    config = _json.loads((bad / "bundle.json").read_text())
    config["backbone"]["weights_id"] = "file-0123456789abcdef"
    (bad / "bundle.json").write_text(_json.dumps(config))
    from trainer.bundle import retarget_bundle

    images = sorted((tiny_dataset / "image_set" / "test_images").glob("*/*.jpg"))[:3]
    with pytest.raises(BCIError, match="not the ones the bundle was trained with"):
        retarget_bundle(bad, tmp_path / "out", images)


def test_train_subjects_all_trains_on_every_subject(tiny_dataset):
    """--train-subjects all: the base bundle for new people trains on every subject; a
    list trains on those; bad values and --inter with it are refused."""
    from trainer.config import FitConfig, parse_subjects
    from trainer.datasets import load_fit_data

    assert parse_subjects("") is None and parse_subjects("all") == "all" and parse_subjects("2, 1,2") == [1, 2]
    for bad in ("0", "one", "1;2", ","):
        with pytest.raises(UsageError, match=r"--train-subjects \(train_subjects\) must be 'all' or comma-separated"):
            parse_subjects(bad)
    with pytest.raises(UsageError, match="--inter .* and --train-subjects .* give one of them"):
        FitConfig(data="d", out="o", inter=True, train_subjects="all").validate()
    both = load_fit_data(tiny_dataset, 1, source="preprocessed", train_subjects="all")
    one = load_fit_data(tiny_dataset, 1, source="preprocessed")
    assert both.subjects_train == [1, 2] and one.subjects_train == [1]
    assert len(both.train) == 2 * len(one.train)
    assert both.test.shape == one.test.shape and both.subject_test == 1  # tested on subject 1 alone
    with pytest.raises(DataFormatError, match=r"--train-subjects: subject\(s\) 7 not found"):
        load_fit_data(tiny_dataset, 1, source="preprocessed", train_subjects=[1, 7])
