"""Faults of the live path over real LSL on loopback: nothing received is lost, nothing is
silently wrong.  Each test names the fault it plays (the table in docs/live.md)."""

from __future__ import annotations

import json
import os
import time

import mne
import numpy as np
import pytest

from bci_app.cli import main as app_main
from bci_app.pipeline import LiveSession
from bci_app.streams import StreamChanged, StreamError, resolve_one
from trainer.bundle import load_bundle

pytestmark = pytest.mark.slow  # real-time streams of a few seconds each


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    return load_bundle(tiny_bundle)


def _layout(bundle, extra=()):
    """A stream's channels: the counter, the model's channels, and extra ones."""
    return ["CNT", *bundle.spec.channels, *extra]


def _step_until(live, condition, timeout):
    records = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not condition(records):
        records += live.step()
        time.sleep(0.002)
    return records


def _recorded_counter(fif):
    raw = mne.io.read_raw_fif(fif, verbose="error")
    return np.round(raw.get_data(picks=["CNT"])[0] / 1e-6).astype(np.int64), raw.annotations


def _strict(line):
    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return json.loads(line, parse_constant=refuse)


# -- the recording holds every sample ----------------------------------------------------

def test_a_long_fast_stream_in_one_sample_chunks_is_recorded_whole(bundle, counter_outlet, tmp_path):
    """64 channels at 2000 Hz pushed one sample at a time (the case that lost samples):
    the counter channel proves every received sample is in the recording, once, in order."""
    names = _layout(bundle, [f"X{i}" for i in range(64 - 18)])
    out = counter_outlet(names, 2000.0, chunk=1, markers="int32")
    live = LiveSession(bundle, _name(out), device="cpu", record=tmp_path / "rec").start()
    try:
        _step_until(live, lambda r: live.source.n_total >= 2000 * 15, timeout=40)
    finally:
        summary = live.close()
    counter, annotations = _recorded_counter(summary["recording"])
    assert len(counter) == summary["samples_received"] >= 2000 * 15  # from the first sample received on
    np.testing.assert_array_equal(np.diff(counter), 1)
    assert "BAD_gap" not in annotations.description and summary["gaps"] == 0


def _name(outlet):
    return outlet.outlet.get_sinfo().name


# -- a flood of markers --------------------------------------------------------------------

def test_a_marker_flood_sheds_load_keeps_decisions_timely_and_the_recording_whole(bundle, counter_outlet, tmp_path):
    """1000 markers/s for 5 s: epochs are taken up within max_delay of being ready or
    rejected as 'overload' (counted), so a decision comes at most one batch's computing
    later; every marker is accounted for; the recording is complete.  (The bound is on
    the session's own clock readings, not on how fast this machine is.)"""
    out = counter_outlet(_layout(bundle), 1000.0, markers="int32")
    live = LiveSession(bundle, _name(out), device="cpu", record=tmp_path / "rec").start()
    max_delay = live.epocher.max_delay
    try:
        time.sleep(1.0)
        k0 = out.sent
        for i in range(5000):  # 1000 per second, for 5 seconds, each at its own sample
            while out.sent < k0 + i + 1:
                live.step()
            out.mark(k0 + i, 1 + i % 20)
        _step_until(live, lambda r: live.stats.markers >= 5000 and not live.epocher.pending, timeout=30)
    finally:
        summary = live.close()
    rejected = summary["epochs_rejected"]
    assert summary["markers_seen"] == 5000
    assert summary["epochs_decoded"] + sum(rejected.values()) + summary["epochs_pending"] == 5000
    wait, compute, latency = (summary[k] for k in ("decision_wait", "decision_compute", "decision_latency"))
    assert wait["n"] == latency["n"] == summary["epochs_decoded"] > 0 and compute["n"] >= 1
    assert wait["max_ms"] <= 1000 * max_delay
    assert latency["max_ms"] <= wait["max_ms"] + compute["max_ms"] + 0.01
    assert set(k for k, v in rejected.items() if v) <= {"overload", "before start"}
    counter, annotations = _recorded_counter(summary["recording"])
    np.testing.assert_array_equal(np.diff(counter), 1)
    assert len(counter) == summary["samples_received"]
    # every marker is in the recording at its sample: decoded, shed, or still waiting at the end
    logged = [json.loads(line) for line in (tmp_path / "rec" / "markers.jsonl").read_text().splitlines()]
    assert len(logged) == 5000 and all(m["sample"] is not None for m in logged)
    stimuli = [d for d in annotations.description if d != "BAD_gap"]
    assert len(stimuli) == 5000


