"""The model bundle: round trip, every bad field named on load, file integrity (SHA-256),
thumbnails confined to the bundle, and re-targeting."""

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from trainer.bundle import TEMPERATURE_RANGE, load_bundle, retarget_bundle, save_bundle
from trainer.errors import DataFormatError, UsageError
from trainer.model import AlignmentModel, embed_epochs
from trainer.montage import THINGS_EEG2_CHANNELS
from trainer.preprocessing import PreprocessingSpec

ENCODER = {"name": "eegproject", "n_chans": 17, "n_times": 250, "embed_dim": 32}


def _spec():
    spec = PreprocessingSpec().resolve(THINGS_EEG2_CHANNELS)
    return spec.with_normalisation(np.random.default_rng(0).standard_normal((4, 17, 250)))


def _save(out, model, feats, *, backbone=None, layer=3, ids=(1, 2, 3, 4, 5)):
    n = len(ids)
    return save_bundle(out, model=model, spec=_spec(), gallery_features=feats, gallery_ids=list(ids),
                       gallery_concepts=list("abcdefgh"[:n]), gallery_files=[f"{c}.jpg" for c in "abcdefgh"[:n]],
                       gallery_images=[Image.new("RGB", (300, 200), (i * 40, 0, 0)) for i in range(n)],
                       backbone=backbone or {"name": "vit_tiny_patch16_224", "weights_id": "random-seed0"},
                       layer=layer, pooling="mean", provenance={"test": True, "source": "raw"},
                       metrics={"top1": 0.5, "n_way": 5})


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    torch.manual_seed(0)
    model = AlignmentModel(ENCODER, feature_dim=12, proj_dim=8)
    feats = np.random.default_rng(1).standard_normal((5, 12)).astype(np.float32)
    out = _save(tmp_path_factory.mktemp("b") / "bundle", model, feats)
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
    with pytest.raises(UsageError, match=r"\(n, 17, 250\)"):
        b.embed(np.zeros((2, 16, 250), np.float32))
    with pytest.raises(UsageError, match="NaN"):
        b.embed(np.full((1, 17, 250), np.nan, np.float32))


def test_embed_is_the_shared_path_and_keeps_its_shape_when_empty(bundle_dir):
    b = load_bundle(bundle_dir[0])
    x = np.random.default_rng(3).standard_normal((5, 17, 250)).astype(np.float32)
    np.testing.assert_array_equal(b.embed(x, batch_size=2), embed_epochs(b.brain, x, device="cpu", batch_size=2))
    empty = b.embed(np.zeros((0, 17, 250), np.float32))
    assert empty.shape == (0, 8) and empty.dtype == np.float32


def test_embed_on_another_device_leaves_the_shared_module_where_it_is(bundle_dir):
    """The live decoder may be running ``bundle.brain``: embedding elsewhere must not move
    it.  'meta' is a device every machine has (it holds no data, so the call itself fails)."""
    b = load_bundle(bundle_dir[0])
    x = np.random.default_rng(4).standard_normal((2, 17, 250)).astype(np.float32)
    before = b.embed(x)
    with pytest.raises((NotImplementedError, RuntimeError)):
        b.embed(x, device="meta")
    assert {p.device.type for p in b.brain.parameters()} == {"cpu"}
    np.testing.assert_array_equal(b.embed(x), before)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_embed_on_cuda_matches_cpu_and_keeps_the_module_on_cpu(bundle_dir):
    b = load_bundle(bundle_dir[0])
    x = np.random.default_rng(5).standard_normal((4, 17, 250)).astype(np.float32)
    np.testing.assert_allclose(b.embed(x, device="cuda"), b.embed(x), atol=1e-5)
    assert {p.device.type for p in b.brain.parameters()} == {"cpu"}


# -- bad bundles ---------------------------------------------------------------------------


def _copy(bundle_dir, tmp_path):
    path = tmp_path / "bundle"
    shutil.copytree(bundle_dir[0], path, symlinks=True)
    return path


def _rehash(path):
    """Record the SHA-256 of the files as they are now: what a hostile (not a damaged) bundle
    does, so that the field checks behind the integrity check are reached."""
    config = json.loads((path / "bundle.json").read_text())
    config["files"] = {rel: hashlib.sha256((path / rel).read_bytes()).hexdigest()
                       for rel in config["files"] if (path / rel).is_file()}
    (path / "bundle.json").write_text(json.dumps(config))


def _broken(bundle_dir, tmp_path, edit, *, rehash=True):
    path = _copy(bundle_dir, tmp_path)
    edit(path)
    if rehash and getattr(edit, "rehash", True):
        _rehash(path)
    return path


