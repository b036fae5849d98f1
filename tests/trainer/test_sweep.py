"""bci-train sweep: one feature pass per backbone, a run per layer, table and plots."""

import csv

import pytest

from trainer.config import FitConfig
from trainer.errors import UsageError
from trainer.sweep import sweep, write_report
from trainer.vision import features as vision

pytestmark = pytest.mark.usefixtures("one_torch_thread")


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
    reports = []
    rows = sweep(base, backbones=["vit_tiny_patch16_224"], subjects=[1], seeds=[0, 1], layers="0,3,final",
                 progress=lambda *r: reports.append(r))
    assert len(calls) == 2  # training images and test images, all three layers each time
    # the feature pass, then one progress for all the runs, the run and its layer/epoch in the phase
    assert reports[0][0].startswith("image features of vit_tiny_patch16_224 (training images")
    runs = [r for r in reports if r[0].startswith("run ")]
    assert reports[-len(runs):] == runs
    assert len({total for _, _, total in runs}) == 1 and runs[-1][1] == runs[-1][2]
    assert [done for _, done, _ in runs] == sorted(done for _, done, _ in runs)
    assert any(phase.startswith("run 6/6 (vit_tiny_patch16_224 sub-01 seed 1 final): final (1/1): epoch 1/1")
               for phase, _, _ in runs)
    assert all(sorted(map(str, c)) == ["0", "3", "final"] for c in calls)
    assert len(rows) == 6
    assert {(r["seed"], r["layer"]) for r in rows} == {(s, k) for s in (0, 1) for k in (0, 3, "final")}
    for name in ("sweep.csv", "sweep.md", "top1_vs_depth.png"):
        assert (tmp_path / "sweep" / name).is_file()
    with open(tmp_path / "sweep" / "sweep.csv") as fh:
        assert len(list(csv.DictReader(fh))) == 6
    assert (tmp_path / "sweep" / "vit_tiny_patch16_224" / "sub-01" / "seed-1" / "layer_3" / "bundle.json").is_file()
    # the same sweep again trains nothing: its finished runs are kept
    import trainer.fit

    monkeypatch.setattr(trainer.fit, "_train_layer", lambda *a, **k: pytest.fail("trained again"))
    assert sweep(base, backbones=["vit_tiny_patch16_224"], subjects=[1], seeds=[0, 1], layers="0,3,final") == rows


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
    with pytest.raises(UsageError, match="0..11"):
        sweep(base, backbones=["vit_tiny_patch16_224"], subjects=[1], seeds=[0], layers="1,30")
    with pytest.raises(UsageError, match="--jobs"):
        sweep(base, backbones=["vit_tiny_patch16_224"], subjects=[1], seeds=[0], jobs=0)


def test_engine_options_are_checked():
    from trainer.sweep import Engine

    with pytest.raises(UsageError, match="--engine"):
        Engine(kind="slurm").check()
    with pytest.raises(UsageError, match="for --engine ray"):
        Engine(kind="local", gpus_per_run=0.5).check()
    with pytest.raises(UsageError, match="--feature-workers"):
        Engine(kind="ray", feature_workers=0).check()
