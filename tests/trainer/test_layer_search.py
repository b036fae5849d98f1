"""The ridge proxy that chooses the layer (trainer.layer_search) and its use by fit()."""

import json

import numpy as np
import pytest

from trainer import fit as fit_module
from trainer.bundle import load_bundle
from trainer.errors import UsageError
from trainer.fit import FitConfig, fit
from trainer.layer_search import RidgeBasis, choose_layer, ridge_layer_scores


def _images_and_eeg(n_images=240, images_per_concept=4, n_latent=8, n_eeg=300, seed=0):
    """Images with a latent code; the EEG of each image a noisy linear function of it."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n_images, n_latent))
    eeg = latent @ rng.standard_normal((n_latent, n_eeg)) + 3.0 * rng.standard_normal((n_images, n_eeg))
    concept = np.arange(n_images) // images_per_concept
    return rng, latent, eeg, concept


def _split(concept, n_val_concepts=12):
    val = np.isin(concept, np.arange(n_val_concepts))
    return np.flatnonzero(~val), np.flatnonzero(val)


def test_the_proxy_picks_the_layer_that_carries_the_signal():
    """Only layer_2's features are a (noisy, mixed) linear function of what the EEG encodes;
    the others are noise of their own, one of them as wide and one shifted and scaled (what
    the standardisation must undo).  The proxy must choose layer_2, clearly."""
    rng, latent, eeg, concept = _images_and_eeg()
    feats = {
        "layer_0": rng.standard_normal((len(latent), 64)),
        "layer_1": 50.0 + 20.0 * rng.standard_normal((len(latent), 32)),
        "layer_2": latent @ rng.standard_normal((latent.shape[1], 64)) + 0.5 * rng.standard_normal((len(latent), 64)),
        "final": rng.standard_normal((len(latent), 16)),
    }
    fit_rows, val_rows = _split(concept)
    val_images, val_targets = np.unique(val_rows, return_inverse=True)  # one row per image here
    scores = ridge_layer_scores(eeg[fit_rows], eeg[val_rows], {k: f[fit_rows] for k, f in feats.items()},
                                {k: f[val_images] for k, f in feats.items()}, val_targets)
    assert [s.layer for s in scores] == list(feats)
    assert choose_layer(scores) == "layer_2"
    by_key = {s.layer: s for s in scores}
    assert by_key["layer_2"].mean_rank > 0.8 and by_key["layer_2"].top1 > 3 / len(val_images)
    for key in ("layer_0", "layer_1", "final"):  # noise layers sit near chance (0.5)
        assert abs(by_key[key].mean_rank - 0.5) < 0.15, by_key[key]


def test_the_proxy_fails_where_no_layer_carries_signal():
    """The same construction with layer_2's link to the EEG cut: nothing stands out (the
    scores are not an artefact of the feature sizes or scales)."""
    rng, latent, eeg, concept = _images_and_eeg()
    other = rng.standard_normal(latent.shape)  # another latent code: unrelated to the EEG
    feats = {"layer_0": rng.standard_normal((len(latent), 64)),
             "layer_2": other @ rng.standard_normal((latent.shape[1], 64))}
    fit_rows, val_rows = _split(concept)
    scores = ridge_layer_scores(eeg[fit_rows], eeg[val_rows], {k: f[fit_rows] for k, f in feats.items()},
                                {k: f[val_rows] for k, f in feats.items()}, np.arange(len(val_rows)))
    assert all(abs(s.mean_rank - 0.5) < 0.15 for s in scores), scores


@pytest.mark.parametrize("n_fit, n_eeg", [(50, 120), (120, 50)])  # dual and primal
def test_ridge_basis_predicts_as_the_explicit_solution(n_fit, n_eeg):
    rng = np.random.default_rng(1)
    x, z, y = rng.standard_normal((n_fit, n_eeg)), rng.standard_normal((7, n_eeg)), rng.standard_normal((n_fit, 5))
    basis = RidgeBasis(x.astype(np.float32), z.astype(np.float32))
    assert basis.dual == (n_fit <= n_eeg)
    xc, zc = x - x.mean(axis=0), z - x.mean(axis=0)
    for alpha in (0.1, 10.0):
        penalty = alpha * basis.scale
        expected = zc @ np.linalg.solve(xc.T @ xc + penalty * np.eye(n_eeg), xc.T @ y)
        np.testing.assert_allclose(basis.predict(basis.project(y), alpha), expected, rtol=1e-3, atol=1e-4)


def test_choose_layer_keeps_the_first_of_equals():
    scores = ridge_layer_scores(*_equal_layers())
    assert scores[0].mean_rank == scores[1].mean_rank
    assert choose_layer(scores) == "layer_4"


def _equal_layers():
    """Two layers with identical features (a CNN's last stage and its pooled final layer)."""
    rng, latent, eeg, concept = _images_and_eeg(n_images=80)
    f = latent @ rng.standard_normal((latent.shape[1], 16))
    fit_rows, val_rows = _split(concept, n_val_concepts=5)
    return (eeg[fit_rows], eeg[val_rows], {"layer_4": f[fit_rows], "final": f[fit_rows]},
            {"layer_4": f[val_rows], "final": f[val_rows]}, np.arange(len(val_rows)))


# -- in fit() -------------------------------------------------------------------------------

def _config(data, out, cache, **kw):
    base = dict(data=str(data), subject=1, out=str(out), backbone="vit_tiny_patch16_224", weights="random",
                image_size=32, layer="auto", layers="0,2,final", epochs=2, batch_size=128, proj_dim=32, embed_dim=64,
                cache=str(cache), device="cpu")
    base.update(kw)
    return FitConfig(**base)


@pytest.fixture(scope="module")
def runs(tiny_dataset, tmp_path_factory, cache, one_torch_thread):
    """The same settings searched both ways, and each candidate trained alone."""
    root = tmp_path_factory.mktemp("runs")
    out = {search: fit(_config(tiny_dataset, root / search, cache, layer_search=search)) for search in ("proxy", "full")}
    for layer in ("0", "2", "final"):
        out[layer] = fit(_config(tiny_dataset, root / f"layer-{layer}", cache, layer=layer, layers=""))
    return root, out


def test_full_search_trains_every_candidate_and_keeps_the_best_validation_top1(runs):
    """--layer-search full is the search as it was: every candidate trained exactly as a
    run of that one layer trains it, the first best validation top-1 chosen."""
    root, out = runs
    full = out["full"]
    assert full["layer_search"] == "full"
    sweep = full["layer_sweep"]
    assert [e["layer"] for e in sweep] == [0, 2, "final"]
    assert not any(k.startswith("proxy") for e in sweep for k in e)
    for entry, alone in zip(sweep, (out["0"], out["2"], out["final"])):
        assert alone["layer_search"] == "fixed"
        assert entry["val_top1"] == alone["val_top1"] and entry["best_epoch"] == alone["best_epoch"]
    vals = [e["val_top1"] for e in sweep]
    assert full["layer"] == sweep[vals.index(max(vals))]["layer"]
    assert full["averaged"] == out[str(full["layer"])]["averaged"]
    assert load_bundle(root / "full").config["provenance"]["layer_search"] == "full"


def test_proxy_search_scores_every_candidate_and_trains_only_its_choice(runs):
    root, out = runs
    proxy = out["proxy"]
    assert proxy["layer_search"] == "proxy"
    sweep = proxy["layer_sweep"]
    assert [e["layer"] for e in sweep] == [0, 2, "final"]
    assert all({"proxy_mean_rank", "proxy_top1", "proxy_alpha"} <= set(e) for e in sweep)
    trained = [e for e in sweep if "val_top1" in e]
    assert [e["layer"] for e in trained] == [proxy["layer"]]
    ranks = [e["proxy_mean_rank"] for e in sweep]
    assert proxy["layer"] == sweep[ranks.index(max(ranks))]["layer"]
    # the chosen layer is trained exactly as a run of that layer alone
    assert proxy["averaged"] == out[str(proxy["layer"])]["averaged"]
    assert proxy["history"] == out[str(proxy["layer"])]["history"]
    assert load_bundle(root / "proxy").config["provenance"]["layer_search"] == "proxy"
    assert json.loads((root / "proxy" / "metrics.json").read_text())["layer_sweep"] == sweep


@pytest.mark.parametrize("search", ["proxy", "full"])
@pytest.mark.usefixtures("one_torch_thread")
def test_the_search_never_reads_test_features(runs, tiny_dataset, tmp_path, monkeypatch, cache, search):
    """Test-image features replaced by NaN: the same layer, scores and validation numbers
    (the chosen model's test evaluation, which does read them, is stubbed out)."""
    _, out = runs
    real_features = fit_module.image_features
    tested = {}

    def nan_test_features(*args, **kwargs):
        train, test = real_features(*args, **kwargs)
        return train, {k: np.full_like(v, np.nan) for k, v in test.items()}

    def test_stub(cfg, out_dir, data, backbone, model, chosen, gallery_features, device, **kw):
        tested["nan"] = bool(np.isnan(gallery_features).all())
        return {"layer": chosen.layer, "val_top1": chosen.best_val_top1}

    monkeypatch.setattr(fit_module, "image_features", nan_test_features)
    monkeypatch.setattr(fit_module, "_test_and_save", test_stub)
    again = fit(_config(tiny_dataset, tmp_path / "run", cache, layer_search=search))
    assert tested["nan"]
    assert again["layer"] == out[search]["layer"]
    assert again["layer_sweep"] == out[search]["layer_sweep"]
    assert again["history"] == out[search]["history"]


def test_layer_search_is_checked_and_on_the_command_line(tiny_dataset, tmp_path, capsys):
    from trainer.cli import main

    with pytest.raises(UsageError, match=r"--layer-search \(layer_search\)"):
        _config(tiny_dataset, tmp_path / "run", tmp_path / "cache", layer_search="fast").validate()
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "--layer-search" in capsys.readouterr().out
