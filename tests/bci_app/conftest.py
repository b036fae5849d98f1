"""Fixtures for the live side: a small fitted bundle and players with unique stream names."""

from __future__ import annotations

import time
import uuid

import pytest


@pytest.fixture(scope="session")
def tiny_bundle(tiny_dataset, tmp_path_factory):
    """A bundle fitted on subject 1 of the tiny set (random resnet10t, a few epochs)."""
    from trainer.fit import FitConfig, fit

    root = tmp_path_factory.mktemp("bundle")
    fit(FitConfig(data=str(tiny_dataset), subject=1, out=str(root / "run"), backbone="resnet10t", weights="random",
                  layers="1", epochs=3, batch_size=128, proj_dim=32, embed_dim=64, cache=str(root / "cache"),
                  device="cpu"))
    return root / "run"


@pytest.fixture(scope="session")
def lead_session(tiny_dataset):
    """The tiny set's first raw test session (subject 1) with 4 s of its own first samples
    played before it, so the live side has connected before the first marker (epochs are
    cut from windows around markers: what comes before them changes nothing).  Shared:
    tests copy ``raw`` before changing it."""
    import mne

    from bci_app.sessions import Marker, ReplaySession, read_session

    base = read_session(tiny_dataset / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy")
    n = int(4.0 * base.sfreq)
    head = mne.io.RawArray(base.raw.get_data(stop=n), base.raw.info, verbose="error")
    raw = mne.concatenate_raws([head, base.raw.copy()], verbose="error")
    return ReplaySession(raw=raw, markers=[Marker(m.sample + n, m.code, m.label) for m in base.markers],
                         source=base.source)


@pytest.fixture
def stream_name(request):
    """A stream name no other test uses."""
    return f"test-{request.node.name[:30]}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def play(stream_name):
    """play(session, **kw) starts a SessionPlayer named after the test (stopped at teardown)."""
    from bci_app.replay import SessionPlayer

    players = []

    def start(session, name=None, **kwargs):
        name = name or stream_name
        kwargs.setdefault("source_id", f"{name}-src")
        player = SessionPlayer(session, name=name, **kwargs)
        player.start()
        players.append(player)
        return player

    yield start
    for p in players:
        if p.running:
            p.stop()


@pytest.fixture
def run_until():
    """run_until(live, n_epochs, timeout) steps a LiveSession until n epochs are decoded;
    returns (records, ready epochs)."""

    def run(live, n_epochs, timeout=60.0):
        records, epochs = [], []
        deadline = time.monotonic() + timeout
        while len(records) < n_epochs and time.monotonic() < deadline:
            out = live.step()
            records += out
            epochs += live.last_epochs if out else []
            time.sleep(0.002)
        return records, epochs

    return run
