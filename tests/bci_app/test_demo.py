"""``bci-app --demo`` as a new user runs it: from an empty demo folder, headless, then in the
window with ``--screenshot`` (the cached data and bundle are reused)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest


def _env(tmp_path):
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # window settings: not the user's
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    return env


def _app(args, env, timeout):
    code = "import sys; from bci_app.cli import main; sys.exit(main())"
    return subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.mark.slow
def test_demo_from_nothing_headless_then_window_screenshot(tmp_path):
    demo = tmp_path / "demo"
    env = _env(tmp_path)
    t0 = time.monotonic()
    run = _app(["--demo", "--demo-dir", str(demo), "--headless", "--max-epochs", "30", "--device", "cpu",
                "--summary", str(tmp_path / "summary.json")], env, timeout=900)
    first = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-3000:]
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 30
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["epochs_decoded"] == 30 and summary["samples_lost"] == 0
    assert summary["single_trial"]["n"] >= 25  # catch trials carry no stimulus id
    assert (demo / "bundle" / "bundle.json").is_file() and (demo / "demo.json").is_file()
    assert not (demo / "data.partial").exists() and not (demo / "bundle.partial").exists()
    gallery = {it["id"] for it in json.loads((demo / "bundle" / "gallery.json").read_text())["items"]}
    assert all(r["stimulus_id"] in gallery for r in records if r["stimulus_id"] is not None)

    # second run: the cached demo, in the window, saved as a screenshot
    shot = tmp_path / "window.png"
    t0 = time.monotonic()
    run = _app(["--demo", "--demo-dir", str(demo), "--screenshot", str(shot), "--max-epochs", "5"], env, timeout=300)
    second = time.monotonic() - t0
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "summary: " in run.stderr  # the session summary, as --headless prints it
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width >= 800 and image.height >= 500
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 500  # thumbnails and traces, not an empty window
    assert second < first  # nothing was generated or trained again
    # no replay process is left behind
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(demo / "data") not in out


def test_prepare_demo_reuses_a_ready_folder_and_redoes_unfinished_steps(tmp_path, monkeypatch):
    import bci_app.demo as demo_mod

    root = tmp_path / "demo"
    calls = []
    files = demo_mod.DemoFiles(root=root, data=root / "data", bundle=root / "bundle")

    def fake_generate(out, preset, subjects=None, progress=None):  # writes what the demo checks
        calls.append(("generate", preset, subjects))
        session = out / files.session.relative_to(files.data)
        session.parent.mkdir(parents=True)
        session.write_bytes(b"")
        (out / "synth.json").write_text("{}")

    def fake_fit(cfg, progress=None):
        calls.append(("fit", cfg.backbone, cfg.weights, cfg.subject))
        from pathlib import Path

        Path(cfg.out).mkdir(parents=True, exist_ok=True)
        (Path(cfg.out) / "bundle.json").write_text("{}")

    import trainer.fit
    import trainer.synth

    monkeypatch.setattr(trainer.synth, "generate", fake_generate)
    monkeypatch.setattr(trainer.fit, "fit", fake_fit)
    # an interrupted first run: half a data set, a bundle folder without bundle.json
    (root / "data.partial").mkdir(parents=True)
    (root / "bundle").mkdir()
    got = demo_mod.prepare_demo(root)
    assert got == files
    assert calls == [("generate", "tiny", 1), ("fit", "resnet10t", "random", 1)]
    assert json.loads((root / "demo.json").read_text())["version"] == demo_mod.DEMO_VERSION
    calls.clear()
    demo_mod.prepare_demo(root)
    assert calls == []  # ready: nothing redone
    (root / "bundle" / "bundle.json").unlink()
    demo_mod.prepare_demo(root)
    assert calls == [("fit", "resnet10t", "random", 1)]  # only the missing step


def test_demo_dir_precedence(tmp_path, monkeypatch):
    from bci_app.demo import demo_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("BCI_DEMO_DIR", raising=False)
    assert demo_dir() == tmp_path / "xdg" / "shallow-bci" / "demo"
    monkeypatch.setenv("BCI_DEMO_DIR", str(tmp_path / "env"))
    assert demo_dir() == tmp_path / "env"
    assert demo_dir(tmp_path / "arg") == tmp_path / "arg"
