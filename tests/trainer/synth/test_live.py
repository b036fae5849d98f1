"""The simulated participant's signal (:mod:`trainer.synth.live`) and the data set's image
features it shares with ``bci-train synth`` (:func:`trainer.synth.dataset.image_features`)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import numpy as np
import pytest

from trainer.data import ThingsEEG2
from trainer.data.images import read_image_metadata, write_image_metadata
from trainer.errors import DataFormatError, MissingFileError, UsageError
from trainer.montage import THINGS_EEG2_CHANNELS
from trainer.preprocessing import NAMED_SPECS
from trainer.synth import SynthConfig, generate
from trainer.synth.brain import make_noise
from trainer.synth.dataset import (
    check_rendered_images,
    eeg_brain_model,
    frontal_weights,
    image_features,
    read_synth_config,
    subject_brain,
)
from trainer.synth.live import ContinuousSignal, SimulatedSubject

MICRO = SynthConfig(n_train_concepts=12, images_per_concept=2, n_test_concepts=4, n_sessions=2,
                    test_reps_per_session=2, subjects=2, image_size=32, seed=4)
SFREQ = 1000.0


@pytest.fixture(scope="module")
def micro():
    """Features, brain model and subject 1 of the MICRO set (nothing written)."""
    features = image_features(MICRO)
    model = eeg_brain_model(MICRO, features.n_low, features.n_attr)
    return features, model, subject_brain(model, MICRO, 1)


@pytest.fixture(scope="module")
def micro_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("micro")
    generate(root, MICRO, seed=MICRO.seed)
    return root


def _read_in_pieces(signal, sizes):
    return np.concatenate([signal.read(n) for n in sizes], axis=1)


# -- the signal -------------------------------------------------------------------------

def test_streamed_responses_equal_the_data_sets_continuous_responses(micro):
    """Noise-free, the blocks read in odd pieces add up to SubjectBrain.continuous (what
    generate() writes) for the same onsets, amplitudes and trial gains: overlapping
    responses, a catch trial (common ERP only), one at sample 0 and one cut by the end."""
    features, model, brain = micro
    n = 6000
    onsets = np.array([0, 130, 300, 2500, 2501, 5700])
    amps = np.stack([brain.source_amplitudes(features.low["test"], features.attr["test"])[i % 4] for i in range(6)])
    amps[3] = 0.0  # a catch trial: no image response
    expected = brain.continuous(n, onsets, amps, np.random.default_rng(9))
    gains = np.clip(1 + brain.trial_gain_sd * np.random.default_rng(9).standard_normal(len(onsets)), 0.1, None)

    signal = ContinuousSignal(brain, model.xyz, noise=False)
    for k, (onset, a, g) in enumerate(zip(onsets, amps, gains)):
        assert signal.add_response(onset, None if k == 3 else a, g) == 0
    got = _read_in_pieces(signal, [1, 9, 10, 777, 1203, 2000, 2000])
    assert got.shape == (len(THINGS_EEG2_CHANNELS), n)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9 * np.abs(expected).max())
    assert np.abs(expected).max() > 1e-6  # microvolts: the comparison means something
    assert signal.pending == 1  # the last response goes on past the samples read

    # the same gains are drawn when none are given (the order of the responses)
    signal = ContinuousSignal(brain, model.xyz, noise=False, seed=3)
    drawn = np.clip(1 + brain.trial_gain_sd * np.random.default_rng([3, 8]).standard_normal(2), 0.1, None)
    np.testing.assert_allclose([signal.draw_gain(), signal.draw_gain()], drawn)


def test_a_late_response_keeps_what_remains(micro):
    features, model, brain = micro
    amps = brain.source_amplitudes(features.low["test"], features.attr["test"])[0]
    signal = ContinuousSignal(brain, model.xyz, noise=False)
    head = signal.read(1000)
    assert signal.add_response(700, amps, 1.0) == 300  # 300 samples were read already
    assert signal.add_response(100, amps, 1.0) == signal.n_wave  # over: nothing is kept
    assert signal.pending == 1
    rest = signal.read(1000)
    np.testing.assert_array_equal(head, 0.0)
    np.testing.assert_allclose(rest[:, :500], signal.response(amps, 1.0)[:, 300:], rtol=0, atol=1e-20)
    np.testing.assert_array_equal(rest[:, 500:], 0.0)
    assert signal.pending == 0


def _step_at(x, e, w=10):
    """The largest jump (over channels) between the means of w samples before and after e."""
    return np.abs(x[:, e:e + w].mean(1) - x[:, e - w:e].mean(1)).max()


def test_noise_is_continuous_across_block_edges(micro):
    """Blocks of 1 s (80 edges): the jump of the local mean across an edge is like the
    jump half-way between edges.  Without the cross-fade (a fade of one sample) the
    same measure sees the edges (ratio 1.4-1.6 measured), so this test can fail."""
    _, model, brain = micro

    def ratio(fade):
        x = ContinuousSignal(brain, model.xyz, seed=2, block_seconds=1.0, fade_seconds=fade).read(81000)
        edges = np.arange(1000, 80001, 1000)
        at_edges = np.median([_step_at(x, e) for e in edges])
        between = np.median([_step_at(x, e + 500) for e in edges])
        return at_edges / between

    assert ratio(0.2) < 1.15
    assert ratio(0.001) > 1.25  # the control: steps are found where they are


def test_noise_is_the_data_sets_noise(micro):
    """Per-channel level within 25 % of make_noise's for a one-minute session (as the data
    set makes its recordings), with 50 Hz line noise and posterior alpha; blinks on
    frontal channels."""
    _, model, brain = micro
    live = ContinuousSignal(brain, model.xyz, seed=5).read(60000)
    frontal = frontal_weights(model.xyz)
    session = make_noise(np.random.default_rng(5), model.xyz, 60000, SFREQ, frontal=frontal,
                         blink_times=np.arange(2000, 58000, 7000))
    ratio = live.std(axis=1) / session.std(axis=1)
    assert 0.75 < np.median(ratio) < 1.25, np.median(ratio)
    spectrum = np.abs(np.fft.rfft(live - live.mean(axis=1, keepdims=True), axis=1)).mean(axis=0) ** 2
    freqs = np.fft.rfftfreq(live.shape[1], 1 / SFREQ)
    around = lambda f: spectrum[(freqs > f - 3) & (freqs < f + 3) & (np.abs(freqs - f) > 1)].mean()  # noqa: E731
    assert spectrum[np.argmin(np.abs(freqs - 50))] > 20 * around(50)  # the line
    front, back = np.argsort(model.xyz[:, 1])[-5:], np.argsort(model.xyz[:, 1])[:5]
    assert np.abs(live[front]).max() > 3 * np.abs(live[back]).max()  # blinks (15 % of seconds have one)


def test_the_signal_is_deterministic_for_a_seed(micro):
    """The same seed gives the same noise whatever the read sizes and whatever responses
    are added (and when); another seed gives other noise."""
    features, model, brain = micro
    amps = brain.source_amplitudes(features.low["training"], features.attr["training"])

    def responses(*onsets):  # noise-free, with the first gains of the seed
        s = ContinuousSignal(brain, model.xyz, seed=7, noise=False)
        for k, onset in enumerate(onsets):
            s.add_response(onset, amps[k])
        return s.read(10000)

    a = ContinuousSignal(brain, model.xyz, seed=7)
    a.add_response(1200, amps[0])
    a.add_response(4100, amps[1])
    noise_a = _read_in_pieces(a, [10] * 500 + [4000, 1000]) - responses(1200, 4100)
    b = ContinuousSignal(brain, model.xyz, seed=7)
    first = _read_in_pieces(b, [3333, 1, 2666])
    b.add_response(7500, amps[0])  # after 6000 samples were read
    noise_b = np.concatenate([first, b.read(4000)], axis=1) - responses(7500)
    np.testing.assert_allclose(noise_a, noise_b, rtol=0, atol=1e-15)
    assert np.abs(noise_a).max() > 1e-5  # there is noise (tens of microvolts)
    other = ContinuousSignal(brain, model.xyz, seed=8).read(10000)
    assert np.abs(other - noise_a).max() > 1e-5


def test_bad_arguments(micro):
    _, model, brain = micro
    with pytest.raises(UsageError, match="1 s or more"):
        ContinuousSignal(brain, model.xyz, block_seconds=0.5, fade_seconds=0.1)
    with pytest.raises(UsageError, match="fade"):
        ContinuousSignal(brain, model.xyz, block_seconds=2.0, fade_seconds=3.0)
    with pytest.raises(UsageError, match="seed"):
        ContinuousSignal(brain, model.xyz, seed=-1)
    with pytest.raises(ValueError, match="amplitudes"):
        ContinuousSignal(brain, model.xyz).add_response(0, np.zeros(3))


# -- the subjects ---------------------------------------------------------------------------

def test_new_persons_are_in_no_data_set(micro):
    """A new person's random key has a word no subject's key has: the individual parts
    differ from every subject's (and between persons), the shared core stays."""
    features, model, brain = micro
    subjects = [subject_brain(model, replace(MICRO, subjects=50), n) for n in range(1, 51)]
    persons = [subject_brain(model, MICRO, n, person=p) for n in (1, 2) for p in (0, 1, 2**32 + 5)]
    for i, a in enumerate(persons):
        for b in subjects + persons[i + 1:]:
            assert not np.allclose(a.w_low, b.w_low)
    again = subject_brain(model, MICRO, 1, person=0)
    np.testing.assert_array_equal(again.topographies, persons[0].topographies)
    np.testing.assert_array_equal(subject_brain(model, MICRO, 1).w_low, brain.w_low)
    # the shared core: a new person is nearer the set's subjects than another set's
    other_set = subject_brain(eeg_brain_model(replace(MICRO, seed=99), features.n_low, features.n_attr), MICRO, 1)
    near = np.corrcoef(persons[0].w_low.ravel(), brain.w_low.ravel())[0, 1]
    far = np.corrcoef(persons[0].w_low.ravel(), other_set.w_low.ravel())[0, 1]
    assert near > far + 0.2, (near, far)
    with pytest.raises(UsageError, match="subjects"):
        subject_brain(model, MICRO, 3)
    with pytest.raises(UsageError, match="person"):
        subject_brain(model, MICRO, 1, person=-1)


