"""Readers on the synthetic THINGS-EEG2 set: exact keys and shapes, raw -> preprocessed."""

import numpy as np
import pytest

from trainer.data import (
    CATCH_CODE,
    THINGS_EEG2_CHANNELS,
    THINGS_EEG2_PREPROCESSED_CHANNELS,
    ThingsEEG2,
    load_image_set,
    load_npy_dict,
    read_image_metadata,
    read_preprocessed,
    read_raw_session,
    trials_from_raw,
    validation_split,
)
from trainer.errors import UsageError
from trainer.preprocessing import NAMED_SPECS
from trainer.synth import PRESETS

TINY = PRESETS["tiny"]


def test_exact_things_keys_and_shapes(tiny_dataset):
    pre = tiny_dataset / "preprocessed_data" / "sub-01"
    d = load_npy_dict(pre / "preprocessed_eeg_training.npy")
    assert set(d) == {"preprocessed_eeg_data", "ch_names", "times"}
    assert d["preprocessed_eeg_data"].shape == (TINY.n_train_images, 2, 17, 100)
    assert list(d["ch_names"]) == list(THINGS_EEG2_PREPROCESSED_CHANNELS)
    np.testing.assert_allclose(d["times"], np.arange(-20, 80) / 100, atol=1e-9)
    d = load_npy_dict(pre / "preprocessed_eeg_test.npy")
    assert d["preprocessed_eeg_data"].shape == (TINY.n_test_concepts, 2 * TINY.test_reps_per_session, 17, 100)

    raw = load_npy_dict(tiny_dataset / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_training.npy")
    assert set(raw) == {"raw_eeg_data", "ch_names", "ch_types", "sfreq", "highpass", "lowpass"}
    assert raw["raw_eeg_data"].shape[0] == 64
    assert list(raw["ch_names"]) == list(THINGS_EEG2_CHANNELS) + ["stim"]
    assert raw["ch_types"][-1] == "stim" and set(raw["ch_types"][:-1]) == {"eeg"}
    assert raw["sfreq"] == 1000 and raw["highpass"] == 0.01 and raw["lowpass"] == 100

    meta = read_image_metadata(tiny_dataset / "image_set" / "image_metadata.npy")
    assert len(meta["train_img_files"]) == TINY.n_train_images
    assert meta["train_img_concepts"][0].startswith("00001_")
    assert meta["test_img_files"][0].endswith("s.jpg")
    assert not any(f.endswith("s.jpg") for f in meta["train_img_files"])


def test_peer_variant_63ch_250hz(tiny_dataset):
    ds = ThingsEEG2(tiny_dataset)
    t = ds.preprocessed(1, "test", folder="preprocessed_data_63ch_250hz", sfreq=250)
    assert t.data.shape == (TINY.n_test_concepts, 20, 63, 250)
    assert t.ch_names == THINGS_EEG2_CHANNELS
    assert t.sfreq == 250 and t.times[0] == 0.0
    occ = t.pick_channels(r"^O|^P")
    assert occ.ch_names == THINGS_EEG2_PREPROCESSED_CHANNELS
    by_name = t.pick_channels(["Oz", "Pz"])
    np.testing.assert_array_equal(by_name.data[:, :, 0], t.data[:, :, THINGS_EEG2_CHANNELS.index("Oz")])


def test_repetition_averaging_and_selection(tiny_dataset):
    t = read_preprocessed(tiny_dataset / "preprocessed_data" / "sub-01" / "preprocessed_eeg_test.npy")
    assert t.partition == "test"
    avg = t.average_repetitions(chunk=3)
    np.testing.assert_allclose(avg, np.asarray(t.data, dtype=np.float64).mean(axis=1), rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(t.average_repetitions(1), t.data[:, 0], rtol=1e-6)
    sub = t.select_images([3, 1])
    assert sub.image_ids.tolist() == [3, 1]
    np.testing.assert_array_equal(sub.data[0], t.data[3])
    with pytest.raises(UsageError, match="repetitions"):
        t.average_repetitions(t.n_repetitions + 1)
    t.check_finite(chunk=4)


def test_raw_session_events(tiny_dataset):
    path = tiny_dataset / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy"
    s = read_raw_session(path, sfreq=1000, n_images=TINY.n_test_concepts)
    assert s.partition == "test" and s.sfreq == 1000
    assert s.raw.ch_names[-1] == "stim" and len(s.eeg_names) == 63
    codes, counts = np.unique(s.events[:, 2], return_counts=True)
    assert codes.tolist() == list(range(1, TINY.n_test_concepts + 1))
    assert set(counts.tolist()) == {TINY.test_reps_per_session}
    assert len(s.catch_events) > 0 and set(s.catch_events[:, 2].tolist()) == {CATCH_CODE}
    # RSVP: within a sequence, onsets are 200 ms apart
    gaps = np.diff(np.sort(np.concatenate([s.events[:, 0], s.catch_events[:, 0]])))
    assert np.median(gaps) == 200 and gaps.min() == 200


def test_raw_pipeline_reproduces_preprocessed(tiny_dataset):
    ds = ThingsEEG2(tiny_dataset)
    for part in ("training", "test"):
        trials = trials_from_raw(ds.iter_raw_sessions(1, part, sfreq=1000), NAMED_SPECS["official"])
        stored = ds.preprocessed(1, part, sfreq=100)
        assert trials.data.shape == stored.data.shape
        assert trials.ch_names == stored.ch_names
        np.testing.assert_allclose(trials.times, stored.times, atol=1e-9)
        np.testing.assert_allclose(trials.data, stored.data, rtol=1e-5, atol=1e-10)
    # the paper's training spec gives the 17 x 250 layout from the same raw files
    paper = trials_from_raw(ds.iter_raw_sessions(1, "test"), NAMED_SPECS["paper"])
    assert paper.data.shape == (TINY.n_test_concepts, 20, 17, 250)


def test_image_set(tiny_dataset):
    images = load_image_set(tiny_dataset / "image_set", "training")
    assert len(images) == TINY.n_train_images
    assert images.n_concepts == TINY.n_train_concepts
    assert images.concept_index.tolist() == np.repeat(np.arange(TINY.n_train_concepts), TINY.images_per_concept).tolist()
    assert images.path(0).is_file()
    assert images.open(0).size == (TINY.image_size, TINY.image_size)
    test = load_image_set(tiny_dataset / "image_set", "test")
    assert set(test.concept_names).isdisjoint(images.concept_names)


def test_validation_split_and_image_set_refuse_bad_arguments(tiny_dataset):
    with pytest.raises(UsageError, match="cannot hold out 2 of 2 training concepts"):
        validation_split(np.array([0, 0, 1, 1]), fraction=0.5)
    with pytest.raises(UsageError, match="fraction"):
        validation_split(np.arange(10), fraction=1.5)
    with pytest.raises(UsageError, match="partition"):
        load_image_set(tiny_dataset / "image_set", "train")


def test_validation_split_holds_out_whole_training_concepts(tiny_dataset):
    images = load_image_set(tiny_dataset / "image_set", "training")
    concepts = images.concept_index
    fit, val = validation_split(concepts, fraction=0.1, seed=3)
    assert len(fit) + len(val) == len(concepts)
    assert set(concepts[fit]).isdisjoint(concepts[val])
    assert len(set(concepts[val])) == round(0.1 * TINY.n_train_concepts)
    again = validation_split(concepts, fraction=0.1, seed=3)
    np.testing.assert_array_equal(again[1], val)
    other = validation_split(concepts, fraction=0.1, seed=4)
    assert not np.array_equal(other[1], val)
