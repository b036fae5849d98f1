"""The live pipeline over real LSL on loopback: bci-replay's player -> LiveSession.

Every test plays a real session of the tiny synthetic set in real time (markers start 2 s
into it, 5 per second) and compares what the live side computed with the offline
pipeline on the same file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bci_app.decoder import Decoder
from bci_app.pipeline import LiveSession
from bci_app.sessions import Marker, ReplaySession, read_session
from bci_app.streams import StreamError
from trainer.bundle import load_bundle
from trainer.data.things_eeg2 import epoch_session, read_raw_session

pytestmark = pytest.mark.slow  # real-time replays of a few seconds each


def _test_file(root, subject=1, session=1):
    return root / "raw_data" / f"sub-{subject:02d}" / f"ses-{session:02d}" / "raw_eeg_test.npy"


def _offline(path, bundle):
    epochs, codes = epoch_session(read_raw_session(path), bundle.spec)
    return epochs, codes


def _images(records, ready=None):
    """Records (and their epochs) of image trials: catch trials (99999) are not epoched
    offline."""
    keep = [i for i, r in enumerate(records) if r["marker"] not in (99999, "catch")]
    out = [records[i] for i in keep]
    return out if ready is None else (out, [ready[i] for i in keep])


def _align(values, codes):
    """Offset k with codes[k:k+n] == values (the live side may have joined late)."""
    n = len(values)
    for k in range(len(codes) - n + 1):
        if list(codes[k : k + n]) == list(values):
            return k
    raise AssertionError(f"live marker sequence {values[:8]}... is not in the file's events")


def test_online_epochs_and_predictions_equal_offline(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name):
    bundle = load_bundle(tiny_bundle)
    path = _test_file(tiny_dataset)
    play(lead_session)
    live = LiveSession(bundle, stream_name, device="cpu").start()
    try:
        records, ready = run_until(live, 25)
    finally:
        summary = live.close()
    assert len(records) == 25
    records, ready = _images(records, ready)
    n = len(records)
    values = [r["marker"] for r in records]
    off_epochs, off_codes = _offline(path, bundle)
    k = _align(values, off_codes)
    online = np.stack([r.epoch for r in ready])
    expected = off_epochs[k : k + n]
    # the same samples through the same spec: equal to float32 rounding
    np.testing.assert_allclose(online, expected, rtol=0, atol=2e-5)
    # and therefore the same predictions as the offline decoder on the offline epochs
    offline = Decoder(bundle, device="cpu").decode(expected, [None] * n)
    assert [r["topk"] for r in records] == [p.topk for p in offline]
    np.testing.assert_allclose([r["confidence"] for r in records], [p.confidence for p in offline], atol=1e-5)
    for r in records:
        assert r["stimulus_id"] == r["marker"]  # test-set codes are the gallery ids
        assert r["t_marker"] < r["t_ready"] <= r["t_decided"]
        assert set(r) >= {"stimulus_id", "topk", "confidence", "t_marker", "t_ready", "t_decided", "averaged"}
    assert summary["epochs_decoded"] == 25 and summary["epochs_rejected"]["gap"] == 0
    assert summary["decision_latency"]["n"] == 25


def test_string_markers_are_resolved_through_the_gallery(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name):
    bundle = load_bundle(tiny_bundle)
    session = lead_session
    assert all("/" in m.label for m in session.markers if m.code != 99999)  # concept/file labels
    play(session, markers="string")
    live = LiveSession(bundle, stream_name, device="cpu").start()
    try:
        records, _ = run_until(live, 8)
    finally:
        live.close()
    assert len(records) == 8
    labels = {m.label: m.code for m in session.markers}
    for r in records:
        assert isinstance(r["marker"], str)
        assert r["stimulus_id"] == (None if r["marker"] == "catch" else labels[r["marker"]])


def test_shuffled_and_extra_channels_are_picked_by_name(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name):
    import mne

    bundle = load_bundle(tiny_bundle)
    path = _test_file(tiny_dataset)
    base = lead_session
    rng = np.random.default_rng(0)
    order = list(rng.permutation(base.ch_names))
    raw = base.raw.copy().reorder_channels(order)
    extra = mne.io.RawArray(rng.standard_normal((2, raw.n_times)) * 1e-5,
                            mne.create_info(["EXG1", "EXG2"], raw.info["sfreq"], "misc"), verbose="error")
    raw.add_channels([extra], force_update_info=True)
    play(ReplaySession(raw=raw, markers=base.markers, source="shuffled"))
    live = LiveSession(bundle, stream_name, device="cpu").start()
    try:
        assert live.source.ch_names[:3] == order[:3] and "EXG1" in live.source.ch_names
        records, ready = run_until(live, 10)
    finally:
        live.close()
    records, ready = _images(records, ready)
    off_epochs, off_codes = _offline(path, bundle)
    k = _align([r["marker"] for r in records], off_codes)
    np.testing.assert_allclose(np.stack([r.epoch for r in ready]), off_epochs[k : k + len(ready)], rtol=0, atol=2e-5)


def test_stream_at_another_rate_is_resampled_like_offline(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name):
    bundle = load_bundle(tiny_bundle)
    base = lead_session
    raw = base.raw.copy().resample(500.0, npad="auto", verbose="error")
    markers = [Marker(int(round(m.sample / 2)), m.code, m.label) for m in base.markers]
    play(ReplaySession(raw=raw, markers=markers, source="500 Hz"))
    live = LiveSession(bundle, stream_name, device="cpu").start()
    try:
        assert live.source.sfreq == 500.0
        records, ready = run_until(live, 10)
    finally:
        live.close()
    assert len(records) == 10
    records, ready = _images(records, ready)
    # offline, on the same 500 Hz data and onsets, with the same spec
    spec = bundle.spec
    onsets = np.array([m.sample for m in markers if m.code != 99999])
    codes = [m.code for m in markers if m.code != 99999]
    k = _align([r["marker"] for r in records], codes)
    data = raw.get_data(picks=list(spec.channels))
    expected, kept = spec.epochs_from_continuous(data, 500.0, spec.channels, onsets[k : k + len(ready)])
    assert kept.all()
    np.testing.assert_allclose(np.stack([r.epoch for r in ready]), expected, rtol=0, atol=2e-5)
    assert expected.shape[1:] == (bundle.n_chans, bundle.n_times)


def test_missing_channels_are_named(tiny_dataset, lead_session, tiny_bundle, play, stream_name):
    bundle = load_bundle(tiny_bundle)
    base = lead_session
    gone = list(bundle.spec.channels[:2])
    raw = base.raw.copy().drop_channels(gone)
    play(ReplaySession(raw=raw, markers=base.markers, source="missing"))
    live = LiveSession(bundle, stream_name, device="cpu")
    with pytest.raises(StreamError) as err:
        live.start()
    live.close()
    assert "missing required channel(s): " + ", ".join(gone) in str(err.value)


def test_unknown_marker_values_and_non_finite_samples(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name):
    bundle = load_bundle(tiny_bundle)
    base = lead_session
    raw = base.raw.copy()
    image = [m for m in base.markers if m.code != 99999]
    # the 6th image marker becomes an unknown value; one NaN sample in a model channel
    # spoils every epoch whose raw window holds it; a NaN in Fp1 (not a model channel) none
    nan_at = image[20].sample + 50
    raw._data[raw.ch_names.index(bundle.spec.channels[0]), nan_at] = np.nan
    raw._data[0, image[8].sample + 50] = np.nan
    markers = [Marker(m.sample, 777 if m is image[5] else m.code, m.label) for m in base.markers]
    start, n_in = bundle.spec.window(base.sfreq)
    spoiled = [m for m in markers if m.sample + start <= nan_at < m.sample + start + n_in]
    until = max(i for i, m in enumerate(markers) if m in spoiled) + 3  # decode past the spoiled ones
    play(ReplaySession(raw=raw, markers=markers, source="faults"))
    live = LiveSession(bundle, stream_name, device="cpu").start()
    try:
        records, _ = run_until(live, until - len(spoiled))
    finally:
        summary = live.close()
    unknown = [r for r in records if r["marker"] == 777]
    assert len(unknown) == 1 and unknown[0]["stimulus_id"] is None and unknown[0]["averaged"] is None
    assert summary["markers_unknown"] == 1 and summary["unknown_values"] == {"777": 1}
    assert len(spoiled) >= 2 and summary["epochs_rejected"]["non-finite"] == len(spoiled)
    decoded = [r["t_marker"] for r in records]
    assert len(decoded) == until - len(spoiled)
    assert image[8].code in [r["marker"] for r in records]  # the Fp1 NaN harmed nothing


def test_stream_loss_and_return(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name, tmp_path):
    bundle = load_bundle(tiny_bundle)
    base = lead_session
    player = play(base)
    live = LiveSession(bundle, stream_name, device="cpu", stall_timeout=0.5, record=tmp_path / "rec").start()
    try:
        first, _ = run_until(live, 3)
        player.stop()  # the amplifier goes away...
        import time

        t_end = time.monotonic() + 2.0
        while time.monotonic() < t_end:
            live.step()
            time.sleep(0.01)
        assert live.status in ("stalled", "lost")
        n_before = live.source.n_total
        play(base)  # ...and comes back (same name and source id)
        again, _ = run_until(live, 3, timeout=60)
    finally:
        summary = live.close()
    assert len(first) == 3 and len(again) == 3
    assert live.source.n_total > n_before
    assert summary["stalls"] >= 1 and summary["gaps"] >= 1
    assert any("no data" in e for e in live.events) and any("again" in e or "back" in e for e in live.events)
    # the recording kept both parts, with the gap marked
    import mne

    raw = mne.io.read_raw_fif(summary["recording"], verbose="error")
    assert raw.n_times == live.source.n_total
    assert "BAD_gap" in list(raw.annotations.description)


def test_record_then_replay_gives_the_same_predictions(tiny_dataset, lead_session, tiny_bundle, play, run_until, stream_name, tmp_path):
    import mne

    bundle = load_bundle(tiny_bundle)
    play(lead_session)
    live = LiveSession(bundle, stream_name, device="cpu", record=tmp_path / "rec").start()
    try:
        records, _ = run_until(live, 12)
    finally:
        summary = live.close()
    fif = tmp_path / "rec" / "recording-raw.fif"
    assert summary["recording"] == str(fif)
    raw = mne.io.read_raw_fif(fif, verbose="error")
    assert raw.ch_names == read_session(_test_file(tiny_dataset)).ch_names
    saved = [json.loads(line) for line in (tmp_path / "rec" / "predictions.jsonl").read_text().splitlines()]
    assert [s["topk"] for s in saved] == [r["topk"] for r in records]
    # replay the recording folder: the same markers decode to the same predictions
    second = f"{stream_name}-again"
    play(read_session(tmp_path / "rec"), name=second)
    fresh = load_bundle(tiny_bundle)
    live2 = LiveSession(fresh, second, device="cpu").start()
    try:
        replayed, _ = run_until(live2, len(records) - 2)
    finally:
        live2.close()
    k = _align([r["marker"] for r in replayed], [r["marker"] for r in records])
    for a, b in zip(replayed, records[k:]):
        assert a["topk"] == b["topk"]
        np.testing.assert_allclose(a["confidence"], b["confidence"], atol=1e-4)


def test_markers_without_data_are_rejected_and_counted(tiny_dataset, lead_session, tiny_bundle, play, stream_name):
    """A marker for a time the EEG never reaches (the EEG stopped; or a marker source
    with a wrong clock) waits no_data_timeout, then is rejected as "no data"; one from
    before the app connected is rejected too.  Real marker outlet, real EEG stream."""
    import time

    from mne_lsl.lsl import StreamInfo, StreamOutlet, local_clock

    bundle = load_bundle(tiny_bundle)
    play(lead_session, markers="none")
    info = StreamInfo(f"{stream_name}-own-markers", "Markers", 1, 0.0, "int32", f"{stream_name}-own-src")
    outlet = StreamOutlet(info)
    live = LiveSession(bundle, stream_name, markers=f"{stream_name}-own-markers", device="cpu",
                       no_data_timeout=1.0).start()
    try:
        time.sleep(0.5)
        outlet.push_sample(np.array([3], dtype=np.int32), timestamp=local_clock() + 60.0)  # never reached
        outlet.push_sample(np.array([4], dtype=np.int32), timestamp=local_clock() - 600.0)  # before the buffer
        records, deadline = [], time.monotonic() + 10
        while time.monotonic() < deadline and live.epocher is not None and (
                live.stats.markers < 2 or live.epocher.pending):
            records += live.step()
            time.sleep(0.01)
    finally:
        summary = live.close()
        del outlet
    assert records == []
    assert summary["markers_seen"] == 2
    assert summary["epochs_rejected"]["no data"] == 1  # the one the EEG never reached
    assert summary["epochs_rejected"]["before start"] == 1  # the one from before the app connected
    assert summary["epochs_rejected"]["overrun"] == 0 and summary["epochs_pending"] == 0


def test_the_loop_sleeps_until_a_chunk_arrives_and_wakes_for_it(stream_name):
    """EEGSource's acquisition thread blocks in liblsl (no polling) and wakes
    ``wait`` when a chunk is in the ring; without data ``wait`` sleeps its timeout; a
    request (``notify``) wakes it; disconnecting ends the thread.  Real LSL outlet."""
    import time

    from mne_lsl.lsl import StreamInfo, StreamOutlet, local_clock

    from bci_app.streams import EEGSource

    info = StreamInfo(f"{stream_name}-wake", "EEG", 3, 100.0, "float32", f"{stream_name}-wake-src")
    info.set_channel_names(["A", "B", "C"])
    outlet = StreamOutlet(info)
    src = EEGSource(f"{stream_name}-wake", bufsize=5.0).connect(timeout=10.0)
    try:
        assert src.connected and src.clock_offset() is not None
        src.wait(0.0)  # forget anything before
        t0 = time.monotonic()
        assert src.wait(0.3) is False and time.monotonic() - t0 >= 0.25  # nothing came: slept its timeout
        outlet.wait_for_consumers(timeout=10)
        base = local_clock() - 1.0  # regular stamps at 100 Hz (the timeline sees no gap between the chunks)

        def push(data, first, outlet=outlet):
            outlet.push_chunk(data, timestamp=base + (first + np.arange(len(data))) / 100.0)

        push(np.arange(30, dtype=np.float32).reshape(10, 3), 0)
        assert src.wait(10.0) is True
        deadline = time.monotonic() + 5
        while src.n_total < 10 and time.monotonic() < deadline:
            src.wait(0.5)
        assert src.n_total == 10
        data, _, _ = src.read(0, 10)
        np.testing.assert_array_equal(data, np.arange(30).reshape(10, 3))
        # waiting for a sample: a chunk short of it does not wake the loop, the one with it does
        push(np.zeros((5, 3), dtype=np.float32), 10)
        assert src.wait(1.0, until=20) is False and src.n_total == 15
        push(np.zeros((5, 3), dtype=np.float32), 15)
        t0 = time.monotonic()
        assert src.wait(10.0, until=20) is True and src.n_total == 20 and time.monotonic() - t0 < 5.0
        assert src.wait(0.0, until=20) is True  # already there
        src.notify()
        t0 = time.monotonic()
        assert src.wait(5.0) is True and time.monotonic() - t0 < 1.0
    finally:
        src.disconnect()
        del outlet
    assert not src.connected and src.clock_offset() is None
