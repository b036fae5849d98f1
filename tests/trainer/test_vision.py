"""trainer.vision: frozen timm backbones, one-pass multi-layer features, the feature cache.

Tiny models only (ViT-Tiny at 32 px, ResNet-10t), random weights, no network."""

from __future__ import annotations

import functools
import logging
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from trainer.data.images import ImageSet  # noqa: E402
from trainer.errors import BCIError, UsageError  # noqa: E402
from trainer.vision import (  # noqa: E402
    POOLINGS,
    Backbone,
    cached_features,
    extract_features,
    feature_cache_key,
    load_backbone,
    resolve_device,
)

VIT = "vit_tiny_patch16_224"
VIT_KW = {"img_size": 32}
CNN = "resnet10t"
N_IMAGES = 6


def _images(n: int = N_IMAGES, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + i, 48, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a busy machine the OpenMP
    barrier of 2+ threads costs milliseconds per op; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def images():
    return _images()


@pytest.fixture(scope="module")
def vit():
    return load_backbone(VIT, model_kwargs=VIT_KW)


@pytest.fixture(scope="module")
def cnn():
    return load_backbone(CNN)


def _batch(backbone: Backbone, images) -> torch.Tensor:
    tf = backbone.transform()
    return torch.stack([tf(im) for im in images])


class _Counter:
    """Counts calls of model.forward_intermediates (recording the indices asked for) and
    of every block/stage forward."""

    def __init__(self, backbone: Backbone, monkeypatch, blocks):
        self.calls: list[list[int]] = []
        self.block_calls = 0
        original = backbone.model.forward_intermediates

        @functools.wraps(original)
        def counting(x, **kw):
            self.calls.append(list(kw.get("indices") or []))
            return original(x, **kw)

        monkeypatch.setattr(backbone.model, "forward_intermediates", counting)
        self._hooks = [b.register_forward_hook(self._hook) for b in blocks]

    def _hook(self, *_):
        self.block_calls += 1

    def close(self):
        for h in self._hooks:
            h.remove()


# --------------------------------------------------------------------------- loading

def test_load_vit_fields(vit):
    assert vit.kind == "vit" and vit.n_layers == 12 and vit.num_prefix_tokens == 1
    assert vit.weights == "random" and vit.weights_id == "random-seed0"
    assert vit.n_params == sum(p.numel() for p in vit.model.parameters()) > 0
    assert not vit.model.training
    assert not any(p.requires_grad for p in vit.model.parameters())
    assert vit.device == torch.device("cpu")
    assert vit.data_config["input_size"] == (3, 32, 32)  # follows img_size
    assert "32x32" in vit.preprocessing_id() and "bicubic" in vit.preprocessing_id()
    assert vit.layer_depths()[0] == pytest.approx(1 / 12) and vit.layer_depths()[-1] == 1.0
    x = vit.transform()(_images(1)[0])
    assert tuple(x.shape) == (3, 32, 32)
    assert "random-seed0" in repr(vit) and "Sequential" not in repr(vit)


def test_load_cnn_fields(cnn):
    assert cnn.kind == "cnn"
    assert cnn.n_layers == len(cnn.model.feature_info) == 5  # stem + 4 stages
    assert len(cnn.layer_depths()) == 5
    assert cnn.preprocessing_id() != load_backbone(VIT, model_kwargs=VIT_KW).preprocessing_id()


def test_random_weights_do_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_backbone(CNN, seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UsageError, match="'gpu0'"):  # a user's --device: one line, no traceback
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(BCIError, match="CUDA is not available") as info:
            resolve_device("cuda:0")
        assert "--device cpu" in str(info.value)  # said for the command line (and for Python)


def test_loader_transform_is_timm_transform_bitwise(vit, cnn, images):
    for backbone in (vit, cnn):
        timm_transform, ours = backbone.transform(), backbone.loader_transform()
        for image in images:
            assert torch.equal(ours(image), timm_transform(image))


def test_weights_file_load_is_logged_with_its_name(cnn, tmp_path, caplog):
    path = tmp_path / "resnet10t.pth"
    torch.save(cnn.model.state_dict(), path)
    with caplog.at_level(logging.INFO):
        load_backbone(CNN, str(path))
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "Loaded  from" in m]  # timm's line names nothing
    assert [m for m in messages if "weights loaded from" in m and str(path) in m]


