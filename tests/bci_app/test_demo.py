"""``bci-app --demo`` as a new user runs it: from an empty demo folder, headless, stopped
with Ctrl-C while it trains and started again (it resumes), then in the window with
``--screenshot`` (the cached data and bundle are reused).

The demo's first run fits the demo bundle with the paper's default recipe on subject 1 of
the ``tiny`` synthetic set with random ``resnet10t``: the suite's check that this recipe
is far above chance and that ``bci-train eval --bundle`` reproduces its metrics is made on
that bundle, so the recipe is trained once in the suite, not twice.  The first run is
split by the interruption into two module fixtures, each set up by the first test that
needs it, so that each half of the work has a test's timeout of its own."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from types import SimpleNamespace

import pytest

_APP = "import sys; from bci_app.cli import main; sys.exit(main())"


def _env(tmp_path):
    env = dict(os.environ)
    env["XDG_CONFIG_HOME"] = str(tmp_path / "config")  # window settings: not the user's
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    # one intra-op thread: the test machine is a busy 2-core one, where every torch op's
    # OpenMP barrier waits for a descheduled second thread (a default-recipe epoch: 0.5 s
    # with 1 thread, 1.3 s with 2 at a load of 4); the code run is the same, only slower
    # or faster
    env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = "1"
    return env


def _app(args, env, timeout):
    return subprocess.run([sys.executable, "-c", _APP, *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def demo_folder(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("demo-first-run")
    return SimpleNamespace(tmp_path=tmp_path, demo=tmp_path / "demo", env=_env(tmp_path))


def _headless(folder):
    return ["--demo", "--demo-dir", str(folder.demo), "--headless", "--max-epochs", "30", "--device", "cpu",
            "--summary", str(folder.tmp_path / "summary.json")]


@pytest.fixture(scope="module")
def interrupted_run(demo_folder):
    """``bci-app --demo --headless`` from nothing, stopped with Ctrl-C (SIGINT) once the
    fit has trained the layer the proxy chose (the data are made, the fit is under way:
    the bundle is not written yet)."""
    proc = subprocess.Popen([sys.executable, "-c", _APP, *_headless(demo_folder)], env=demo_folder.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines, layer = [], None
    try:
        for line in proc.stderr:
            lines.append(line)
            trained = re.match(r"INFO: (layer_\d+|final) \(depth", line)  # logged once its last checkpoint is written
            if trained:
                layer = trained.group(1)
                proc.send_signal(signal.SIGINT)
                break
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return SimpleNamespace(returncode=proc.returncode, stdout=out, stderr="".join(lines) + err, layer=layer)


@pytest.fixture(scope="module")
def first_run(demo_folder, interrupted_run):
    """The same command again: it resumes the fit, then decodes 30 epochs."""
    assert interrupted_run.layer is not None, interrupted_run.stderr[-3000:]
    run = _app(_headless(demo_folder), demo_folder.env, timeout=900)
    return SimpleNamespace(tmp_path=demo_folder.tmp_path, demo=demo_folder.demo, env=demo_folder.env, run=run,
                           layer=interrupted_run.layer)


@pytest.mark.slow
def test_demo_from_nothing_stops_cleanly_on_ctrl_c(demo_folder, interrupted_run):
    demo = demo_folder.demo
    assert interrupted_run.layer is not None, interrupted_run.stderr[-3000:]
    assert interrupted_run.returncode == 0 and "bci-app: interrupted" in interrupted_run.stderr
    assert "Traceback" not in interrupted_run.stderr
    # the data are complete; the fit is unfinished, its checkpoints in the demo's cache
    assert (demo / "data" / "synth.json").is_file() and not (demo / "data.partial").exists()
    assert not (demo / "demo.json").exists() and not (demo / "bundle").exists()
    assert (demo / "bundle.partial" / "config.json").is_file()
    assert not (demo / "bundle.partial" / "bundle.json").exists()
    checkpoints = {p.name for p in (demo / "cache" / "checkpoints").glob("*/*.safetensors")}
    assert checkpoints == {f"{interrupted_run.layer}.safetensors"}  # the proxy's choice, the only layer trained


@pytest.mark.slow
def test_demo_started_again_resumes_then_decodes(first_run):
    run, demo = first_run.run, first_run.demo
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"{first_run.layer}: resuming after epoch 50" in run.stderr
    assert "generating the synthetic data set" not in run.stderr  # the finished data step is kept
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert len(records) == 30
    summary = json.loads((first_run.tmp_path / "summary.json").read_text())
    assert summary["epochs_decoded"] == 30 and summary["samples_lost"] == 0
    assert summary["single_trial"]["n"] >= 25  # catch trials carry no stimulus id
    assert (demo / "bundle" / "bundle.json").is_file() and (demo / "demo.json").is_file()
    assert not (demo / "data.partial").exists() and not (demo / "bundle.partial").exists()
    gallery = {it["id"] for it in json.loads((demo / "bundle" / "gallery.json").read_text())["items"]}
    assert all(r["stimulus_id"] in gallery for r in records if r["stimulus_id"] is not None)
    # the bundle is all that is kept of the fit: no checkpoints, in the bundle or the cache
    assert not (demo / "bundle" / "checkpoints").exists()
    assert not list((demo / "cache" / "checkpoints").iterdir())
    size = sum(p.stat().st_size for p in (demo / "bundle").rglob("*") if p.is_file())
    assert size < 2 * (demo / "bundle" / "encoder.safetensors").stat().st_size + 1_000_000


@pytest.mark.slow
def test_demo_bundle_is_the_default_recipe_far_above_chance(first_run, capsys):
    """The issue's acceptance run: the paper's defaults (EEGProject, 50 epochs, batch 1024,
    the layer chosen among every stage and the final layer by the ridge proxy on validation
    concepts) on the tiny set, with the only weights a fresh offline machine has (random
    resnet10t), is far above chance; eval --bundle reproduces it from the bundle alone."""
    from trainer.cli import main
    from trainer.config import FitConfig

    assert first_run.run.returncode == 0, first_run.run.stderr[-3000:]
    bundle, data = first_run.demo / "bundle", first_run.demo / "data"
    settings = json.loads((bundle / "config.json").read_text())
    own = {"data", "out", "cache", "subject", "backbone", "weights"}
    defaults = {k: v for k, v in vars(FitConfig()).items() if k not in own}
    assert {k: v for k, v in settings.items() if k not in own} == defaults
    assert (settings["backbone"], settings["weights"], settings["subject"]) == ("resnet10t", "random", 1)
    metrics = json.loads((bundle / "metrics.json").read_text())
    chance = metrics["chance_top1"]
    assert metrics["n_way"] == 20
    assert [r["layer"] for r in metrics["layer_sweep"]] == [0, 1, 2, 3, 4, "final"]
    assert metrics["layer_search"] == "proxy" and all("proxy_mean_rank" in r for r in metrics["layer_sweep"])
    assert len(metrics["history"]) == 50
    assert metrics["averaged"]["top1"] >= 3 * chance, metrics["averaged"]
    assert metrics["kway"]["2"] >= 0.65, metrics["kway"]
    assert metrics["single_trial"]["top1"] > chance, metrics["single_trial"]
    capsys.readouterr()
    assert main(["eval", "--bundle", str(bundle), "--data", str(data), "--subject", "1",
                 "--cache", str(first_run.demo / "cache"), "--device", "cpu", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["averaged"] == metrics["averaged"] and again["single_trial"] == metrics["single_trial"]
    assert again["kway"] == metrics["kway"]


@pytest.mark.slow
def test_demo_window_reuses_the_prepared_demo(first_run):
    assert first_run.run.returncode == 0, first_run.run.stderr[-3000:]
    demo = first_run.demo
    made = [demo / "demo.json", demo / "data" / "synth.json", demo / "bundle" / "bundle.json",
            demo / "bundle" / "encoder.safetensors"]
    before = [p.stat().st_mtime_ns for p in made]
    shot = first_run.tmp_path / "window.png"
    run = _app(["--demo", "--demo-dir", str(demo), "--screenshot", str(shot), "--max-epochs", "5"], first_run.env,
               timeout=280)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    assert "summary: " in run.stderr  # the session summary, as --headless prints it
    from PIL import Image

    with Image.open(shot) as image:
        assert image.width >= 800 and image.height >= 500
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 500  # thumbnails and traces, not an empty window
    assert [p.stat().st_mtime_ns for p in made] == before  # nothing was generated or trained again
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
    (root / "bundle" / "checkpoints").mkdir()  # what earlier versions left in the bundle
    (root / "bundle" / "checkpoints" / "layer_0.safetensors").write_bytes(b"0" * 1000)
    demo_mod.prepare_demo(root)
    assert calls == []  # ready: nothing redone
    assert not (root / "bundle" / "checkpoints").exists()
    (root / "bundle" / "bundle.json").unlink()
    demo_mod.prepare_demo(root)
    assert calls == [("fit", "resnet10t", "random", 1)]  # only the missing step


def test_prepare_demo_reports_one_job(tmp_path, monkeypatch):
    """Data generation and the fit are one progress: done never goes back and ends at total."""
    import bci_app.demo as demo_mod
    import trainer.fit
    import trainer.synth

    files = demo_mod.DemoFiles(root=tmp_path, data=tmp_path / "data", bundle=tmp_path / "bundle")

    def fake_generate(out, preset, subjects=None, progress=None):
        for i in range(1, 5):
            progress("images", i, 4)
        for i in range(1, 3):
            progress("sub-01 raw", i, 2)
        progress("sub-01 preprocessed (official)", 1, 1)
        session = out / files.session.relative_to(files.data)
        session.parent.mkdir(parents=True)
        session.write_bytes(b"")
        (out / "synth.json").write_text("{}")

    def fake_fit(cfg, progress=None):
        for i in range(1, 11):
            progress(f"layer_0 (1/1): epoch {i}/10", i, 10)
        (tmp_path / "bundle.partial").mkdir()
        (tmp_path / "bundle.partial" / "bundle.json").write_text("{}")

    monkeypatch.setattr(trainer.synth, "generate", fake_generate)
    monkeypatch.setattr(trainer.fit, "fit", fake_fit)
    reports = []
    demo_mod.prepare_demo(tmp_path, lambda phase, done, total: reports.append((phase, done, total)))
    assert len({total for _, _, total in reports}) == 1  # one job, one total
    dones = [done for _, done, _ in reports]
    assert dones == sorted(dones) and dones[-1] == reports[-1][2]
    assert reports[0][0].startswith("data: images") and reports[-1][0] == "model: layer_0 (1/1): epoch 10/10"
    # the data are a fifth of the job or so, the model the rest
    first_model = next(done for phase, done, _ in reports if phase.startswith("model"))
    assert 0.1 < first_model / reports[-1][2] < 0.4


_TWO_DEMOS = r"""
import json, logging, os, sys, time, types
from pathlib import Path

logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
root, log, go = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
session = Path("raw_data/sub-01/ses-01/raw_eeg_test.npy")

def generate(out, preset, subjects=None, progress=None):
    with open(log, "a") as fh:
        fh.write(f"generate {os.getpid()}\n")
    time.sleep(2.0)  # long enough for the other demo to arrive meanwhile
    (Path(out) / session).parent.mkdir(parents=True)
    (Path(out) / session).write_bytes(b"")
    (Path(out) / "synth.json").write_text("{}")

def fit(cfg, progress=None):
    with open(log, "a") as fh:
        fh.write(f"fit {os.getpid()}\n")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    (Path(cfg.out) / "bundle.json").write_text("{}")

# the real preparation with its two expensive steps faked (no torch import: a cheap test)
from trainer.config import FitConfig
sys.modules["trainer.synth"] = types.SimpleNamespace(generate=generate)
sys.modules["trainer.fit"] = types.SimpleNamespace(FitConfig=FitConfig, fit=fit)
from bci_app.demo import prepare_demo

(go.parent / f"ready-{os.getpid()}").touch()
while not go.exists():
    time.sleep(0.01)
files = prepare_demo(root)
print(json.dumps({"bundle": str(files.bundle), "session": str(files.session)}))
"""


def test_two_demos_at_once_take_turns(tmp_path):
    """Two ``bci-app --demo`` started together on one demo folder: one prepares it, the
    other waits (saying so), then finds it ready; nothing is made twice or left half-made."""
    import time

    root, log, go = tmp_path / "demo", tmp_path / "calls.log", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _TWO_DEMOS, str(root), str(log), str(go)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("ready-*"))) < 2:  # both started: let them go at once
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.05)
        go.touch()
        outputs = [p.communicate(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    for p, (_, err) in zip(procs, outputs):
        assert p.returncode == 0, err
    calls = log.read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["generate", "fit"]  # once, by one of them
    assert sum("waiting for it to finish" in err for _, err in outputs) == 1
    assert json.loads(outputs[0][0]) == json.loads(outputs[1][0])
    assert (root / "demo.json").is_file() and (root / "bundle" / "bundle.json").is_file()
    assert not list(root.glob("*.partial"))


def test_demo_dir_precedence(tmp_path, monkeypatch):
    from bci_app.demo import demo_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("BCI_DEMO_DIR", raising=False)
    assert demo_dir() == tmp_path / "xdg" / "shallow-bci" / "demo"
    monkeypatch.setenv("BCI_DEMO_DIR", str(tmp_path / "env"))
    assert demo_dir() == tmp_path / "env"
    assert demo_dir(tmp_path / "arg") == tmp_path / "arg"
