"""Replay sessions (:mod:`bci_app.sessions`): THINGS raw files, MNE files with a stim
channel or with annotations, the app's own BrainVision journal, and marker codes."""

from __future__ import annotations

import logging

import mne
import numpy as np
import pytest

from bci_app.recording import SessionRecorder
from bci_app.sessions import CATCH_CODE, Marker, ReplaySession, marker_code, read_mne_file, read_session, read_things_raw
from trainer.data.images import load_image_set
from trainer.data.safe_npy import load_npy_dict
from trainer.data.things_eeg2 import read_raw_session
from trainer.errors import DataFormatError

SFREQ = 100.0


@pytest.fixture(scope="module")
def test_session(tiny_dataset):
    return tiny_dataset / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy"


def _eeg(n_chans=3, n_times=1000, seed=0):
    """Noise in volts (about 10 microvolts)."""
    return np.random.default_rng(seed).normal(size=(n_chans, n_times)) * 1e-5


def _as_tuples(markers):
    return [(m.sample, m.code, m.label) for m in markers]


# --------------------------------------------------------------------------- THINGS raw
def test_things_raw_markers_are_the_session_events(test_session):
    session = read_things_raw(test_session)
    ref = read_raw_session(test_session)
    images = [m for m in session.markers if m.code != CATCH_CODE]
    catch = [m for m in session.markers if m.code == CATCH_CODE]
    assert len(ref.events) == 200 and len(ref.catch_events) > 0  # the tiny set: 20 images x 10 reps, some catch
    assert [m.sample for m in images] == ref.events[:, 0].tolist()
    assert [m.code for m in images] == ref.events[:, 2].tolist()
    assert [m.sample for m in catch] == ref.catch_events[:, 0].tolist()
    assert {m.label for m in catch} == {"catch"} and {m.code for m in catch} == {99999}
    assert len(session.markers) == len(ref.events) + len(ref.catch_events)
    samples = [m.sample for m in session.markers]
    assert samples == sorted(samples)
    assert session.source == str(test_session)
    assert all(isinstance(m, Marker) and isinstance(m.sample, int) and isinstance(m.code, int) for m in session.markers)


def test_things_raw_streams_the_eeg_rows_in_volts(test_session):
    session = read_things_raw(test_session)
    stored = load_npy_dict(test_session, required=("raw_eeg_data", "ch_names"), mmap=False)
    names = list(stored["ch_names"])
    assert names[-1] == "stim"
    assert "stim" not in session.ch_names
    assert session.ch_names == names[:-1] and len(session.ch_names) == 63
    assert set(session.raw.get_channel_types()) == {"eeg"}
    assert session.sfreq == 1000.0
    data = session.raw.get_data()
    np.testing.assert_array_equal(data, np.asarray(stored["raw_eeg_data"][:-1], dtype=np.float64))
    # volts: tens of microvolts, not microvolts stored as numbers of order 10
    assert 1e-7 < data.std() < 1e-3
    assert session.duration == pytest.approx(data.shape[1] / 1000.0)


def test_things_raw_labels_are_concept_and_file(test_session, tiny_dataset):
    images = load_image_set(tiny_dataset / "image_set", "test")
    session = read_things_raw(test_session)
    labels = [m.label for m in session.markers if m.code != CATCH_CODE]
    expected = [f"{images.concepts[m.code - 1]}/{images.files[m.code - 1]}" for m in session.markers if m.code != CATCH_CODE]
    assert labels == expected
    assert len(set(labels)) == 20 and all(label.endswith(".jpg") and "/" in label for label in labels)


def test_things_raw_labels_without_an_image_set_are_the_codes(test_session, tmp_path):
    session_dir = tmp_path / "things" / "raw_data" / "sub-01" / "ses-01"
    session_dir.mkdir(parents=True)
    (session_dir / "raw_eeg_test.npy").symlink_to(test_session)
    session = read_things_raw(session_dir / "raw_eeg_test.npy")
    assert [m.label for m in session.markers] == ["catch" if m.code == CATCH_CODE else str(m.code) for m in session.markers]
    assert _as_tuples(session.markers)[0][:2] == _as_tuples(read_things_raw(test_session).markers)[0][:2]