# -- a full disk -----------------------------------------------------------------------------

@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
def test_a_full_disk_stops_the_recording_not_the_session(tiny_bundle, counter_outlet, tmp_path, capsys):
    """The journal's data file on a device that is always full (the kernel's ENOSPC):
    decoding goes on, the recording stops with a message, the summary is written."""
    bundle = load_bundle(tiny_bundle)
    out = counter_outlet(_layout(bundle), 1000.0, markers="int32")
    folder = tmp_path / "rec"
    folder.mkdir()
    (folder / "recording.eeg").symlink_to("/dev/full")

    def mark_every_200_ms():
        import threading

        def run():
            k = out.sent + 500
            while not out._stop.is_set():
                if out.sent > k:
                    out.mark(k, 1 + (k // 200) % 20)
                    k += 200
                time.sleep(0.01)

        threading.Thread(target=run, daemon=True).start()

    mark_every_200_ms()
    summary_file = tmp_path / "summary.json"
    code = app_main(["--bundle", str(tiny_bundle), "--stream", _name(out), "--headless", "--max-epochs", "12",
                     "--device", "cpu", "--record", str(folder), "--summary", str(summary_file)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [_strict(line) for line in captured.out.splitlines()]
    assert len(lines) == 12  # decoding went on after the recording stopped
    summary = json.loads(summary_file.read_text())
    assert summary["epochs_decoded"] == 12
    assert any("No space left on device" in p for p in summary["problems"])
    assert "recording stopped" in captured.err and "problem:" in captured.err
    assert "summary: 12 epochs decoded" in captured.err


def test_a_write_failing_in_a_step_with_rejected_markers_stops_only_the_recording(bundle, counter_outlet, tmp_path):
    """The step that finds the disk full also has markers to log (rejected ones): they are
    skipped with the recording, not a crash (found by review: the recorder was gone)."""
    import errno

    from bci_app.epochs import MarkerEvent

    out = counter_outlet(_layout(bundle), 1000.0, markers="int32")
    live = LiveSession(bundle, _name(out), device="cpu", record=tmp_path / "rec").start()
    try:
        _step_until(live, lambda r: live.source.n_total >= 500, timeout=10)

        def full(*args):
            raise OSError(errno.ENOSPC, "No space left on device")

        live.feed.feed = full  # the journal's next write finds the disk full
        live.epocher.add(MarkerEvent(t=0.0, value=1, stimulus_id=1, label="1", received=0.0))  # long before: rejected
        time.sleep(0.1)
        live.step()
        assert live.recorder is None and live.epocher.rejected["before start"] == 1
        assert any("No space left on device" in p for p in live.problems)
        _step_until(live, lambda r: live.source.n_total >= 800, timeout=10)  # decoding goes on
    finally:
        summary = live.close()
    assert "recording" not in summary and summary["epochs_rejected"]["before start"] == 1


def test_markers_still_waiting_for_their_window_at_the_end_are_recorded(bundle, counter_outlet, tmp_path):
    """A marker whose epoch window is not complete when the session ends is not decoded,
    but it is in markers.jsonl and in the recording at its sample."""
    out = counter_outlet(_layout(bundle), 1000.0, markers="int32")
    live = LiveSession(bundle, _name(out), device="cpu", record=tmp_path / "rec").start()
    try:
        _step_until(live, lambda r: live.source.n_total >= 1200, timeout=10)
        k = out.sent + 100
        out.limit = k + 50  # the sender pauses soon after the marker: its window never completes
        out.mark(k, 7)
        _step_until(live, lambda r: live.stats.markers == 1 and (live.source.latest_time() or 0) >= out.time_of(k + 40),
                    timeout=20)
    finally:
        summary = live.close()
    assert summary["epochs_pending"] == 1 and summary["epochs_decoded"] == 0, summary["epochs_rejected"]
    logged = [json.loads(line) for line in (tmp_path / "rec" / "markers.jsonl").read_text().splitlines()]
    assert [m["label"] for m in logged] == ["7"] and logged[0]["sample"] is not None
    counter, annotations = _recorded_counter(summary["recording"])
    onset = int(round(annotations.onset[list(annotations.description).index("7")] * 1000.0))
    assert counter[onset] == k


# -- a stream that restarts under the same source id ------------------------------------------

@pytest.mark.parametrize("change", ["order", "rate", "count"])
def test_a_stream_back_with_other_channels_or_rate_is_an_error_and_nothing_after_is_kept(
        bundle, counter_outlet, stream_name, tmp_path, change):
    """liblsl reconnects an inlet by itself to an outlet with the same source id: with
    another channel order the samples would be decoded and recorded scrambled, with
    another rate or channel count it would never reconnect (an endless stall)."""
    names = _layout(bundle, ["Fp1"])
    first = counter_outlet(names, 1000.0, markers="int32")
    live = LiveSession(bundle, stream_name, device="cpu", stall_timeout=0.5, record=tmp_path / "rec").start()
    try:
        _step_until(live, lambda r: live.source.n_total >= 1500, timeout=10)
        first.stop()  # the amplifier app restarts ...
        _step_until(live, lambda r: False, timeout=0.3)
        received_before = live.source.n_total
        if change == "order":
            counter_outlet(["CNT", *reversed(names[1:])], 1000.0)
        elif change == "rate":
            counter_outlet(names, 500.0)
        else:
            counter_outlet(names + ["Fp2"], 1000.0)
        with pytest.raises(StreamChanged, match="came back with other channels or rate"):
            _step_until(live, lambda r: False, timeout=20)
    finally:
        summary = live.close()
    counter, annotations = _recorded_counter(summary["recording"])
    # the recording holds the first outlet's samples only, none of the changed stream's
    assert len(counter) == received_before
    np.testing.assert_array_equal(np.diff(counter), 1)


def test_two_streams_with_one_name_are_an_error_listing_both(bundle, counter_outlet, stream_name):
    counter_outlet(["CNT", "Pz"], 100.0, source_id="amp-A")
    counter_outlet(["CNT", "Pz"], 100.0, source_id="amp-B")
    time.sleep(0.3)
    with pytest.raises(StreamError) as info:
        resolve_one(stream_name, timeout=3.0)
    assert "2 streams are named" in str(info.value)
    assert "amp-A" in str(info.value) and "amp-B" in str(info.value) and "--source-id" in str(info.value)
    assert resolve_one(stream_name, source_id="amp-B", timeout=3.0).source_id == "amp-B"


# -- a clock jump in the EEG stamps ---------------------------------------------------------------

def test_a_clock_jump_in_the_eeg_stamps_is_a_gap(bundle, counter_outlet):
    """The sender's clock jumps +10 s: the epoch whose window spans the jump is rejected
    ('gap'); the epochs before and after it are cut from the right samples (the counter
    channel tells which outlet sample each onset is)."""
    out = counter_outlet(_layout(bundle), 1000.0, markers="int32")
    live = LiveSession(bundle, _name(out), device="cpu").start()
    onsets = {}

    def step_until(condition, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not condition():
            if live.step():
                for e in live.last_epochs:
                    data, _, _ = live.source.read(e.marker.onset, e.marker.onset + 1)
                    onsets[e.marker.value] = int(round(data[0, 0] / 1e-6))
            time.sleep(0.002)

    try:
        step_until(lambda: out.sent > 1500, 5)
        k1 = out.sent - 200
        out.mark(k1, 1)  # well before the jump
        step_until(lambda: out.sent > k1 + 1500, 5)
        k2 = out.sent - 300
        out.mark(k2, 2)  # its window will span the jump
        jump_at = out.sent
        out.stamp_offset = 10.0  # from about here on, the stamps are 10 s later
        step_until(lambda: out.sent > jump_at + 700, 5)
        out.mark(jump_at + 700, 3)  # after the jump, stamped in the new clock
        step_until(lambda: live.stats.markers >= 3 and not live.epocher.pending, 15)
    finally:
        summary = live.close()
    assert onsets == {1: k1, 3: jump_at + 700}, summary
    assert summary["epochs_decoded"] == 2 and summary["epochs_rejected"]["gap"] == 1
    assert summary["gaps"] == 1


# -- marker streams as the field's tools send them ------------------------------------------------

def test_one_hot_annotation_streams_of_mne_lsls_player_name_the_stimulus(bundle, lead_session, stream_name):
    """``mne-lsl player FILE --annotations`` sends one float channel per annotation
    description, non-zero on the one that fires (formerly decoded as value 0, no stimulus)."""
    from mne_lsl.player import PlayerLSL

    raw = lead_session.raw.copy()
    markers = [m for m in lead_session.markers if m.code != 99999][:12]
    raw.set_annotations(mne.Annotations([m.sample / raw.info["sfreq"] for m in markers], [0.0] * len(markers),
                                        [str(m.code) for m in markers]))
    player = PlayerLSL(raw, chunk_size=10, name=stream_name, source_id=f"{stream_name}-src", annotations=True)
    player.start()
    try:
        live = LiveSession(bundle, stream_name, markers=f"{stream_name}-annotations", device="cpu").start()
        try:
            records = _step_until(live, lambda r: len(r) >= 6, timeout=30)
        finally:
            live.close()
    finally:
        player.stop()
    assert len(records) >= 6
    codes = [m.code for m in markers]
    for r in records:  # the description of the channel that fired, mapped to the gallery
        assert int(r["marker"]) in codes and r["stimulus_id"] == int(r["marker"])


def test_nan_and_inf_marker_values_give_strict_json_lines(tiny_bundle, counter_outlet, capsys):
    """A float marker stream that sends NaN and Inf: decoded as unknown markers, and
    every JSON line parses with a strict parser (bare NaN is not JSON)."""
    bundle = load_bundle(tiny_bundle)
    out = counter_outlet(_layout(bundle), 1000.0, markers="float64")

    def mark():
        import threading

        def run():
            values = [3.0, float("nan"), float("inf"), 4.5, float("-inf"), 5.0]
            out.marker_outlet.wait_for_consumers(timeout=60)  # the app is listening
            k = out.sent + 800
            for v in values:
                while out.sent <= k and not out._stop.is_set():
                    time.sleep(0.01)
                out.mark(k, v)
                k += 200

        threading.Thread(target=run, daemon=True).start()

    mark()
    code = app_main(["--bundle", str(tiny_bundle), "--stream", _name(out), "--headless", "--max-epochs", "6",
                     "--device", "cpu", "--timeout", "10", "--duration", "60"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [_strict(line) for line in captured.out.splitlines()]
    assert [r["marker"] for r in lines] == [3, "nan", "inf", 4.5, "-inf", 5]
    assert [r["stimulus_id"] for r in lines] == [3, None, None, None, None, 5]


def test_markers_sent_while_the_app_connects_are_not_lost(stream_name):
    """Markers that reach the inlet while the marker stream is being connected (once lost
    when an mne-lsl StreamLSL acquired them before our callback was attached): each
    delivered once."""
    import threading

    from mne_lsl.lsl import StreamInfo, StreamOutlet

    from bci_app.streams import open_markers

    outlet = StreamOutlet(StreamInfo(f"{stream_name}-m", "Markers", 1, 0.0, "int32", f"{stream_name}-m-src"))

    def push_at_once():
        outlet.wait_for_consumers(timeout=30)  # the app's inlet has just subscribed
        for code in range(1, 6):
            outlet.push_sample(np.array([code], dtype=np.int32))

    pusher = threading.Thread(target=push_at_once)
    pusher.start()
    markers = open_markers(f"{stream_name}-m", timeout=10)
    try:
        pusher.join(30)
        outlet.push_sample(np.array([6], dtype=np.int32))
        got, deadline = [], time.monotonic() + 5
        while len(got) < 6 and time.monotonic() < deadline:
            got += markers.poll()
            time.sleep(0.01)
        time.sleep(0.2)
        got += markers.poll()
    finally:
        markers.close()
    assert [v for _, v in got] == [1, 2, 3, 4, 5, 6]


def test_a_multi_channel_marker_stream_that_is_not_an_annotation_stream_is_refused(stream_name):
    """A marker stream of [code, trial] rows would have been read as one-hot (channel names
    as markers): only streams of type 'annotations' are one-hot; others are an error."""
    from mne_lsl.lsl import StreamInfo, StreamOutlet

    from bci_app.streams import open_markers

    outlet = StreamOutlet(StreamInfo(f"{stream_name}-m", "Markers", 2, 0.0, "int32", f"{stream_name}-m-src"))
    with pytest.raises(StreamError, match="has 2 channels and is not an annotation stream"):
        open_markers(f"{stream_name}-m", timeout=10)
    del outlet
