"""bci-train adapt: calibration recordings in, an adapted bundle out; test images and
test epochs never read; clear errors for bad recordings and too little data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.errors import DataFormatError, UsageError

FAST = dict(epochs=2, patience=2, batch_size=64, device="cpu")


def _write_recording(folder: Path, data: np.ndarray, ch_names, sfreq: float, markers, *, image_set=None) -> Path:
    """A bci-app --record folder (the real recorder) holding ``data`` (C, N) in volts and
    ``markers`` (sample, label)."""
    from bci_app.recording import SessionRecorder

    rec = SessionRecorder(folder, ch_names, sfreq, info={"image_set": image_set} if image_set else None)
    ts = np.arange(data.shape[1]) / sfreq
    for start in range(0, data.shape[1], 5000):
        rec.add_samples(data[:, start:start + 5000].T, ts[start:start + 5000])
    for sample, label in markers:
        rec.add_marker(float(ts[sample]), label, int(sample))
    assert rec.close() is not None
    return folder


def _session(root: Path, subject: int, part: str, seconds: float):
    """(data (C, N) volts, channel names, sfreq, [(sample, concept/file label), ...]) of the
    first ``seconds`` of a raw session of the tiny set."""
    from trainer.data import ThingsEEG2
    from trainer.data.things_eeg2 import read_raw_session

    file = "raw_eeg_training.npy" if part == "training" else "raw_eeg_test.npy"
    session = read_raw_session(root / "raw_data" / f"sub-{subject:02d}" / "ses-01" / file)
    sfreq = session.raw.info["sfreq"]
    n = int(seconds * sfreq)
    data = session.raw.get_data(picks=session.eeg_names, stop=n)
    images = ThingsEEG2(root).image_set(part)
    markers = [(int(s), f"{images.concepts[c - 1]}/{images.files[c - 1]}") for s, _, c in session.events if s < n - 1000]
    markers += [(int(s), "catch") for s, _, _ in session.catch_events if s < n - 1000]
    return data, list(session.eeg_names), sfreq, sorted(markers)


@pytest.fixture(scope="module")
def calibration(tiny_dataset, tmp_path_factory):
    """Subject 2's first 90 s of training images, then 4 s of nothing, then 30 s of its
    test images, as one recording (the bundle is subject 1's)."""
    root = tmp_path_factory.mktemp("calibration")
    train, names, sfreq, train_markers = _session(tiny_dataset, 2, "training", 90.0)
    test, _, _, test_markers = _session(tiny_dataset, 2, "test", 30.0)
    gap = np.zeros((len(names), int(4 * sfreq)))
    gap += 1e-6 * np.random.default_rng(0).standard_normal(gap.shape)
    offset = train.shape[1] + gap.shape[1]
    data = np.concatenate([train, gap, test], axis=1)
    markers = train_markers + [(s + offset, lab) for s, lab in test_markers]
    folder = _write_recording(root / "rec", data, names, sfreq, markers)
    return {"folder": folder, "data": data, "names": names, "sfreq": sfreq, "markers": markers, "test_start": offset,
            "n_train_markers": len(train_markers), "n_test_images": sum(lab != "catch" for _, lab in test_markers),
            "n_train_images": sum(lab != "catch" for _, lab in train_markers), "root": root}


def test_adapt_writes_a_bundle_that_loads_with_the_base_gallery(tiny_bundle, tiny_dataset, calibration, tmp_path):
    from trainer.adapt import adapt_bundle
    from trainer.bundle import load_bundle

    out = tmp_path / "adapted"
    s = adapt_bundle(tiny_bundle, [calibration["folder"]], tiny_dataset, out, **FAST)
    base, new = load_bundle(tiny_bundle), load_bundle(out)
    np.testing.assert_array_equal(new.gallery, base.gallery)
    assert new.spec == base.spec and [it.file for it in new.items] == [it.file for it in base.items]
    adaptation = new.config["provenance"]["adaptation"]
    assert adaptation["base"] == str(Path(tiny_bundle).resolve())
    assert adaptation["recordings"][0]["path"] == str(calibration["folder"].resolve())
    # every training-image marker with a whole window is used; the test ones are skipped, catch ones counted
    assert s["markers"]["skipped"] == calibration["n_test_images"]
    assert s["markers"]["catch"] == len(calibration["markers"]) - calibration["n_train_images"] - calibration["n_test_images"] > 0
    assert s["n_trials"] == calibration["n_train_images"]  # each window lies whole in the recording
    assert s["n_fit"] + s["n_val"] == s["n_trials"] and s["n_val_concepts"] >= 5
    assert set(s["before"]) == {"top1", "top5", "rank", "loss"} and len(s["history"]) == s["epochs_run"] + 1
    assert s["after"]["rank"] <= s["before"]["rank"] and 0 <= s["after"]["rank"] <= 1
    if s["best_epoch"] > 0:  # the brain changed, the image side did not
        changed = [k for k, v in new.brain.state_dict().items() if not np.array_equal(v.numpy(), base.brain.state_dict()[k].numpy())]
        assert changed
    for k, v in new.image_projector_state.items():
        np.testing.assert_array_equal(v.numpy(), base.image_projector_state[k].numpy())
    # the adapted brain's confidences are calibrated anew, on the held-out concepts' trials
    assert new.confidence["fitted_on"] == "held-out calibration concepts" and "averaged" not in new.confidence
    assert new.confidence["n_way"] == len(base.gallery_ids) and new.confidence["single_trial"]["n_trials"] == s["n_val"]
    assert new.confidence == s["confidence"]
    assert new.confidence_temperature("averaged") == new.confidence_temperature("single_trial") != new.temperature


def test_an_adapted_windows_bundle_decides_at_the_epoch_end_only(windows_bundle, tiny_dataset, calibration, tmp_path,
                                                                  caplog):
    from trainer.adapt import adapt_bundle
    from trainer.bundle import load_bundle

    assert load_bundle(windows_bundle).windows
    adapt_bundle(windows_bundle, [calibration["folder"]], tiny_dataset, tmp_path / "adapted", **FAST)
    assert load_bundle(tmp_path / "adapted").windows == []
    assert "decides at the epoch's end only" in caplog.text


def test_adapt_never_reads_test_images_or_test_epochs(tiny_bundle, tiny_dataset, calibration, tmp_path):
    """Swapping the test images for noise and the test block's samples for noise changes
    nothing in the adapted bundle."""
    from PIL import Image

    from trainer.adapt import adapt_bundle

    images = tmp_path / "images"
    shutil.copytree(tiny_dataset / "image_set", images / "image_set")
    rng = np.random.default_rng(1)
    test_files = sorted((images / "image_set" / "test_images").rglob("*.jpg"))
    assert test_files
    for f in test_files:
        Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(f)
    data = calibration["data"].copy()
    start = calibration["test_start"]
    data[:, start:] = 3e-5 * rng.standard_normal(data[:, start:].shape)
    noisy = _write_recording(tmp_path / "noisy", data, calibration["names"], calibration["sfreq"], calibration["markers"])

    a = adapt_bundle(tiny_bundle, [calibration["folder"]], tiny_dataset, tmp_path / "a", **FAST)
    b = adapt_bundle(tiny_bundle, [noisy], images, tmp_path / "b", **FAST)
    assert (tmp_path / "a" / "encoder.safetensors").read_bytes() == (tmp_path / "b" / "encoder.safetensors").read_bytes()
    assert a["after"] == b["after"] and a["n_trials"] == b["n_trials"]
    # and the swap is real: the test block is what the evaluation reads
    from trainer.adapt import evaluate_recordings

    clean = evaluate_recordings(tmp_path / "a", [calibration["folder"]], tiny_dataset, device="cpu")
    swapped = evaluate_recordings(tmp_path / "a", [noisy], tiny_dataset, device="cpu")
    assert clean["n_trials"] == swapped["n_trials"] > 0
    assert clean["single_trial"] != swapped["single_trial"] or clean["averaged"] != swapped["averaged"]


def test_markers_naming_images_not_in_images_are_an_error(tiny_bundle, tiny_dataset, calibration, tmp_path):
    from trainer.adapt import adapt_bundle

    markers = calibration["markers"][:200] + [(calibration["markers"][200][0], "99999_unicorn/unicorn_01s.jpg")]
    rec = _write_recording(tmp_path / "rec", calibration["data"][:, :calibration["test_start"]], calibration["names"],
                           calibration["sfreq"], markers)
    with pytest.raises(DataFormatError, match=r"1 marker\(s\) name images that are not in --images .*unicorn"):
        adapt_bundle(tiny_bundle, [rec], tiny_dataset, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_numeric_markers_need_their_image_set(tiny_bundle, tiny_dataset, calibration, tmp_path):
    from trainer.adapt import adapt_bundle
    from trainer.data import ThingsEEG2

    images = ThingsEEG2(tiny_dataset).image_set("training")
    code = {f"{c}/{f}": i + 1 for i, (c, f) in enumerate(zip(images.concepts, images.files))}
    markers = [(s, lab if lab == "catch" else str(code[lab])) for s, lab in calibration["markers"][:calibration["n_train_markers"]]]
    data = calibration["data"][:, :calibration["test_start"]]
    rec = _write_recording(tmp_path / "rec", data, calibration["names"], calibration["sfreq"], markers)
    with pytest.raises(DataFormatError, match="--set train"):
        adapt_bundle(tiny_bundle, [rec], tiny_dataset, tmp_path / "out", **FAST)
    by_code = adapt_bundle(tiny_bundle, [rec], tiny_dataset, tmp_path / "out", image_set="train", **FAST)
    announced = _write_recording(tmp_path / "rec2", data, calibration["names"], calibration["sfreq"], markers,
                                 image_set="train")
    assert adapt_bundle(tiny_bundle, [announced], tiny_dataset, tmp_path / "out2", **FAST)["n_trials"] == by_code["n_trials"]


def test_too_little_data_names_the_minimum(tiny_bundle, tiny_dataset, calibration, tmp_path):
    from trainer.adapt import MIN_FIT_TRIALS, adapt_bundle

    markers = calibration["markers"][:40]
    end = markers[-1][0] + 2000
    rec = _write_recording(tmp_path / "rec", calibration["data"][:, :end], calibration["names"], calibration["sfreq"], markers)
    with pytest.raises(UsageError, match=rf"too little calibration data.*at least {MIN_FIT_TRIALS} trials"):
        adapt_bundle(tiny_bundle, [rec], tiny_dataset, tmp_path / "out", **FAST)


def test_adapting_again_continues_with_the_earlier_recordings(tiny_bundle, tiny_dataset, calibration, tmp_path):
    from trainer.adapt import adapt_bundle

    first = tmp_path / "first"
    adapt_bundle(tiny_bundle, [calibration["folder"]], tiny_dataset, first, **FAST)
    more = _write_recording(tmp_path / "more", calibration["data"][:, :calibration["test_start"]], calibration["names"],
                            calibration["sfreq"], calibration["markers"][:calibration["n_train_markers"]])
    s = adapt_bundle(first, [more], tiny_dataset, tmp_path / "second", **FAST)
    assert [r["path"] for r in s["recordings"]] == [str(calibration["folder"].resolve()), str(more.resolve())]
    assert s["round"] == 2 and s["base"] == str(first.resolve())
    with pytest.raises(UsageError, match="not empty"):
        adapt_bundle(first, [more], tiny_dataset, tmp_path / "second", **FAST)


def test_cli_adapt_from_scratch_and_json(tiny_bundle, tiny_dataset, calibration, tmp_path, capsys):
    from trainer.bundle import load_bundle
    from trainer.cli import main

    out = tmp_path / "scratch"
    assert main(["adapt", "--bundle", str(tiny_bundle), "--recording", str(calibration["folder"]), "--images",
                 str(tiny_dataset), "--out", str(out), "--from-scratch", "--epochs", "2", "--device", "cpu", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["from_scratch"] is True and summary["adapt"] == "all"
    assert load_bundle(out).config["provenance"]["adaptation"]["from_scratch"] is True
    assert main(["adapt", "--bundle", str(tiny_bundle), "--recording", str(tmp_path / "nothing"), "--images",
                 str(tiny_dataset), "--out", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err


@pytest.mark.parametrize("part", ["projector", "head", "input"])
def test_adapt_parts_train_only_what_they_name(tiny_bundle, tiny_dataset, calibration, tmp_path, part):
    from trainer.adapt import adapt_bundle
    from trainer.bundle import load_bundle

    s = adapt_bundle(tiny_bundle, [calibration["folder"]], tiny_dataset, tmp_path / "out", adapt=part, lr=1e-2, **FAST)
    base, new = load_bundle(tiny_bundle).brain.state_dict(), load_bundle(tmp_path / "out").brain.state_dict()
    changed = {k for k in base if not np.array_equal(base[k].numpy(), new[k].numpy())}
    if s["best_epoch"] == 0:
        assert not changed
        return
    assert changed and all(k.startswith("projector.") for k in changed) if part == "projector" else changed
    if part == "head":
        assert any(k.startswith("encoder.") for k in changed) and not all(k.startswith("encoder.") for k in changed)
        assert len(changed) < len(base)
    if part == "input":  # the mixing is folded into the first linear layer: nothing else changes
        assert changed == {"encoder.head.proj.weight", "encoder.head.proj.bias"}


@pytest.mark.parametrize("name", ["eegproject", "linear"])
def test_channel_mixing_folds_into_the_first_linear_layer(name):
    """--adapt input trains a channel re-mixing and folds it into the encoder: the folded
    brain computes on x what the unfolded one computed on mixing @ x + offset."""
    import torch

    from trainer.adapt import _Mixed
    from trainer.model import BrainEmbedder

    torch.manual_seed(0)
    brain = BrainEmbedder({"name": name, "n_chans": 5, "n_times": 7, "embed_dim": 16}, 8).eval()
    mixed = _Mixed(brain).eval()
    with torch.no_grad():
        mixed.mix.mixing.add_(0.3 * torch.randn(5, 5))
        mixed.mix.offset.add_(torch.randn(5))
    x = torch.randn(4, 5, 7)
    with torch.no_grad():
        want = mixed(x)
        got = mixed.folded()(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_input_adaptation_needs_a_linear_first_layer():
    from trainer.adapt import _Mixed
    from trainer.model import BrainEmbedder

    brain = BrainEmbedder({"name": "eegnet", "n_chans": 5, "n_times": 64, "embed_dim": 16}, 8)
    with pytest.raises(UsageError, match="--adapt input needs an encoder that begins with a linear layer.*'eegnet'"):
        _Mixed(brain)