def _as_is(edit):
    """An edit of bundle.json itself (or of its hashes): nothing to re-record."""
    edit.rehash = False
    return edit


def _edit_json(name, fn):
    def edit(path):
        data = json.loads((path / name).read_text())
        fn(data)
        (path / name).write_text(json.dumps(data))
    return edit


def _edit_tensors(name, fn):
    def edit(path):
        tensors = load_file(str(path / name))
        fn(tensors)
        save_file(tensors, str(path / name))
    return edit


def _nested(depth):
    def edit(path):
        (path / "bundle.json").write_text("[" * depth + "]" * depth)
    return edit


def _set_item(i, **kw):
    return _edit_json("gallery.json", lambda d: d["items"][i].update(kw))


CASES = {
    # id: (edit, file named, field named)
    "bundle.json missing": (_as_is(lambda p: (p / "bundle.json").unlink()), "bundle.json", None),
    "bundle.json not JSON": (_as_is(lambda p: (p / "bundle.json").write_text("{oops")), "bundle.json", None),
    "bundle.json nested too deep": (_as_is(_nested(100_000)), "bundle.json", None),
    "format_version": (_edit_json("bundle.json", lambda d: d.update(format_version=99)), "bundle.json", "format_version"),
    "temperature missing": (_edit_json("bundle.json", lambda d: d.pop("temperature")), "bundle.json", "temperature"),
    "temperature negative": (_edit_json("bundle.json", lambda d: d.update(temperature=-1)), "bundle.json", "temperature"),
    "temperature 1e-300": (_edit_json("bundle.json", lambda d: d.update(temperature=1e-300)), "bundle.json", "temperature"),
    "temperature 0.005": (_edit_json("bundle.json", lambda d: d.update(temperature=0.005)), "bundle.json", "temperature"),
    "temperature 1e6": (_edit_json("bundle.json", lambda d: d.update(temperature=1e6)), "bundle.json", "temperature"),
    "temperature NaN": (_edit_json("bundle.json", lambda d: d.update(temperature=float("nan"))), "bundle.json",
                        "temperature"),
    "encoder.name": (_edit_json("bundle.json", lambda d: d["encoder"].update(name="nope")), "bundle.json", "encoder.name"),
    "encoder.n_chans": (_edit_json("bundle.json", lambda d: d["encoder"].update(n_chans=16)), "bundle.json",
                        "encoder.n_chans"),
    # 10**8 x 4250 weights: refused from the file's shapes, before anything that large is allocated
    "encoder huge": (_edit_json("bundle.json", lambda d: d["encoder"].update(embed_dim=10**8)), "encoder.safetensors",
                     None),
    "proj_dim": (_edit_json("bundle.json", lambda d: d.update(proj_dim=9)), "encoder.safetensors", None),
    "preprocessing.sfreq": (_edit_json("bundle.json", lambda d: d["preprocessing"].update(sfreq=-5)), "bundle.json",
                            "preprocessing.sfreq"),
    "layer": (_edit_json("bundle.json", lambda d: d.update(layer=-2)), "bundle.json", "layer"),
    "pooling": (_edit_json("bundle.json", lambda d: d.update(pooling="max")), "bundle.json", "pooling"),
    "backbone.image_size": (_edit_json("bundle.json", lambda d: d["backbone"].update(image_size="64")), "bundle.json",
                            "backbone.image_size"),
    "provenance.source": (_edit_json("bundle.json", lambda d: d["provenance"].update(source="tape")), "bundle.json",
                          "provenance.source"),
    "metrics.n_way": (_edit_json("bundle.json", lambda d: d["metrics"].update(n_way=0)), "bundle.json", "metrics.n_way"),
    "files not a digest": (_as_is(_edit_json("bundle.json", lambda d: d["files"].update({"gallery.json": "abc"}))),
                           "bundle.json", "files"),
    "files outside": (_as_is(_edit_json("bundle.json", lambda d: d["files"].update({"../x": "0" * 64}))), "bundle.json",
                      "files"),
    "encoder garbage": (lambda p: (p / "encoder.safetensors").write_bytes(b"garbage"), "encoder.safetensors", None),
    "encoder extra tensor": (_edit_tensors("encoder.safetensors", lambda t: t.update(extra=torch.zeros(2))),
                             "encoder.safetensors", "extra"),
    "encoder float64 weights": (_edit_tensors("encoder.safetensors", lambda t: t.update(
        {"brain.projector.bias": t["brain.projector.bias"].double()})), "encoder.safetensors", "brain.projector.bias"),
    "encoder NaN weights": (_edit_tensors("encoder.safetensors", lambda t: t["brain.projector.bias"].fill_(np.nan)),
                            "encoder.safetensors", "brain.projector.bias"),
    "image projector bias shape": (_edit_tensors("encoder.safetensors", lambda t: t.update(
        {"image_projector.bias": torch.zeros(3)})), "encoder.safetensors", "image_projector.bias"),
    "image projector NaN": (_edit_tensors("encoder.safetensors", lambda t: t["image_projector.weight"].fill_(np.nan)),
                            "encoder.safetensors", "image_projector.weight"),
    "gallery missing": (lambda p: (p / "gallery.safetensors").unlink(), "gallery.safetensors", None),
    "gallery ids beyond int32": (_edit_tensors("gallery.safetensors", lambda t: t["ids"].__setitem__(0, 2**40)),
                                 "gallery.safetensors", "ids"),
    "gallery ids float": (_edit_tensors("gallery.safetensors", lambda t: t.update(ids=t["ids"].double() + 0.5)),
                          "gallery.safetensors", "ids"),
    "gallery ids duplicated": (_edit_tensors("gallery.safetensors", lambda t: t["ids"].__setitem__(1, 1)),
                               "gallery.safetensors", "ids"),
    "gallery zero row": (_edit_tensors("gallery.safetensors", lambda t: t["embeddings"][2].zero_()),
                         "gallery.safetensors", "embeddings"),
    "gallery float16": (_edit_tensors("gallery.safetensors", lambda t: t.update(embeddings=t["embeddings"].half())),
                        "gallery.safetensors", "embeddings"),
    "gallery extra tensor": (_edit_tensors("gallery.safetensors", lambda t: t.update(labels=torch.zeros(5))),
                             "gallery.safetensors", "labels"),
    "items count": (_edit_json("gallery.json", lambda d: d["items"].pop()), "gallery.json", "items"),
    "items[0].id other": (_set_item(0, id=42), "gallery.json", "items[0].id"),
    "items[0].id string": (_set_item(0, id="1"), "gallery.json", "items[0].id"),
    "items[0].id float": (_set_item(0, id=1.0), "gallery.json", "items[0].id"),
    "items[2].concept number": (_set_item(2, concept=7), "gallery.json", "items[2].concept"),
    "items[1].thumbnail missing": (lambda p: (p / "thumbnails" / "00002.jpg").unlink(), "00002.jpg",
                                   "items[1].thumbnail"),
}


