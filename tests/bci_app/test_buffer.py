"""The EEG ring buffer, the recorder feed and the online epocher on samples pushed by hand
(the arithmetic behind the live path, without LSL; the same code runs on mne-lsl's
acquisition thread live)."""

from __future__ import annotations

import threading

import mne
import numpy as np
import pytest

from bci_app.epochs import MarkerEvent, OnlineEpocher
from bci_app.recording import RecorderFeed, SessionRecorder
from bci_app.streams import EEGSource, StreamError, marker_rows
from trainer.preprocessing import PreprocessingSpec

SFREQ = 1000.0
T0 = 7000.5
CH = ["Cnt", "Pz", "Oz", "O1"]


def _source(names=CH, sfreq=SFREQ, bufsize=30.0):
    src = EEGSource("test", bufsize=bufsize)
    src.open_buffer(names, sfreq)
    return src


def _counter(first, n, n_ch=len(CH)):
    """Samples whose first channel counts them (in microvolts, exact in the journal's
    float32), the others a little noise."""
    data = np.random.default_rng(first).normal(size=(n, n_ch)) * 1e-5
    data[:, 0] = np.arange(first, first + n) * 1e-6
    return data


def _push(src, first, n, *, stamp_first=None, now=None):
    stamp_first = T0 + first / src.sfreq if stamp_first is None else stamp_first
    src.push(_counter(first, n, len(src.ch_names)), stamp_first + np.arange(n) / src.sfreq,
             T0 if now is None else now)


def _recorded_counter(folder):
    raw = mne.io.read_raw_fif(folder / "recording-raw.fif", verbose="error")
    return np.round(raw.get_data(picks=[0])[0] / 1e-6).astype(np.int64), raw.annotations


# -- the recording race -------------------------------------------------------------------

def test_a_chunk_arriving_while_the_recorder_reads_is_not_lost(tmp_path, monkeypatch):
    """The acquisition thread appends between the feed's read and its bookkeeping: the
    chunk must be written at the next feed (the old code counted it as written)."""
    src = _source()
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0)
    feed = RecorderFeed(src, rec, 0)
    _push(src, 0, 100)
    original_read = src.read_new
    read = src.read

    def racing(*args, **kwargs):
        out = original_read(*args, **kwargs)
        _push(src, src.n_total, 7)  # a chunk lands right after the read
        return out

    def racing_read(*args, **kwargs):  # the same race for a feed that reads with read()
        out = read(*args, **kwargs)
        _push(src, src.n_total, 7)
        return out

    monkeypatch.setattr(src, "read_new", racing)
    monkeypatch.setattr(src, "read", racing_read)
    for _ in range(5):
        feed.feed()
    monkeypatch.undo()
    feed.feed()
    rec.close()
    counter, _ = _recorded_counter(tmp_path / "rec")
    assert src.n_total == 135
    np.testing.assert_array_equal(counter, np.arange(135))


def test_the_feed_holds_every_sample_under_a_concurrent_writer(tmp_path):
    """One thread pushing 1-sample chunks, the other feeding the recorder: every sample
    is in the recording, once, in order."""
    src = _source()
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0.05)
    feed = RecorderFeed(src, rec, 0)
    n = 20_000
    done = threading.Event()

    def writer():
        for k in range(n):
            _push(src, k, 1)
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    while not done.is_set():
        feed.feed()
    thread.join()
    feed.feed()
    rec.close()
    counter, annotations = _recorded_counter(tmp_path / "rec")
    np.testing.assert_array_equal(counter, np.arange(n))
    assert "BAD_gap" not in annotations.description


def test_samples_that_left_the_buffer_unwritten_are_a_gap(tmp_path):
    src = _source(bufsize=1.0)
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0)
    feed = RecorderFeed(src, rec, 0)
    _push(src, 0, 500)
    feed.feed()
    _push(src, 500, 3000)  # 2.5 s while the recorder was away: 2000 samples lost
    feed.feed()
    # markers map to the recording on both sides of the hole, and not inside it
    assert [feed.recording_sample(k) for k in (0, 499, 500, 2499, 2500, 3499, 3500)] == [0, 499, None, None, 500,
                                                                                         1499, None]
    rec.close()
    counter, annotations = _recorded_counter(tmp_path / "rec")
    np.testing.assert_array_equal(counter, np.r_[np.arange(500), np.arange(2500, 3500)])
    assert feed.skipped == 2000
    gaps = [round(o * SFREQ) for o, d in zip(annotations.onset, annotations.description) if d == "BAD_gap"]
    assert gaps == [500]


