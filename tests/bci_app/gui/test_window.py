"""The main window over real LSL on loopback: it connects to a replayed session, shows
candidates and figures, records, remembers settings, shows errors in the window and closes
its workers in bounded time."""

from __future__ import annotations

import time

import mne
import numpy as np
import pytest

pytest.importorskip("PySide6")


def _load(qtbot, win, path):
    with qtbot.waitSignal(win.bundle_loaded, timeout=30000):
        win.load_bundle(path)


@pytest.mark.slow
def test_window_decodes_a_replayed_stream_records_and_closes(qtbot, window, tiny_bundle, lead_session, play,
                                                            stream_name, tmp_path):
    win = window
    _load(qtbot, win, tiny_bundle)
    assert win.model.backbone.text().startswith("resnet10t")
    assert "20 images" in win.model.gallery.text()
    play(lead_session)
    win.connect_stream(stream_name, timeout=10.0)
    records, batches = [], []
    win.live.decoded.connect(lambda decided: (records.extend(decided), batches.append(len(decided))))
    # signals of the window (GUI thread), not of the worker: what the user sees
    qtbot.waitUntil(lambda: win.streams.state.text() == "connected", timeout=20000)
    # record a stretch from the window
    with qtbot.waitSignal(win.recording_changed, timeout=10000) as started:
        win.toggle_recording()
    assert started.args[0] == "started"
    assert win.record_label.text().startswith("● REC")
    qtbot.waitUntil(lambda: win.epochs >= 8, timeout=60000)
    with qtbot.waitSignal(win.recording_changed, timeout=30000) as stopped:
        win.toggle_recording()
    assert stopped.args[0] == "stopped", stopped.args
    fif = stopped.args[1]
    raw = mne.io.read_raw_fif(fif, verbose="error")
    assert raw.info["sfreq"] == lead_session.raw.info["sfreq"] and raw.n_times > 1000
    assert len(raw.annotations) > 0  # the markers of the recorded stretch

    # Ctrl+R twice in a row: started, then stopped, and nothing is left recording
    events = []
    win.recording_changed.connect(lambda what, detail: events.append(what))
    win.toggle_recording()
    win.toggle_recording()
    qtbot.waitUntil(lambda: events == ["started", "stopped"], timeout=30000)
    assert win.record_label.text() == "" and not win.record_action.isChecked()
    # the decoding process says so too: its next status is not recording
    statuses = []
    win.live.status.connect(statuses.append)
    qtbot.waitUntil(lambda: bool(statuses), timeout=5000)
    assert statuses[-1]["recording"] is False

    qtbot.waitUntil(lambda: bool(win.summary) and win.summary["epochs_decoded"] >= 10, timeout=60000)
    qtbot.waitUntil(lambda: win.figures.labels["epochs"].text() not in ("–", "0"), timeout=5000)
    # the candidate view shows the last decoded epoch: the last of each decoded batch is
    # shown (a busy machine decodes two or more epochs in one step now and then)
    qtbot.waitUntil(lambda: win.candidates.records >= len(batches), timeout=5000)
    last = records[-1]  # no event is processed between the wait's last look and here
    assert [c.stimulus_id for c in win.candidates.rows["single"][:5]] == last["topk"]
    assert win.candidates.truth.stimulus_id == last["stimulus_id"]
    assert not win.candidates.rows["single"][0].image.pixmap().isNull()
    assert "%" in win.figures.labels["single"].text()
    assert "ms" in win.figures.labels["latency_pct"].text()
    assert "measured" in win.streams.rate.text()
    # the signal view draws the model's channels
    assert win.signal.channels == list(win.bundle.spec.channels)
    qtbot.waitUntil(lambda: win.signal.frames > 3, timeout=5000)
    x, y = win.signal.curve.getData()
    assert np.isfinite(y).sum() > 100
    win.grab().save(str(tmp_path / "window.png"))

    thread = win.live_thread
    t0 = time.monotonic()
    win.close()
    assert not thread.isRunning()
    assert time.monotonic() - t0 < 10.0
    assert win.live is None


def test_errors_are_shown_in_the_window(qtbot, window, tmp_path):
    win = window
    win.connect_stream("anything")
    assert "open a model bundle first" in win.banner.message
    # a folder that is not a bundle
    bad = tmp_path / "not-a-bundle"
    bad.mkdir()
    (bad / "bundle.json").write_text("{not json")
    with qtbot.waitSignal(win.error_shown, timeout=20000) as err:
        win.load_bundle(bad)
    assert "bundle.json" in err.args[0] and win.banner.message == err.args[0]
    assert win.bundle is None
    with qtbot.waitSignal(win.error_shown, timeout=20000) as err:
        win.load_bundle(tmp_path / "missing")
    assert "missing" in err.args[0]


