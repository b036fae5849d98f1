"""Sample times from raw stamps (:class:`bci_app.timeline.Timeline`): jumps are gaps, jitter
is not, and the times of a clean stream are its stamps."""

from __future__ import annotations

import numpy as np
import pytest

from bci_app.timeline import Timeline

T0 = 5321.25


def _place(raw, chunk, sfreq=1000.0, **kwargs):
    """Feed ``raw`` stamps in chunks; return the times (with the corrections applied, as
    EEGSource does), the breaks and the timeline."""
    tl = Timeline(sfreq, **kwargs)
    out = np.full(len(raw), np.nan)
    breaks = []
    for i in range(0, len(raw), chunk):
        times, found, fixes = tl.add(i, raw[i:i + chunk])
        out[i:i + len(times)] = times
        for start, stop, delta in fixes:
            assert stop <= i, "a correction is for samples given out before"
            out[start:stop] += delta
        breaks += found
    return out, breaks, tl


@pytest.mark.parametrize("chunk", [1, 7, 10, 64])
def test_clock_jumps_are_breaks_and_times_follow_the_stamps(chunk):
    raw = T0 + np.arange(6000) / 1000.0
    raw[2500:] += 10.0  # the sender's clock jumps forward ...
    raw[4003:] -= 20.0  # ... and back
    out, breaks, _ = _place(raw, chunk)
    assert [(b.index, round(b.jump, 6)) for b in breaks] == [(2500, 10.0), (4003, -20.0)]
    assert breaks[0].lost == 10000 and breaks[1].lost == 0
    np.testing.assert_allclose(out, raw, rtol=0, atol=1e-9)  # exact stamps come back unchanged


def test_a_clean_stream_has_no_break_and_its_own_stamps():
    raw = T0 + np.arange(20000) / 2048.0
    out, breaks, _ = _place(raw, 32, sfreq=2048.0)
    assert breaks == []
    np.testing.assert_allclose(out, raw, rtol=0, atol=1e-9)


def test_jittered_chunks_are_not_gaps_but_lost_samples_are():
    """An amplifier app stamping 10-sample chunks when it pushes them (late by up to tens
    of ms, heavy-tailed), and once 500 samples missing."""
    rng = np.random.default_rng(0)
    true = T0 + np.arange(120_000) / 1000.0
    raw = true.copy()
    for c in range(0, len(raw), 10):
        raw[c:c + 10] += rng.exponential(0.003)
    raw[60_000:] += 0.5
    true[60_000:] += 0.5
    out, breaks, tl = _place(raw, 10)
    assert [b.index for b in breaks] == [60_000]
    assert 495 <= breaks[0].lost <= 510
    settled = out[5000:] - true[5000:]
    assert np.abs(settled).max() < 0.01  # within the jitter, never a jump's worth off
    assert tl.tolerance < 0.05


def test_a_late_chunk_is_taken_back_and_a_break_corrects_what_was_given_out():
    raw = T0 + np.arange(3000) / 1000.0
    raw[1000:1010] += 0.08  # one chunk stamped late: jitter
    raw[2000:] += 0.3  # samples lost: a break, seen only after 0.2 s at the new line
    tl = Timeline(1000.0)
    times = np.full(len(raw), np.nan)
    settled = []
    fixes_seen = []
    for i in range(0, len(raw), 10):
        t, _, fixes = tl.add(i, raw[i:i + 10])
        times[i:i + 10] = t
        for start, stop, delta in fixes:
            times[start:stop] += delta
            fixes_seen.append((start, stop, round(delta, 6)))
        settled.append(tl.settled)
    np.testing.assert_allclose(times[1000:1010], raw[999] + np.arange(1, 11) / 1000.0, atol=1e-9)  # on the line
    assert fixes_seen and fixes_seen[0][0] == 2000 and fixes_seen[0][2] == 0.3
    np.testing.assert_allclose(times[2000:], raw[2000:], atol=1e-9)
    # while the break was only suspected, the samples from it on were not settled
    assert 2000 in settled and max(settled) == len(raw)


def test_non_finite_stamps_keep_the_line():
    raw = T0 + np.arange(100) / 100.0
    raw[40] = np.nan
    out, breaks, _ = _place(raw, 5, sfreq=100.0)
    assert breaks == [] and np.isfinite(out).all()
    np.testing.assert_allclose(out, T0 + np.arange(100) / 100.0, atol=1e-9)


@pytest.mark.parametrize("true_rate", [252.5, 249.9875, 250.0])
def test_a_sender_whose_true_rate_is_off_its_nominal_one_is_followed_not_broken(true_rate):
    """A device 1 % fast, one 50 ppm slow, one exact; 10-sample chunks stamped when pushed
    (jitter): no break, times within the jitter of the truth, the rate found."""
    rng = np.random.default_rng(1)
    true = T0 + np.arange(60 * 250) / true_rate
    raw = true.copy()
    for c in range(0, len(raw), 10):
        raw[c:c + 10] += rng.exponential(0.002)
    out, breaks, tl = _place(raw, 10, sfreq=250.0)
    assert breaks == []
    settled = out[5 * 250:] - true[5 * 250:]
    assert abs(np.median(settled)) < 0.004  # the mean push delay (2 ms), no lag behind the drift
    assert np.abs(settled - np.median(settled)).max() < 0.003  # the jitter averaged out
    assert abs(tl.rate - true_rate) < 0.01


@pytest.mark.parametrize("delays", [(0.04, 0.02), (0.015, 0.03), (0.03, 0.045, 0.02), (-0.02, -0.04)])
def test_a_sender_that_falls_behind_and_catches_up_is_jitter_not_a_gap(delays):
    """Chunks stamped late (or early) by different amounts, then back on the line: no break,
    no samples called lost (one fewer rule in the way: found by review)."""
    raw = T0 + np.arange(4000) / 1000.0
    for k, d in enumerate(delays):
        raw[2000 + 10 * k:2010 + 10 * k] += d
    out, breaks, _ = _place(raw, 10)
    assert breaks == []
    np.testing.assert_allclose(out, T0 + np.arange(4000) / 1000.0, atol=1e-6)


def test_a_break_followed_by_another_is_two_gaps_with_their_times():
    raw = T0 + np.arange(4000) / 1000.0
    raw[2000:] += 0.05  # 50 samples lost ...
    raw[2100:] += 0.3  # ... and 300 more, 0.1 s later (before the first was confirmed)
    for chunk in (1, 10, 64):
        out, breaks, _ = _place(raw, chunk)
        assert [(b.index, round(b.jump, 6), b.lost) for b in breaks] == [(2000, 0.05, 50), (2100, 0.3, 300)]
        np.testing.assert_allclose(out, raw, atol=1e-9)
