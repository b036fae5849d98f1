"""Shared fixtures: environment for offline, display-less runs, and one synthetic data
set per test session."""

from __future__ import annotations

import os

os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MNE_DONTWRITE_HOME", "true")

import tempfile  # noqa: E402

import pytest  # noqa: E402

# features and epochs are cached here, never in the user's home
os.environ["SHALLOW_BCI_CACHE"] = tempfile.mkdtemp(prefix="shallow-bci-test-cache-")
# transformers copies a model folder's own code (trust_remote_code) here, not into the home
os.environ["HF_MODULES_CACHE"] = tempfile.mkdtemp(prefix="shallow-bci-hf-modules-")

# liblsl (loaded later, by mne-lsl) reads this: resolve streams on this machine only, quietly
_LSL_CFG = os.path.join(tempfile.mkdtemp(prefix="shallow-bci-lsl-"), "lsl_api.cfg")
with open(_LSL_CFG, "w") as _f:
    _f.write("[multicast]\nResolveScope = link\n\n[log]\nlevel = -2\n")
os.environ["LSLAPICFG"] = _LSL_CFG


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """The ``tiny`` synthetic data set (both preprocessed variants), generated once."""
    from trainer.synth import generate

    root = tmp_path_factory.mktemp("things_tiny")
    generate(root, "tiny", variants=("official", "63ch-250hz"))
    return root


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory):
    """One feature and epoch cache for every fit on the tiny set: each image feature and
    epoch file is computed once per test session (the cache's keys keep backbones, layers
    and settings apart; checkpoints are keyed by their run folder)."""
    return tmp_path_factory.mktemp("tiny_cache")


@pytest.fixture(scope="session")
def windows_bundle(tiny_dataset, tiny_cache, tmp_path_factory):
    """A bundle of subject 1 of the tiny set that decides provisionally after 0.3 and 0.5 s
    (--windows; random resnet10t, a few epochs)."""
    from trainer.fit import FitConfig, fit

    root = tmp_path_factory.mktemp("windows_bundle")
    fit(FitConfig(data=str(tiny_dataset), subject=1, out=str(root / "run"), backbone="resnet10t", weights="random",
                  layers="1", epochs=3, batch_size=128, proj_dim=32, embed_dim=64, cache=str(tiny_cache),
                  device="cpu", windows="0.3,0.5"))
    return root / "run"


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tiny_cache, tmp_path_factory):
    """A bundle fitted on subject 1 of the tiny set (random resnet10t, a few epochs)."""
    from trainer.fit import FitConfig, fit

    root = tmp_path_factory.mktemp("bundle")
    fit(FitConfig(data=str(tiny_dataset), subject=1, out=str(root / "run"), backbone="resnet10t", weights="random",
                  layers="1", epochs=3, batch_size=128, proj_dim=32, embed_dim=64, cache=str(tiny_cache),
                  device="cpu"))
    return root / "run"


@pytest.fixture(scope="session")
def tiny_meg_dataset(tmp_path_factory):
    """A one-subject set smaller than tiny, with its THINGS-MEG-like -epo.fif."""
    from trainer.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("things_tiny_meg")
    config = SynthConfig(n_train_concepts=24, images_per_concept=3, n_test_concepts=8, n_sessions=2,
                         test_reps_per_session=2, subjects=1, image_size=32)
    generate(root, config, meg=True)
    return root
