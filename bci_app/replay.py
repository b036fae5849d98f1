"""``bci-replay``: a recorded session played as LSL streams (EEG + markers).

The signal goes out through mne-lsl's :class:`~mne_lsl.player.PlayerLSL` (its real-time
pacing, chunking and looping).  The markers go out on a second outlet,
``{name}-markers`` (type ``Markers``, irregular rate), one sample per stimulus, either the
integer code (``int32``, the usual trigger value) or the text label (``string``, as
PsychoPy/LabRecorder setups send).

Each marker carries the LSL timestamp of its own sample, the same timestamp the EEG
outlet gives that sample, so a receiver finds the exact onset sample.  (PlayerLSL's own
annotation outlet stamps an annotation with the time of the sample before it; we push the
markers ourselves from the player's chunk loop instead.)
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Literal

import numpy as np
from mne_lsl.lsl import StreamInfo, StreamOutlet
from mne_lsl.player import PlayerLSL

from .sessions import ReplaySession

__all__ = ["SessionPlayer", "MARKER_STREAM_SUFFIX"]

logger = logging.getLogger("bci_app")

MARKER_STREAM_SUFFIX = "-markers"


class SessionPlayer(PlayerLSL):
    """Streams a :class:`~bci_app.sessions.ReplaySession` (signal + markers) over LSL.

    Parameters
    ----------
    session : ReplaySession
    name : str
        EEG stream name; the marker stream is ``name + "-markers"``.
    chunk_size : int
        Samples per pushed chunk (10 at 1000 Hz: a chunk every 10 ms).
    loop : bool
        Start again at the end (markers repeat with the data).
    markers : 'numeric' | 'string' | 'none'
    source_id : str | None
        LSL source id of the EEG stream (default: unique per player); the marker stream
        gets ``source_id + "-markers"``.
    """

    def __init__(self, session: ReplaySession, *, name: str = "bci-replay", chunk_size: int = 10, loop: bool = False,
                 markers: Literal["numeric", "string", "none"] = "numeric", source_id: str | None = None):
        if markers not in ("numeric", "string", "none"):
            raise ValueError(f"markers must be 'numeric', 'string' or 'none', got {markers!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if session.raw.n_times <= chunk_size:
            raise ValueError(f"{session.source}: only {session.raw.n_times} samples, fewer than one chunk")
        source_id = source_id or f"bci-replay-{uuid.uuid4().hex[:12]}"
        super().__init__(session.raw, chunk_size=chunk_size, n_repeat=np.inf if loop else 1, name=name,
                         source_id=source_id, annotations=False)
        self.session = session
        self.marker_mode = markers
        chosen = session.numeric_markers() if markers == "numeric" else session.markers if markers == "string" else []
        self._marker_samples = np.array([m.sample for m in chosen], dtype=np.int64)
        if markers == "numeric":
            self._marker_values: list = [int(m.code) for m in chosen]
        else:
            self._marker_values = [m.label for m in chosen]
        self._marker_info = None
        if markers != "none":
            self._marker_info = StreamInfo(name=f"{name}{MARKER_STREAM_SUFFIX}", stype="Markers", n_channels=1,
                                           sfreq=0.0, dtype="int32" if markers == "numeric" else "string",
                                           source_id=f"{source_id}{MARKER_STREAM_SUFFIX}")
            self._marker_info.set_channel_names(["marker"])
        self._marker_outlet: StreamOutlet | None = None
        self.markers_sent = 0

    @property
    def marker_stream_name(self) -> str | None:
        return None if self._marker_info is None else self._marker_info.name

    def start(self) -> "SessionPlayer":
        if self._marker_info is not None:
            self._marker_outlet = StreamOutlet(self._marker_info, 1)
        self.markers_sent = 0
        return super().start()

    def _del_outlets(self) -> None:
        super()._del_outlets()
        outlet, self._marker_outlet = self._marker_outlet, None
        if outlet is not None:
            try:
                outlet._del()
            except Exception:  # pragma: no cover - liblsl teardown
                pass

    # called by PlayerLSL._stream after each chunk is pushed, with the chunk's sample
    # range and the timestamp of the sample before it
    def _stream_annotations(self, start: int, stop: int, start_timestamp: float) -> None:
        outlet = self._marker_outlet
        if outlet is None or not len(self._marker_samples):
            return
        n = self._raw.times.size
        s = self._marker_samples
        if start < stop:
            idx = np.flatnonzero((s >= start) & (s < stop))
            offsets = s[idx] - start
        else:  # the chunk wraps around the end of the file (loop)
            a, b = np.flatnonzero(s >= start), np.flatnonzero(s < stop)
            idx = np.concatenate([a, b])
            offsets = np.concatenate([s[a] - start, s[b] + (n - start)])
        sfreq = self._raw.info["sfreq"]
        for i, off in zip(idx, offsets):
            value = self._marker_values[i]
            sample = [value] if self.marker_mode == "string" else np.array([value], dtype=np.int32)
            try:
                # sample k of the chunk carries start_timestamp + (k + 1) / sfreq on the EEG outlet
                outlet.push_sample(sample, timestamp=start_timestamp + (off + 1) / sfreq)
                self.markers_sent += 1
            except Exception as err:  # a marker problem must not stop the EEG stream
                logger.error("%s: marker %r not sent (%s)", self.marker_stream_name, value, err)

    def wait(self, poll: float = 0.05) -> None:
        """Block until the player has streamed everything (never with ``loop``)."""
        while self.running:
            time.sleep(poll)
