"""The feature pass at scale: shards written as they are computed (a killed pass resumes,
several workers share one), reduced-precision passes stored as float16, the batch halved
when a GPU runs out of memory, and the memory check before a model is put on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from trainer.errors import BCIError
from trainer.vision import (
    cached_features,
    compute_feature_shards,
    extract_features,
    feature_cache_key,
    load_backbone,
)
from trainer.vision import features as features_module

VIT = "vit_tiny_patch16_224"
VIT_KW = {"img_size": 32}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def vit():
    return load_backbone(VIT, model_kwargs=VIT_KW)


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (36, 40, 3), dtype=np.uint8)) for _ in range(11)]


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(features_module, "SHARD_SIZE", 4)  # 11 images: shards of 4, 4 and 3


class _Passes:
    """Counts the images each forward pass of a backbone sees."""

    def __init__(self, backbone, monkeypatch):
        self.sizes: list[int] = []
        real = backbone.forward_layers

        def counting(x, indices, want_final):
            self.sizes.append(len(x))
            return real(x, indices, want_final)

        monkeypatch.setattr(backbone, "forward_layers", counting)


def _shard_files(cache):
    return sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*.shards/*.safetensors"))


def test_a_sharded_pass_gives_the_features_of_one_pass(vit, images, tmp_path, small_shards):
    whole = extract_features(vit, images, [1, 3, "final"])
    cached = cached_features(vit, images, [1, 3, "final"], pooling="mean", cache_dir=tmp_path, image_set_id="set")
    for key in whole:
        np.testing.assert_allclose(cached[key], whole[key], rtol=1e-4, atol=1e-5)
    assert len(list(tmp_path.glob("*.safetensors"))) == 3 and _shard_files(tmp_path) == []  # merged, shards gone
    assert not list(tmp_path.glob("*.shards"))


def test_a_killed_pass_resumes_at_its_first_missing_shard(vit, images, tmp_path, small_shards, monkeypatch):
    calls = []

    def killed_after_the_first_shard(done, total):
        calls.append(done)
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_features(vit, images, [2, "final"], pooling="cls", cache_dir=tmp_path, image_set_id="set", batch_size=4,
                        progress=killed_after_the_first_shard)
    # the progress call that stopped it came after the shard was computed, before it was written
    assert _shard_files(tmp_path) == []
    done = []

    def killed_in_the_second_shard(n, total):
        done.append(n)
        if n > 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cached_features(vit, images, [2, "final"], pooling="cls", cache_dir=tmp_path, image_set_id="set", batch_size=2,
                        progress=killed_in_the_second_shard)
    shards = _shard_files(tmp_path)
    assert len(shards) == 2 and all(s.endswith("000000000-000000004.safetensors") for s in shards)  # shard 1 of 2 layers
    passes = _Passes(vit, monkeypatch)
    resumed = cached_features(vit, images, [2, "final"], pooling="cls", cache_dir=tmp_path, image_set_id="set", batch_size=4)
    assert passes.sizes == [4, 3]  # images 4..10 only
    whole = extract_features(vit, images, [2, "final"], pooling="cls")
    for key in whole:
        np.testing.assert_allclose(resumed[key], whole[key], rtol=1e-4, atol=1e-5)
    assert _shard_files(tmp_path) == []


def test_workers_share_a_pass_and_the_last_one_merges(vit, images, tmp_path, small_shards, monkeypatch):
    passes = _Passes(vit, monkeypatch)
    kw = dict(pooling="mean", cache_dir=tmp_path, image_set_id="set", batch_size=8)
    assert compute_feature_shards(vit, images, [0, 2], rank=1, world=2, **kw) is False  # shard 2 of 3 only
    assert passes.sizes == [4] and len(_shard_files(tmp_path)) == 2
    assert compute_feature_shards(vit, images, [0, 2], rank=0, world=2, **kw) is True  # shards 1 and 3, then the merge
    assert passes.sizes == [4, 4, 3]
    merged = cached_features(vit, images, [0, 2], **kw)  # read from the cache: no pass
    assert passes.sizes == [4, 4, 3] and _shard_files(tmp_path) == []
    whole = extract_features(vit, images, [0, 2])
    for key in whole:
        np.testing.assert_allclose(merged[key], whole[key], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="rank must be within 0..1"):
        compute_feature_shards(vit, images, [0], rank=2, world=2, **kw)


def test_a_bf16_pass_is_stored_as_float16_under_its_own_key(images, tmp_path):
    from safetensors import safe_open

    full = load_backbone(VIT, model_kwargs=VIT_KW)
    half = load_backbone(VIT, model_kwargs=VIT_KW, precision="bf16")
    assert half.dtype == torch.bfloat16 and next(half.model.parameters()).dtype == torch.bfloat16
    assert feature_cache_key(half, "layer_2", "mean", "s") != feature_cache_key(full, "layer_2", "mean", "s")
    got = cached_features(half, images, [2], pooling="mean", cache_dir=tmp_path, image_set_id="s")["layer_2"]
    again = cached_features(half, images, [2], pooling="mean", cache_dir=tmp_path, image_set_id="s")["layer_2"]
    (path,) = tmp_path.glob("*.safetensors")
    with safe_open(str(path), framework="numpy") as f:
        assert f.get_tensor("features").dtype == np.float16 and f.metadata()["dtype"] == "bfloat16"
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, again)  # the first run returns what the cache gives later
    reference = extract_features(full, images, [2])["layer_2"]
    scale = np.abs(reference).max()
    assert np.abs(got - reference).max() < 0.05 * scale  # bf16 keeps about 3 significant digits
    assert not np.array_equal(got, reference)


def test_a_batch_that_runs_out_of_memory_is_halved(vit, images, monkeypatch, caplog):
    """What a GPU does when a batch does not fit, played on the CPU: the pass raises
    torch's out-of-memory error for batches above 3 images."""
    real = vit.forward_layers
    sizes = []

    def small_memory(x, indices, want_final):
        sizes.append(len(x))
        if len(x) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(x, indices, want_final)

    reference = extract_features(vit, images, [1, "final"], batch_size=11)
    monkeypatch.setattr(vit, "forward_layers", small_memory)
    got = extract_features(vit, images, [1, "final"], batch_size=11)
    assert sizes[:3] == [11, 5, 2] and set(sizes[3:]) <= {2, 1} and sum(sizes[3:]) == 11 - 2
    for key in reference:
        np.testing.assert_allclose(got[key], reference[key], rtol=1e-4, atol=1e-5)
    assert any("out of memory on cpu; image batch size now 5" in r.getMessage() for r in caplog.records)

    monkeypatch.setattr(vit, "forward_layers", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("simulated")))
    with pytest.raises(BCIError, match="one image does not fit in the memory of cpu"):
        extract_features(vit, images[:2], [1], batch_size=1)