def test_no_private_name_crosses_a_module():
    """What two modules need is public in the lower one (STYLE.md), e.g.
    vision.create_model / check_model_name for pretrain."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    crossing = []
    for package in ("trainer", "bci_app"):
        for path in (root / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.ImportFrom):
                    crossing += [f"{path.relative_to(root)}:{node.lineno} {node.module}.{a.name}" for a in node.names
                                 if a.name.startswith("_") and not a.name.startswith("__")]
    assert not crossing


# --------------------------------------------------------------------------- one pass

def test_many_layers_cost_one_forward_pass(vit, images, monkeypatch):
    n_batches = 2  # 6 images, batch of 3
    counter = _Counter(vit, monkeypatch, vit.model.blocks)
    try:
        extract_features(vit, images, [-1], batch_size=3)
        one = (len(counter.calls), counter.block_calls)
        counter.calls.clear()
        counter.block_calls = 0
        feats = extract_features(vit, images, [0, 2, 5, 8, -1, "final"], batch_size=3)
        many = (len(counter.calls), counter.block_calls)
        assert counter.calls == [[0, 2, 5, 8, 11]] * n_batches  # all layers in each call
        counter.calls.clear()
        counter.block_calls = 0
        extract_features(vit, images, [2], batch_size=3)  # no final: stops after block 2
        early = counter.block_calls
    finally:
        counter.close()
    assert one == many == (n_batches, n_batches * 12)
    assert early == n_batches * 3
    assert list(feats) == ["layer_0", "layer_2", "layer_5", "layer_8", "layer_11", "final"]


def test_cnn_many_stages_cost_one_forward_pass(cnn, images, monkeypatch):
    stages = [cnn.model.layer1, cnn.model.layer2, cnn.model.layer3, cnn.model.layer4]
    counter = _Counter(cnn, monkeypatch, stages)
    try:
        extract_features(cnn, images, [-1], batch_size=N_IMAGES)
        one = (len(counter.calls), counter.block_calls)
        counter.calls.clear()
        counter.block_calls = 0
        extract_features(cnn, images, [0, 1, 2, 3, 4, "final"], batch_size=N_IMAGES)
        many = (len(counter.calls), counter.block_calls)
    finally:
        counter.close()
    assert one == many == (1, 4)


# --------------------------------------------------------------------------- pooling

def test_vit_pooling_shapes_and_values(vit, images):
    captured = []
    hook = vit.model.blocks[3].register_forward_hook(lambda m, i, o: captured.append(o.detach().clone()))
    try:
        with torch.inference_mode():
            vit.model.forward_features(_batch(vit, images))
    finally:
        hook.remove()
    tokens = captured[0]  # (N, 1 + 4 patches, 192) block output
    assert tokens.shape == (N_IMAGES, 5, 192)

    got = {p: extract_features(vit, images, [3], pooling=p, batch_size=4)["layer_3"] for p in POOLINGS}
    assert got["mean"].shape == got["cls"].shape == (N_IMAGES, 192)
    assert got["mean+cls"].shape == (N_IMAGES, 384)
    assert all(a.dtype == np.float32 for a in got.values())
    np.testing.assert_allclose(got["mean"], tokens[:, 1:].mean(1).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["cls"], tokens[:, 0].numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(got["mean+cls"], np.concatenate([got["mean"], got["cls"]], axis=1))


def test_cnn_pooling_shapes(cnn, images):
    feats = extract_features(cnn, images, [0, 1, 2, 3, 4, "final"], batch_size=4)
    channels = [info["num_chs"] for info in cnn.model.feature_info]
    for k, c in enumerate(channels):
        assert feats[f"layer_{k}"].shape == (N_IMAGES, c)
        assert feats[f"layer_{k}"].dtype == np.float32
    assert feats["final"].shape == (N_IMAGES, 512)
    for bad in ("cls", "mean+cls"):
        with pytest.raises(ValueError, match="pooling"):
            extract_features(cnn, images, [1], pooling=bad)


@pytest.mark.parametrize("which", ["vit", "cnn"])
def test_final_equals_plain_forward(which, request, images):
    backbone = request.getfixturevalue(which)
    got = extract_features(backbone, images, [1, "final"], batch_size=4)["final"]
    with torch.inference_mode():
        model = backbone.model
        expected = model.forward_head(model.forward_features(_batch(backbone, images)), pre_logits=True)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-5)
    only_final = extract_features(backbone, images, ["final"], batch_size=4)["final"]
    np.testing.assert_allclose(only_final, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_image_inputs_paths_imageset_progress(vit, images, tmp_path):
    concepts, files = [], []
    for i, im in enumerate(images):
        folder = tmp_path / f"{i + 1:05d}_thing{i}"
        folder.mkdir()
        im.save(folder / f"thing{i}_01.png")
        concepts.append(folder.name)
        files.append(f"thing{i}_01.png")
    image_set = ImageSet(tmp_path, "test", tuple(concepts), tuple(files), tuple(concepts))
    seen = []
    from_pil = extract_features(vit, images, [4], batch_size=4)["layer_4"]
    from_set = extract_features(vit, image_set, [4], batch_size=4, progress=lambda d, n: seen.append((d, n)))
    from_paths = extract_features(vit, image_set.paths(), [4], batch_size=4, num_workers=0)
    np.testing.assert_allclose(from_set["layer_4"], from_pil, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(from_paths["layer_4"], from_pil, rtol=1e-6, atol=1e-6)
    assert seen == [(4, N_IMAGES), (N_IMAGES, N_IMAGES)]


# --------------------------------------------------------------------------- weights

def test_random_weights_deterministic_per_seed(images):
    a = extract_features(load_backbone(VIT, seed=0, model_kwargs=VIT_KW), images, [2, "final"])
    b = extract_features(load_backbone(VIT, seed=0, model_kwargs=VIT_KW), images, [2, "final"])
    c = extract_features(load_backbone(VIT, seed=1, model_kwargs=VIT_KW), images, [2, "final"])
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
        assert not np.allclose(a[key], c[key])


def test_weights_from_local_file(vit, images, tmp_path):
    from safetensors.torch import save_file

    source = load_backbone(VIT, seed=7, model_kwargs=VIT_KW)
    path = tmp_path / "vit_tiny.safetensors"
    save_file({k: v.contiguous() for k, v in source.model.state_dict().items()}, str(path))
    loaded = load_backbone(VIT, str(path), model_kwargs=VIT_KW)
    assert loaded.weights == str(path)
    assert loaded.weights_id.startswith("file-") and len(loaded.weights_id) == len("file-") + 16
    assert load_backbone(VIT, path, model_kwargs=VIT_KW).weights_id == loaded.weights_id
    want = extract_features(source, images, [3, "final"])
    got = extract_features(loaded, images, [3, "final"])
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
    assert not np.allclose(extract_features(vit, images, [3])["layer_3"], got["layer_3"])  # seed 0 differs


def test_weights_from_pth_file(cnn, images, tmp_path):
    path = tmp_path / "resnet10t.pth"
    torch.save(cnn.model.state_dict(), path)
    loaded = load_backbone(CNN, str(path))
    np.testing.assert_array_equal(extract_features(loaded, images, [2])["layer_2"],
                                  extract_features(cnn, images, [2])["layer_2"])


def test_incompatible_weights_file_is_bcierror(cnn, tmp_path):
    path = tmp_path / "resnet10t.pth"
    torch.save(cnn.model.state_dict(), path)
    with pytest.raises(BCIError, match="resnet10t.pth"):
        load_backbone(VIT, str(path), model_kwargs=VIT_KW)


def test_hub_weights_unavailable_is_bcierror(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("cannot reach the hub")

    monkeypatch.setattr(builder, "load_pretrained", offline)
    with pytest.raises(BCIError, match="local file") as info:
        load_backbone(CNN, "hub")
    assert "resnet10t" in str(info.value) and "cannot reach the hub" in str(info.value)


# --------------------------------------------------------------------------- cache

def test_cache_roundtrip_corruption_and_new_layer(vit, images, tmp_path, monkeypatch, caplog):
    counter = _Counter(vit, monkeypatch, vit.model.blocks)
    kw = dict(pooling="mean", cache_dir=tmp_path, image_set_id="six-random-images", batch_size=N_IMAGES)
    try:
        first = cached_features(vit, images, [1, 5, "final"], **kw)
        assert counter.calls == [[1, 5]]
        files = sorted(tmp_path.glob("*.safetensors"))
        assert len(files) == 3 and not list(tmp_path.glob("*.tmp"))

        from safetensors import safe_open

        with safe_open(str(files[0]), framework="numpy") as f:
            meta = f.metadata()
            assert f.get_tensor("features").dtype == np.float32
        assert {"backbone", "weights_id", "layer", "pooling", "preprocessing_id", "n_images"} <= set(meta)
        assert meta["n_images"] == str(N_IMAGES) and meta["weights_id"] == "random-seed0"

        # second call: everything from disk, no forward pass
        counter.calls.clear()
        second = cached_features(vit, images, [1, 5, "final"], **kw)
        assert counter.calls == []
        for key in first:
            np.testing.assert_array_equal(second[key], first[key])

        # a corrupt file is recomputed (only that layer), with a warning
        key5 = feature_cache_key(vit, "layer_5", "mean", "six-random-images")
        (tmp_path / f"{key5}.safetensors").write_bytes(b"not a safetensors file")
        with caplog.at_level(logging.WARNING, logger="trainer"):
            third = cached_features(vit, images, [1, 5, "final"], **kw)
        assert counter.calls == [[5]]
        assert any("recomputing" in r.getMessage() for r in caplog.records)
        np.testing.assert_allclose(third["layer_5"], first["layer_5"], rtol=1e-6, atol=1e-6)

        # a new layer computes only the missing one
        counter.calls.clear()
        fourth = cached_features(vit, images, [1, 5, 8, "final"], **kw)
        assert counter.calls == [[8]]
        assert list(fourth) == ["layer_1", "layer_5", "layer_8", "final"]
        assert len(list(tmp_path.glob("*.safetensors"))) == 4
    finally:
        counter.close()


def test_cache_rejects_mismatched_rows(vit, images, tmp_path, caplog):
    kw = dict(pooling="mean", cache_dir=tmp_path, image_set_id="same-id-by-mistake")
    cached_features(vit, images, [2], **kw)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        fewer = cached_features(vit, images[:4], [2], **kw)
    assert fewer["layer_2"].shape == (4, 192)
    assert any("shape" in r.getMessage() for r in caplog.records)


def test_cache_key_distinguishes_settings(vit, cnn):
    base = feature_cache_key(vit, "layer_3", "mean", "things-test")
    assert base == feature_cache_key(vit, "layer_3", "mean", "things-test")
    others = {
        feature_cache_key(vit, "layer_4", "mean", "things-test"),
        feature_cache_key(vit, "layer_3", "mean+cls", "things-test"),
        feature_cache_key(vit, "layer_3", "mean", "things-train"),
        feature_cache_key(cnn, "layer_3", "mean", "things-test"),
        feature_cache_key(load_backbone(VIT, seed=1, model_kwargs=VIT_KW), "layer_3", "mean", "things-test"),
        feature_cache_key(load_backbone(VIT, seed=0, model_kwargs={"img_size": 48}), "layer_3", "mean", "things-test"),
    }
    assert base not in others and len(others) == 6
    weird = feature_cache_key(vit, "final", "cls", "data/set: " + "x" * 500)
    assert len(weird) < 200 and "/" not in weird and ":" not in weird and " " not in weird
    assert weird != feature_cache_key(vit, "final", "cls", "data_set_ " + "x" * 500)


# --------------------------------------------------------------------------- bad input

def test_unknown_backbone_lists_close_names():
    with pytest.raises(BCIError) as info:
        load_backbone("vit_tiny_patch16_22")
    assert "vit_tiny_patch16_224" in str(info.value)
    # how to list the names, for a command-line user as for a Python one
    assert """python -c "import timm; print(timm.list_models('*pattern*'))\"""" in str(info.value)


