"""The RSVP run driven by a simulated display loop, and its marker outlet over real LSL."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bci_app.presentation import TimingLog
from bci_app.rsvp import MarkerSender, RsvpRun
from bci_app.stimuli import CATCH_CODE, FrameTiming, Stimulus, make_sequences

HZ = 60.0
T0 = 500.25


def _run(n=45, *, auto_pause=0.5, catch_rate=0.0, seed=2):
    stimuli = [Stimulus(i + 1, f"c{i}/{i}.jpg", None) for i in range(n)]
    sequences = make_sequences(stimuli, seed=seed, catch=Stimulus(0, "catch/buzz.jpg", None), catch_rate=catch_rate)
    timing = FrameTiming.for_display(HZ)
    sent = []
    run = RsvpRun(sequences, timing, lambda trial, t: sent.append((trial, t)), TimingLog(timing, "vsync"),
                  auto_pause=auto_pause)
    return run, sent


def _display(run, *, drop_at=(), max_frames=100_000, on_frame=None):
    """Flip at 60 Hz (a frame index in ``drop_at`` misses its refresh: shown one frame
    late); returns the frames shown with their flip times."""
    shown, t = [], T0
    for i in range(max_frames):
        if run.finished:
            break
        if on_frame is not None:
            on_frame(i, run)
        if i in drop_at:
            t += 1 / HZ
        frame = run.frame(t)
        run.flipped(t)
        shown.append((frame, t))
        t += 1 / HZ
    return shown


def test_images_follow_the_frame_plan_and_each_marker_carries_its_flip_time():
    run, sent = _run(catch_rate=0.5)
    shown = _display(run)
    assert run.state == "done" and run.shown == run.total == len(sent)
    assert [t.code for t, _ in sent] == [t.code for s in run.sequences for t in s]
    assert CATCH_CODE in [t.code for t, _ in sent]
    flips = {t for _, t in shown}
    assert all(t in flips for _, t in sent)  # stamped at a flip, the one that showed it
    for s in range(len(run.sequences)):
        onsets = np.array([t for trial, t in sent if trial.sequence == s])
        np.testing.assert_allclose(np.diff(onsets), 12 / HZ, atol=1e-9)  # 6 frames on, 6 blank
    # each image is on for exactly 6 frames; the photodiode square changes at each onset
    runs = [(f.image, f.photodiode) for f, _ in shown]
    on_frames = [sum(1 for img, _ in runs if img is trial.stimulus and not trial.catch) for trial, _ in sent
                 if not trial.catch]
    assert set(on_frames) == {6}
    toggles = sum(1 for a, b in zip(runs, runs[1:]) if a[1] != b[1])
    assert toggles == len(sent)
    s = run.log.summary()
    assert s["late_onsets"] == 0 and s["error_ms"]["max"] < 1e-6


def test_sequences_wait_for_the_pause_between_them():
    run, sent = _run(auto_pause=0.5)
    _display(run)
    firsts = [t for trial, t in sent if trial.position == 0]
    lasts = [t for trial, t in sent if trial.position == len(run.sequences[trial.sequence]) - 1]
    gaps = np.array(firsts[1:]) - np.array(lasts[:-1])
    assert (gaps >= 12 / HZ + 0.5 - 1e-9).all() and (gaps < 12 / HZ + 0.5 + 2 / HZ).all()


def test_a_dropped_frame_delays_the_rest_of_its_sequence_and_is_logged():
    run, sent = _run()
    _display(run, drop_at={100})  # frame 100 is inside the first sequence's 9th image
    s = run.log.summary()
    assert s["dropped_frames"] >= 1 and s["late_onsets"] >= 1
    late = [o for o, k in zip(run.log.onsets, run.log.late_frames()) if k]
    assert {o.sequence for o in late} == {0}  # the next sequence is planned from its own start


def test_without_auto_pause_the_run_waits_for_a_key_and_pause_resume_abort_work():
    run, sent = _run(auto_pause=None)
    frames = _display(run, max_frames=30)
    assert run.state == "waiting" and not sent and "press a key" in frames[-1][0].prompt
    run.proceed()
    _display(run, max_frames=5)
    run.pause()  # during a sequence: it finishes first
    _display(run, max_frames=300)
    assert run.state == "paused" and len(sent) == 20
    run.resume()
    assert run.state == "waiting"
    run.proceed()
    _display(run, max_frames=30)
    run.abort()
    assert run.finished and run.log.aborted and run.shown == len(sent) == len(run.log.onsets) > 20


def _pull(inlet, n, timeout=10.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < n and time.monotonic() < deadline:
        data, ts = inlet.pull_chunk(timeout=0.1)
        got += list(zip([row[0] for row in data] if len(data) else [], ts))
    return got


@pytest.mark.parametrize("labels", [False, True])
def test_the_marker_outlet_sends_codes_or_labels_stamped_with_the_flip_time(stream_name, labels):
    from mne_lsl.lsl import StreamInlet, resolve_streams

    sender = MarkerSender(stream_name, labels=labels)
    try:
        inlet = StreamInlet(resolve_streams(timeout=5.0, name=stream_name)[0])
        inlet.open_stream(timeout=5.0)
        assert sender.wait_for_consumers(5.0)
        run, _ = _run(n=3, catch_rate=1.0)
        trials = [t for s in run.sequences for t in s]
        flips = [1000.0 + 0.2 * k for k in range(len(trials))]
        for trial, t in zip(trials, flips):
            sender(trial, t)
        got = _pull(inlet, len(trials))
    finally:
        sender.close()
    assert [v for v, _ in got] == [t.label if labels else t.code for t in trials]
    np.testing.assert_allclose([t for _, t in got], flips, atol=1e-9)


def test_the_marker_stream_announces_the_image_set_its_numbers_count_in(stream_name):
    from mne_lsl.lsl import StreamInlet, resolve_streams

    sender = MarkerSender(stream_name, image_set="training")
    try:
        inlet = StreamInlet(resolve_streams(timeout=5.0, name=stream_name)[0])
        inlet.open_stream(timeout=5.0)
        assert inlet.get_sinfo(timeout=5.0).desc.child_value("image_set") == "training"
        inlet.close_stream()
    finally:
        sender.close()
