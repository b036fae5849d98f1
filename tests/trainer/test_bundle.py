"""The model bundle: round trip, and every bad field named on load."""

import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.bundle import load_bundle, save_bundle
from trainer.errors import DataFormatError
from trainer.model import AlignmentModel
from trainer.montage import THINGS_EEG2_CHANNELS
from trainer.preprocessing import PreprocessingSpec


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.manual_seed(0)
    spec = PreprocessingSpec().resolve(THINGS_EEG2_CHANNELS)
    spec = spec.with_normalisation(np.random.default_rng(0).standard_normal((4, 17, 250)))
    model = AlignmentModel({"name": "eegproject", "n_chans": 17, "n_times": 250, "embed_dim": 32}, feature_dim=12, proj_dim=8)
    feats = np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32)
    out = tmp_path_factory.mktemp("b") / "bundle"
    save_bundle(out, model=model, spec=spec, gallery_features=feats, gallery_ids=[1, 2, 3, 4, 5],
                gallery_concepts=list("abcde"), gallery_files=[f"{c}.jpg" for c in "abcde"],
                gallery_images=[Image.new("RGB", (300, 200), (i * 40, 0, 0)) for i in range(5)],
                backbone={"name": "vit_tiny_patch16_224", "weights_id": "random-seed0"}, layer=3, pooling="mean",
                provenance={"test": True}, metrics={"top1": 0.5})
    return out, model, feats


def test_roundtrip(bundle_dir):
    path, model, feats = bundle_dir
    b = load_bundle(path)
    x = np.random.default_rng(2).standard_normal((3, 17, 250)).astype(np.float32)
    with torch.inference_mode():
        ref = torch.nn.functional.normalize(model.eval().embed_brain(torch.from_numpy(x)), dim=1).numpy()
        gal = torch.nn.functional.normalize(model.embed_images(torch.from_numpy(feats)), dim=1).numpy()
    np.testing.assert_allclose(b.embed(x), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.gallery, gal, rtol=1e-5, atol=1e-6)
    assert b.gallery_ids.tolist() == [1, 2, 3, 4, 5]
    assert [i.concept for i in b.items] == list("abcde")
    assert b.temperature == pytest.approx(0.07, rel=1e-5)
    with Image.open(b.thumbnail_path(0)) as thumb:
        assert max(thumb.size) <= 128
    assert b.config["layer"] == 3 and b.spec.channels[0] == "Pz"
    with pytest.raises(ValueError, match=r"\(n, 17, 250\)"):
        b.embed(np.zeros((2, 16, 250), np.float32))


def _broken(bundle_dir, tmp_path, edit):
    path = tmp_path / "bundle"
    shutil.copytree(bundle_dir[0], path)
    edit(path)
    return path


def _edit_json(name, fn):
    def edit(path):
        data = json.loads((path / name).read_text())
        fn(data)
        (path / name).write_text(json.dumps(data))
    return edit


@pytest.mark.parametrize(
    "edit, where, field",
    [
        (lambda p: (p / "bundle.json").unlink(), "bundle.json", None),
        (lambda p: (p / "bundle.json").write_text("{oops"), "bundle.json", None),
        (_edit_json("bundle.json", lambda d: d.update(format_version=99)), "bundle.json", "format_version"),
        (_edit_json("bundle.json", lambda d: d.pop("temperature")), "bundle.json", "temperature"),
        (_edit_json("bundle.json", lambda d: d.update(temperature=-1)), "bundle.json", "temperature"),
        (_edit_json("bundle.json", lambda d: d["encoder"].update(name="nope")), "bundle.json", "encoder.name"),
        (_edit_json("bundle.json", lambda d: d["encoder"].update(n_chans=16)), "bundle.json", "encoder.n_chans"),
        (_edit_json("bundle.json", lambda d: d["preprocessing"].update(sfreq=-5)), "bundle.json", "preprocessing.sfreq"),
        (_edit_json("bundle.json", lambda d: d.update(layer=-2)), "bundle.json", "layer"),
        (_edit_json("bundle.json", lambda d: d.update(proj_dim=9)), "encoder.safetensors", None),
        (lambda p: (p / "encoder.safetensors").write_bytes(b"garbage"), "encoder.safetensors", None),
        (lambda p: (p / "gallery.safetensors").unlink(), "gallery.safetensors", None),
        (_edit_json("gallery.json", lambda d: d["items"].pop()), "gallery.json", "items"),
        (_edit_json("gallery.json", lambda d: d["items"][0].update(id=42)), "gallery.json", "items[0].id"),
        (lambda p: (p / "thumbnails" / "00002.jpg").unlink(), "00002.jpg", "items[1].thumbnail"),
    ],
)
def test_bad_bundles_name_the_field(bundle_dir, tmp_path, edit, where, field):
    path = _broken(bundle_dir, tmp_path, edit)
    with pytest.raises(DataFormatError) as info:
        load_bundle(path)
    assert where in str(info.value)
    if field is not None:
        assert info.value.field == field


def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match="bundle folder not found"):
        load_bundle(tmp_path / "nothing")