@pytest.mark.parametrize("edit, where, field", list(CASES.values()), ids=list(CASES))
def test_bad_bundles_name_the_field(bundle_dir, tmp_path, edit, where, field):
    path = _broken(bundle_dir, tmp_path, edit)
    with pytest.raises(DataFormatError) as info:
        load_bundle(path)
    assert where in str(info.value)
    if field is not None:
        assert info.value.field == field, str(info.value)


def _outside_file(path):
    secret = path.parent / "secret.jpg"
    Image.new("RGB", (8, 8)).save(secret)
    return secret


def _thumb_dotdot(path):
    _outside_file(path)
    _set_item(0, thumbnail="thumbnails/../../secret.jpg")(path)


def _thumb_absolute(path):
    _set_item(0, thumbnail=str(_outside_file(path)))(path)


def _thumb_not_in_thumbnails(path):
    shutil.copyfile(path / "thumbnails" / "00001.jpg", path / "00001.jpg")
    _set_item(0, thumbnail="00001.jpg")(path)


def _thumb_symlink_out(path):
    (path / "thumbnails" / "00001.jpg").unlink()
    (path / "thumbnails" / "00001.jpg").symlink_to(_outside_file(path))


def _thumb_folder_symlink_out(path):
    outside = path.parent / "elsewhere"
    shutil.move(path / "thumbnails", outside)
    (path / "thumbnails").symlink_to(outside, target_is_directory=True)


@pytest.mark.parametrize("edit", [_thumb_dotdot, _thumb_absolute, _thumb_not_in_thumbnails, _thumb_symlink_out,
                                  _thumb_folder_symlink_out],
                         ids=["dotdot", "absolute", "not in thumbnails", "symlink out", "folder symlink out"])
def test_thumbnails_must_stay_in_the_bundle(bundle_dir, tmp_path, edit):
    path = _broken(bundle_dir, tmp_path, edit)
    with pytest.raises(DataFormatError) as info:
        load_bundle(path)
    assert "gallery.json" in str(info.value) and info.value.field == "items[0].thumbnail", str(info.value)


