"""bci-train sweep: one feature pass per backbone, a run per layer, table and plots."""

import csv

import pytest

from trainer import vision
from trainer.config import FitConfig
from trainer.sweep import sweep, write_report


def test_sweep_one_feature_pass_then_a_run_per_layer(tiny_dataset, tmp_path, monkeypatch):
    calls = []
    real = vision.extract_features

    def counting(*args, **kwargs):
        calls.append(list(args[2]) if len(args) > 2 else kwargs.get("layers"))
        return real(*args, **kwargs)

    monkeypatch.setattr(vision, "extract_features", counting)
    base = FitConfig(data=str(tiny_dataset), out=str(tmp_path / "sweep"), backbone="vit_tiny_patch16_224",
                     weights="random", image_size=32, epochs=1, batch_size=128, proj_dim=16, embed_dim=32,
                     cache=str(tmp_path / "cache"), device="cpu")
    rows = sweep(base, backbones=["vit_tiny_patch16_224"], subjects=[1], seeds=[0, 1], layers="0,3,final")
    assert len(calls) == 2  # training images and test images, all three layers each time
    assert all(sorted(map(str, c)) == ["0", "3", "final"] for c in calls)
    assert len(rows) == 6
    assert {(r["seed"], r["layer"]) for r in rows} == {(s, k) for s in (0, 1) for k in (0, 3, "final")}
    for name in ("sweep.csv", "sweep.md", "top1_vs_depth.png"):
        assert (tmp_path / "sweep" / name).is_file()
    with open(tmp_path / "sweep" / "sweep.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (tmp_path / "sweep" / "vit_tiny_patch16_224" / "sub-01" / "seed-1" / "layer_3" / "bundle.json").is_file()


def test_report_across_backbones(tmp_path):
    rows = []
    for name, params, accs in (("a", 1e6, (0.2, 0.4, 0.1)), ("b", 1e7, (0.3, 0.5, 0.1)), ("c", 1e8, (0.4, 0.6, 0.2))):
        for layer, acc in zip((0, 1, "final"), accs):
            rows.append({"backbone": name, "n_params": params, "n_layers": 2, "subject": 1, "seed": 0, "layer": layer,
                         "depth": None, "val_top1": acc, "test_top1": acc, "test_top5": acc, "single_top1": acc,
                         "n_way": 200, "run": "x"})
    write_report(rows, tmp_path)
    text = (tmp_path / "sweep.md").read_text()
    assert "best intermediate layer r = 1.00" in text
    assert (tmp_path / "top1_vs_params.png").is_file()
    assert "| c | 100.0M | 1 | 0.600 | 0.200 |" in text


def test_bad_layers(tiny_dataset, tmp_path):
    base = FitConfig(data=str(tiny_dataset), out=str(tmp_path / "s"), backbone="vit_tiny_patch16_224", weights="random",
                     image_size=32, cache=str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="0..11"):
        sweep(base, backbones=["vit_tiny_patch16_224"], subjects=[1], seeds=[0], layers="1,30")
