"""``bci-replay --simulate`` (:mod:`bci_app.simulate`): a simulated participant answering a
marker stream, over real LSL on loopback, recorded by the app and epoched offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time

import mne
import numpy as np
import pytest
from mne_lsl.lsl import StreamInlet, StreamOutlet, local_clock, resolve_streams

from bci_app.cli import replay_main
from bci_app.pipeline import LiveSession
from bci_app.recording import FIF_NAME
from bci_app.simulate import DEFAULT_LATENCY, Simulator, marker_target
from bci_app.streams import StreamError, marker_stream_info
from trainer.bundle import load_bundle
from trainer.data.things_eeg2 import CATCH_CODE
from trainer.errors import UsageError
from trainer.synth.live import SimulatedSubject

SFREQ = 1000.0
DELAY = 11  # samples: the tiny set's trigger delay; most tests here put the responses this
# long *after* their marker, with no latency (the default is 11 ms before, with 50 ms)


@pytest.fixture(scope="module")
def subject(tiny_dataset):
    return SimulatedSubject.open(tiny_dataset, 1)


@pytest.fixture
def simulate(stream_name):
    """simulate(subject, markers, **kw) starts a Simulator on a thread (stopped at teardown);
    returns it and a list that gets what run() returned (or raised)."""
    started = []

    def start(subject, markers, **kwargs):
        kwargs.setdefault("source_id", f"{stream_name}-src")
        kwargs.setdefault("delay", DELAY / SFREQ)
        kwargs.setdefault("latency", 0.0)
        kwargs.setdefault("marker_timeout", 1.0)
        kwargs.setdefault("timeout", 5.0)
        sim = Simulator(subject, name=stream_name, markers=markers, **kwargs).start()
        stop, outcome = threading.Event(), []

        def run():
            try:
                outcome.append(sim.run(stop))
            except BaseException as err:  # the test looks at it
                outcome.append(err)

        thread = threading.Thread(target=run, name="simulator", daemon=True)
        thread.start()
        started.append((sim, stop, thread))
        return sim, thread, outcome

    yield start
    for sim, stop, thread in started:
        stop.set()
        thread.join(10)
        sim.close()


def _marker_outlet(name, *, strings=False, **kwargs):
    return StreamOutlet(marker_stream_info(name, f"{name}-src", strings=strings, **kwargs))


def _corr(a, b):
    a, b = a.ravel() - a.mean(), b.ravel() - b.mean()
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _best_lag(recorded, response, at, span=5):
    """The shift (samples) of ``response`` that best matches ``recorded`` around ``at``."""
    n = response.shape[1]
    scores = [_corr(recorded[:, at + lag : at + lag + n], response) for lag in range(-span, span + 1)]
    return int(np.argmax(scores)) - span


def test_the_app_records_the_data_sets_responses_at_the_markers(subject, tiny_bundle, simulate, stream_name, tmp_path):
    """A presenter-like marker outlet (stamped times off the sample grid), the simulated
    subject 1 without noise, the app recording it: offline, the recorded epochs (the
    bundle's spec, cut at the recorded markers) are the data set's noise-free responses to
    those images, each response starts 11 ms after its marker, a catch trial gets the
    common ERP, an unknown id nothing."""
    bundle = load_bundle(tiny_bundle)
    markers = f"{stream_name}-m"
    outlet = _marker_outlet(markers)
    sim, thread, outcome = simulate(subject, markers, noise=False)
    assert sim.connected.wait(10)
    live = LiveSession(bundle, stream_name, markers=markers, device="cpu", record=tmp_path / "rec", timeout=10.0).start()
    plan = [3, 7, CATCH_CODE, 12, 5000, 20]  # test image numbers, a catch trial, an unknown id
    # 1 s apart, off the sample grid by -0.2 to 0.2 of a sample: far enough from the middle
    # between two samples that the inlets' clock corrections (up to 0.15 ms measured on one
    # machine) cannot move a marker to the other sample (that would be one sample off)
    start = sim.t0 + np.ceil(local_clock() - sim.t0 + 1.0)
    times = [start + k + off / SFREQ for k, off in enumerate([0.0, 0.1, 0.2, -0.2, -0.1, 0.05])]
    try:
        for code, t in zip(plan, times):
            while local_clock() < t - 0.03:  # sent just before its time, as a presenter does
                live.step()
                time.sleep(0.002)
            outlet.push_sample(np.array([code], dtype=np.int32), timestamp=t)
        while local_clock() < times[-1] + 1.5:  # the last window has passed
            live.step()
            time.sleep(0.002)
    finally:
        summary = live.close()
        outlet._del()
    thread.join(10)
    assert outcome == [f"the marker stream {markers!r} was gone for 1 s"]
    stats = sim.stats
    assert (stats.markers, stats.responses, stats.catch, stats.unknown, stats.late) == (6, 4, 1, 1, 0)

    assert summary["recording"] == str(tmp_path / "rec" / FIF_NAME)
    raw = mne.io.read_raw_fif(tmp_path / "rec" / FIF_NAME, preload=True, verbose="error")
    assert raw.ch_names == list(subject.model.ch_names) and raw.info["sfreq"] == SFREQ
    data = raw.get_data()
    labels = list(raw.annotations.description)
    assert labels == [str(c) for c in plan]
    onsets = raw.time_as_index(raw.annotations.onset, use_rounding=True)
    stamps = np.fromfile(tmp_path / "rec" / "recording.times", dtype="<f8")
    # t0 + i / sfreq: the app's clock correction, measured again every second, moves them
    # by a microsecond or so now and then (1.3 us seen on a busy machine); a twentieth of a
    # sample is far below what could move a marker to another sample
    np.testing.assert_allclose(np.diff(stamps), 1 / SFREQ, rtol=0, atol=0.05 / SFREQ)
    assert np.abs(stamps[onsets] - np.array(times)).max() <= 0.5 / SFREQ  # the recorded markers sit at their times

    spec = bundle.spec
    before, after = 1000, 1500  # samples around each marker: the spec's window and more

    def epoch(segment):
        return spec.epochs_from_continuous(segment, SFREQ, raw.ch_names, [before])[0][0]

    def reference(response):  # the response alone, DELAY samples after the marker
        segment = np.zeros((len(raw.ch_names), before + after))
        segment[:, before + DELAY : before + DELAY + response.shape[1]] = response
        return epoch(segment)

    evoked = [subject.evoked("test", i) for i in range(subject.n_images("test"))]
    references = [reference(e) for e in evoked]
    for code, onset in zip(plan, onsets):
        got = epoch(data[:, onset - before : onset + after])
        if code == 5000:
            np.testing.assert_array_equal(data[:, onset : onset + 900], 0.0)  # no response at all
            continue
        if code == CATCH_CODE:
            assert _corr(got, reference(subject.signal(noise=False).response(None))) >= 0.9  # the common ERP
            continue
        match = [_corr(got, r) for r in references]
        assert match[code - 1] >= 0.9, code  # 1.000 measured (float32 microvolts, a random gain)
        # the common ERP makes every image's response alike (0.77-0.98): this one is the closest
        assert int(np.argmax(match)) == code - 1, (code, np.round(match, 4))
        assert _best_lag(data, evoked[code - 1], onset + DELAY) == 0, code  # aligned to the sample


def _wait_for_stream(name, proc, timeout=40.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = resolve_streams(timeout=0.5, name=name)
        if found:
            return found[0]
        if proc.poll() is not None:
            break
    proc.kill()
    raise AssertionError(f"no stream {name!r}: {proc.communicate(timeout=10)[1][-3000:]}")


def test_the_command_answers_string_labels_and_adds_what_remains_of_a_late_marker(subject, stream_name, tmp_path):
    """bci-replay --simulate as a command: string markers (a training image's label, a
    number as text, 'catch', a label of no image, and one sent 300 ms after its time);
    every sample is stamped t0 + i / sfreq and arrives after its time; the responses are
    exact (float32); the late one lacks its first 300 ms; the command ends by itself once
    the marker stream is gone, with a summary."""
    markers = f"{stream_name}-m"
    outlet = _marker_outlet(markers, strings=True)
    code = "import sys; from bci_app.cli import replay_main; sys.exit(replay_main())"
    proc = subprocess.Popen([sys.executable, "-c", code, "--simulate", "--data", str(subject.root), "--subject", "1",
                             "--markers-from", markers, "--name", stream_name, "--source-id", f"{stream_name}-src",
                             "--no-noise", "--marker-timeout", "1", "--timeout", "30", "--delay", "0.011",
                             "--latency", "0"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        inlet = StreamInlet(_wait_for_stream(stream_name, proc))
        inlet.open_stream(timeout=10)
        assert outlet.wait_for_consumers(timeout=10)  # the simulator has subscribed to the markers
        train_label = subject.features.labels("training")[5]
        test_label = subject.features.labels("test")[9]
        grid = inlet.pull_sample(timeout=5)[1]  # a sample's time: markers go 0.1 sample after the grid
        t = grid + np.ceil(local_clock() - grid + 0.5) + 0.1 / SFREQ  # (see the test above)
        sent = [(train_label, t), ("4", t + 1.0), ("catch", t + 2.0), ("00001_nothing/nothing_01s.jpg", t + 3.0)]
        for label, when in sent:
            outlet.push_sample([label], timestamp=when)
        chunks, stamps, arrived = [], [], []
        late = (test_label, t + 3.6)
        while local_clock() < t + 5.5:
            if late is not None and local_clock() >= late[1] + 0.3:
                outlet.push_sample([late[0]], timestamp=late[1])
                sent.append(late)
                late = None
            data, ts = inlet.pull_chunk(timeout=0.0)
            if len(ts):  # copies: the inlet reuses its buffers
                chunks.append(np.array(data))
                stamps.append(np.array(ts))
                arrived.append(np.full(len(ts), local_clock()))
            time.sleep(0.003)
        inlet.close_stream()
        outlet._del()
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err[-3000:]
    lines = [line for line in err.splitlines() if line.startswith("bci-replay:")]
    assert lines[0].startswith(f"bci-replay: simulating subject 1 of {subject.root} (snr 2, no noise) as "
                               f"{stream_name!r} (63 EEG channels, 1000 Hz")
    # the late one: sent 300 ms after its time, so 289 ms after its response's onset, when the
    # samples up to the last whole chunk were out (up to 10 ms fewer)
    assert re.fullmatch(rf"bci-replay: done \(the marker stream '{markers}' was gone for 1 s\): 5 markers, 3 responses "
                        r"added, 1 late \(by up to 2[789]\d ms\), 1 catch, 1 unknown; \d+ samples streamed", lines[-1])
    assert "names no image" in err and re.search(r"came 2[789]\d ms after its response began", err)

    data, ts, arrived = np.concatenate(chunks), np.concatenate(stamps), np.concatenate(arrived)
    assert data.dtype == np.float32 and data.shape[1] == 63
    np.testing.assert_allclose(np.diff(ts), 1 / SFREQ, rtol=0, atol=1e-9)
    assert (ts <= arrived).all()  # no sample went out before its time
    signal = subject.signal(noise=False)  # the simulator's gains, in the order of its responses
    targets = [("training", 5), ("test", 3), None, "unknown", ("test", 9)]
    for (label, when), target in zip(sent, targets):
        onset = int(np.argmin(np.abs(ts - (when + DELAY / SFREQ))))
        assert abs(ts[onset] - (when + DELAY / SFREQ)) <= 0.5 / SFREQ
        got = data[onset : onset + signal.n_wave].T.astype(np.float64)
        if target == "unknown":
            np.testing.assert_array_equal(got, 0.0)
            continue
        expected = signal.response(None if target is None else subject.amplitudes(*target), signal.draw_gain())
        atol = 1e-6 * np.abs(expected).max()
        if label != test_label:
            np.testing.assert_allclose(got, expected, rtol=0, atol=atol)
            continue
        missed = int(np.argmax(np.abs(got).max(axis=0) > 0))  # the late marker: its first samples were out
        assert 270 <= missed < 400, missed
        np.testing.assert_array_equal(got[:, :missed], 0.0)
        np.testing.assert_allclose(got[:, missed:], expected[:, missed:], rtol=0, atol=atol)


def test_by_default_the_response_starts_a_trigger_delay_before_its_marker_as_in_the_data_set(subject, simulate,
                                                                                           stream_name):
    """The default (--delay -0.011 --latency 0.05): the response starts 11 ms before its
    marker (as in the data set's epochs, cut at the trigger), and every sample goes out 50
    ms after its time."""
    markers = f"{stream_name}-m"
    outlet = _marker_outlet(markers)
    sim, _, _ = simulate(subject, markers, noise=False, delay=None, latency=DEFAULT_LATENCY)
    assert sim.delay == -0.011 and sim.latency == 0.05
    inlet = StreamInlet(resolve_streams(timeout=5, name=stream_name)[0])
    inlet.open_stream(timeout=10)
    assert sim.connected.wait(10)
    try:
        t = sim.t0 + np.ceil(local_clock() - sim.t0 + 0.3)  # on a sample
        outlet.push_sample(np.array([4], dtype=np.int32), timestamp=t)
        chunks, stamps, ages = [], [], []
        while local_clock() < t + 1.0:
            data, ts = inlet.pull_chunk(timeout=0.0)
            if len(ts):
                chunks.append(np.array(data))
                stamps.append(np.array(ts))
                ages.append(local_clock() - np.array(ts))
            time.sleep(0.003)
    finally:
        inlet.close_stream()
        outlet._del()
    data, ts = np.concatenate(chunks), np.concatenate(stamps)
    assert np.concatenate(ages).min() >= 0.05
    onset = int(np.argmin(np.abs(ts - (t - DELAY / SFREQ))))
    np.testing.assert_array_equal(data[:onset], 0.0)
    assert np.abs(data[onset]).max() > 0 and sim.stats.late == 0
    expected = subject.evoked("test", 3)
    assert _corr(data[onset : onset + 800].T, expected) > 0.9999
    with pytest.raises(UsageError, match="delay \\+ latency must be at least 0.005 s"):
        Simulator(subject, name=stream_name, markers=markers, delay=-0.011, latency=0.01)


def test_markers_map_to_the_data_sets_images(subject):
    labels = subject.features.labels("training")
    assert marker_target(7, subject, "test") == ("test", 6)
    assert marker_target(np.int32(7), subject, "training") == ("training", 6)
    assert marker_target(7.0, subject, "test") == ("test", 6)
    assert marker_target(" 20 ", subject, "test") == ("test", 19)
    assert marker_target(labels[100], subject, "test") == ("training", 100)
    assert marker_target("test/" + subject.features.labels("test")[2], subject, "training") == ("test", 2)
    assert marker_target(labels[3].replace("/", "\\"), subject, "test") == ("training", 3)
    assert marker_target(CATCH_CODE, subject, "test") == "catch"
    assert marker_target("Catch", subject, "test") == "catch"
    for unknown in (0, 21, -3, 7.5, float("nan"), True, "nothing/here.jpg", "", None):
        assert marker_target(unknown, subject, "test") is None, unknown


def test_the_image_set_comes_from_the_option_or_the_marker_stream(subject, simulate, stream_name):
    outlet = _marker_outlet(f"{stream_name}-m", image_set="training")
    try:
        sim, _, _ = simulate(subject, f"{stream_name}-m")
        assert sim.part == "test"  # until the stream is found
        assert sim.connected.wait(5) and sim.part == "training"
        forced, _, _ = simulate(subject, f"{stream_name}-m", image_set="test", source_id=f"{stream_name}-2")
        assert forced.connected.wait(5) and forced.part == "test"
    finally:
        outlet._del()


def test_a_missing_marker_stream_is_a_clear_error(subject, stream_name, capsys):
    """The EEG streams meanwhile (as an amplifier's does), and stops with the error."""
    sim = Simulator(subject, name=stream_name, markers=f"{stream_name}-nowhere", timeout=0.5).start()
    try:
        with pytest.raises(StreamError, match=rf"no marker stream named '{stream_name}-nowhere' found within 0.5 s"):
            sim.run()
        assert sim.stats.samples >= 500
    finally:
        sim.close()
    assert not resolve_streams(timeout=0.3, name=stream_name)  # no EEG stream left behind
    code = replay_main(["--simulate", "--data", str(subject.root), "--subject", "1", "--markers-from",
                        f"{stream_name}-nowhere", "--name", stream_name, "--timeout", "0.5"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"bci-replay: error: no marker stream named '{stream_name}-nowhere' found within 0.5 s")


@pytest.mark.parametrize("argv, message", [
    ([], "give PATH (a recorded session to play) or --simulate"),
    (["session.npy", "--simulate", "--data", "d", "--subject", "1", "--markers-from", "m"],
     "give either PATH (a recorded session to play) or --simulate, not both"),
    (["--simulate", "--subject", "1", "--markers-from", "m"], "--simulate needs --data DIR"),
    (["--simulate", "--data", "d"], "--simulate needs --subject N, --markers-from NAME"),
    (["session.npy", "--data", "d", "--no-noise"], "--data, --no-noise: only with --simulate"),
    (["--simulate", "--data", "d", "--subject", "1", "--markers-from", "m", "--loop", "--markers", "string"],
     "--loop, --markers: only for playing a recorded session, not with --simulate"),
    (["--simulate", "--data", "d", "--subject", "1", "--markers-from", "m", "--subject-seed", "-2"],
     "--subject-seed must be >= 0"),
    (["--simulate", "--data", "d", "--subject", "1", "--markers-from", "m", "--marker-timeout", "0"],
     "--marker-timeout must be > 0"),
    (["--simulate", "--data", "d", "--subject", "1", "--markers-from", "m", "--snr", "nan"], "--snr must be > 0"),
    (["--simulate", "--data", "d", "--subject", "1", "--markers-from", "m", "--latency", "-0.01"],
     "--latency must be >= 0"),
])
def test_bad_command_lines_are_one_line_errors(argv, message, capsys):
    assert replay_main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bci-replay: error: ") and message in err and err.count("\n") == 1, err


def test_a_folder_that_is_not_a_synthetic_set_is_refused(tmp_path, tiny_dataset, capsys):
    argv = ["--simulate", "--subject", "1", "--markers-from", "m", "--data"]
    assert replay_main([*argv, str(tmp_path)]) == 2
    assert capsys.readouterr().err == (f"bci-replay: error: {tmp_path}: not a synthetic data set made by 'bci-train "
                                       "synth' (no synth.json)\n")
    assert replay_main([*argv, str(tmp_path / "nothing")]) == 2
    assert "nothing not found" in capsys.readouterr().err
    assert replay_main(["--simulate", "--subject", "3", "--markers-from", "m", "--data", str(tiny_dataset)]) == 2
    assert f"{tiny_dataset} has subjects 1..2, not 3" in capsys.readouterr().err
