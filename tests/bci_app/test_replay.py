"""bci-replay's player (:mod:`bci_app.replay`): the mne-lsl hooks it relies on, and errors
that must end the command with a message and a non-zero exit."""

from __future__ import annotations

import inspect

import mne
import numpy as np
import pytest
from mne_lsl.player import PlayerLSL

from bci_app.cli import replay_main
from bci_app.replay import ReplayError, SessionPlayer
from bci_app.sessions import Marker, ReplaySession, read_session
from trainer.errors import DataFormatError


def test_the_private_player_hooks_we_override_are_still_there():
    """SessionPlayer overrides PlayerLSL._stream_annotations (called after each pushed
    chunk) and _del_outlets, and reads _raw and _end_streaming: pyproject pins mne-lsl to
    the versions where they behave as used here; this fails when a new version moves them."""
    params = list(inspect.signature(PlayerLSL._stream_annotations).parameters)
    assert params == ["self", "start", "stop", "start_timestamp"]
    stream_source = inspect.getsource(PlayerLSL._stream)
    assert "self._stream_annotations(start, stop, start_timestamp)" in stream_source
    assert "self._end_streaming = True" in stream_source
    assert "start_timestamp = self._target_timestamp" in stream_source  # the stamp of the sample before the chunk
    assert hasattr(PlayerLSL, "_del_outlets") and "self._n_repeat" in inspect.getsource(inspect.getmodule(PlayerLSL).BasePlayer.__init__)
    assert "self._end_streaming = False" in inspect.getsource(inspect.getmodule(PlayerLSL).BasePlayer._reset_variables)
    # and the private pieces of mne-lsl's LSL objects used: an outlet's _del (as PlayerLSL
    # itself uses it)
    from mne_lsl.lsl import StreamOutlet

    assert callable(getattr(StreamOutlet, "_del", None))


def _session(n=3000, codes=(5, 6, 7), sfreq=500.0):
    info = mne.create_info(["Fz", "Cz"], sfreq, "eeg")
    raw = mne.io.RawArray(np.random.default_rng(0).normal(size=(2, n)) * 1e-5, info, verbose="error")
    markers = [Marker(400 + 600 * i, c, str(c)) for i, c in enumerate(codes)]
    return ReplaySession(raw=raw, markers=markers, source="test session")


def test_codes_that_do_not_fit_an_int32_marker_are_refused_when_the_session_is_read(tmp_path):
    info = mne.create_info(["Fz", "Cz", "STI"], 250.0, ["eeg", "eeg", "stim"])
    data = np.zeros((3, 1000))
    data[2, 100:105] = 3e9  # a stim code no LSL int32 marker can carry (exact in float32)
    path = tmp_path / "big-raw.fif"
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")
    with pytest.raises(DataFormatError, match=r"3000000000 .*int32") as err:
        read_session(path)
    assert str(path) in str(err.value)
    assert replay_main([str(path), "--name", "never-started"]) == 2


def test_an_error_while_streaming_ends_the_replay_with_an_error(stream_name, monkeypatch):
    """A marker that cannot be sent stops the player part way: wait() raises (the old
    player printed 'done' and exited 0 with half the session unplayed)."""
    from mne_lsl.lsl import StreamOutlet

    sent = []
    original = StreamOutlet.push_sample

    def failing(self, x, timestamp=0.0, pushThrough=True):
        if len(sent) == 1:
            raise RuntimeError("liblsl refused the sample")
        sent.append(x)
        return original(self, x, timestamp=timestamp, pushThrough=pushThrough)

    monkeypatch.setattr(StreamOutlet, "push_sample", failing)
    player = SessionPlayer(_session(), name=stream_name, chunk_size=50, source_id=f"{stream_name}-src")
    player.start()
    with pytest.raises(ReplayError, match=r"stopped at sample \d+ of 3000.*liblsl refused the sample"):
        player.wait()
    assert not player.completed and player.markers_sent == 1


@pytest.mark.filterwarnings("ignore:.*End of file reached with an empty chunk")  # mne-lsl's, harmless
@pytest.mark.parametrize("n", [600, 625])  # a multiple of the chunk size, and not
def test_a_replay_played_to_the_end_completes(stream_name, n):
    player = SessionPlayer(_session(n=n, codes=(5,)), name=stream_name, chunk_size=50,
                           source_id=f"{stream_name}-src")
    player.start()
    player.wait()
    assert player.completed and player.markers_sent == 1