@pytest.mark.slow
def test_a_stream_that_is_not_there_is_an_error_in_the_window(qtbot, window, tiny_bundle, stream_name):
    win = window
    _load(qtbot, win, tiny_bundle)
    with qtbot.waitSignal(win.live_stopped, timeout=20000):
        win.connect_stream(stream_name, timeout=0.5)
    assert stream_name in win.banner.message
    assert win.live is None and win.streams.state.text() == "idle"
    assert win.streams.connect_button.text() == "Connect"


@pytest.mark.slow
def test_a_connect_in_progress_stops_at_once(qtbot, window, tiny_bundle, lead_session, play, stream_name):
    win = window
    _load(qtbot, win, tiny_bundle)
    # Disconnect while waiting for a stream that never comes: no error, no wait
    win.connect_stream(stream_name + "-never", timeout=60.0)
    qtbot.wait(1000)
    assert win.streams.state.text() == "connecting"
    t0 = time.monotonic()
    with qtbot.waitSignal(win.live_stopped, timeout=5000):
        win.disconnect_stream()
    assert time.monotonic() - t0 < 3.0 and win.errors == [] and win.streams.state.text() == "idle"
    # close while the EEG stream is there but the marker stream named is not
    play(lead_session)
    win.connect_stream(stream_name, "no-such-markers", timeout=60.0)
    thread = win.live_thread
    qtbot.wait(2500)
    assert win.streams.state.text() == "connecting"
    t0 = time.monotonic()
    win.close()
    assert time.monotonic() - t0 < 5.0
    assert not thread.isRunning() and win.live is None and win.errors == []


def test_connect_waits_for_a_bundle_that_is_loading(qtbot, window, tiny_bundle):
    win = window
    win.load_bundle(tiny_bundle)
    win.connect_stream("anything")
    assert "still loading" in win.banner.message and win.live is None
    qtbot.waitUntil(lambda: win.bundle is not None, timeout=30000)


def test_settings_are_remembered(qtbot, tmp_path):
    from PySide6.QtCore import QSettings

    from bci_app.gui.window import MainWindow

    path = str(tmp_path / "settings.ini")
    first = MainWindow(settings=QSettings(path, QSettings.IniFormat))
    qtbot.addWidget(first)
    first.streams.eeg.setCurrentText("my-amp")
    first.streams.markers.setCurrentText("my-markers")
    first.model.top_k.setValue(7)
    first.model.device.setCurrentText("cpu")
    first.record_dir = tmp_path / "recs"
    first.close()
    second = MainWindow(settings=QSettings(path, QSettings.IniFormat))
    qtbot.addWidget(second)
    assert second.streams.eeg.currentText() == "my-amp"
    assert second.streams.marker_name() == "my-markers"
    assert second.model.top_k.value() == 7 and second.candidates.top_k == 7
    assert second.model.device.currentText() == "cpu"
    assert second.record_dir == tmp_path / "recs"
    second.close()


def test_keyboard_shortcuts_reach_their_actions(qtbot, window):
    from PySide6.QtCore import Qt

    win = window
    shortcuts = {a.shortcut().toString(): a for a in win.actions()}
    for key in ("Ctrl+O", "F5", "Ctrl+L", "Ctrl+R", "Ctrl+Q", "F1", "Ctrl+Shift+S"):
        assert key in shortcuts, key
    win.activateWindow()
    qtbot.waitUntil(win.isActiveWindow, timeout=5000)
    qtbot.keyClick(win, Qt.Key_L, Qt.ControlModifier)  # connect, with no bundle: an error in the window
    assert "open a model bundle first" in win.banner.message


def test_the_bundle_is_remembered_by_its_absolute_path(qtbot, tmp_path, tiny_bundle, monkeypatch):
    from PySide6.QtCore import QSettings

    from bci_app.gui.window import MainWindow

    path = str(tmp_path / "settings.ini")
    monkeypatch.chdir(tiny_bundle.parent)
    win = MainWindow(settings=QSettings(path, QSettings.IniFormat))
    qtbot.addWidget(win)
    _load(qtbot, win, tiny_bundle.name)  # relative to the working folder
    assert win.settings.value("model/bundle") == str(tiny_bundle)
    win.close()  # saves the settings again
    monkeypatch.chdir(tmp_path)  # the next start runs elsewhere
    remembered = QSettings(path, QSettings.IniFormat).value("model/bundle")
    assert remembered == str(tiny_bundle) and (tmp_path / remembered / "bundle.json").is_file()


@pytest.mark.slow
def test_a_screenshot_run_says_where_it_saved(tiny_bundle, lead_session, play, stream_name, tmp_path):
    import os
    import subprocess
    import sys

    play(lead_session)
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"))
    run = subprocess.run([sys.executable, "-c", "import sys; from bci_app.cli import main; sys.exit(main())",
                          "--bundle", str(tiny_bundle), "--stream", stream_name, "--timeout", "20",
                          "--screenshot", "shot.png", "--max-epochs", "2"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, run.stderr[-3000:]
    shot = tmp_path / "shot.png"
    assert shot.is_file()
    assert f"bci-app: screenshot saved to {shot}\n" in run.stderr
