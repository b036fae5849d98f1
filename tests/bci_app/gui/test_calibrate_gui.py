"""The window's Calibrate… action: the dialog's values, a block that ends with the adapted
bundle loaded, and a cancel that keeps the recording.

The blocks run for real (the presenter process offscreen, a replayed EEG stream over LSL,
the live worker recording); only the adaptation is a stand-in passed through
``start_calibration(adapt_fn=...)``, which copies the base bundle: the real adaptation is
covered by ``tests/bci_app/test_calibrate.py``."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("PySide6")


def test_the_dialog_offers_the_bundles_data_folder_and_checks_the_images(qtbot, tiny_bundle, tiny_dataset, tmp_path):
    from PySide6.QtGui import QGuiApplication

    from bci_app.gui.calibration import CalibrationDialog

    dialog = CalibrationDialog(tiny_bundle)
    qtbot.addWidget(dialog)
    assert dialog.values() == {"minutes": 5.0, "screen": 0, "windowed": False, "images": str(tiny_dataset.resolve()),
                               "adapt": "all", "pause": None}
    assert dialog.screen.count() == len(QGuiApplication.screens())
    assert [dialog.adapt.itemText(i) for i in range(dialog.adapt.count())] == ["all", "head", "projector", "input"]
    dialog.minutes.setValue(2.5)
    dialog.adapt.setCurrentText("head")
    dialog.pause.setValue(1.0)
    dialog.windowed.setChecked(True)
    values = dialog.values()
    assert (values["minutes"], values["adapt"], values["pause"], values["windowed"]) == (2.5, "head", 1.0, True)
    # no folder, or one that is not there: the dialog says so and stays open
    for text, expected in (("", "choose the folder"), (str(tmp_path / "missing"), "is not a folder")):
        dialog.images.setText(text)
        dialog.accept()
        assert expected in dialog.error.text() and not dialog.error.isHidden()
        assert dialog.result() == 0
    dialog.images.setText(str(tiny_dataset))
    dialog.accept()
    assert dialog.result() == 1

    # a bundle whose data folder holds no images: the dialog asks for the folder
    other = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, other)
    config = json.loads((other / "bundle.json").read_text())
    config["provenance"]["data"] = str(tmp_path / "gone")
    (other / "bundle.json").write_text(json.dumps(config))
    dialog = CalibrationDialog(other)
    qtbot.addWidget(dialog)
    assert dialog.values()["images"] == ""


def test_calibrating_needs_a_bundle_and_a_connected_stream(qtbot, window, tiny_bundle, tiny_dataset):
    win = window
    assert win.start_calibration(images=str(tiny_dataset)) is None
    assert "open the bundle to calibrate first" in win.banner.message
    with qtbot.waitSignal(win.bundle_loaded, timeout=30000):
        win.load_bundle(tiny_bundle)
    assert win.start_calibration(images=str(tiny_dataset)) is None
    assert "connect to the person's EEG stream first" in win.banner.message
    assert win.calibration is None and win.calibrate_action.isEnabled()


class StandInAdapt:
    """adapt_bundle's stand-in: reports progress, then copies the base bundle to ``out``;
    with ``hold``, reports progress until the block is cancelled (then its progress
    callback raises)."""

    def __init__(self, hold: bool = False):
        self.hold, self.calls = hold, []

    def __call__(self, base, recordings, images, out, *, adapt, epochs, device, progress):
        self.calls.append({"base": Path(base), "recordings": [Path(r) for r in recordings], "images": Path(images),
                           "out": Path(out), "adapt": adapt})
        deadline = time.monotonic() + 60
        k = 0
        while self.hold and time.monotonic() < deadline:
            progress(f"adapting: epoch {k}", k % 40, 40)
            k += 1
            time.sleep(0.02)
        for epoch in range(1, 4):
            progress(f"adapting: epoch {epoch}/3", epoch, 3)
        shutil.copytree(base, out, dirs_exist_ok=True)
        return {"n_trials": 20, "before": {"top1": 0.1, "top5": 0.3, "loss": 3.0},
                "after": {"top1": 0.25, "top5": 0.5, "loss": 2.5}, "best_epoch": 3}


def _connect(qtbot, win, tiny_bundle, lead_session, play, stream_name):
    with qtbot.waitSignal(win.bundle_loaded, timeout=30000):
        win.load_bundle(tiny_bundle)
    play(lead_session, loop=True)
    win.connect_stream(stream_name, timeout=10.0)
    qtbot.waitUntil(lambda: win.streams.state.text() == "connected", timeout=20000)


def _training_labels(tiny_dataset) -> set[str]:
    from bci_app.stimuli import load_stimuli

    return {s.label for s in load_stimuli(tiny_dataset, "training")}


@pytest.mark.slow
def test_a_calibration_block_records_adapts_and_loads_the_new_bundle(qtbot, window, tiny_bundle, tiny_dataset,
                                                                     lead_session, play, stream_name):
    import mne

    win = window
    _connect(qtbot, win, tiny_bundle, lead_session, play, stream_name)
    adapt = StandInAdapt()
    run = win.start_calibration(images=str(tiny_dataset), minutes=0.1, pause=0.5, adapt="head", adapt_fn=adapt)
    assert run is not None and win.calibration is run
    assert not win.calibrate_action.isEnabled() and win.cancel_calibration_action.isEnabled()
    cal = run.cal
    # while the presenter runs, the window decodes and records the presenter's markers
    qtbot.waitUntil(lambda: win.stream_info.get("markers") == cal.markers and bool(win.record_label.text()), timeout=40000)
    assert "presenting" in win.progress_label.text()
    with qtbot.waitSignal(run.finished, timeout=90000) as done:
        pass
    assert done.args == [str(cal.out)]
    # the adaptation got the block's finished recording, whose markers are the training images shown
    (call,) = adapt.calls
    assert call["recordings"] == [cal.recording_dir] and call["adapt"] == "head"
    assert call["base"] == Path(tiny_bundle).resolve() and call["images"] == Path(tiny_dataset).resolve()
    raw = mne.io.read_raw_fif(cal.recording_dir / "recording-raw.fif", verbose="error")
    shown = [d for d in raw.annotations.description if not d.startswith("BAD")]
    assert len(shown) >= 10 and set(shown) <= _training_labels(tiny_dataset)
    record = json.loads((cal.folder / "calibration.json").read_text())
    assert record["phase"] == "done" and record["presented"]["onsets"] == len(shown)
    # the adapted bundle is loaded and decodes the stream with the markers of before
    assert Path(win.bundle.path).resolve() == cal.out.resolve()
    qtbot.waitUntil(lambda: win.streams.state.text() == "connected"
                    and win.stream_info.get("markers") == f"{stream_name}-markers", timeout=30000)
    log = "\n".join(win.log.lines)
    assert "validation top-1 0.100 → 0.250" in log and "decoding with the adapted bundle" in log
    assert win.calibration is None and win.calibrate_action.isEnabled() and not win.errors


@pytest.mark.slow
def test_cancelling_the_adaptation_keeps_the_recording_and_the_bundle(qtbot, window, tiny_bundle, tiny_dataset,
                                                                      lead_session, play, stream_name):
    win = window
    _connect(qtbot, win, tiny_bundle, lead_session, play, stream_name)
    run = win.start_calibration(images=str(tiny_dataset), minutes=0.1, pause=0.5, adapt_fn=StandInAdapt(hold=True))
    cal = run.cal
    qtbot.waitUntil(lambda: run.state == "adapting" and bool(cal.progress[0]), timeout=90000)
    qtbot.waitUntil(lambda: "calibration: adapting" in win.progress_label.text(), timeout=5000)
    with qtbot.waitSignal(run.finished, timeout=30000) as done:
        win.cancel_calibration()
    assert done.args == [""]
    assert cal.phase == "cancelled" and not cal.out.exists()
    assert (cal.recording_dir / "recording-raw.fif").is_file()
    log = "\n".join(win.log.lines)
    assert "calibration cancelled" in log and f"bci-train adapt --bundle {Path(tiny_bundle).resolve()}" in log
    # the base bundle decodes on, with the markers of before
    assert Path(win.bundle.path).resolve() == Path(tiny_bundle).resolve()
    qtbot.waitUntil(lambda: win.streams.state.text() == "connected"
                    and win.stream_info.get("markers") == f"{stream_name}-markers", timeout=30000)
    assert win.calibration is None and not win.errors


@pytest.mark.slow
def test_a_presenter_that_fails_is_an_error_and_the_window_decodes_on(qtbot, window, tiny_bundle, tiny_dataset,
                                                                      lead_session, play, stream_name):
    win = window
    _connect(qtbot, win, tiny_bundle, lead_session, play, stream_name)
    adapt = StandInAdapt()
    run = win.start_calibration(images=str(tiny_dataset), screen=7, adapt_fn=adapt)
    with qtbot.waitSignal(run.finished, timeout=60000) as done:
        pass
    assert done.args == [""] and not adapt.calls and run.cal.phase == "failed"
    (error,) = win.errors
    assert error.startswith("calibration: the presenter failed (exit code 2): ") and "--screen 7" in error
    assert str(run.cal.folder / "presenter.log") in error
    qtbot.waitUntil(lambda: win.streams.state.text() == "connected"
                    and win.stream_info.get("markers") == f"{stream_name}-markers", timeout=30000)
    assert Path(win.bundle.path).resolve() == Path(tiny_bundle).resolve() and win.calibrate_action.isEnabled()
