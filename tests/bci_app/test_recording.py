"""Session recording (:mod:`bci_app.recording`): the BrainVision journal, the final .fif,
crash safety and recovery."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import mne
import numpy as np
import pytest

from bci_app.cli import main as app_main
from bci_app.recording import FIF_NAME, SessionRecorder, finalize_recording, recording_file
from bci_app.sessions import read_session
from trainer.errors import DataFormatError

CH = ["Fz", "Cz", "Pz"]
SFREQ = 250.0
N = 600
REPO = Path(__file__).resolve().parents[2]


def _signal(n=N, seed=0):
    """(n, 3) samples in volts (about 20 microvolts) and their LSL timestamps."""
    data = np.random.default_rng(seed).normal(size=(n, len(CH))) * 20e-6
    return data, 5000.25 + np.arange(n) / SFREQ


def _as_float32_microvolts(data):
    """What the journal keeps: float32 microvolts, back in volts."""
    return (data / 1e-6).astype(np.float32).astype(np.float64) * 1e-6


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_round_trip(tmp_path):
    folder = tmp_path / "rec"
    data, ts = _signal()
    rec = SessionRecorder(folder, CH, SFREQ, flush_interval=3600, info={"stream": "EEG-test"})
    rec.add_samples(data[:200], ts[:200])
    rec.add_marker(ts[10], "17", 10)
    rec.add_marker(ts[40], "00002_dog/dog_01s.jpg", 40)
    rec.add_marker(ts[60], "lost marker", None)  # no data came for it: markers.jsonl only
    rec.add_marker(ts[450], "ahead", 450)  # a marker for samples not received yet
    rec.flush()
    assert rec.n_samples == rec.n_written == 200
    rec.add_samples(data[200:400], ts[200:400])
    rec.add_gap(400)
    assert rec.n_samples == 400 and rec.n_written == 200  # nothing written between flushes
    rec.add_samples(data[400:], ts[400:])
    rec.add_prediction({"marker": "17", "topk": [3, 1, 2], "confidence": [0.5, 0.2, 0.1]})
    rec.add_prediction({"marker": "18", "topk": [1], "confidence": [0.9]})
    out = rec.close(summary={"epochs": 2})
    assert rec.closed and rec.n_written == N
    assert out == folder / FIF_NAME and out.is_file()

    # the journal, as MNE reads it
    journal = mne.io.read_raw_brainvision(folder / "recording.vhdr", verbose="error")
    assert journal.ch_names == CH and journal.info["sfreq"] == SFREQ and journal.n_times == N
    expected = _as_float32_microvolts(data).T
    np.testing.assert_allclose(journal.get_data(), expected, rtol=1e-12, atol=0)
    # volts, to float32 precision of microvolts (and not exact: it is stored as float32)
    np.testing.assert_allclose(journal.get_data(), data.T, rtol=2e-7, atol=0)
    assert not np.array_equal(journal.get_data(), data.T)
    assert 5e-6 < journal.get_data().std() < 5e-5
    np.testing.assert_array_equal(np.fromfile(folder / "recording.times", dtype="<f8"), ts)
    samples = journal.time_as_index(journal.annotations.onset, use_rounding=True).tolist()
    assert list(zip(samples, journal.annotations.description)) == [
        (10, "Stimulus/17"), (40, "Stimulus/00002_dog/dog_01s.jpg"), (400, "Comment/BAD_gap"), (450, "Stimulus/ahead")]

    # the final .fif
    raw = mne.io.read_raw_fif(out, preload=True, verbose="error")
    assert raw.ch_names == CH and raw.info["sfreq"] == SFREQ and raw.n_times == N
    assert set(raw.get_channel_types()) == {"eeg"}
    np.testing.assert_allclose(raw.get_data(), expected, rtol=1e-7, atol=0)
    assert list(raw.annotations.description) == ["17", "00002_dog/dog_01s.jpg", "BAD_gap", "ahead"]
    assert raw.time_as_index(raw.annotations.onset, use_rounding=True).tolist() == [10, 40, 400, 450]
    np.testing.assert_allclose(raw.annotations.onset, np.array([10, 40, 400, 450]) / SFREQ)

    # the side files
    assert _lines(folder / "markers.jsonl") == [
        {"t": ts[10], "label": "17", "sample": 10},
        {"t": ts[40], "label": "00002_dog/dog_01s.jpg", "sample": 40},
        {"t": ts[60], "label": "lost marker", "sample": None},
        {"t": ts[450], "label": "ahead", "sample": 450},
    ]
    assert "null" in (folder / "markers.jsonl").read_text().splitlines()[2]
    assert _lines(folder / "predictions.jsonl") == [
        {"marker": "17", "topk": [3, 1, 2], "confidence": [0.5, 0.2, 0.1]},
        {"marker": "18", "topk": [1], "confidence": [0.9]},
    ]
    assert json.loads((folder / "summary.json").read_text()) == {"epochs": 2}
    meta = json.loads((folder / "session.json").read_text())
    assert meta["ch_names"] == CH and meta["sfreq"] == SFREQ and meta["stream"] == "EEG-test"

    # replayed: the fif, markers without the gap
    session = read_session(folder)
    assert session.source == str(out)
    assert [(m.sample, m.code, m.label) for m in session.markers] == [
        (10, 17, "17"), (40, None, "00002_dog/dog_01s.jpg"), (450, None, "ahead")]


def test_closed_recorder_ignores_input_and_close_twice(tmp_path):
    data, ts = _signal(50)
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=3600)
    rec.add_samples(data, ts)
    assert rec.close() == tmp_path / "rec" / FIF_NAME
    rec.add_samples(data, ts)
    rec.add_marker(0.0, "late", 3)
    rec.add_prediction({"x": 1})
    assert rec.close() is None
    assert rec.n_samples == 50
    assert mne.io.read_raw_fif(tmp_path / "rec" / FIF_NAME, verbose="error").n_times == 50
    assert (tmp_path / "rec" / "predictions.jsonl").read_text() == ""


def test_no_sample_gives_no_fif(tmp_path):
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ)
    assert rec.close() is None
    assert not (tmp_path / "rec" / FIF_NAME).exists()
    assert recording_file(tmp_path / "rec") == tmp_path / "rec" / "recording.vhdr"
    with pytest.raises(DataFormatError, match="no complete sample"):
        finalize_recording(tmp_path / "rec")


def test_flush_interval_zero_writes_every_chunk(tmp_path):
    data, ts = _signal(30)
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0.0)
    rec.add_samples(data[:10], ts[:10])
    assert rec.n_written == 10
    assert (tmp_path / "rec" / "recording.eeg").stat().st_size == 10 * len(CH) * 4
    rec.add_samples(data[10:], ts[10:])
    assert rec.n_written == 30
    rec.close()


@pytest.mark.parametrize("kwargs, words", [
    (dict(ch_names=[], sfreq=SFREQ), "no channels"),
    (dict(ch_names=CH, sfreq=0.0), "sfreq must be > 0"),
])
def test_bad_recorder_arguments(tmp_path, kwargs, words):
    with pytest.raises(ValueError, match=words):
        SessionRecorder(tmp_path / "rec", **kwargs)


def test_bad_sample_shapes(tmp_path):
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=3600)
    with pytest.raises(ValueError, match=r"expected \(n, 3\) samples"):
        rec.add_samples(np.zeros((5, 2)), np.zeros(5))
    with pytest.raises(ValueError, match="with n timestamps"):
        rec.add_samples(np.zeros((5, 3)), np.zeros(4))
    assert rec.n_samples == 0
    rec.close()


# --------------------------------------------------------------------------- crash safety
_CRASH = textwrap.dedent("""
    import os, sys
    import numpy as np
    from bci_app.recording import SessionRecorder

    folder, signal = sys.argv[1], sys.argv[2]
    data = np.load(signal)
    ts = 5000.25 + np.arange(len(data)) / {sfreq}
    rec = SessionRecorder(folder, {ch!r}, {sfreq}, flush_interval=3600)
    rec.add_samples(data[:{n_flushed}], ts[:{n_flushed}])
    rec.add_marker(ts[50], "17", 50)
    rec.add_marker(ts[100], "a, b", 100)
    rec.add_marker(ts[{n_flushed} + 20], "after the flush", {n_flushed} + 20)
    rec.add_prediction({{"marker": "17"}})
    rec.flush()
    rec.add_samples(data[{n_flushed}:], ts[{n_flushed}:])
    rec.add_marker(ts[{n_flushed} + 40], "not flushed", {n_flushed} + 40)
    rec.add_prediction({{"marker": "not flushed"}})
    os._exit(3)  # a crash: no close, no flush, no interpreter clean-up