def test_a_model_too_big_for_the_gpu_says_how_much_it_needs(monkeypatch):
    """No GPU here: the free memory a CUDA device would report is played."""
    from trainer.vision.backbone import check_memory

    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8e9, 24e9))
    with pytest.raises(BCIError, match=r"needs 11.1 GB for its 5.54 B parameters in bfloat16 .* cuda:0 has 8.0 GB free "
                                       r"of 24.0 GB"):
        check_memory("hf:InternViT-6B", 5_540_000_000, torch.bfloat16, torch.device("cuda:0"))
    check_memory("hf:InternViT-6B", 3_000_000_000, torch.bfloat16, torch.device("cuda:0"))  # 6 GB fits
    check_memory("hf:InternViT-6B", 5_540_000_000, torch.float32, torch.device("cpu"))  # a CPU is not checked


def test_a_lazy_backbone_reads_its_weights_only_for_a_missing_feature(vit, images, tmp_path):
    """fit describes its backbone lazily: a run whose features are cached never loads the
    model (a 6 B model is 11 GB to read); the first pass that needs it loads it."""
    from safetensors.torch import save_file

    weights = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in vit.model.state_dict().items()}, str(weights))
    eager = load_backbone(VIT, str(weights), model_kwargs=VIT_KW)
    lazy = load_backbone(VIT, str(weights), model_kwargs=VIT_KW, lazy=True)
    assert not lazy.loaded and next(lazy.model.parameters()).device.type == "meta"
    for attr in ("weights_id", "n_layers", "n_params", "kind", "num_prefix_tokens", "data_config", "cache_name"):
        assert getattr(lazy, attr) == getattr(eager, attr), attr
    assert feature_cache_key(lazy, "layer_2", "mean", "s") == feature_cache_key(eager, "layer_2", "mean", "s")
    cached = cached_features(eager, images, [2], pooling="mean", cache_dir=tmp_path / "c", image_set_id="s")
    again = cached_features(lazy, images, [2], pooling="mean", cache_dir=tmp_path / "c", image_set_id="s")
    assert not lazy.loaded  # all in the cache: nothing read
    np.testing.assert_array_equal(again["layer_2"], cached["layer_2"])
    more = cached_features(lazy, images, [2, "final"], pooling="mean", cache_dir=tmp_path / "c", image_set_id="s")
    assert lazy.loaded and next(lazy.model.parameters()).device.type == "cpu"
    np.testing.assert_allclose(more["final"], extract_features(eager, images, ["final"])["final"], rtol=1e-5, atol=1e-6)
