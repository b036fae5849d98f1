"""bci-train pretrain: a backbone trained on the training concepts, loaded as a local weights file."""

import json

import numpy as np
import pytest

from trainer.cli import main
from trainer.errors import BCIError
from trainer.pretrain import pretrain_backbone
from trainer.vision import extract_features, load_backbone

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_pretrain_writes_timm_weights_that_load(tiny_dataset, tmp_path):
    out = tmp_path / "w" / "resnet10t.safetensors"
    summary = pretrain_backbone(tiny_dataset, "resnet10t", out, image_size=32, epochs=6, batch_size=64)
    assert out.is_file() and json.loads(out.with_suffix(".json").read_text())["classes"] == 240
    assert summary["train_accuracy"] > 10 / 240  # far above chance on the training concepts
    trained = load_backbone("resnet10t", str(out), model_kwargs={"img_size": 32})
    assert trained.weights_id.startswith("file-") and trained.data_config["input_size"] == (3, 32, 32)
    random = load_backbone("resnet10t", "random", model_kwargs={"img_size": 32})
    images = [tiny_dataset / "image_set" / "test_images" / p.parent.name / p.name
              for p in sorted((tiny_dataset / "image_set" / "test_images").glob("*/*.jpg"))[:4]]
    a = extract_features(trained, images, ["final"])["final"]
    b = extract_features(random, images, ["final"])["final"]
    assert not np.allclose(a, b)


def test_pretrain_bad_input(tiny_dataset, tmp_path, capsys):
    with pytest.raises(ValueError, match="safetensors"):
        pretrain_backbone(tiny_dataset, "resnet10t", tmp_path / "w.pt")
    with pytest.raises(BCIError, match="resnet10t"):
        pretrain_backbone(tiny_dataset, "resnet10tt", tmp_path / "w.safetensors")
    assert main(["pretrain", "--data", str(tmp_path / "none"), "--backbone", "resnet10t", "--out", str(tmp_path / "w.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err