def test_things_raw_labels_with_the_image_set_at_the_top(test_session, tiny_dataset, tmp_path):
    """The other layout ThingsEEG2 accepts: image_metadata.npy and test_images/ beside raw_data/."""
    root = tmp_path / "things"
    session_dir = root / "raw_data" / "sub-01" / "ses-01"
    session_dir.mkdir(parents=True)
    (session_dir / "raw_eeg_test.npy").symlink_to(test_session)
    (root / "image_metadata.npy").symlink_to(tiny_dataset / "image_set" / "image_metadata.npy")
    (root / "test_images").symlink_to(tiny_dataset / "image_set" / "test_images", target_is_directory=True)
    images = load_image_set(tiny_dataset / "image_set", "test")

    session = read_things_raw(session_dir / "raw_eeg_test.npy")
    image_markers = [m for m in session.markers if m.code != CATCH_CODE]
    assert len(image_markers) == 200
    for m in image_markers:
        assert m.label == f"{images.concepts[m.code - 1]}/{images.files[m.code - 1]}"
    assert {m.label for m in session.markers if m.code == CATCH_CODE} == {"catch"}
    assert len({m.label for m in image_markers}) == 20


def test_read_session_dispatches_npy_to_the_things_reader(test_session):
    session = read_session(test_session)
    assert _as_tuples(session.markers) == _as_tuples(read_things_raw(test_session).markers)
    assert "stim" not in session.ch_names


# --------------------------------------------------------------------------- MNE files
def _stim_raw(first_samp=0):
    data = _eeg()
    stim = np.zeros(data.shape[1])
    stim[0:3] = 3  # an event at the very first sample
    stim[100:103] = 5
    stim[300:305] = CATCH_CODE
    stim[500:502] = 7
    info = mne.create_info(["C3", "C4", "Cz", "STI 014"], SFREQ, ["eeg"] * 3 + ["stim"])
    return mne.io.RawArray(np.vstack([data, stim]), info, first_samp=first_samp, verbose="error"), data


def test_fif_with_a_stim_channel(tmp_path):
    raw, data = _stim_raw()
    path = tmp_path / "stim_raw.fif"
    raw.save(path, fmt="double", verbose="error")
    session = read_mne_file(path)
    assert _as_tuples(session.markers) == [(0, 3, "3"), (100, 5, "5"), (300, CATCH_CODE, "catch"), (500, 7, "7")]
    assert session.ch_names == ["C3", "C4", "Cz"]
    assert "stim" not in session.raw.get_channel_types()
    np.testing.assert_array_equal(session.raw.get_data(), data)
    assert session.sfreq == SFREQ and session.source == str(path)
    # numeric markers: all have codes
    assert session.numeric_markers() == session.markers


def test_fif_with_a_stim_channel_and_a_first_sample_offset(tmp_path):
    """Marker samples count from the first sample of the file, whatever its first_samp."""
    raw, data = _stim_raw(first_samp=250)
    path = tmp_path / "offset_raw.fif"
    raw.save(path, verbose="error")
    assert mne.io.read_raw_fif(path, verbose="error").first_samp == 250
    session = read_mne_file(path)
    assert [m.sample for m in session.markers] == [0, 100, 300, 500]
    assert [m.code for m in session.markers] == [3, 5, CATCH_CODE, 7]


def _annotated_raw(descriptions, onsets, path, *, crop=None):
    raw = mne.io.RawArray(_eeg(), mne.create_info(["C3", "C4", "Cz"], SFREQ, "eeg"), verbose="error")
    raw.set_annotations(mne.Annotations(onsets, np.zeros(len(onsets)), descriptions))
    if crop is not None:
        raw.crop(tmin=crop)
    raw.save(path, verbose="error")
    return path


def test_fif_with_annotations_only(tmp_path):
    path = _annotated_raw(["17", "cat/img1.jpg", "BAD_blink", "Stimulus/S 4", "EDGE boundary", "BAD boundary", "catch"],
                          [1.0, 2.5, 3.0, 4.0, 5.0, 5.0, 6.0], tmp_path / "ann_raw.fif")
    session = read_mne_file(path)
    assert _as_tuples(session.markers) == [(100, 17, "17"), (250, None, "cat/img1.jpg"), (400, 4, "Stimulus/S 4"),
                                           (600, None, "catch")]
    assert session.ch_names == ["C3", "C4", "Cz"]


def test_numeric_markers_report_labels_without_a_code(tmp_path, caplog):
    path = _annotated_raw(["17", "cat/img1.jpg", "18", "cat/img1.jpg"], [1.0, 2.0, 3.0, 4.0], tmp_path / "ann_raw.fif")
    session = read_mne_file(path)
    with caplog.at_level(logging.WARNING, logger="bci_app"):
        numeric = session.numeric_markers()
    assert _as_tuples(numeric) == [(100, 17, "17"), (300, 18, "18")]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 marker label(s)" in warnings[0].getMessage()
    assert "cat/img1.jpg" in warnings[0].getMessage()