# -- the features -----------------------------------------------------------------------------

def test_features_are_those_of_the_written_set(micro, micro_set):
    """Rendering again from the seed gives the set's metadata and images (every one
    checked against its JPEG), and the same features every time."""
    features, _, _ = micro
    rendered = {}
    again = image_features(read_synth_config(micro_set),
                           on_image=lambda part, i, folder, name, pixels: rendered.__setitem__((part, i), pixels))
    for part in ("training", "test"):
        np.testing.assert_array_equal(again.low[part], features.low[part])
        np.testing.assert_array_equal(again.attr[part], features.attr[part])
    written = read_image_metadata(micro_set / "image_set" / "image_metadata.npy")
    assert {k: [str(v) for v in written[k]] for k in written} == features.metadata
    assert len(rendered) == MICRO.n_train_images + MICRO.n_test_concepts
    check_rendered_images(micro_set, features, rendered)
    other = image_features(replace(MICRO, seed=5))
    assert not np.allclose(other.low["test"], features.low["test"])


def test_images_of_another_generator_are_refused(micro, micro_set, tmp_path):
    """The opener checks the first and last image of each part against the JPEGs: here the
    last test image's file shows the first test image."""
    features, _, _ = micro
    root = tmp_path / "copy"
    shutil.copytree(micro_set / "image_set", root / "image_set")
    shutil.copy(micro_set / "synth.json", root / "synth.json")
    meta = features.metadata
    path = [root / "image_set" / "test_images" / meta["test_img_concepts"][i] / meta["test_img_files"][i] for i in (0, -1)]
    shutil.copy(path[0], path[1])
    with pytest.raises(DataFormatError, match=rf"{path[1].name}: differs from the image the generator renders.*"
                                              "another version"):
        SimulatedSubject.open(root, 1)
    shutil.copy(micro_set / "image_set" / "test_images" / path[1].relative_to(root / "image_set" / "test_images"),
                path[1])
    assert SimulatedSubject.open(root, 1).n_images("test") == 4
    names = dict(meta)
    names["test_img_files"] = [*meta["test_img_files"][:-1], "renamed.jpg"]
    write_image_metadata(root / "image_set" / "image_metadata.npy", names)
    with pytest.raises(DataFormatError, match=r"test_img_files.*entry 3 is 'renamed.jpg'"):
        SimulatedSubject.open(root, 1)


