"""Fixtures for the training tests."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models gain nothing from intra-op threads, and on a busy 2-core machine every
    op's OpenMP barrier waits for a descheduled thread (pretraining 2 epochs here: 22 s with
    1 thread, 60-80 s with 2); the setting is restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def cache(tiny_cache):
    """The fits' ``--cache`` in the trainer's tests: the session's cache of the tiny set's
    features and epochs (tests/conftest.py).  (It stands in for pytest's own ``cache``
    fixture here, which no test of the trainer uses.)"""
    return tiny_cache


@pytest.fixture
def edited_bundle(tmp_path):
    """edited_bundle(bundle, edit): a copy of the bundle folder whose bundle.json ``edit``
    (a function of the parsed JSON) has changed (its SHA-256s cover the other files only)."""
    import json
    import shutil

    def make(bundle, edit):
        out = tmp_path / f"edited-{len(list(tmp_path.glob('edited-*')))}"
        shutil.copytree(bundle, out)
        config = json.loads((out / "bundle.json").read_text())
        edit(config)
        (out / "bundle.json").write_text(json.dumps(config))
        return out

    return make
