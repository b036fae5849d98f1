"""A recorded session of a simulated participant made faster than real time
(:func:`bci_app.simulate.record_simulated_session`): the folder ``bci-app --record`` writes
while the presenter shows the images to ``bci-replay --simulate``, checked against the
presenter's schedule, the subject's noise-free responses and the live simulator's path."""

from __future__ import annotations

import json

import mne
import numpy as np
import pytest

from bci_app.recording import FIF_NAME
from bci_app.sessions import read_session
from bci_app.simulate import Simulator, presentation_times, record_simulated_session
from bci_app.stimuli import FrameTiming, Stimulus, limit_duration, load_stimuli, make_sequences
from trainer.errors import UsageError
from trainer.synth.live import SimulatedSubject

SFREQ = 1000.0
TIMING = FrameTiming.for_display(60.0)


@pytest.fixture(scope="module")
def subject(tiny_dataset):
    return SimulatedSubject.open(tiny_dataset, 1, person=7)


@pytest.fixture(scope="module")
def sequences(tiny_dataset):
    """The test images twice and 30 training images, in sequences of 20, a catch target in
    half of the test sequences."""
    test = load_stimuli(tiny_dataset, "test")
    catch = Stimulus(0, f"catch/{test[0].path.name}", test[0].path)
    shown = make_sequences(test, repetitions=2, seed=3, catch=catch, catch_rate=0.5)
    train = make_sequences(load_stimuli(tiny_dataset, "training")[:30], seed=4)
    return shown + train


def test_the_schedule_is_the_presenters(sequences):
    """Images 12 frames (200 ms) apart within a sequence; each sequence, the first too,
    starts once the pause has passed after the last blank of the one before; and the
    whole fits in what --duration counts for it."""
    shown = presentation_times(sequences, TIMING, 2.0)
    assert [trial for trial, _ in shown] == [trial for seq in sequences for trial in seq]
    times = np.array([t for _, t in shown])
    starts = times[[trial.position == 0 for trial, _ in shown]]
    ends = np.array([times[i] + TIMING.soa_frames * TIMING.frame for i, (trial, _) in enumerate(shown)
                     if i + 1 == len(shown) or shown[i + 1][0].position == 0])
    for seq, start in zip(sequences, starts):
        got = np.array([t for trial, t in shown if trial.sequence == seq[0].sequence and start <= t < start + 10])
        np.testing.assert_allclose(np.diff(got), 0.2, atol=1e-9)
    # the pause counts from the frame after the last blank; the sequence starts on the first
    # frame once it has passed (2 s, or a frame more when the float sum of frames falls short)
    gaps = np.concatenate([[starts[0]], starts[1:] - ends[:-1]])
    assert np.all((gaps > 2.0 - 1e-9) & (gaps < 2.0 + TIMING.frame + 1e-9)), gaps
    frames = gaps * TIMING.refresh_hz
    np.testing.assert_allclose(frames, np.round(frames), atol=1e-6)  # whole frames
    assert limit_duration(sequences, TIMING, (ends[-1] + 1e-9) / 60, 2.0) == sequences  # what --duration counts
    with pytest.raises(UsageError, match="pause_s"):
        presentation_times(sequences, TIMING, -1.0)