def test_a_folder_that_is_not_a_synthetic_set_is_refused(tmp_path):
    with pytest.raises(MissingFileError, match="not found"):
        read_synth_config(tmp_path / "nothing")
    with pytest.raises(DataFormatError, match="no synth.json"):
        read_synth_config(tmp_path)
    (tmp_path / "synth.json").write_text(json.dumps({"generator": "someone else", "config": {}}))
    with pytest.raises(DataFormatError, match="generator"):
        read_synth_config(tmp_path)
    config = {k: v for k, v in json.loads(json.dumps(MICRO.__dict__)).items()}
    (tmp_path / "synth.json").write_text(json.dumps({"generator": "trainer.synth", "config": {**config, "warp": 9}}))
    with pytest.raises(DataFormatError, match="unknown keys.*warp.*another version"):
        read_synth_config(tmp_path)
    (tmp_path / "synth.json").write_text(json.dumps({"generator": "trainer.synth", "config": {**config, "seed": "4"}}))
    with pytest.raises(DataFormatError, match="config.seed"):
        read_synth_config(tmp_path)
    (tmp_path / "synth.json").write_text(json.dumps({"generator": "trainer.synth", "config": config}))
    assert read_synth_config(tmp_path) == MICRO


def test_the_features_explain_the_data_sets_recordings(tiny_dataset):
    """The predicted responses (features -> subject's brain -> the official spec, epochs
    cut 11 ms after the visual onset as generate() cuts them) against the set's averaged
    test recordings: the image-specific part of every test image is most like its own
    prediction, and much more like it than another subject's prediction."""
    n = 20
    onsets = np.arange(n) * 3000 + 1000
    spec = NAMED_SPECS["official"].resolve(THINGS_EEG2_CHANNELS)

    def unit(x):
        x = x - x.mean(axis=0)  # the image-specific part
        x = x - x.mean(axis=1, keepdims=True)
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    def predicted(sim):
        continuous = np.zeros((len(THINGS_EEG2_CHANNELS), 3000 * n))
        for i, onset in enumerate(onsets):
            continuous[:, onset:onset + 800] = sim.evoked("test", i)
        delay = int(round(sim.config.trigger_delay * SFREQ))
        epochs, _ = spec.epochs_from_continuous(continuous, SFREQ, THINGS_EEG2_CHANNELS, onsets + delay)
        return unit(epochs.reshape(n, -1))

    own, other = SimulatedSubject.open(tiny_dataset, 1), SimulatedSubject.open(tiny_dataset, 2)
    recorded = unit(ThingsEEG2(tiny_dataset).preprocessed(1, "test").average_repetitions().reshape(n, -1))
    match = recorded @ predicted(own).T
    assert (match.argmax(axis=1) == np.arange(n)).all()
    assert np.diag(match).mean() > 0.4  # 0.52 measured
    assert np.diag(recorded @ predicted(other).T).mean() < np.diag(match).mean() - 0.2  # 0.15 measured
