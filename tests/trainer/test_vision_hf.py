"""trainer.vision's transformers provider (``hf:FOLDER``): tiny random-initialised models of
real transformers classes (DINOv2, CLIP, InternVL's vision model) saved as model folders,
and a folder that ships its own model code, laid out as InternViT-6B's is."""

from __future__ import annotations

import json
import shutil
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("transformers")

from transformers import (  # noqa: E402
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    Dinov2Config,
    Dinov2Model,
    InternVLVisionConfig,
    InternVLVisionModel,
)

from trainer.errors import BCIError, UsageError  # noqa: E402
from trainer.vision import cached_features, extract_features, feature_cache_key, load_backbone  # noqa: E402

TINY = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _images(n: int = 5, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (40 + 3 * i, 52, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Model folders as save_pretrained writes them: DINOv2 with a CLIP-style image processor
    (shortest edge 36, centre crop 32), a whole CLIP model (text tower and visual projection
    included) and InternVL's vision model (no processor file)."""
    root = tmp_path_factory.mktemp("hf_models")
    torch.manual_seed(1234)  # not a seed the tests give "random" weights
    dino = Dinov2Model(Dinov2Config(**TINY, image_size=32, patch_size=8)).eval()
    dino.save_pretrained(root / "dino")
    CLIPImageProcessor(size={"shortest_edge": 36}, crop_size={"height": 32, "width": 32}, do_center_crop=True,
                       image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(root / "dino")
    text = dict(TINY, num_hidden_layers=2, vocab_size=100, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    clip = CLIPModel(CLIPConfig(vision_config=dict(TINY, num_hidden_layers=3, image_size=32, patch_size=8),
                                text_config=text, projection_dim=16)).eval()
    clip.save_pretrained(root / "clip")
    ivl = InternVLVisionModel(InternVLVisionConfig(**TINY, image_size=[32, 32], patch_size=[8, 8], norm_type="rms_norm",
                                                   use_qk_norm=True)).eval()
    ivl.save_pretrained(root / "internvl")
    return {"root": root, "dino": (root / "dino", dino), "clip": (root / "clip", clip), "internvl": (root / "internvl", ivl)}


def _pixels(backbone, images) -> torch.Tensor:
    return torch.stack([backbone.loader_transform()(im) for im in images])


def _reference(name, model, px):
    """(hidden states per layer, final embedding) from the transformers model itself."""
    with torch.inference_mode():
        if name == "clip":
            out = model.vision_model(pixel_values=px, output_hidden_states=True)
            image = model.get_image_features(pixel_values=px)
            final = image.pooler_output if hasattr(image, "pooler_output") else image
        else:
            out = model(pixel_values=px, output_hidden_states=True)
            # a model without a pooled output (InternVL's vision model): its patch tokens' mean
            final = out.pooler_output if out.pooler_output is not None else out.last_hidden_state[:, 1:].mean(dim=1)
    return out.hidden_states[1:], final  # [0] is the embedding's output


@pytest.mark.parametrize("name", ["dino", "clip", "internvl"])
def test_layers_and_final_are_the_models_own(folders, name):
    folder, model = folders[name]
    backbone = load_backbone(f"hf:{folder}", "hub")
    assert backbone.provider == "hf" and backbone.kind == "vit" and backbone.num_prefix_tokens == 1
    assert backbone.n_layers == model.config.num_hidden_layers if name != "clip" else backbone.n_layers == 3
    images = _images()
    hidden, final = _reference(name, model, _pixels(backbone, images))
    last = backbone.n_layers - 1
    for pooling in ("mean", "cls", "mean+cls"):
        feats = extract_features(backbone, images, [0, last, "final"], pooling=pooling, batch_size=2)
        for k in (0, last):
            mean, cls = hidden[k][:, 1:].mean(dim=1).numpy(), hidden[k][:, 0].numpy()
            want = {"mean": mean, "cls": cls, "mean+cls": np.concatenate([mean, cls], axis=1)}[pooling]
            np.testing.assert_allclose(feats[f"layer_{k}"], want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(feats["final"], final.numpy(), rtol=1e-4, atol=1e-5)
    if name == "clip":  # the projection is CLIP's image embedding; the text tower is not kept
        assert feats["final"].shape[1] == 16
        assert backbone.n_params < sum(p.numel() for p in model.parameters())
        assert not any("text" in n for n, _ in backbone.model.named_parameters())


def test_a_pass_without_final_stops_after_the_deepest_layer(folders):
    backbone = load_backbone(f"hf:{folders['dino'][0]}", "hub")
    calls = []
    handle = backbone.blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    try:
        extract_features(backbone, _images(4), [0, 1], batch_size=2)
        assert calls == []  # layers 2 and 3 never ran
        extract_features(backbone, _images(4), [1, "final"], batch_size=2)
        assert len(calls) == 2  # the final embedding needs the whole pass
    finally:
        handle.remove()


def test_preprocessing_follows_the_folders_image_processor(folders):
    folder, _ = folders["dino"]
    backbone = load_backbone(f"hf:{folder}", "random")
    c = backbone.data_config
    assert c["input_size"] == (3, 32, 32) and c["interpolation"] == "bicubic" and c["crop_mode"] == "center"
    assert c["mean"] == (0.5, 0.4, 0.3) and c["std"] == (0.2, 0.25, 0.3)
    rng = np.random.default_rng(3)
    # sizes whose crop margins are even: where they are odd, torchvision's centre crop
    # rounds the offset up and transformers' down (one pixel; see docs/training.md)
    images = [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in
              [(40, 52, 3), (52, 40, 3), (48, 48, 3), (72, 90, 3)]]
    theirs = CLIPImageProcessor.from_pretrained(folder)(images, return_tensors="pt")["pixel_values"]
    ours = _pixels(backbone, images)
    assert ours.shape == theirs.shape
    # the same pixels, but for the resize's rounding: one 8-bit level here and there
    diff = (ours - theirs).abs() * torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1) * 255  # in 8-bit levels
    assert float(diff.max()) < 1.01 and float((diff > 1e-3).float().mean()) < 0.01
    # no processor file: the config's image size, ImageNet mean and std
    other = load_backbone(f"hf:{folders['internvl'][0]}", "random").data_config
    assert other["input_size"] == (3, 32, 32) and other["mean"] == (0.485, 0.456, 0.406)


def test_weights_random_hub_and_a_moved_folder(folders, tmp_path):
    folder, model = folders["dino"]
    images = _images(3)
    hub = load_backbone(f"hf:{folder}", "hub")
    assert hub.weights_id.startswith("folder-")
    a, b = load_backbone(f"hf:{folder}", "random", seed=0), load_backbone(f"hf:{folder}", "random", seed=0)
    c = load_backbone(f"hf:{folder}", "random", seed=1)
    fa, fb, fc, fh = (extract_features(x, images, [2])["layer_2"] for x in (a, b, c, hub))
    np.testing.assert_array_equal(fa, fb)
    assert not np.allclose(fa, fc) and not np.allclose(fa, fh)
    assert a.weights_id == "random-seed0" != c.weights_id
    # a moved folder: the same cache entries (name and weights id do not depend on where it is)
    moved = shutil.copytree(folder, tmp_path / "dino")
    again = load_backbone(f"hf:{folder}", str(moved))
    assert (again.cache_name, again.weights_id) == (hub.cache_name, hub.weights_id)
    assert feature_cache_key(again, "layer_1", "mean", "x") == feature_cache_key(hub, "layer_1", "mean", "x")
    # other weights in the folder: another id; another config: another name
    state = {k: v + 1 for k, v in model.state_dict().items()}
    changed = Dinov2Model(model.config)
    changed.load_state_dict(state)
    changed.save_pretrained(moved)
    assert load_backbone(f"hf:{moved}", "hub").weights_id != hub.weights_id
    assert load_backbone(f"hf:{folders['internvl'][0]}", "random").cache_name != a.cache_name


def test_cached_features_of_an_hf_backbone(folders, tmp_path):
    backbone = load_backbone(f"hf:{folders['internvl'][0]}", "hub")
    images = _images(3)
    first = cached_features(backbone, images, [1, "final"], pooling="cls", cache_dir=tmp_path, image_set_id="s")
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(files) == 2 and all(f.startswith("hf-internvl-") for f in files)
    second = cached_features(backbone, images, [1, "final"], pooling="cls", cache_dir=tmp_path, image_set_id="s")
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])


# ----------------------------------------------------------------- a folder with its own code

_CONFIG_CODE = '''
from transformers import PretrainedConfig


class TinyVisionConfig(PretrainedConfig):
    model_type = "tiny_intern_vit"

    def __init__(self, hidden_size=32, num_hidden_layers=3, image_size=32, patch_size=8, **kwargs):
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.image_size = image_size
        self.patch_size = patch_size
        super().__init__(**kwargs)
'''

_MODEL_CODE = '''
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

from .configuration_tiny import TinyVisionConfig


class Embeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.class_embedding = nn.Parameter(torch.randn(1, 1, config.hidden_size))
        self.patch_embedding = nn.Conv2d(3, config.hidden_size, config.patch_size, config.patch_size)
        n = (config.image_size // config.patch_size) ** 2 + 1
        self.position_embedding = nn.Parameter(torch.randn(1, n, config.hidden_size))

    def forward(self, x):
        patches = self.patch_embedding(x).flatten(2).transpose(1, 2)
        cls = self.class_embedding.expand(len(x), -1, -1)
        return torch.cat([cls, patches], dim=1) + self.position_embedding


class Layer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.hidden_size)
        self.mlp = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, hidden):
        return hidden + self.mlp(self.norm(hidden))


class Encoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layers = nn.ModuleList([Layer(config) for _ in range(config.num_hidden_layers)])

    def forward(self, hidden):
        states = [hidden]
        for layer in self.layers:
            hidden = layer(hidden)
            states.append(hidden)
        return hidden, tuple(states)


class TinyVisionModel(PreTrainedModel):
    config_class = TinyVisionConfig
    main_input_name = "pixel_values"

    def __init__(self, config):
        super().__init__(config)
        self.embeddings = Embeddings(config)
        self.encoder = Encoder(config)
        self.post_init()

    def forward(self, pixel_values=None, output_hidden_states=None, return_dict=None):
        last, states = self.encoder(self.embeddings(pixel_values))
        return BaseModelOutputWithPooling(last_hidden_state=last, pooler_output=last[:, 0],
                                          hidden_states=states if output_hidden_states else None)
'''


@pytest.fixture(scope="module")
def remote_folder(folders):
    folder = folders["root"] / "own_code"
    folder.mkdir()
    (folder / "configuration_tiny.py").write_text(textwrap.dedent(_CONFIG_CODE))
    (folder / "modeling_tiny.py").write_text(textwrap.dedent(_MODEL_CODE))
    config = {"model_type": "tiny_intern_vit", "architectures": ["TinyVisionModel"], "hidden_size": 32,
              "num_hidden_layers": 3, "image_size": 32, "patch_size": 8,
              "auto_map": {"AutoConfig": "configuration_tiny.TinyVisionConfig", "AutoModel": "modeling_tiny.TinyVisionModel"}}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_a_folder_with_its_own_code_runs_only_when_trusted(remote_folder):
    with pytest.raises(BCIError, match=r"ships its own model code \(configuration_tiny.TinyVisionConfig, "
                                       r"modeling_tiny.TinyVisionModel\).*--trust-remote-code"):
        load_backbone(f"hf:{remote_folder}", "random")
    backbone = load_backbone(f"hf:{remote_folder}", "random", trust_remote_code=True)
    assert backbone.n_layers == 3 and backbone.num_prefix_tokens == 1
    images = _images(3)
    px = _pixels(backbone, images)
    with torch.inference_mode():
        out = backbone.model(pixel_values=px, output_hidden_states=True)
    feats = extract_features(backbone, images, [1, "final"], pooling="mean+cls")
    want = torch.cat([out.hidden_states[2][:, 1:].mean(1), out.hidden_states[2][:, 0]], dim=1).numpy()
    np.testing.assert_allclose(feats["layer_1"], want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(feats["final"], out.pooler_output.numpy(), rtol=1e-4, atol=1e-5)


def test_bad_names_and_arguments(folders, tmp_path):
    with pytest.raises(BCIError, match="folder .*nowhere not found"):
        load_backbone(f"hf:{tmp_path / 'nowhere'}")
    with pytest.raises(BCIError, match="has no config.json"):
        load_backbone(f"hf:{tmp_path}")
    folder = folders["dino"][0]
    with pytest.raises(UsageError, match="apply to timm backbones"):
        load_backbone(f"hf:{folder}", model_kwargs={"img_size": 64})
    weights_file = next(folder.glob("*.safetensors"))
    with pytest.raises(BCIError, match="an hf: backbone's weights are its folder"):
        load_backbone(f"hf:{folder}", str(weights_file))
    with pytest.raises(UsageError, match="hf: backbones only"):
        load_backbone("resnet10t", trust_remote_code=True)
    conv = tmp_path / "resnet"
    from transformers import ResNetConfig, ResNetModel

    ResNetModel(ResNetConfig(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1])).save_pretrained(conv)
    with pytest.raises(BCIError, match="must be transformer vision towers"):
        load_backbone(f"hf:{conv}", "hub")


@pytest.mark.slow
def test_fit_retarget_with_an_hf_backbone(folders, tiny_dataset, tmp_path, capsys):
    """bci-train fit with --backbone hf:FOLDER: the bundle records the provider, and
    retarget embeds new images with it as the fit did."""
    from trainer.bundle import load_bundle, retarget_bundle
    from trainer.cli import main

    folder = folders["dino"][0]
    run = tmp_path / "run"
    code = main(["fit", "--data", str(tiny_dataset), "--subject", "1", "--out", str(run), "--backbone", f"hf:{folder}",
                 "--weights", "hub", "--layer", "2", "--epochs", "2", "--batch-size", "128", "--embed-dim", "32",
                 "--proj-dim", "16", "--device", "cpu", "--cache", str(tmp_path / "cache")])
    assert code == 0
    bundle = load_bundle(run)
    info = bundle.config["backbone"]
    assert info["provider"] == "hf" and info["name"] == f"hf:{folder}" and info["weights_id"].startswith("folder-")
    gallery = [tiny_dataset / "image_set" / "test_images" / item.file for item in bundle.items[:4]]
    out = retarget_bundle(run, tmp_path / "retargeted", gallery, device="cpu")
    retargeted = load_bundle(out)
    # the first gallery images of the fit are the same files, embedded the same way
    np.testing.assert_allclose(np.asarray(retargeted.gallery[:4]), np.asarray(bundle.gallery[:4]), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------- describing without weights

@pytest.mark.parametrize("name", ["dino", "clip"])
def test_describe_reports_what_loading_reports(folders, name):
    from trainer.vision import describe_backbone

    folder = folders[name][0]
    loaded = load_backbone(f"hf:{folder}", "hub")
    described = describe_backbone(f"hf:{folder}", flops=True)
    assert described.pop("gflops") > 0
    assert described == {"name": f"hf:{folder}", "provider": "hf", "kind": "vit", "n_layers": loaded.n_layers,
                         "n_params": loaded.n_params, "input_size": list(loaded.data_config["input_size"]),
                         "prefix_tokens": 1}


def test_backbones_command_on_the_shipped_internvit_6b_architecture(capsys):
    """configs/backbones/InternViT-6B-448px-V2_5: the paper's best backbone, described
    from its architecture alone (built on the meta device: no 22 GB of weights)."""
    from pathlib import Path

    from trainer.cli import main

    folder = Path(__file__).resolve().parents[2] / "configs" / "backbones" / "InternViT-6B-448px-V2_5"
    assert main(["backbones", f"hf:{folder}", "vit_tiny_patch16_224", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    intern, vit = rows
    assert intern["n_layers"] == 45 and intern["input_size"] == [3, 448, 448] and intern["prefix_tokens"] == 1
    assert abs(intern["n_params"] / 5.54e9 - 1) < 0.002  # the model card: 5540 M
    # about 2 FLOPs per parameter and token (1025 tokens at 448 px), plus attention
    assert 2 * 5.5365e9 * 1025 < intern["gflops"] * 1e9 < 1.1 * 2 * 5.5365e9 * 1025 + 45 * 4 * 1025**2 * 3200
    assert vit["provider"] == "timm" and vit["n_layers"] == 12 and vit["kind"] == "vit"


def test_a_lazy_hf_backbone_is_the_folders_model_once_loaded(folders):
    folder = folders["clip"][0]
    eager = load_backbone(f"hf:{folder}", "hub")
    lazy = load_backbone(f"hf:{folder}", "hub", lazy=True)
    assert not lazy.loaded
    for attr in ("weights_id", "cache_name", "n_layers", "n_params", "num_prefix_tokens", "data_config"):
        assert getattr(lazy, attr) == getattr(eager, attr), attr
    images = _images(3)
    got = extract_features(lazy, images, [1, "final"], pooling="cls")
    assert lazy.loaded
    want = extract_features(eager, images, [1, "final"], pooling="cls")
    for key in want:
        np.testing.assert_array_equal(got[key], want[key])
