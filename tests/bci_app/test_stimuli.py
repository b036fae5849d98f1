"""The presenter's image lists and schedule (:mod:`bci_app.stimuli`): the codes and labels
it will send resolve through the decoder's :class:`~bci_app.decoder.StimulusMap`."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image

from bci_app.decoder import StimulusMap
from bci_app.stimuli import CATCH_CODE, FrameTiming, Stimulus, load_stimuli, make_sequences
from trainer.bundle import load_bundle
from trainer.errors import BCIError


def test_a_data_folders_images_carry_the_codes_and_labels_the_decoder_resolves(tiny_dataset, tiny_bundle):
    stimuli = load_stimuli(tiny_dataset, "test")
    assert [s.id for s in stimuli] == list(range(1, len(stimuli) + 1))
    assert all(s.path.is_file() and s.label == f"{s.path.parent.name}/{s.path.name}" for s in stimuli)
    resolve = StimulusMap(load_bundle(tiny_bundle))  # fitted on the same set: its gallery is the test images
    assert [resolve(s.id) for s in stimuli] == [s.id for s in stimuli]
    assert [resolve(s.label) for s in stimuli] == [s.id for s in stimuli]
    training = load_stimuli(tiny_dataset, "training")
    assert len(training) > len(stimuli) and training[0].id == 1


def test_a_bundles_gallery_is_shown_with_its_ids(tiny_bundle):
    bundle = load_bundle(tiny_bundle)
    stimuli = load_stimuli(tiny_bundle)
    assert [s.id for s in stimuli] == [int(i) for i in bundle.gallery_ids]
    assert all(s.path.is_file() for s in stimuli)
    resolve = StimulusMap(bundle)
    assert [resolve(s.label) for s in stimuli] == [s.id for s in stimuli]


def test_a_folder_of_images_is_numbered_in_path_order(tmp_path):
    for rel in ("b/2.png", "a/1.jpg", "a/3.PNG"):
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        Image.new("RGB", (8, 8)).save(tmp_path / rel, format="JPEG" if rel.endswith(".jpg") else "PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    stimuli = load_stimuli(tmp_path)
    assert [(s.id, s.label) for s in stimuli] == [(1, "a/1.jpg"), (2, "a/3.PNG"), (3, "b/2.png")]


def test_bad_image_sources_are_named(tmp_path, tiny_dataset):
    with pytest.raises(BCIError, match="not found"):
        load_stimuli(tmp_path / "nothing")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(BCIError, match="is a file"):
        load_stimuli(tmp_path / "file.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BCIError, match="holds no image files"):
        load_stimuli(tmp_path / "empty")
    with pytest.raises(BCIError, match="'test' or 'training'"):
        load_stimuli(tiny_dataset, "train")


def _stimuli(n):
    return [Stimulus(i + 1, f"c{i}/img{i}.jpg", None) for i in range(n)]


def test_each_repetition_shows_every_image_once_in_its_own_order():
    stimuli = _stimuli(45)
    sequences = make_sequences(stimuli, repetitions=3, seed=7)
    assert [len(s) for s in sequences] == [20] * 6 + [15]
    trials = [t for s in sequences for t in s]
    ids = [t.code for t in trials]
    for r in range(3):
        assert sorted(ids[45 * r:45 * (r + 1)]) == list(range(1, 46))
    assert ids[:45] != ids[45:90]  # a new order per repetition
    assert all(t.sequence == s and t.position == k for s, seq in enumerate(sequences) for k, t in enumerate(seq))
    assert [t.code for s in make_sequences(stimuli, repetitions=3, seed=7) for t in s] == ids  # the seed decides
    assert [t.code for s in make_sequences(stimuli, repetitions=3, seed=8) for t in s] != ids


def test_catch_targets_go_into_the_asked_share_of_sequences_never_first():
    catch = Stimulus(0, "catch/buzz.jpg", None)
    sequences = make_sequences(_stimuli(200), seed=1, catch=catch, catch_rate=0.5)
    per_sequence = [sum(t.catch for t in s) for s in sequences]
    assert Counter(per_sequence) == {0: 5, 1: 5}
    for s in sequences:
        for t in s:
            if t.catch:
                assert t.position > 0 and t.code == CATCH_CODE and t.label == "catch" and t.stimulus is catch
    assert sum(len(s) for s in sequences) == 205
    assert not any(t.catch for s in make_sequences(_stimuli(200), seed=1) for t in s)


def test_bad_schedules_are_refused():
    with pytest.raises(BCIError, match="no images"):
        make_sequences([])
    with pytest.raises(BCIError, match="repetitions"):
        make_sequences(_stimuli(3), repetitions=0)
    with pytest.raises(BCIError, match="catch rate"):
        make_sequences(_stimuli(3), catch=_stimuli(1)[0], catch_rate=1.5)


@pytest.mark.parametrize("refresh, frames", [(60.0, 6), (120.0, 12), (144.0, 14), (59.94, 6)])
def test_durations_are_whole_frames(refresh, frames):
    timing = FrameTiming.for_display(refresh)
    assert timing.on_frames == timing.off_frames == frames
    np.testing.assert_array_equal(timing.onset_frames(4), [0, 2 * frames, 4 * frames, 6 * frames])
    assert abs(timing.on_s - 0.1) <= 0.5 / refresh  # within half a frame of 100 ms


def test_bad_frame_timings_are_refused():
    with pytest.raises(BCIError, match="refresh rate"):
        FrameTiming.for_display(0.0)
    with pytest.raises(BCIError, match="durations"):
        FrameTiming.for_display(60.0, on_s=0.0)
    assert FrameTiming.for_display(30.0, on_s=0.01).on_frames == 1  # never less than a frame
