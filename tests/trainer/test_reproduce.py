"""bci-train reproduce: a protocol file run as one sweep, locally and on a local Ray
instance (each feature pass split over two Ray tasks, each run a task) with the same
numbers; the paper-style table and the scaling plot; finished runs never run again."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from trainer.cli import main
from trainer.errors import BCIError, UsageError
from trainer.reproduce import load_protocol, plan_protocol

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[2]


def _protocol(folder: Path, data: Path, cache: Path) -> Path:
    path = folder / "protocol.toml"
    path.write_text(f"""
out = "out"
eeg = "{data}"
subjects = [1, 2]
seeds = [0]
modes = ["intra"]

[fit]
epochs = 2
batch_size = 128
embed_dim = 32
proj_dim = 16
device = "cpu"
cache = "{cache}"

[[backbone]]
name = "resnet10t"
weights = "random"
layers = "1,final"

[[backbone]]
name = "vit_tiny_patch16_224"
weights = "random"
image_size = 32
layers = "2,final"
""")
    return path


@pytest.mark.slow
def test_reproduce_locally_and_on_ray_gives_the_same_table(tiny_dataset, tiny_cache, tmp_path, capsys):
    pytest.importorskip("ray")
    protocol = _protocol(tmp_path, tiny_dataset, tiny_cache)
    assert main(["reproduce", "--config", str(protocol)]) == 0
    assert "## EEG, intra-subject (20-way)" in capsys.readouterr().out
    on_ray_cmd = ["reproduce", "--config", str(protocol), "--engine", "ray", "--feature-workers", "2",
                  "--out", str(tmp_path / "on-ray")]
    assert main(on_ray_cmd) == 0
    local, on_ray = tmp_path / "out", tmp_path / "on-ray"
    assert (local / "reproduce.csv").read_text() == (on_ray / "reproduce.csv").read_text()
    assert (local / "reproduce.md").read_text() == (on_ray / "reproduce.md").read_text()
    with open(local / "reproduce.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 8  # 2 backbones x 2 layers x 2 subjects x 1 seed
    summary = json.loads((local / "reproduce.json").read_text())
    (group,) = summary["groups"]
    by_name = {b["backbone"]: b for b in group["backbones"]}
    assert set(by_name) == {"resnet10t", "vit_tiny_patch16_224"}
    for name, entry in by_name.items():
        # one candidate intermediate layer: it is the chosen one; mean and s.d. over the 2 subjects
        mine = [r for r in rows if r["backbone"] == name and r["layer"] == str(entry["chosen_layer"])]
        values = [float(r["test_top1"]) for r in mine]
        assert entry["chosen_layer"] in (1, 2) and entry["n_runs"] == 2
        assert entry["top1"] == pytest.approx(sum(values) / 2)
        assert entry["top1_sd"] == pytest.approx(abs(values[0] - values[1]) / 2 ** 0.5)
        assert "final_top1" in entry
    assert (local / "scaling_eeg_intra.png").stat().st_size > 1000
    assert (local / "eeg" / "intra" / "sweep.md").is_file()
    # run again: every run is finished, so nothing runs and no Ray instance is started
    import ray

    capsys.readouterr()
    assert main(on_ray_cmd) == 0 and not ray.is_initialized()
    assert (on_ray / "reproduce.csv").read_text() == (local / "reproduce.csv").read_text()


def test_the_shipped_paper_protocol_plans_the_papers_runs():
    """configs/reproduce/paper.toml: eight backbones (InternViT-6B as an architecture
    without weights), 10 EEG and 4 MEG subjects, 5 seeds, intra and inter."""
    protocol = load_protocol(ROOT / "configs" / "reproduce" / "paper.toml", out="/tmp/unused")
    runs, features = plan_protocol(protocol)
    backbones = list(dict.fromkeys(r.info["backbone"] for r in runs))
    assert len(backbones) == 8 and backbones[-1].endswith("configs/backbones/InternViT-6B-448px-V2_5")
    assert len(features) == 16  # 8 backbones x (EEG images, MEG images)
    eeg_intra = [r for r in runs if r.info["modality"] == "eeg" and r.info["mode"] == "intra"]
    assert {r.info["subject"] for r in eeg_intra} == set(range(1, 11)) and {r.info["seed"] for r in eeg_intra} == set(range(5))
    assert all(r.cfg.inter == (r.info["mode"] == "inter") for r in runs)
    assert all(r.cfg.source == "meg" for r in runs if r.info["modality"] == "meg")
    assert len(runs) == 10920


def test_the_plan_builds_each_backbone_once(tmp_path, monkeypatch):
    """Every (modality, mode) plans its runs, but a backbone's architecture (seconds for a
    large one) is built once for all of them."""
    import trainer.vision

    built = []
    describe = trainer.vision.describe_backbone
    monkeypatch.setattr(trainer.vision, "describe_backbone", lambda name, **kw: built.append(name) or describe(name, **kw))
    protocol = tmp_path / "p.toml"
    protocol.write_text('out = "o"\neeg = "d"\nmeg = "m"\nsubjects = [1]\nmeg_subjects = [1]\nmodes = ["intra", "inter"]\n'
                        '[[backbone]]\nname = "resnet10t"\n[[backbone]]\nname = "vit_tiny_patch16_224"\nimage_size = 32\n')
    runs, _ = plan_protocol(load_protocol(protocol))
    assert sorted(built) == ["resnet10t", "vit_tiny_patch16_224"]
    assert {(r.info["modality"], r.info["mode"]) for r in runs} == {(m, k) for m in ("eeg", "meg") for k in ("intra", "inter")}


def test_a_dry_run_prints_the_plan(capsys):
    assert main(["reproduce", "--config", str(ROOT / "configs" / "reproduce" / "small-synthetic.toml"), "--dry-run",
                 "--out", "/tmp/unused"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("24 runs, 2 feature pass(es), into /tmp/unused")
    assert "eeg intra vit_tiny_patch16_224 (5.7 M parameters): 12 runs, layers 3,6,final" in out


def test_bad_protocols_name_the_problem(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('out = "o"\neeg = "d"\nsubjects = [1]\n[[backbone]]\nname = "resnet10t"\ncolour = "red"\n')
    with pytest.raises(BCIError, match=r"backbone\[0\].colour.*unknown key"):
        load_protocol(bad)
    bad.write_text('out = "o"\neeg = "d"\nsubjects = [1]\n[fit]\nepochs = 2\nsubject = 3\n[[backbone]]\nname = "resnet10t"\n')
    with pytest.raises(BCIError, match="fit.subject.*set by the protocol"):
        load_protocol(bad)
    bad.write_text('out = "o"\neeg = "d"\nsubjects = [1]\nmodes = ["both"]\n[[backbone]]\nname = "resnet10t"\n')
    with pytest.raises(UsageError, match="modes must be"):
        load_protocol(bad)
    bad.write_text('out = "o"\nsubjects = [1]\n[[backbone]]\nname = "resnet10t"\n')
    with pytest.raises(UsageError, match="give the data"):
        load_protocol(bad)
    bad.write_text("out = [")
    with pytest.raises(BCIError, match="not valid TOML"):
        load_protocol(bad)
