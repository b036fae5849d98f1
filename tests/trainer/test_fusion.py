"""Multi-layer fusion (--fusion): the image side over several layers, the choice on
validation concepts, and bundles that the app, eval and retarget use unchanged."""


import numpy as np
import pytest
import torch

from trainer.bundle import load_bundle, retarget_bundle
from trainer.errors import DataFormatError, UsageError
from trainer.fit import FitConfig, evaluate_bundle, fit
from trainer.model import AlignmentModel, WeightedLayerFusion

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ENC = {"name": "linear", "n_chans": 3, "n_times": 5, "embed_dim": 8}


def _config(data, out, cache, **kw):
    base = dict(data=str(data), subject=1, out=str(out), backbone="vit_tiny_patch16_224", weights="random",
                image_size=32, layer="auto", layers="1,3,final", epochs=3, batch_size=128, proj_dim=32, embed_dim=64,
                cache=str(cache), device="cpu")
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def weighted_run(tiny_dataset, tmp_path_factory, cache):
    out = tmp_path_factory.mktemp("fusion") / "weighted"
    metrics = fit(_config(tiny_dataset, out, cache, fusion="weighted", fusion_layers="1,3,final"))
    return out, metrics


def test_weighted_fusion_mixes_unit_length_layer_projections_by_softmax_weights():
    torch.manual_seed(0)
    fusion = WeightedLayerFusion([4, 6], proj_dim=3)
    assert torch.allclose(fusion.weights(), torch.tensor([0.5, 0.5]))  # uniform at first
    with torch.no_grad():
        fusion.logits.copy_(torch.tensor([2.0, -1.0]))
    x = torch.randn(5, 10)
    a = torch.nn.functional.normalize(fusion.layers[0](x[:, :4]), dim=1)
    b = torch.nn.functional.normalize(fusion.layers[1](x[:, 4:]), dim=1)
    w = torch.softmax(torch.tensor([2.0, -1.0]), 0)
    assert torch.allclose(fusion(x), w[0] * a + w[1] * b, atol=1e-6)
    with pytest.raises(ValueError, match="at least two layers"):
        WeightedLayerFusion([4], 3)


@pytest.mark.parametrize("fusion", [None, "concat", "weighted"])
def test_folded_feature_standardisation_gives_the_same_embeddings(fusion):
    """The image projector (one layer's, or a fused one) trained on z-scored features takes
    raw ones once the z-scoring is folded into it."""
    torch.manual_seed(0)
    model = AlignmentModel(ENC, feature_dim=10 if fusion is None else [6, 4], proj_dim=4, fusion=fusion)
    feats = torch.rand(10, 10) * 5 + 3
    mean, std = feats.mean(0), feats.std(0)
    with torch.no_grad():
        expected = model.embed_images((feats - mean) / std)
        model.fold_feature_standardisation(mean, std)
        got = model.embed_images(feats)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(model.embed_images(feats), model.embed_images(feats + 1.0))
    assert model.feature_dim == 10


def test_a_weighted_fusion_run_records_its_layers_and_weights(weighted_run, tiny_dataset, cache):
    out, metrics = weighted_run
    fusion = metrics["fusion"]
    assert metrics["layer"] == [1, 3, "final"] and fusion["kind"] == "weighted" and fusion["layers"] == [1, 3, "final"]
    assert len(fusion["weights"]) == 3 and sum(fusion["weights"]) == pytest.approx(1.0)
    assert fusion["weights"] != pytest.approx([1 / 3] * 3, abs=1e-6)  # learned, not left uniform
    assert metrics["layer_depth"] == [pytest.approx(2 / 12), pytest.approx(4 / 12), None]
    # only the fusion asked for was trained (no single layer beside it)
    assert [(r["fusion"], r["layers"]) for r in metrics["fusion_sweep"]] == [("weighted", [1, 3, "final"])]
    assert (out / "layer_weights.png").stat().st_size > 5_000
    bundle = load_bundle(out)
    assert bundle.layers == [1, 3, "final"] and bundle.config["fusion"] == fusion
    assert bundle.config["feature_dim"] == sum(fusion["feature_dims"]) == 3 * 192
    # eval --bundle works unchanged and reproduces the run's figures
    again = evaluate_bundle(out, tiny_dataset, 1, device="cpu", cache=cache)
    assert again["averaged"] == metrics["averaged"] and again["single_trial"] == metrics["single_trial"]