def test_symlink_within_thumbnails_is_fine(bundle_dir, tmp_path):
    def edit(path):
        (path / "thumbnails" / "00001.jpg").unlink()
        (path / "thumbnails" / "00001.jpg").symlink_to(path / "thumbnails" / "00002.jpg")
    b = load_bundle(_broken(bundle_dir, tmp_path, edit))
    assert b.thumbnail_path(0).resolve() == b.thumbnail_path(1).resolve()


# -- integrity -----------------------------------------------------------------------------


def _flip_bit(name, offset):
    def edit(path):
        data = bytearray((path / name).read_bytes())
        data[offset] ^= 1
        (path / name).write_bytes(bytes(data))
    return edit


DAMAGE = {
    # a mantissa bit of the last weight: a file that still loads, with one weight changed
    "encoder weight bit": (_flip_bit("encoder.safetensors", -4), "encoder.safetensors"),
    "gallery embedding bit": (_flip_bit("gallery.safetensors", -48), "gallery.safetensors"),
    "gallery.json concept": (_set_item(3, concept="z"), "gallery.json"),
    "thumbnail byte": (_flip_bit("thumbnails/00003.jpg", 400), "00003.jpg"),
}


@pytest.mark.parametrize("edit, name", list(DAMAGE.values()), ids=list(DAMAGE))
def test_changed_or_damaged_files_are_refused(bundle_dir, tmp_path, edit, name):
    path = _broken(bundle_dir, tmp_path, edit, rehash=False)
    with pytest.raises(DataFormatError, match="does not match the SHA-256 recorded in bundle.json") as info:
        load_bundle(path)
    assert name in str(info.value)


def test_bundle_json_records_every_file(bundle_dir):
    path = bundle_dir[0]
    files = json.loads((path / "bundle.json").read_text())["files"]
    expected = {"encoder.safetensors", "gallery.safetensors", "gallery.json"} | {
        f"thumbnails/{p.name}" for p in (path / "thumbnails").iterdir()}
    assert set(files) == expected and len(expected) == 8
    for rel, digest in files.items():
        assert hashlib.sha256((path / rel).read_bytes()).hexdigest() == digest


def test_listed_file_missing_is_refused(bundle_dir, tmp_path):
    def edit(path):
        _edit_json("bundle.json", lambda d: d["files"].update({"thumbnails/extra.jpg": "0" * 64}))(path)
    path = _broken(bundle_dir, tmp_path, edit, rehash=False)
    with pytest.raises(DataFormatError, match="extra.jpg: missing"):
        load_bundle(path)


def test_unlisted_thumbnail_is_refused(bundle_dir, tmp_path):
    def edit(path):
        _edit_json("bundle.json", lambda d: d["files"].pop("thumbnails/00004.jpg"))(path)
    path = _broken(bundle_dir, tmp_path, edit, rehash=False)
    with pytest.raises(DataFormatError, match="records no SHA-256 for thumbnails/00004.jpg") as info:
        load_bundle(path)
    assert info.value.field == "files"


def test_bundle_without_hashes_loads_with_a_warning(bundle_dir, tmp_path, caplog):
    """Bundles written before the hashes were recorded (the demo cache, users' runs)."""
    path = _broken(bundle_dir, tmp_path, _edit_json("bundle.json", lambda d: d.pop("files")), rehash=False)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        b = load_bundle(path)
    assert b.gallery_ids.tolist() == [1, 2, 3, 4, 5]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("integrity cannot be checked" in m and "bundle.json" in m for m in warned), warned
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer"):
        load_bundle(bundle_dir[0])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_missing_folder(tmp_path):
    with pytest.raises(DataFormatError, match="bundle folder not found"):
        load_bundle(tmp_path / "nothing")


# -- temperature ---------------------------------------------------------------------------


def test_lowest_trained_temperature_loads(tmp_path):
    """LogitScale clamps the logit scale at max_scale: the smallest temperature training can
    produce (after float32 rounding) is within the range a bundle may hold."""
    model = AlignmentModel(ENCODER, feature_dim=12, proj_dim=8)
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(50.0)
    model.logit_scale.clamp_()
    feats = np.random.default_rng(6).standard_normal((5, 12)).astype(np.float32)
    b = load_bundle(_save(tmp_path / "cold", model, feats))
    assert b.temperature == pytest.approx(0.01, rel=1e-5)
    assert TEMPERATURE_RANGE[0] < b.temperature < TEMPERATURE_RANGE[1]


