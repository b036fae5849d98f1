"""Provisional decisions live (bundles trained with --windows): the epocher hands out each
stage's epoch as soon as its samples are in, and the session decides it before the whole
epoch, over real LSL."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bci_app.epochs import MarkerEvent, OnlineEpocher
from bci_app.streams import EEGSource
from trainer.bundle import load_bundle
from trainer.preprocessing import PreprocessingSpec

SFREQ = 1000.0
T0 = 500.25
CH = ["Pz", "Oz", "O1"]
SPEC = PreprocessingSpec(channels=tuple(CH), sfreq=250.0, tmin=0.0, tmax=1.0, baseline=(-0.2, 0.0), l_freq=0.5,
                         h_freq=40.0, pad=0.3)


def _source():
    src = EEGSource("test-windows", bufsize=30.0)
    src.open_buffer(CH, SFREQ)
    return src


def _push(src, first, n):
    data = np.random.default_rng(first).normal(size=(n, len(CH))) * 1e-5
    src.push(data, T0 + (first + np.arange(n)) / SFREQ, T0)


def test_each_stage_is_handed_out_once_its_samples_are_in_and_equals_the_start_of_the_epoch():
    src = _source()
    epocher = OnlineEpocher(SPEC, src, stages=[0.3, 0.5])
    onset = 2000
    _push(src, 0, onset)
    epocher.add(MarkerEvent(t=T0 + onset / SFREQ, value=1, stimulus_id=1, label="1", received=T0))
    start, _ = SPEC.window(SFREQ)
    got = []
    for step in range(0, 1200, 10):  # 10-sample chunks up to past the epoch's end
        _push(src, onset + step, 10)
        ready, rejected = epocher.poll(T0)
        assert rejected == []
        for p in epocher.take_provisional():
            got.append((p.end, src.available, p.epoch))
        if ready:
            final = ready[0].epoch
            break
    else:
        raise AssertionError("the whole epoch never became ready")
    assert [end for end, _, _ in got] == [0.3, 0.5]
    for (end, available, epoch), k in zip(got, range(2)):
        # handed out with the chunk that completed its raw window, not later
        assert available - (onset + start + epocher.stage_n_in[k]) < 10
        n = int(round(end * SPEC.sfreq))
        np.testing.assert_allclose(epoch, final[:, :n], rtol=1e-5, atol=1e-6)
    assert epocher.take_provisional() == []


def test_stages_completed_together_give_only_the_latest_and_none_once_the_epoch_is_whole():
    src = _source()
    epocher = OnlineEpocher(SPEC, src, stages=[0.3, 0.5])
    _push(src, 0, 2300)
    epocher.add(MarkerEvent(t=T0 + 2.0, value=1, stimulus_id=1, label="1", received=T0))
    epocher.add(MarkerEvent(t=T0 + 2.2, value=2, stimulus_id=2, label="2", received=T0))
    assert epocher.poll(T0) == ([], []) and epocher.take_provisional() == []  # placed, nothing complete
    # the live loop sleeps until the first stage of the first marker is in, not the whole epoch
    assert epocher.next_complete() == 2000 + SPEC.window(SFREQ)[0] + epocher.stage_n_in[0]
    _push(src, 2300, 350)  # marker 1: both stages complete; marker 2: its first
    epocher.poll(T0)
    assert [(p.marker.label, p.end) for p in epocher.take_provisional()] == [("2", 0.3), ("1", 0.5)]
    assert epocher.next_complete() == 2200 + SPEC.window(SFREQ)[0] + epocher.stage_n_in[1]
    _push(src, 2650, 2000)  # both whole
    ready, _ = epocher.poll(T0)
    assert len(ready) == 2 and epocher.take_provisional() == []


@pytest.mark.slow
def test_a_live_session_decides_each_window_then_the_epoch(windows_bundle, lead_session, play, stream_name):
    """Over LSL: for each marker the 0.3 s and 0.5 s decisions come first, each labelled,
    then the whole epoch's; the provisional ones are the decoder's on the stage epochs, and
    only whole epochs count as decoded."""
    from bci_app.decoder import Decoder
    from bci_app.pipeline import LiveSession

    bundle = load_bundle(windows_bundle)
    play(lead_session)
    live = LiveSession(bundle, stream_name, device="cpu").start()
    records, whole = [], {}
    try:
        deadline = time.monotonic() + 60
        while sum(not r["provisional"] for r in records) < 12 and time.monotonic() < deadline:
            live.wait()
            out = live.step()
            records += out
            whole.update({r.marker.t: r.epoch for r in live.last_epochs} if any(not r["provisional"] for r in out) else {})
    finally:
        summary = live.close()
    finals = [r for r in records if not r["provisional"]]
    assert len(finals) >= 12 and all(r["window"] == 1.0 for r in finals)
    by_marker: dict[float, list] = {}
    for r in records:
        by_marker.setdefault(r["t_marker"], []).append(r)
    complete = [rs for rs in by_marker.values() if not rs[-1]["provisional"]]
    # stages in order, each decided before the next (a loaded machine may pass one over)
    for rs in complete:
        assert [r["window"] for r in rs] == sorted(r["window"] for r in rs)
        assert [r["t_decided"] for r in rs] == sorted(r["t_decided"] for r in rs)
        assert all(r["epoch"] is None and r["averaged"] is None for r in rs[:-1])
    with_both = [rs for rs in complete if [r["window"] for r in rs] == [0.3, 0.5, 1.0]]
    assert len(with_both) >= len(complete) // 2
    for rs in with_both:  # decided well before the whole epoch
        assert rs[0]["t_decided"] - rs[0]["t_marker"] < 0.6 < rs[2]["t_decided"] - rs[2]["t_marker"]
    assert summary["epochs_decoded"] == len(finals)
    assert summary["provisional"]["0.3"]["decided"] == sum(r["window"] == 0.3 for r in records)
    # the provisional decisions are the decoder's on the first samples of the whole epochs
    decoder = Decoder(bundle, device="cpu", top_k=5)
    for rs in with_both:
        epoch = whole[rs[0]["t_marker"]]
        for stage, r in enumerate(rs[:2]):
            (want,) = decoder.decode_stage(epoch[None, :, : decoder.stages[stage][1]], stage)
            assert r["topk"] == want.topk
            np.testing.assert_allclose(r["confidence"], want.confidence, atol=1e-5)