def test_missing_weights_file_named(tmp_path):
    missing = tmp_path / "nowhere" / "weights.safetensors"
    with pytest.raises(BCIError, match="weights.safetensors"):
        load_backbone(CNN, str(missing))


def test_layer_out_of_range(vit, cnn, images):
    with pytest.raises(ValueError, match=r"0\.\.11"):
        extract_features(vit, images, [12])
    with pytest.raises(ValueError, match=r"0\.\.4"):
        extract_features(cnn, images, [-6])
    with pytest.raises(ValueError, match="final"):
        extract_features(vit, images, ["last"])
    with pytest.raises(TypeError):
        extract_features(vit, images, [1.5])


def test_bad_pooling_and_arguments(vit, cnn, images):
    with pytest.raises(UsageError, match="pooling"):
        extract_features(vit, images, [1], pooling="max")
    with pytest.raises(UsageError, match=r"--pooling mean \(pooling='mean' in Python"):
        extract_features(cnn, images, [1], pooling="cls")
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(vit, images, [1], batch_size=-1)
    with pytest.raises(TypeError, match="images"):
        extract_features(vit, "some/folder", [1])
    with pytest.raises(ValueError, match="empty"):
        extract_features(vit, [], [1])


def test_vit_without_class_token_refuses_cls(images):
    backbone = load_backbone(VIT, model_kwargs={**VIT_KW, "class_token": False, "global_pool": "avg"})
    assert backbone.num_prefix_tokens == 0
    assert extract_features(backbone, images, [1], pooling="mean")["layer_1"].shape == (N_IMAGES, 192)
    with pytest.raises(ValueError, match="class token"):
        extract_features(backbone, images, [1], pooling="cls")


def test_model_without_forward_intermediates(monkeypatch):
    import timm

    class Plain(torch.nn.Module):
        def forward(self, x):
            return x

    monkeypatch.setattr(timm, "create_model", lambda *a, **k: Plain())
    with pytest.raises(BCIError, match="forward_intermediates"):
        load_backbone(CNN)


def test_describe_reports_what_loading_reports(vit, cnn):
    from trainer.vision import describe_backbone

    for loaded, kwargs in ((vit, VIT_KW), (cnn, {})):
        described = describe_backbone(loaded.name, model_kwargs=kwargs, flops=True)
        assert described.pop("gflops") > 0.01  # counted on the meta device
        assert described == {"name": loaded.name, "provider": "timm", "kind": loaded.kind, "n_layers": loaded.n_layers,
                             "n_params": loaded.n_params, "input_size": list(loaded.data_config["input_size"]),
                             "prefix_tokens": loaded.num_prefix_tokens}
    with pytest.raises(BCIError, match="unknown timm backbone"):
        describe_backbone("vit_tiny_patch16_2240")