def test_save_refuses_what_load_would_refuse(tmp_path):
    model = AlignmentModel(ENCODER, feature_dim=12, proj_dim=8)
    feats = np.random.default_rng(7).standard_normal((5, 12)).astype(np.float32)
    with pytest.raises(UsageError, match="int32"):
        _save(tmp_path / "a", model, feats, ids=(1, 2, 3, 4, 2**31))
    with pytest.raises(UsageError, match="unique"):
        _save(tmp_path / "b", model, feats, ids=(1, 2, 3, 4, 1))
    from trainer.losses import LogitScale

    model.logit_scale = LogitScale(max_scale=1e6)  # a model clamped more loosely than training's
    with torch.no_grad():
        model.logit_scale.log_scale.fill_(-10.0)  # temperature e^10: beyond the range
    with pytest.raises(UsageError, match="temperature"):
        _save(tmp_path / "c", model, feats)
    assert not (tmp_path / "c").exists()


# -- re-targeting --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def resnet_bundle(tmp_path_factory):
    """A bundle on a small random backbone, with image files to re-target it to."""
    from trainer.vision import extract_features, load_backbone

    root = tmp_path_factory.mktemp("retarget")
    images = []
    for i in range(3):
        p = root / "images" / f"concept{i}" / f"img{i}.png"
        p.parent.mkdir(parents=True)
        Image.new("RGB", (48, 48), (60 * i, 255 - 60 * i, 90)).save(p)
        images.append(p)
    backbone = load_backbone("resnet10t", "random", seed=0)
    feats = extract_features(backbone, images, [1], pooling="mean", batch_size=4, num_workers=0)["layer_1"]
    torch.manual_seed(1)
    model = AlignmentModel(ENCODER, feature_dim=feats.shape[1], proj_dim=8)
    info = {"name": "resnet10t", "weights": "random", "weights_id": backbone.weights_id, "image_size": 0}
    bundle = _save(root / "bundle", model, np.random.default_rng(8).standard_normal((5, feats.shape[1])),
                   backbone=info, layer=1)
    return bundle, images, feats


def test_retarget_records_the_new_files(resnet_bundle, tmp_path):
    bundle, images, feats = resnet_bundle
    out = retarget_bundle(bundle, tmp_path / "new", images, ids=[7, 8, 9], device="cpu")
    new = load_bundle(out)
    assert new.gallery_ids.tolist() == [7, 8, 9] and [i.concept for i in new.items] == ["concept0", "concept1", "concept2"]
    state = new.image_projector_state
    expected = torch.nn.functional.normalize(torch.from_numpy(feats) @ state["weight"].T + state["bias"], dim=1)
    np.testing.assert_allclose(new.gallery, expected.numpy(), atol=1e-5)
    files = json.loads((out / "bundle.json").read_text())["files"]
    assert set(files) == {"encoder.safetensors", "gallery.safetensors", "gallery.json",
                          "thumbnails/00007.jpg", "thumbnails/00008.jpg", "thumbnails/00009.jpg"}
    for rel, digest in files.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    _flip_bit("gallery.safetensors", -8)(out)
    with pytest.raises(DataFormatError, match="gallery.safetensors: does not match the SHA-256"):
        load_bundle(out)


def test_retarget_refuses_bad_ids_and_a_damaged_source(resnet_bundle, tmp_path):
    bundle, images, _ = resnet_bundle
    with pytest.raises(UsageError, match="int32"):
        retarget_bundle(bundle, tmp_path / "a", images, ids=[1, 2, 2**33], device="cpu")
    with pytest.raises(UsageError, match="unique"):
        retarget_bundle(bundle, tmp_path / "b", images, ids=[1, 1, 2], device="cpu")
    with pytest.raises(UsageError, match="new folder"):
        retarget_bundle(bundle, bundle, images, device="cpu")
    damaged = tmp_path / "damaged"
    shutil.copytree(bundle, damaged)
    _flip_bit("encoder.safetensors", -4)(damaged)
    with pytest.raises(DataFormatError, match="encoder.safetensors: does not match the SHA-256"):
        retarget_bundle(damaged, tmp_path / "c", images, device="cpu")


def test_brain_on_gives_the_module_itself_or_a_copy(bundle_dir):
    b = load_bundle(bundle_dir[0])
    same, device = b.brain_on("cpu")
    assert same is b.brain and device.type == "cpu"
    other, device = b.brain_on("meta")
    assert other is not b.brain and device.type == "meta"
    assert {p.device.type for p in other.parameters()} == {"meta"}
    assert {p.device.type for p in b.brain.parameters()} == {"cpu"}
