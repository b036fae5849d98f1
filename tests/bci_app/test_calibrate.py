"""Calibration blocks (bci_app.calibrate, ``bci-app calibrate``): checks before anything
starts, a presenter that fails, adaptations that fail or are cancelled (the recording
kept, the command to go on given), and one block end to end over LSL: the presenter, a
simulated new person, the recording and the real adaptation."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bci_app.calibrate import (
    Calibration,
    CalibrationCancelled,
    CalibrationError,
    adapt_by_hand,
    default_image_folder,
)
from bci_app.cli import main
from trainer.errors import MissingFileError, UsageError


def test_the_images_default_to_the_bundles_data_folder(tiny_bundle, tiny_dataset, tmp_path):
    assert default_image_folder(tiny_bundle) == Path(tiny_dataset).resolve()
    other = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, other)
    config = json.loads((other / "bundle.json").read_text())
    config["provenance"]["data"] = str(tmp_path)  # no image_set/ there
    (other / "bundle.json").write_text(json.dumps(config))
    assert default_image_folder(other) is None
    assert default_image_folder(tmp_path / "missing") is None


def test_bad_settings_are_refused_before_anything_starts(tiny_bundle, tiny_dataset, tmp_path):
    root = tmp_path / "calibration"
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    cases = [
        (dict(minutes=0), UsageError, "--minutes must be a positive number"),
        (dict(minutes=float("nan")), UsageError, "--minutes"),
        (dict(adapt="everything"), UsageError, "--adapt must be one of all, head, projector"),
        (dict(screen=-1), UsageError, "--screen"),
        (dict(pause=-1.0), UsageError, "--pause"),
        (dict(out=full), UsageError, f"--out {full} is not empty"),
    ]
    for kwargs, kind, text in cases:
        with pytest.raises(kind, match=text.replace("(", r"\(")):
            Calibration(tiny_bundle, tiny_dataset, root=root, **kwargs)
    with pytest.raises(MissingFileError, match="not a bundle folder"):
        Calibration(tmp_path, tiny_dataset, root=root)
    with pytest.raises(MissingFileError, match="not found"):
        Calibration(tiny_bundle, tmp_path / "no-images", root=root)
    assert not root.exists()  # no block folder for a block that never started


def test_a_block_is_planned_as_the_presenter_shows_it(tiny_bundle, tiny_dataset, tmp_path):
    from bci_app.stimuli import FrameTiming, limit_duration, load_stimuli, make_sequences

    cal = Calibration(tiny_bundle, tiny_dataset, minutes=5, root=tmp_path, seed=3, pause=1.0, screen=1, windowed=True)
    assert cal.folder.parent == tmp_path and cal.out == cal.folder / "bundle"
    assert cal.recording_dir == cal.folder / "recording" and not cal.recording_dir.exists()
    n = len(load_stimuli(tiny_dataset, "training"))
    assert cal.n_images == n == 960
    # 5 minutes at 5 images a second is more than the 960 images (3.2 min): shown twice, cut at 5 minutes
    assert cal.repetitions == 2
    sequences = limit_duration(make_sequences(load_stimuli(tiny_dataset, "training"), repetitions=2, seed=3),
                               FrameTiming.for_display(60.0), 5, 1.0)
    assert cal.planned_seconds == pytest.approx(len(sequences) * (1.0 + 20 * 0.2)) and 290 < cal.planned_seconds <= 300
    args = cal.presenter_command()
    assert args[:8] == ["present", "--images", str(Path(tiny_dataset).resolve()), "--set", "train", "--labels",
                        "--duration", "5"]
    for option, value in (("--markers", cal.markers), ("--seed", "3"), ("--repetitions", "2"), ("--screen", "1"),
                          ("--pause", "1"), ("--log", str(cal.folder / "presentation.json"))):
        assert args[args.index(option) + 1] == value
    assert "--windowed" in args and "--exit-with-parent" in args
    record = json.loads((cal.folder / "calibration.json").read_text())
    assert record["phase"] == "ready" and record["seed"] == 3 and record["markers"] == cal.markers
    # two blocks started in the same second get their own folders, and other image orders
    other = Calibration(tiny_bundle, tiny_dataset, root=tmp_path)
    assert other.folder != cal.folder and other.markers != cal.markers


def test_a_presenter_that_fails_says_so_with_its_log(tiny_bundle, tiny_dataset, tmp_path):
    cal = Calibration(tiny_bundle, tiny_dataset, minutes=0.1, root=tmp_path, screen=7, offscreen=True)
    process = cal.start_presenter()
    assert cal.phase == "presenting"
    process.process.wait(60)
    assert not cal.presenting
    with pytest.raises(CalibrationError) as err:
        cal.presenter_ended()
    text = str(err.value)
    assert "the presenter failed (exit code 2)" in text and "--screen 7: this display has 1 screen(s)" in text
    assert str(cal.folder / "presenter.log") in text and "nothing was recorded" in text
    assert cal.phase == "failed" and json.loads((cal.folder / "calibration.json").read_text())["phase"] == "failed"


def test_calibrate_says_at_once_when_the_presenter_fails(tiny_bundle, tiny_dataset, stream_name, tmp_path, capsys):
    # the presenter fails while the EEG stream is still looked for: no need to wait --timeout
    t0 = time.monotonic()
    code = main(["calibrate", "--bundle", str(tiny_bundle), "--stream", stream_name, "--out", str(tmp_path / "new"),
                 "--images", str(tiny_dataset), "--screen", "7", "--folder", str(tmp_path / "cal"), "--timeout", "120"])
    assert code == 2 and time.monotonic() - t0 < 60
    err = capsys.readouterr().err.strip().splitlines()
    (block,) = (tmp_path / "cal").iterdir()
    assert err[-1].startswith("bci-app calibrate: error: the presenter failed (exit code 2): ")  # one line
    assert "--screen 7: this display has 1 screen(s)" in err[-1] and str(block / "presenter.log") in err[-1]
    assert not (tmp_path / "new").exists()


def _recorded(tiny_bundle, tiny_dataset, tmp_path, adapt_fn, **kwargs) -> Calibration:
    """A block whose recording is there (a stand-in file: the stand-in adaptations do not
    read it), ready to adapt."""
    recording = tmp_path / "rec"
    recording.mkdir()
    (recording / "recording-raw.fif").write_bytes(b"")
    cal = Calibration(tiny_bundle, tiny_dataset, root=tmp_path / "calibration", adapt_fn=adapt_fn, **kwargs)
    cal.adopt_recording(recording)
    return cal


def test_an_adaptation_that_fails_keeps_the_recording_and_says_how_to_go_on(tiny_bundle, tiny_dataset, tmp_path):
    def too_little(base, recordings, images, out, *, adapt, epochs, device, progress):
        progress("reading the recordings", 0, 1)
        raise UsageError("too little calibration data for a validation split: 12 usable trial(s)")

    cal = _recorded(tiny_bundle, tiny_dataset, tmp_path, too_little, adapt="projector")
    cal.start_adapting()
    assert cal.wait(30) and cal.phase == "failed"
    with pytest.raises(CalibrationError) as err:
        cal.result()
    expected = adapt_by_hand(Path(tiny_bundle).resolve(), tmp_path / "rec", Path(tiny_dataset).resolve(), cal.out,
                             "projector")
    assert str(err.value) == (f"the adaptation failed: too little calibration data for a validation split: 12 usable "
                              f"trial(s); the recording is kept in {tmp_path / 'rec'}; to adapt on it by hand: {expected}")
    assert expected.startswith("bci-train adapt --bundle ") and expected.endswith(" --adapt projector")
    assert (tmp_path / "rec" / "recording-raw.fif").is_file() and not cal.out.exists()


def test_a_cancelled_adaptation_stops_at_its_next_report(tiny_bundle, tiny_dataset, tmp_path):
    reports = []

    def endless(base, recordings, images, out, *, adapt, epochs, device, progress, cancel):
        assert not cancel()
        for k in range(100000):
            progress("adapting", k, 100000)
            reports.append(k)
            time.sleep(0.001)
        raise AssertionError("not cancelled")

    cal = _recorded(tiny_bundle, tiny_dataset, tmp_path, endless)
    cal.start_adapting()
    deadline = time.monotonic() + 30
    while not reports and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cal.phase == "adapting" and cal.progress[0] == "adapting"
    cal.cancel()
    assert cal.wait(30) and cal.phase == "cancelled"
    with pytest.raises(CalibrationCancelled, match="calibration cancelled; the recording is kept in"):
        cal.result()
    assert reports[-1] < 99999


def test_calibrate_command_line_errors_are_one_line(tiny_bundle, tiny_dataset, tmp_path, capsys):
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("")
    base = ["calibrate", "--bundle", str(tiny_bundle), "--stream", "nothing", "--folder", str(tmp_path / "cal")]
    cases = [
        (["--out", str(full)], f"--out {full} is not empty"),
        (["--out", str(tmp_path / "new"), "--minutes", "0"], "--minutes must be > 0, got 0.0"),
        (["--out", str(tmp_path / "new"), "--images", str(tmp_path / "none")], "not found"),
    ]
    for extra, text in cases:
        assert main(base + extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("bci-app calibrate: error: ") and text in err[-1], err
    assert not (tmp_path / "new").exists() and not (tmp_path / "cal").exists()


@pytest.mark.slow
def test_calibrate_end_to_end_a_simulated_new_person(tiny_bundle, tiny_dataset, stream_name, tmp_path, capsys):
    """The presenter (offscreen) shows 0.5 min of training images, a simulated person who
    is in no data set answers them over LSL, ``bci-app calibrate`` records and adapts; the
    new bundle is written, loads, and says what it was adapted on.

    ``--pause 2``: the simulated person receives the markers too, and the presenter starts
    once any program receives them; the pause before the first sequence gives the app the
    time to subscribe as well (with the app the only receiver, no pause is needed)."""
    from trainer.bundle import load_bundle

    markers = f"{stream_name}-cal"
    log = open(tmp_path / "participant.log", "w")
    participant = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bci_app.cli import replay_main; sys.exit(replay_main())", "--simulate",
         "--data", str(tiny_dataset), "--subject", "1", "--subject-seed", "11", "--name", stream_name,
         "--source-id", f"{stream_name}-src", "--markers-from", markers, "--timeout", "90", "--exit-with-parent"],
        stdout=log, stderr=subprocess.STDOUT)
    out = tmp_path / "adapted"
    try:
        code = main(["calibrate", "--bundle", str(tiny_bundle), "--stream", stream_name, "--markers", markers,
                     "--out", str(out), "--minutes", "0.5", "--pause", "2", "--folder", str(tmp_path / "cal"),
                     "--timeout", "60", "--epochs", "10", "--device", "cpu", "--seed", "1"])
    finally:
        participant.terminate()
        participant.wait(30)
        log.close()
    captured = capsys.readouterr()
    assert code == 0, captured.err + (tmp_path / "participant.log").read_text()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"wrote {out}: adapted (all) on ")
    assert "validation top-1 on held-out calibration concepts" in lines[1] and " before " in lines[1]
    assert lines[-1] == f"  decode with it: bci-app --bundle {out} --stream {stream_name}"
    (block,) = (tmp_path / "cal").iterdir()
    record = json.loads((block / "calibration.json").read_text())
    assert record["phase"] == "done" and record["presented"]["onsets"] == 100 and not record["presented"]["aborted"]
    assert (block / "presenter.log").is_file() and (block / "recording" / "recording-raw.fif").is_file()
    adapted = load_bundle(out)
    adaptation = adapted.config["provenance"]["adaptation"]
    (used,) = [Path(r["path"]) for r in adaptation["recordings"]]
    assert used in (block / "recording", block / "recording" / "recording-raw.fif")
    # every image shown was recorded and used (none of the training images is in the test gallery)
    assert adaptation["n_trials"] == record["presented"]["onsets"] == record["adaptation"]["n_trials"]
    assert adaptation["n_fit"] + adaptation["n_val"] == adaptation["n_trials"]
    assert adapted.spec.channels == load_bundle(tiny_bundle).spec.channels
