"""bci-train features: the feature pass of fit on its own, split over worker processes
(one per device; here two CPU workers) or over cluster ranks sharing a cache, merged into
exactly the files fit reads."""

from __future__ import annotations

import json

import numpy as np
import pytest

from trainer.cli import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COMMON = ["--backbone", "vit_tiny_patch16_224", "--weights", "random", "--image-size", "32", "--layers", "0,2,final",
          "--pooling", "mean+cls", "--shard-size", "300"]


def _cached(tiny_dataset, cache):
    """The features fit would read, through fit's own path, and the images they are of."""
    from trainer.config import FitConfig
    from trainer.datasets import load_image_sets
    from trainer.fit import image_features
    from trainer.vision import load_backbone

    cfg = FitConfig(data=str(tiny_dataset), out="-", backbone="vit_tiny_patch16_224", weights="random", image_size=32,
                    pooling="mean+cls", cache=str(cache), device="cpu")
    backbone = load_backbone(cfg.backbone, "random", model_kwargs={"img_size": 32})
    train, test = load_image_sets(tiny_dataset)
    calls = []
    feats = image_features(backbone, cfg, train, test, [0, 2, "final"], cache, report=lambda *a: calls.append(a))
    return feats, calls, backbone, (train, test)


@pytest.mark.slow
def test_two_worker_processes_write_what_fit_reads(tiny_dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    assert main(["features", "--data", str(tiny_dataset), *COMMON, "--devices", "cpu,cpu", "--cache", str(cache),
                 "--json"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["complete"] and summary["workers"] == 2 and summary["layers"] == ["layer_0", "layer_2", "final"]
    assert len(list((cache / "features").glob("*.safetensors"))) == 6  # 3 layers x training and test images
    assert not list((cache / "features").rglob("*.shards")) and not list((cache / "features").glob("pass-*.json"))
    (train_feats, test_feats), calls, backbone, (train, test) = _cached(tiny_dataset, cache)
    assert calls == []  # fit's pass found everything in the cache
    from trainer.vision import extract_features

    for feats, images in ((train_feats, train), (test_feats, test)):
        whole = extract_features(backbone, images, [0, 2, "final"], pooling="mean+cls")
        for key in whole:
            np.testing.assert_allclose(feats[key], whole[key], rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_cluster_ranks_share_a_pass_and_the_last_merges(tiny_dataset, tmp_path, capsys):
    cache = tmp_path / "cache"
    args = ["features", "--data", str(tiny_dataset), *COMMON, "--device", "cpu", "--cache", str(cache), "--world", "2",
            "--json"]
    assert main([*args, "--rank", "1"]) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["complete"] is False and first["rank"] == 1
    shards = sorted(p.name for p in (cache / "features").rglob("*.shards/*.safetensors"))
    # rank 1 of 2 computes the second and fourth shards of 300 of the 960 training images, of each of the 3 layers
    assert shards == ["000000300-000000600.safetensors"] * 3 + ["000000900-000000960.safetensors"] * 3
    assert main([*args, "--rank", "0"]) == 0
    second = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert second["complete"] is True and not list((cache / "features").rglob("*.shards"))
    _, calls, _, _ = _cached(tiny_dataset, cache)
    assert calls == []


def test_bad_worker_options(tiny_dataset, tmp_path, capsys):
    base = ["features", "--data", str(tiny_dataset), *COMMON, "--cache", str(tmp_path)]
    assert main([*base, "--rank", "2", "--world", "2"]) == 2
    assert "--rank must be within 0..1" in capsys.readouterr().err
    assert main([*base, "--devices", "cpu,cpu", "--world", "2"]) == 2
    assert "either --devices" in capsys.readouterr().err
    assert main([*base, "--feature-precision", "fp8"]) == 2
    assert "--feature-precision" in capsys.readouterr().err
