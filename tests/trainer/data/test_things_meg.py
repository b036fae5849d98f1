import json

import numpy as np

from trainer.data import read_things_meg, things_meg_path


def test_meg_layout(tiny_meg_dataset):
    config = json.loads((tiny_meg_dataset / "synth.json").read_text())["config"]
    path = things_meg_path(tiny_meg_dataset / "THINGS-MEG", 1)
    train, test = read_things_meg(path)
    assert train.data.shape[:2] == (config["n_train_concepts"] * config["images_per_concept"], 1)
    assert test.data.shape[:2] == (config["n_test_concepts"], 12)
    assert train.sfreq == 200 and train.n_times == 200
    np.testing.assert_allclose(train.times, np.arange(200) / 200)
    assert all(name[:3] in ("MLO", "MRO", "MZO", "MLP", "MRP", "MZP") for name in train.ch_names)
    assert train.modality == "meg" and test.partition == "test"
    assert np.isfinite(test.data).all()


def test_meg_partition_by_repetition_when_events_are_unnamed(tiny_meg_dataset, tmp_path):
    import mne

    path = things_meg_path(tiny_meg_dataset, 1)
    epochs = mne.read_epochs(path, preload=True, verbose="error")
    # real files may not name events by partition: repeated images are the test set
    epochs.event_id = {str(code): code for code in epochs.event_id.values()}
    plain = tmp_path / "preprocessed_P1-epo.fif"
    epochs.save(plain, verbose="error")
    train_named, test_named = read_things_meg(path, channels=None, sfreq=100.0)
    train, test = read_things_meg(plain, channels=None, sfreq=100.0)
    assert train.sfreq == 100 and train.n_times == 100
    np.testing.assert_array_equal(train.data, train_named.data)
    np.testing.assert_array_equal(test.data, test_named.data)