def test_a_stream_gap_is_marked_where_it_happened(tmp_path):
    src = _source()
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0)
    feed = RecorderFeed(src, rec, 0)
    _push(src, 0, 1000)
    _push(src, 1000, 1000, stamp_first=T0 + 1000 / SFREQ + 3.0)  # 3 s of samples never came
    src._verified = None  # the identity check (LSL) is not part of this test
    feed.feed()
    rec.close()
    counter, annotations = _recorded_counter(tmp_path / "rec")
    np.testing.assert_array_equal(counter, np.arange(2000))
    assert [round(o * SFREQ) for o, d in zip(annotations.onset, annotations.description) if d == "BAD_gap"] == [1000]
    assert src.gaps == [1000] and 2990 <= src.samples_lost <= 3010


# -- epochs around gaps, clock jumps and flat channels ------------------------------------

def _spec():
    return PreprocessingSpec(channels=("Pz", "Oz", "O1"), sfreq=250.0, tmin=0.0, tmax=0.5, baseline=(-0.1, 0.0),
                             l_freq=1.0, h_freq=40.0, pad=0.2)


def _marker(t, now=T0):
    return MarkerEvent(t=t, value=1, stimulus_id=1, label="1", received=now)


def test_a_clock_jump_is_a_gap_and_markers_on_either_side_find_their_samples():
    src = _source()
    epocher = OnlineEpocher(_spec(), src)
    first_len = 5000
    _push(src, 0, first_len)  # 5 s on the sender's clock ...
    _push(src, first_len, 5000, stamp_first=T0 + first_len / SFREQ + 10.0)  # ... then it jumps by +10 s
    src._verified = None  # the identity check (LSL) is not part of this test
    assert src.gaps == [first_len]
    before, spanning = T0 + 2.0, T0 + 4.8  # the second's window runs into the jump
    after = T0 + first_len / SFREQ + 10.0 + 2.0  # sample 7000 in the new clock
    for t in (before, spanning, after):
        epocher.add(_marker(t))
    ready, rejected = epocher.poll(T0)
    assert [r.marker.t for r in ready] == [before, after]
    assert [(m.t, reason) for m, reason in rejected] == [(spanning, "gap")]
    assert [r.marker.onset for r in ready] == [2000, 7000]
    # a marker in the jump (the sender's clock never showed that time): a gap too
    epocher.add(_marker(T0 + 8.0))
    assert [reason for _, reason in epocher.poll(T0)[1]] == ["gap"]


def test_a_clock_that_goes_back_is_a_gap_not_a_mixup():
    src = _source()
    epocher = OnlineEpocher(_spec(), src)
    _push(src, 0, 5000)
    _push(src, 5000, 5000, stamp_first=T0 - 20.0)  # the sender's clock went back 25 s
    src._verified = None
    t = T0 - 20.0 + 2.0  # 2 s into the second segment: sample 7000, nothing earlier matches it
    epocher.add(_marker(t))
    ready, rejected = epocher.poll(T0)
    assert rejected == [] and [r.marker.onset for r in ready] == [7000]


def test_samples_after_a_gap_wait_for_the_stream_check():
    src = _source()
    _push(src, 0, 2000)
    _push(src, 2000, 2000, stamp_first=T0 + 2.0 + 1.0)
    assert src.gaps == [2000]
    assert src.available == 2000  # held back until the stream is known to be the same
    src._verified = None
    assert src.available == 4000


def test_epochs_held_back_by_a_slow_stream_check_are_decided_not_shed():
    """After a gap the samples wait for the stream's check; when it takes longer than
    max_delay, the epochs it held back are still decided (their wait counts from the
    release), and an epoch overdue since its release is shed as before."""
    src = _source()
    epocher = OnlineEpocher(_spec(), src, max_delay=1.0)
    _push(src, 0, 2000, now=T0)
    _push(src, 2000, 3000, stamp_first=T0 + 2.0 + 10.0, now=T0 + 3.0)  # a clock jump: held back
    assert src.gaps == [2000] and src.available == 2000
    t = T0 + 2.0 + 10.0 + 1.0  # sample 3000, its window complete when the chunk arrived
    epocher.add(_marker(t, now=T0 + 3.0))
    assert epocher.poll(T0 + 4.0) == ([], [])  # waiting for the check
    src._release(T0 + 6.0)  # the check took 3 s
    ready, rejected = epocher.poll(T0 + 6.5)
    assert rejected == [] and [r.marker.onset for r in ready] == [3000] and ready[0].t_ready == T0 + 6.0
    assert src.available_since(2999) == T0 + 6.0 and src.available_since(1999) == T0
    epocher.add(_marker(t + 0.5, now=T0 + 6.5))
    ready, rejected = epocher.poll(T0 + 7.5)  # 1.5 s after its release: overdue
    assert ready == [] and [reason for _, reason in rejected] == ["overload"]


