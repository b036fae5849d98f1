"""bci-app / bci-replay command lines, over real LSL on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from bci_app.cli import main
from bci_app.streams import list_streams


def test_headless_writes_json_lines_and_a_summary(lead_session, tiny_bundle, play, stream_name, tmp_path, capsys):
    play(lead_session)
    summary_file = tmp_path / "summary.json"
    code = main(["--bundle", str(tiny_bundle), "--stream", stream_name, "--headless", "--max-epochs", "6",
                 "--device", "cpu", "--summary", str(summary_file)])
    out, err = capsys.readouterr()
    assert code == 0
    lines = [json.loads(line) for line in out.splitlines()]
    assert len(lines) == 6
    for rec in lines:
        assert {"stimulus_id", "topk", "confidence", "t_marker", "t_ready", "t_decided", "averaged"} <= set(rec)
        assert len(rec["topk"]) == 5 and len(rec["confidence"]) == 5
        assert rec["confidence"] == sorted(rec["confidence"], reverse=True)
        assert rec["t_marker"] < rec["t_ready"] <= rec["t_decided"]
    assert "summary: 6 epochs decoded" in err and "decision latency" in err
    summary = json.loads(summary_file.read_text())
    assert summary["epochs_decoded"] == 6 and summary["stopped_because"] == "6 epochs decoded"
    assert summary["decision_latency"]["n"] == 6


def test_streams_lists_eeg_and_marker_streams(lead_session, play, stream_name, capsys):
    play(lead_session, markers="string")
    assert main(["streams", "--timeout", "1.5", "--json"]) == 0
    found = {s["name"]: s for s in map(json.loads, capsys.readouterr().out.splitlines())}
    eeg, markers = found[stream_name], found[f"{stream_name}-markers"]
    assert eeg["sfreq"] == 1000.0 and eeg["n_channels"] == 63 and eeg["source_id"] == f"{stream_name}-src"
    assert markers["sfreq"] == 0 and markers["dtype"] == "string" and markers["type"] == "Markers"
    assert main(["streams", "--timeout", "1.5"]) == 0
    text = capsys.readouterr().out
    assert "signal streams:" in text and "marker streams:" in text and stream_name in text


def test_bad_command_lines_are_one_line_errors(tmp_path, capsys):
    assert main(["--bundle", str(tmp_path / "nonexistent"), "--stream", "x", "--headless"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bci-app: error:") and "nonexistent" in err and err.count("\n") == 1
    assert main(["--stream", "x", "--headless"]) == 2
    assert "--headless needs --bundle and --stream (or --demo)" in capsys.readouterr().err
    assert main(["--demo", "--bundle", str(tmp_path), "--headless"]) == 2
    assert "--demo makes its own bundle and stream" in capsys.readouterr().err
    assert main(["--demo", "--screenshot", str(tmp_path / "s.png"), "--headless"]) == 2
    assert "--screenshot needs the window" in capsys.readouterr().err
    assert main(["--screenshot", str(tmp_path / "s.png"), "--bundle", str(tmp_path)]) == 2
    assert "--screenshot needs something to decode" in capsys.readouterr().err
    assert main(["--bundle", str(tmp_path), "--stream", "x", "--headless", "--max-epochs", "0"]) == 2
    assert "--max-epochs must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("build", ["bci_app.cli", "trainer.cli"])
def test_verbose_counts_before_and_after_a_command(build):
    """'bci-app -v streams' once lost its -v (the command's own default overwrote it)."""
    import importlib

    parser = importlib.import_module(build).build_parser()
    command = ["streams"] if build == "bci_app.cli" else ["info", "DATA"]
    assert parser.parse_args(["-v", *command]).verbose is True
    assert parser.parse_args([*command, "-v"]).verbose is True
    assert parser.parse_args(command).verbose is False


def test_the_window_without_a_display_is_a_clear_error(monkeypatch, capsys):
    if not sys.platform.startswith("linux"):
        pytest.skip("the DISPLAY check is for Linux")
    for var in ("QT_QPA_PLATFORM", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(var, raising=False)
    assert main(["--demo"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bci-app: error: the window cannot open here") and err.count("\n") == 1
    assert "no display" in err and "--headless" in err


def test_the_window_where_no_x_server_runs_is_a_clear_error_not_an_abort(tmp_path, free_display):
    """Qt aborts the process (SIGABRT) when its xcb plugin cannot start: bci-app asks a
    probe first and says why, with the install line when libraries are missing."""
    if not sys.platform.startswith("linux"):
        pytest.skip("xcb is for Linux")
    env = {k: v for k, v in os.environ.items() if k not in ("QT_QPA_PLATFORM", "WAYLAND_DISPLAY")}
    env.update(DISPLAY=f":{free_display()}", XDG_CONFIG_HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
    code = "import sys; from bci_app.cli import main; sys.exit(main())"
    run = subprocess.run([sys.executable, "-c", code, "--demo", "--demo-dir", str(tmp_path / "demo")], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert "bci-app: error: the window cannot open here" in run.stderr
    assert "apt-get install" in run.stderr or "cannot connect to the X display" in run.stderr
    assert not (tmp_path / "demo").exists()  # nothing was prepared for a window that cannot open


def test_sys_info_says_whether_the_window_can_open(capsys):
    assert main(["sys-info"]) == 0
    out = capsys.readouterr().out
    assert "liblsl:" in out and "Qt:" in out
    window = [line for line in out.splitlines() if line.startswith("window: ")]
    assert len(window) == 1 and "off screen" in window[0]  # the tests draw off screen


def test_a_stream_that_is_not_there_is_named(tiny_bundle, capsys):
    code = main(["--bundle", str(tiny_bundle), "--stream", "no-such-stream-anywhere", "--headless", "--timeout", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no EEG stream named 'no-such-stream-anywhere'" in err


def test_window_screenshot_run_ends_with_the_error_when_the_stream_is_not_there(tiny_bundle, tmp_path):
    env = dict(os.environ, QT_QPA_PLATFORM="offscreen", XDG_CONFIG_HOME=str(tmp_path / "config"))
    shot = tmp_path / "shot.png"
    run = subprocess.run([sys.executable, "-c", "import sys; from bci_app.cli import main; sys.exit(main())",
                          "--bundle", str(tiny_bundle), "--stream", "no-such-stream-anywhere", "--timeout", "1",
                          "--screenshot", str(shot)], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr[-2000:]
    assert "bci-app: error: no EEG stream named 'no-such-stream-anywhere'" in run.stderr
    assert "Traceback" not in run.stderr and not shot.exists()


def test_bci_replay_streams_a_things_file_and_stops_cleanly(tiny_dataset, stream_name):
    path = tiny_dataset / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy"
    code = "import sys; from bci_app.cli import replay_main; sys.exit(replay_main())"
    proc = subprocess.Popen([sys.executable, "-c", code, str(path), "--name", stream_name, "--markers", "string"],
                            stderr=subprocess.PIPE, text=True, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 30
        names = set()
        while time.monotonic() < deadline and not {stream_name, f"{stream_name}-markers"} <= names:
            names = {s.name for s in list_streams(timeout=0.5)}
        assert {stream_name, f"{stream_name}-markers"} <= names
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "streaming" in err and "stopped" in err and "Traceback" not in err


def test_bci_replay_bad_input(tmp_path, capsys):
    from bci_app.cli import replay_main

    assert replay_main([str(tmp_path / "missing.fif")]) == 2
    err = capsys.readouterr().err
    assert "missing.fif" in err and "does not exist" in err
    bad = tmp_path / "bad.npy"
    np.save(bad, np.arange(3))
    assert replay_main([str(bad)]) == 2
    assert "bci-replay: error:" in capsys.readouterr().err