""")
N_FLUSHED = 250


@pytest.fixture
def crashed(tmp_path):
    """A recording folder left by a process that died after one flush (and more samples)."""
    data, _ = _signal()
    np.save(tmp_path / "signal.npy", data)
    folder = tmp_path / "crashed"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    script = _CRASH.format(sfreq=SFREQ, ch=CH, n_flushed=N_FLUSHED)
    proc = subprocess.run([sys.executable, "-c", script, str(folder), str(tmp_path / "signal.npy")], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    assert not (folder / FIF_NAME).exists()
    return folder, data


def test_crash_keeps_the_flushed_samples(crashed):
    folder, data = crashed
    journal = mne.io.read_raw_brainvision(folder / "recording.vhdr", verbose="error")
    assert journal.n_times == N_FLUSHED
    np.testing.assert_allclose(journal.get_data(), _as_float32_microvolts(data[:N_FLUSHED]).T, rtol=1e-12, atol=0)
    assert list(journal.annotations.description) == ["Stimulus/17", "Stimulus/a, b"]
    assert journal.time_as_index(journal.annotations.onset, use_rounding=True).tolist() == [50, 100]
    assert [r["label"] for r in _lines(folder / "markers.jsonl")] == ["17", "a, b", "after the flush"]
    assert _lines(folder / "predictions.jsonl") == [{"marker": "17"}]
    assert len(np.fromfile(folder / "recording.times", dtype="<f8")) == N_FLUSHED

    out = finalize_recording(folder)
    assert out == folder / FIF_NAME
    raw = mne.io.read_raw_fif(out, preload=True, verbose="error")
    assert raw.n_times == N_FLUSHED and raw.ch_names == CH
    np.testing.assert_allclose(raw.get_data(), _as_float32_microvolts(data[:N_FLUSHED]).T, rtol=1e-7, atol=0)
    assert list(raw.annotations.description) == ["17", "a, b"]
    assert raw.time_as_index(raw.annotations.onset, use_rounding=True).tolist() == [50, 100]


def test_a_partial_last_sample_is_dropped(crashed):
    folder, data = crashed
    with open(folder / "recording.eeg", "ab") as f:  # died in the middle of writing a sample
        f.write(np.zeros(2, dtype="<f4").tobytes())
    raw = mne.io.read_raw_fif(finalize_recording(folder), preload=True, verbose="error")
    assert raw.n_times == N_FLUSHED
    np.testing.assert_allclose(raw.get_data(), _as_float32_microvolts(data[:N_FLUSHED]).T, rtol=1e-7, atol=0)


def test_cli_recover(crashed, capsys):
    folder, data = crashed
    assert app_main(["recover", str(folder)]) == 0
    assert f"wrote {folder / FIF_NAME}" in capsys.readouterr().out
    raw = mne.io.read_raw_fif(folder / FIF_NAME, preload=True, verbose="error")
    assert raw.n_times == N_FLUSHED
    np.testing.assert_allclose(raw.get_data(), _as_float32_microvolts(data[:N_FLUSHED]).T, rtol=1e-7, atol=0)
    assert list(raw.annotations.description) == ["17", "a, b"]
    assert recording_file(folder) == folder / FIF_NAME


def test_cli_recover_without_a_journal(tmp_path, capsys):
    assert app_main(["recover", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "bci-app recover: error:" in err and "recording.vhdr" in err
    assert not (tmp_path / FIF_NAME).exists()


def test_recover_trusts_the_journal_header_and_refuses_a_session_json_that_disagrees(crashed, capsys):
    """The .vhdr describes the samples in the .eeg file; a session.json that says another
    channel count (edited, or from another recording) must not reshape them silently."""
    folder, _ = crashed
    meta = json.loads((folder / "session.json").read_text())
    meta["ch_names"] = meta["ch_names"] + ["Oz"]
    (folder / "session.json").write_text(json.dumps(meta))
    assert app_main(["recover", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "session.json" in err and "recording.vhdr" in err and "4 channels" in err and "3 at 250 Hz" in err
    assert not (folder / FIF_NAME).exists()


def test_recover_names_an_invalid_byte_in_the_markers(crashed, capsys):
    folder, _ = crashed
    vmrk = folder / "recording.vmrk"
    lines = vmrk.read_bytes().split(b"\n")
    lines[2] = lines[2] + b"\xff"
    vmrk.write_bytes(b"\n".join(lines))
    assert app_main(["recover", str(folder)]) == 2
    err = capsys.readouterr().err
    assert "recording.vmrk" in err and "line 3" in err and "UTF-8" in err


def test_recover_drops_a_marker_line_cut_in_a_character(crashed, caplog):
    """A crash while the last marker line was written can leave half a UTF-8 character."""
    folder, _ = crashed
    with open(folder / "recording.vmrk", "ab") as f:
        f.write("Mk9=Stimulus,caf\u00e9".encode()[:-1])
    raw = mne.io.read_raw_fif(finalize_recording(folder), verbose="error")
    assert list(raw.annotations.description) == ["17", "a, b"]
    assert "last line is incomplete" in caplog.text


# --------------------------------------------------------------------------- refusing a used folder
def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_refuses_a_folder_with_a_recording(tmp_path):
    folder = tmp_path / "rec"
    data, ts = _signal(100)
    rec = SessionRecorder(folder, CH, SFREQ)
    rec.add_samples(data, ts)
    rec.add_marker(ts[5], "17", 5)
    rec.close()
    before = _snapshot(folder)
    assert {"recording.vhdr", "recording.eeg", "recording.vmrk", FIF_NAME, "session.json"} <= set(before)
    with pytest.raises(FileExistsError, match="already holds a recording"):
        SessionRecorder(folder, ["X"], 100.0)
    assert _snapshot(folder) == before


@pytest.mark.parametrize("name", ["recording.vhdr", FIF_NAME, "predictions.jsonl"])
def test_refuses_a_folder_with_any_recording_file(tmp_path, name):
    (tmp_path / name).write_text("precious")
    with pytest.raises(FileExistsError):
        SessionRecorder(tmp_path, CH, SFREQ)
    assert [p.name for p in tmp_path.iterdir()] == [name]
    assert (tmp_path / name).read_text() == "precious"


def test_accepts_an_existing_empty_folder(tmp_path):
    data, ts = _signal(20)
    rec = SessionRecorder(tmp_path, CH, SFREQ)
    rec.add_samples(data, ts)
    assert rec.close() == tmp_path / FIF_NAME


# --------------------------------------------------------------------------- labels
def test_a_comma_in_a_label_and_a_channel_name_survives(tmp_path):
    folder = tmp_path / "rec"
    data, ts = _signal(100)
    rec = SessionRecorder(folder, ["Fz", "C,z", "Pz"], SFREQ)
    rec.add_samples(data, ts)
    rec.add_marker(ts[10], "dog, big", 10)
    rec.add_marker(ts[20], "a,b,c", 20)
    rec.close()
    raw = mne.io.read_raw_fif(folder / FIF_NAME, verbose="error")
    assert list(raw.annotations.description) == ["dog, big", "a,b,c"]
    assert raw.ch_names == ["Fz", "C,z", "Pz"]
    assert raw.time_as_index(raw.annotations.onset, use_rounding=True).tolist() == [10, 20]
    journal = mne.io.read_raw_brainvision(folder / "recording.vhdr", verbose="error")
    assert list(journal.annotations.description) == ["Stimulus/dog, big", "Stimulus/a,b,c"]
    assert journal.ch_names == ["Fz", "C,z", "Pz"]
    assert [m.label for m in read_session(folder).markers] == ["dog, big", "a,b,c"]
    assert [r["label"] for r in _lines(folder / "markers.jsonl")] == ["dog, big", "a,b,c"]


def test_a_backslash_in_a_label_survives(tmp_path):
    folder = tmp_path / "rec"
    data, ts = _signal(100)
    rec = SessionRecorder(folder, CH, SFREQ)
    rec.add_samples(data, ts)
    rec.add_marker(ts[10], "a\\b", 10)
    rec.close()
    assert list(mne.io.read_raw_fif(folder / FIF_NAME, verbose="error").annotations.description) == ["a\\b"]


def test_a_backslash_before_a_one_in_a_label_survives(tmp_path):
    folder = tmp_path / "rec"
    data, ts = _signal(100)
    rec = SessionRecorder(folder, CH, SFREQ)
    rec.add_samples(data, ts)
    rec.add_marker(ts[10], "C:\\stim\\1_cat.jpg", 10)
    rec.close()
    assert list(mne.io.read_raw_fif(folder / FIF_NAME, verbose="error").annotations.description) == ["C:\\stim\\1_cat.jpg"]