def test_retarget_embeds_new_images_through_every_fused_layer(weighted_run, tiny_dataset, tmp_path):
    """Re-targeting to the bundle's own test images reproduces its gallery: the same layers,
    in the same order, through the same fused image side."""
    out, _ = weighted_run
    original = load_bundle(out)
    images = [tiny_dataset / "image_set" / "test_images" / item.file for item in original.items]
    again = load_bundle(retarget_bundle(out, tmp_path / "again", images, ids=list(original.gallery_ids),
                                        concepts=[it.concept for it in original.items], device="cpu"))
    np.testing.assert_allclose(again.gallery, original.gallery, atol=2e-5)
    assert again.config["fusion"] == original.config["fusion"]


def test_the_live_decoder_runs_a_fused_bundle(weighted_run):
    from bci_app.decoder import Decoder

    bundle = load_bundle(weighted_run[0])
    decoder = Decoder(bundle, device="cpu", top_k=3)
    x = np.random.default_rng(0).standard_normal((2, bundle.n_chans, bundle.n_times)).astype(np.float32)
    preds = decoder.decode(x, [1, None])
    assert len(preds[0].topk) == 3 and preds[0].avg_topk is not None
    assert all(0 < c < 1 for c in preds[0].confidence)


def test_auto_weighs_single_layer_and_fusions_on_validation_only(tiny_dataset, tmp_path, cache):
    """--fusion auto trains the single layer the proxy chooses, and both kinds over the 2
    best and all candidates; the one kept is the best on validation (top-1, then mean
    rank), whatever the test figures."""
    metrics = fit(_config(tiny_dataset, tmp_path / "auto", cache, fusion="auto", epochs=2))
    sweep = metrics["fusion_sweep"]
    kinds = [(r["fusion"], len(r["layers"])) for r in sweep]
    assert kinds == [("none", 1), ("concat", 2), ("concat", 3), ("weighted", 2), ("weighted", 3)]
    best = max(sweep, key=lambda r: (r["val_top1"], r["val_rank"]))
    assert metrics["val_top1"] == best["val_top1"]
    assert metrics["layer"] == (best["layers"][0] if best["fusion"] == "none" else best["layers"])
    # the two-layer sets are the proxy's two best candidates, in depth order
    ranked = sorted(metrics["layer_sweep"], key=lambda r: -r["proxy_mean_rank"])
    top2 = [r["layer"] for r in metrics["layer_sweep"] if r in ranked[:2]]
    assert sweep[1]["layers"] == top2


def test_bad_fusion_settings_are_refused(tiny_dataset, tmp_path, cache):
    with pytest.raises(UsageError, match="--fusion-layers .* give --fusion"):
        _config(tiny_dataset, tmp_path / "a", cache, fusion_layers="1,3").validate()
    with pytest.raises(UsageError, match="at least two"):
        _config(tiny_dataset, tmp_path / "b", cache, fusion="concat", fusion_layers="3").validate()
    with pytest.raises(UsageError, match="--fusion .* must be one of"):
        _config(tiny_dataset, tmp_path / "c", cache, fusion="mean").validate()
    with pytest.raises(UsageError, match="fuses candidate layers"):
        fit(_config(tiny_dataset, tmp_path / "d", cache, fusion="weighted", layer="3"))
    with pytest.raises(UsageError, match="out of range"):
        fit(_config(tiny_dataset, tmp_path / "e", cache, fusion="weighted", fusion_layers="1,40"))


@pytest.mark.parametrize("edit, field", [
    (lambda c: c["fusion"].update(kind="max"), "fusion.kind"),
    (lambda c: c["fusion"].update(layers=[1, 3]), "fusion.layers"),
    (lambda c: c["fusion"].update(feature_dims=[192, 192, 100]), "fusion.feature_dims"),
    (lambda c: c["fusion"].update(weights=[0.5, 0.5]), "fusion.weights"),
    (lambda c: c.update(layer=3), "layer"),
    (lambda c: c.pop("fusion"), "layer"),
])
def test_a_bad_fusion_record_is_refused_by_name(weighted_run, edited_bundle, edit, field):
    with pytest.raises(DataFormatError) as err:
        load_bundle(edited_bundle(weighted_run[0], edit))
    assert field in str(err.value)