def test_flat_channels_are_rejected_with_a_warning():
    """An int16 stream in volts: every sample rounds to 0."""
    src = _source()
    epocher = OnlineEpocher(_spec(), src)
    data = np.round(_counter(0, 3000) * 0)  # what int16 makes of microvolt-sized volts
    data[:, 0] = np.arange(3000)
    src.push(data, T0 + np.arange(3000) / SFREQ, T0)
    epocher.add(_marker(T0 + 1.0))
    ready, rejected = epocher.poll(T0)
    assert ready == [] and [r for _, r in rejected] == ["flat"]
    notes = epocher.take_notes()
    assert len(notes) == 1 and "Pz, Oz, O1" in notes[0] and "int" in notes[0]
    assert epocher.rejected["flat"] == 1
    epocher.add(_marker(T0 + 1.5))
    epocher.poll(T0)
    assert epocher.take_notes() == []  # said once


def test_a_raw_window_longer_than_the_buffer_fails_at_start():
    src = _source(bufsize=5.0)
    spec = PreprocessingSpec(channels=("Pz",), sfreq=250.0, tmin=0.0, tmax=8.0, baseline=None, l_freq=None,
                             h_freq=None, pad=0.0)
    with pytest.raises(StreamError, match="does not fit the app's buffer of 5 s"):
        OnlineEpocher(spec, src)


def test_a_flood_of_ready_epochs_is_decided_in_bounded_batches_and_the_late_ones_shed():
    src = _source()
    epocher = OnlineEpocher(_spec(), src, max_batch=16, max_delay=1.0)
    _push(src, 0, 20_000, now=T0 + 20.0)  # all arrived at once, 20 s in
    for k in range(100):
        epocher.add(_marker(T0 + 1.0 + k * 0.1, now=T0 + 1.0 + k * 0.1))
    ready, rejected = epocher.poll(T0 + 20.5)  # 0.5 s after they arrived: in time
    assert len(ready) == 16 and rejected == []
    assert [r.marker.t for r in ready] == [T0 + 1.0 + k * 0.1 for k in range(84, 100)]  # the newest first
    ready, rejected = epocher.poll(T0 + 22.0)  # the rest waited 2 s: too late to be worth deciding
    assert ready == [] and len(rejected) == 84 and {r for _, r in rejected} == {"overload"}
    assert epocher.rejected["overload"] == 84 and epocher.pending == []


# -- one-hot marker streams ----------------------------------------------------------------

def test_one_hot_rows_name_the_channel_that_fires():
    names = ["00001_aardvark/aardvark_01b.jpg", "17", "catch"]
    rows = np.array([[0, -1, 0], [2.5, 0, 0], [0, 0, 0], [0, -1, -1]])
    assert marker_rows(rows, names, one_hot=True) == [["17"], ["00001_aardvark/aardvark_01b.jpg"], [], ["17", "catch"]]
    assert marker_rows(np.array([[17.0], [99999.0]]), ["marker"]) == [[17.0], [99999.0]]
    # an annotation stream of one description is one-hot too: its value is a duration, not a code
    assert marker_rows(np.array([[-1.0], [0.5]]), ["stim"], one_hot=True) == [["stim"], ["stim"]]


def test_at_the_end_samples_held_back_after_a_gap_are_recorded_not_dropped(tmp_path, caplog):
    """A gap just before the session ends: the stream check cannot finish (the stream is
    gone), yet the samples received after the gap belong in the recording."""
    src = EEGSource(f"gone-{id(tmp_path)}")
    src.open_buffer(CH, SFREQ)
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0)
    feed = RecorderFeed(src, rec, 0)
    _push(src, 0, 1000)
    _push(src, 1000, 150, stamp_first=T0 + 1000 / SFREQ + 2.0)  # 0.15 s after a 2 s gap: a suspect
    _push(src, 1150, 100, stamp_first=T0 + 1150 / SFREQ + 2.0)  # confirmed: a gap, held back
    feed.feed()
    assert feed.next == 1000
    src.finish(timeout=5.0)
    feed.feed()
    rec.close()
    counter, annotations = _recorded_counter(tmp_path / "rec")
    np.testing.assert_array_equal(counter, np.arange(1250))
    assert "BAD_gap" in annotations.description
    assert "could not be checked" in caplog.text


def test_a_sample_before_the_recording_began_maps_to_none(tmp_path):
    """A recording started mid-session: a marker whose onset lies before its first sample
    (its window was cut before the recording began) is not in the recording; asking must
    not fail (it raised IndexError and ended the session)."""
    src = _source(bufsize=10.0)
    _push(src, 0, 1000)
    rec = SessionRecorder(tmp_path / "rec", CH, SFREQ, flush_interval=0)
    feed = RecorderFeed(src, rec, 600)
    feed.feed()
    assert [feed.recording_sample(k) for k in (0, 599, 600, 999, 1000)] == [None, None, 0, 399, None]
    rec.close()