def test_noise_free_the_recording_is_the_responses_at_the_markers(subject, sequences, tmp_path):
    """Without noise: the recording reads back as a session with the trials' labels at the
    samples nearest their flips, and the signal is the sum of each trial's response
    (subject.evoked times its gain, drawn in the order shown; a catch trial the ERP alone)
    from 11 ms before its marker on (the default delay, minus the trigger delay)."""
    folder = record_simulated_session(subject, sequences, tmp_path / "rec", noise=False, seed=5, image_set="test")
    assert folder == tmp_path / "rec" and (folder / FIF_NAME).is_file()
    session = read_session(folder)
    shown = presentation_times(sequences, TIMING, 2.0)
    samples = [int(round(t * SFREQ)) for _, t in shown]
    assert [m.label for m in session.markers] == [trial.label for trial, _ in shown]
    assert [m.sample for m in session.markers] == samples
    n_catch = sum(trial.catch for trial, _ in shown)
    assert n_catch == 1 and sum(m.label == "catch" for m in session.markers) == n_catch
    assert any(m.label.startswith("00001_") and "/" in m.label for m in session.markers)

    data = session.raw.get_data()
    assert session.raw.ch_names == list(subject.model.ch_names) and session.raw.info["sfreq"] == SFREQ
    assert data.shape[1] == int(np.ceil((shown[-1][1] - shown[-1][0].position * 0.2 + len(sequences[-1]) * 0.2
                                         + 2.0) * SFREQ))
    gains = subject.signal(noise=False, seed=5)  # the gains come in the order the markers do
    erp = gains.response(None)
    expected = np.zeros_like(data)
    delay = int(round(subject.config.trigger_delay * SFREQ))
    assert delay == 11
    for (trial, _), sample in zip(shown, samples):
        gain = gains.draw_gain()
        part_index = subject.find(trial.label)
        response = erp * gain if trial.catch else subject.evoked(*part_index) * gain
        expected[:, sample - delay : sample - delay + response.shape[1]] += response
    scale = np.abs(expected).max()
    np.testing.assert_allclose(data, expected, rtol=0, atol=1e-6 * scale)  # float32 microvolts
    np.testing.assert_array_equal(data[:, : samples[0] - delay], 0.0)  # nothing before the first response

    meta = json.loads((folder / "session.json").read_text())
    assert meta["image_set"] == "test" and "simulated" in meta and "offline" in meta["simulated"]
    assert meta["ch_names"] == list(subject.model.ch_names) and meta["sfreq"] == SFREQ
    stats = json.loads((folder / "summary.json").read_text())
    assert (stats["markers"], stats["catch"], stats["responses"], stats["late"], stats["unknown"]) == \
        (len(shown), n_catch, len(shown) - n_catch, 0, 0)
    stamps = np.fromfile(folder / "recording.times", dtype="<f8")
    np.testing.assert_array_equal(stamps, np.arange(data.shape[1]) / SFREQ)
    log = [json.loads(line) for line in (folder / "markers.jsonl").read_text().splitlines()]
    assert [(m["label"], m["sample"]) for m in log] == [(trial.label, s) for (trial, _), s in zip(shown, samples)]
    assert (folder / "predictions.jsonl").read_text() == ""
    # the BrainVision journal reads as it is (what bci-app recover and MNE read after a crash)
    journal = mne.io.read_raw_brainvision(folder / "recording.vhdr", preload=True, verbose="error")
    np.testing.assert_allclose(journal.get_data(), data, rtol=1e-6, atol=0)  # float32 microvolts vs float32 volts


def test_it_is_the_live_simulators_signal_with_noise(subject, sequences, tmp_path):
    """With noise: the recording holds exactly what the live Simulator's path makes of the
    same markers (the same seed, responses added by Simulator.respond, read in chunks of
    10 samples as it pushes them), as float32 volts; another seed gives other noise."""
    part = sequences[:3]
    folder = record_simulated_session(subject, part, tmp_path / "rec", seed=2, delay=0.004)
    data = read_session(folder).raw.get_data()
    live = Simulator(subject, name="x", markers="y", seed=2, delay=0.004)
    live.t0 = 0.0
    pending = presentation_times(part, TIMING, 2.0)
    chunks = []
    while live.signal.position < data.shape[1]:
        # markers arrive (at least) 'delay + latency' before their onset sample is pushed
        while pending and live.onset_sample(pending[0][1]) < live.signal.position + 60:
            trial, t = pending.pop(0)
            live.respond(t, trial.label)
        chunks.append(live.signal.read(10).astype(np.float32))
    streamed = np.concatenate(chunks, axis=1)[:, : data.shape[1]]
    assert live.stats.late == 0 and live.stats.markers == sum(len(s) for s in part) and live.stats.catch == 1
    np.testing.assert_allclose(data, streamed, rtol=1e-6, atol=1e-12)  # float32 volts, stored as microvolts
    assert np.abs(data).max() > 10e-6  # noise in microvolts, blinks bigger
    other = record_simulated_session(subject, part, tmp_path / "other", seed=3, delay=0.004)
    assert not np.allclose(read_session(other).raw.get_data(), data)


def test_bad_arguments_are_refused(subject, sequences, tmp_path):
    with pytest.raises(UsageError, match="image_set"):
        record_simulated_session(subject, sequences[:1], tmp_path / "a", image_set="both")
    with pytest.raises(UsageError, match="no trials"):
        record_simulated_session(subject, [], tmp_path / "b")
    record_simulated_session(subject, sequences[:1], tmp_path / "c", noise=False)
    with pytest.raises(FileExistsError, match="already holds a recording"):
        record_simulated_session(subject, sequences[:1], tmp_path / "c", noise=False)
