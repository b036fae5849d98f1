"""The presenter window over real LSL (offscreen: the timer display loop): each marker
carries the flip time the log holds, onsets follow the frame plan, nothing starts before a
program receives the markers, catch answers and aborts are logged, and the command line
runs a list to its end by itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("PySide6")

from bci_app.rsvp import MarkerSender  # noqa: E402
from bci_app.stimuli import Stimulus, load_stimuli, make_sequences  # noqa: E402


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


def _inlet(name):
    from mne_lsl.lsl import StreamInlet, resolve_streams

    found = resolve_streams(timeout=5.0, name=name)
    assert found, f"marker stream {name!r} not found"
    inlet = StreamInlet(found[0])
    inlet.open_stream(timeout=5.0)
    return inlet


def _pull_all(inlet, got):
    data, ts = inlet.pull_chunk(timeout=0.0)
    if len(ts):
        got += list(zip([row[0] for row in data], ts))
    return got


def _presenter(qtbot, sequences, sender, **options):
    from bci_app.gui.presenter import Presenter, PresenterOptions

    options.setdefault("fullscreen", False)
    options.setdefault("auto_pause", 0.1)
    presenter = Presenter(sequences, sender, PresenterOptions(**options))
    return presenter


def _run_to_end(qtbot, presenter, inlet=None, timeout=30.0):
    got, ended = [], []
    presenter.finished.connect(ended.append)
    presenter.start()
    deadline = time.monotonic() + timeout
    while not ended:
        assert time.monotonic() < deadline, f"the run did not end: {presenter.run and presenter.run.state}"
        qtbot.wait(20)
        if inlet is not None:
            _pull_all(inlet, got)
    if inlet is not None:
        deadline = time.monotonic() + 5.0
        while len(got) < len(ended[0].onsets) and time.monotonic() < deadline:
            qtbot.wait(20)
            _pull_all(inlet, got)
    return ended[0], got


def test_each_marker_carries_the_logged_flip_time_and_onsets_follow_the_frame_plan(qtbot, image_folder, stream_name,
                                                                                   tmp_path):
    stimuli = load_stimuli(image_folder)
    catch = Stimulus(0, "catch/target.png", stimuli[0].path)
    sequences = make_sequences(stimuli, repetitions=2, seed=1, sequence_length=8, catch=catch, catch_rate=1.0)
    sender = MarkerSender(stream_name)
    try:
        inlet = _inlet(stream_name)
        presenter = _presenter(qtbot, sequences, sender, photodiode="top-left")
        assert presenter.mode == "timer" and "no OpenGL" in presenter.mode_reason  # offscreen
        answered = []

        def answer():  # the participant sees each catch target and presses space
            log = presenter.log
            if log and log.onsets and log.onsets[-1].catch and log.onsets[-1].actual not in answered:
                answered.append(log.onsets[-1].actual)
                presenter.key(_qt_key("Key_Space"))

        presenter.changed.connect(answer)
        log, got = _run_to_end(qtbot, presenter, inlet)
    finally:
        sender.close()
    trials = [t for s in sequences for t in s]
    assert not log.aborted and len(log.onsets) == len(trials) == len(got)
    assert [v for v, _ in got] == [t.code for t in trials] == [o.code for o in log.onsets]
    # the marker's LSL stamp is the flip time the log holds, exactly
    assert [t for _, t in got] == [o.actual for o in log.onsets]
    frame = log.timing.frame
    err = np.array([o.error for o in log.onsets])
    late = log.late_frames()
    # each sequence is planned from its first flip; what is left after the whole frames the
    # log counts as dropped is the timer's resolution (and the first flip's own jitter)
    resolution = err - late * frame
    assert np.all(np.abs(resolution) < 0.5 * frame), resolution
    assert np.median(np.abs(resolution)) < 0.004, f"median timer error {1000 * np.median(np.abs(resolution)):.2f} ms"
    s = log.summary()
    assert s["mode"] == "timer" and s["sequences"] == len(sequences)
    assert s["catch"]["targets"] == len(sequences) and s["catch"]["hits"] >= 1
    path = log.write(tmp_path / "log.json")
    doc = json.loads(path.read_text())
    assert len(doc["onsets"]) == len(trials) and doc["responses"] == log.responses


def _qt_key(name):
    from PySide6.QtCore import Qt

    return getattr(Qt, name)


def test_no_sequence_starts_before_a_program_receives_the_markers(qtbot, image_folder, stream_name):
    sequences = make_sequences(load_stimuli(image_folder)[:4], sequence_length=4)
    sender = MarkerSender(stream_name)
    try:
        presenter = _presenter(qtbot, sequences, sender, auto_pause=0.0)
        ended = []
        presenter.finished.connect(ended.append)
        presenter.start()
        qtbot.wait(600)
        assert presenter.run.state == "waiting" and presenter.run.shown == 0
        assert "waiting for a program to receive the markers" in presenter.window.current.prompt
        inlet = _inlet(stream_name)
        qtbot.waitUntil(lambda: bool(ended), timeout=20000)
        got = []
        qtbot.waitUntil(lambda: len(_pull_all(inlet, got)) == 4, timeout=5000)
    finally:
        sender.close()
    assert ended[0].summary()["onsets"] == 4 and [v for v, _ in got] == [t.code for t in sequences[0]]


def test_escape_aborts_and_leaves_a_complete_log(qtbot, image_folder, stream_name, tmp_path):
    from PySide6.QtCore import Qt

    sequences = make_sequences(load_stimuli(image_folder), repetitions=3, sequence_length=12)
    sender = MarkerSender(stream_name)
    try:
        presenter = _presenter(qtbot, sequences, sender, require_receiver=False, auto_pause=None)
        ended = []
        presenter.finished.connect(ended.append)
        presenter.start()
        qtbot.wait(300)
        assert presenter.run.state == "waiting" and presenter.run.shown == 0  # waits for the key
        qtbot.keyClick(presenter.window, Qt.Key_Space)
        qtbot.waitUntil(lambda: presenter.run.shown >= 5, timeout=10000)
        qtbot.keyClick(presenter.window, Qt.Key_Escape)
        qtbot.waitUntil(lambda: bool(ended), timeout=5000)
    finally:
        sender.close()
    log = ended[0]
    assert log.aborted and 5 <= len(log.onsets) < 12
    doc = json.loads(log.write(tmp_path / "aborted.json").read_text())
    assert doc["summary"]["aborted"] and len(doc["onsets"]) == len(log.onsets)


@pytest.mark.parametrize("labels", [False, True])
def test_a_bundles_gallery_is_shown_and_its_markers_decode_to_the_shown_ids(qtbot, tiny_bundle, stream_name, labels):
    from bci_app.decoder import StimulusMap
    from trainer.bundle import load_bundle

    stimuli = load_stimuli(tiny_bundle)[:6]
    sequences = make_sequences(stimuli, sequence_length=6, seed=3)
    sender = MarkerSender(stream_name, labels=labels)
    try:
        inlet = _inlet(stream_name)
        log, got = _run_to_end(qtbot, _presenter(qtbot, sequences, sender, photodiode="bottom-right"), inlet)
    finally:
        sender.close()
    resolve = StimulusMap(load_bundle(tiny_bundle))
    assert [resolve(v) for v, _ in got] == [t.stimulus.id for t in sequences[0]]


def test_a_frame_shows_the_image_the_fixation_dot_and_the_photodiode_square(qtbot, image_folder, stream_name, tmp_path):
    """A screenshot of the stimulus window while an image is on (saved for the docs' look)."""
    from PySide6.QtGui import QImage

    stimuli = load_stimuli(image_folder)[:3]
    sequences = make_sequences(stimuli, sequence_length=3)
    sender = MarkerSender(stream_name)
    shots = []
    try:
        presenter = _presenter(qtbot, sequences, sender, require_receiver=False, photodiode="top-left", image_px=200)

        def grab():
            w = presenter.window
            if w is not None and w.current.image is not None and not shots:
                shots.append((w.current, w.grab().toImage()))

        presenter.changed.connect(grab)
        presenter._ui.setInterval(10)
        _run_to_end(qtbot, presenter)
    finally:
        sender.close()
    assert shots, "no frame with an image was caught"
    frame, image = shots[0]
    image.save(str(tmp_path / "frame.png"))
    image = image.convertToFormat(QImage.Format_RGB32)
    w, h = image.width(), image.height()
    px = lambda x, y: image.pixelColor(x, y).getRgb()[:3]
    assert px(w - 5, h - 5) == (128, 128, 128)  # grey background
    assert px(5, 5) == ((255, 255, 255) if frame.photodiode else (0, 0, 0))  # the photodiode square
    r, g, b = px(w // 2, h // 2)
    assert r > 180 and g < 80 and b < 80  # the red fixation dot on top of the image
    # the image itself, scaled to 200 px wide, around the centre
    from PIL import Image

    src = np.asarray(Image.open(frame.image.path).convert("RGB").resize((200, 133)), dtype=float)
    shown = np.array([[px(w // 2 - 100 + x, h // 2 - 66 + y) for x in range(0, 200, 10)] for y in range(0, 133, 10)],
                     dtype=float)
    ref = src[0:133:10, 0:200:10]
    assert np.corrcoef(shown.ravel(), ref.ravel())[0, 1] > 0.8


@pytest.mark.slow
def test_bci_app_present_runs_a_list_to_its_end_and_reports_its_timing(image_folder, stream_name, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    log_path = tmp_path / "timing.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bci_app.cli", "present", "--images", str(image_folder), "--windowed", "--pause", "0.1",
         "--markers", stream_name, "--no-receiver-check", "--repetitions", "2", "--sequence-length", "12",
         "--log", str(log_path)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "timing (timer, 60 Hz, 6+6 frames): 24 onsets in 2 sequences" in proc.stderr
    assert "no OpenGL on the 'offscreen' platform" in proc.stderr
    doc = json.loads(log_path.read_text())
    assert len(doc["onsets"]) == 24 and not doc["summary"]["aborted"]


def test_bad_present_options_are_named(image_folder, tmp_path):
    from bci_app.cli import main

    assert main(["present", "--images", str(tmp_path / "nope")]) == 2
    assert main(["present", "--images", str(image_folder), "--repetitions", "0"]) == 2
    assert main(["present", "--images", str(image_folder), "--catch", str(tmp_path / "no.png")]) == 2


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Xvfb is for Linux")
def test_under_a_real_x_server_the_presenter_tries_vsync_and_says_what_it_used(image_folder, stream_name, tmp_path, xvfb):
    """Under Xvfb OpenGL works (Mesa) but nothing paces the swaps: the presenter measures
    that and falls back to the timer, saying why; the run still completes."""
    from bci_app.display import check_window_support

    display = xvfb()
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY", "XAUTHORITY")}
    env["DISPLAY"] = display
    if not check_window_support(env).ok:
        pytest.skip("Qt's xcb plugin cannot open a window here (missing system libraries)")
    log_path = tmp_path / "timing.json"
    proc = subprocess.run(
        [sys.executable, "-m", "bci_app.cli", "present", "--images", str(image_folder), "--pause", "0.1",
         "--markers", stream_name, "--no-receiver-check", "--sequence-length", "12", "--log", str(log_path)],
        env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(log_path.read_text())
    assert len(doc["onsets"]) == 12
    if doc["summary"]["mode"] == "vsync":  # a virtual display that paces swaps after all
        assert "vsync in effect" in proc.stderr or "display: vsync" in proc.stderr
    else:
        assert "buffer swaps here are not paced by the display" in proc.stderr, proc.stderr
