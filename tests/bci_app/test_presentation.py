"""The presenter's timing log (:mod:`bci_app.presentation`): plan against flips."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bci_app.presentation import TimingLog
from bci_app.stimuli import FrameTiming, Stimulus, make_sequences

T0 = 1234.5


def _run(flip_delay_frames=None, abort_after=None):
    """Two sequences of 20 at 60 Hz, flipped on plan except where ``flip_delay_frames``
    (sequence, position) -> frames late; the second sequence starts after a pause."""
    timing = FrameTiming.for_display(60.0)
    log = TimingLog(timing, "vsync")
    sequences = make_sequences([Stimulus(i + 1, f"c/{i}.jpg", None) for i in range(40)], seed=3)
    delay = dict(flip_delay_frames or {})
    for s, seq in enumerate(sequences):
        start = T0 + s * 7.3  # a pause of the participant's choosing between sequences
        for trial in seq:
            if abort_after is not None and len(log.onsets) == abort_after:
                log.aborted = True
                return log
            late = delay.get((s, trial.position), 0)
            log.add(trial, start + (trial.position * timing.soa_frames + late) * timing.frame)
    return log


def test_flips_on_plan_have_no_error_and_each_sequence_is_planned_from_its_own_start():
    log = _run()
    s = log.summary()
    assert s["onsets"] == 40 and s["sequences"] == 2
    assert s["error_ms"]["max"] < 1e-6 and s["late_onsets"] == 0 and s["dropped_frames"] == 0
    assert "40 onsets in 2 sequences" in log.report() and "0 late" in log.report()


def test_a_late_flip_counts_its_dropped_frames():
    log = _run({(0, 5): 1, (1, 3): 2})
    s = log.summary()
    assert s["late_onsets"] == 2 and s["dropped_frames"] == 3
    assert s["error_ms"]["max"] == pytest.approx(2000.0 / 60.0)
    late = {(o.sequence, o.position): k for o, k in zip(log.onsets, log.late_frames()) if k}
    assert late == {(0, 5): 1, (1, 3): 2}


def test_an_aborted_run_leaves_a_complete_strict_json_log(tmp_path):
    log = _run(abort_after=27)
    path = log.write(tmp_path / "timing.json")

    def refuse(name):
        raise ValueError(name)

    data = json.loads(path.read_text(), parse_constant=refuse)
    assert data["summary"]["aborted"] is True and data["summary"]["onsets"] == 27
    assert len(data["onsets"]) == 27
    row = data["onsets"][0]
    assert {"sequence", "position", "code", "label", "catch", "planned", "actual", "error_ms", "late_frames"} <= set(row)
    assert "(aborted)" in log.report()


def test_a_flip_time_that_is_not_a_number_is_refused():
    log = TimingLog(FrameTiming.for_display(60.0), "timer")
    trial = make_sequences([Stimulus(1, "a/b.jpg", None)])[0][0]
    with pytest.raises(ValueError, match="finite"):
        log.add(trial, float("nan"))
    assert log.summary()["error_ms"] is None and log.report().startswith("timing (timer, 60 Hz")


def test_swaps_paced_by_the_display_are_told_from_swaps_that_are_not():
    from bci_app.presentation import swap_pacing

    rng = np.random.default_rng(0)
    paced = 3.0 + np.arange(40) / 59.94 + 0.0003 * rng.standard_normal(40)  # refreshes, stamped with jitter
    paced[20:] += 1 / 59.94  # and one refresh missed
    ok, hz = swap_pacing(np.r_[0.0, paced], 60.0)  # a slow first swap (the window appearing) is left out
    assert ok and abs(hz - 59.94) < 0.05
    unpaced = np.cumsum(np.full(40, 0.006))  # a virtual display: as fast as the machine draws
    ok, hz = swap_pacing(unpaced, 60.0)
    assert not ok and abs(hz - 1 / 0.006) < 1
    with pytest.raises(ValueError, match="at least 4"):
        swap_pacing([0.0, 0.016, 0.033], 60.0)