def test_fif_annotations_with_a_first_sample_offset(tmp_path):
    # annotations at 3.0 s and 6.5 s of the original; the file starts at 2.0 s (first_samp 200)
    path = _annotated_raw(["17", "18"], [3.0, 6.5], tmp_path / "crop_raw.fif", crop=2.0)
    assert mne.io.read_raw_fif(path, verbose="error").first_samp == 200
    session = read_mne_file(path)
    assert _as_tuples(session.markers) == [(100, 17, "17"), (450, 18, "18")]


def test_stimulus_labels_that_start_with_bad_are_markers(tmp_path):
    path = _annotated_raw(["badger/badger_01s.jpg", "BAD_gap", "edger/edger_02s.jpg"], [1.0, 2.0, 3.0],
                          tmp_path / "ann_raw.fif")
    session = read_mne_file(path)
    assert _as_tuples(session.markers) == [(100, None, "badger/badger_01s.jpg"), (300, None, "edger/edger_02s.jpg")]


def test_unreadable_file_is_a_data_format_error(tmp_path):
    path = tmp_path / "broken_raw.fif"
    path.write_bytes(b"not a fif file at all")
    with pytest.raises(DataFormatError, match="MNE cannot read it") as info:
        read_session(path)
    assert info.value.path == str(path)


# --------------------------------------------------------------------------- the app's journal
def test_brainvision_journal_descriptions(tmp_path):
    folder = tmp_path / "rec"
    data = _eeg(n_times=300).T  # (n, channels), volts
    rec = SessionRecorder(folder, ["Fz", "Cz", "Pz"], SFREQ, flush_interval=3600)
    rec.add_samples(data, 1000.0 + np.arange(300) / SFREQ)
    rec.add_marker(1000.1, "17", 10)
    rec.add_marker(1000.2, "S 18", 20)
    rec.add_marker(1000.3, "00001_cat/cat_01s.jpg", 30)
    rec.add_gap(50)
    rec.add_marker(1000.6, "19", 60)
    rec.add_marker(1000.7, "never placed", None)
    rec.flush()
    raw = mne.io.read_raw_brainvision(folder / "recording.vhdr", verbose="error")
    assert list(raw.annotations.description) == ["Stimulus/17", "Stimulus/S 18", "Stimulus/00001_cat/cat_01s.jpg",
                                                 "Comment/BAD_gap", "Stimulus/19"]
    expected = [(10, 17, "17"), (20, 18, "S 18"), (30, None, "00001_cat/cat_01s.jpg"), (60, 19, "19")]
    journal = read_session(folder)  # no .fif yet: the journal
    assert journal.source == str(folder / "recording.vhdr")
    assert _as_tuples(journal.markers) == expected
    assert journal.ch_names == ["Fz", "Cz", "Pz"] and journal.sfreq == SFREQ
    np.testing.assert_allclose(journal.raw.get_data(), data.T, rtol=1e-6)
    rec.close()
    final = read_session(folder)  # now the .fif
    assert final.source == str(folder / "recording-raw.fif")
    assert _as_tuples(final.markers) == expected
    np.testing.assert_allclose(final.raw.get_data(), journal.raw.get_data(), rtol=1e-6)


# --------------------------------------------------------------------------- errors
def test_read_session_on_a_missing_path(tmp_path):
    missing = tmp_path / "nothing_here.fif"
    with pytest.raises(DataFormatError, match="does not exist") as info:
        read_session(missing)
    assert info.value.path == str(missing)
    with pytest.raises(DataFormatError, match="does not exist"):
        read_session(tmp_path / "no_such_folder")


def test_read_session_on_a_folder_without_a_recording(tmp_path):
    with pytest.raises(DataFormatError, match="recording-raw.fif"):
        read_session(tmp_path)


def test_replay_session_properties():
    raw = mne.io.RawArray(_eeg(n_times=500), mne.create_info(["A", "B", "C"], 250.0, "eeg"), verbose="error")
    session = ReplaySession(raw=raw, markers=[Marker(5, 1, "1")], source="x")
    assert session.sfreq == 250.0 and session.ch_names == ["A", "B", "C"] and session.duration == 2.0


# --------------------------------------------------------------------------- marker codes
@pytest.mark.parametrize(
    "label, code",
    [
        ("17", 17),
        (" 17 ", 17),
        ("0", 0),
        ("-3", -3),
        ("99999", 99999),
        ("Stimulus/S 17", 17),
        ("Stimulus/S17", 17),
        ("Stimulus/17", 17),
        ("stim/17", 17),
        ("S 17", 17),
        ("R  5", 5),
        ("S17", 17),
        ("catch", None),
        ("", None),
        ("17a", None),
        ("1.5", None),
        ("SS 17", None),
        ("cat/img1.jpg", None),
        ("Stimulus/17/3", None),
        ("00001_cat/cat_01s.jpg", None),
        ("BAD_gap", None),
    ],
)
def test_marker_code(label, code):
    assert marker_code(label) == code
