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
from mne_lsl.lsl import StreamOutlet
from mne_lsl.player import PlayerLSL

from trainer.errors import BCIError, UsageError

from .replay_session import ReplaySession
from .streams import marker_sample, marker_stream_info

__all__ = ["MARKER_STREAM_SUFFIX", "ReplayError", "SessionPlayer"]

logger = logging.getLogger("bci_app")

MARKER_STREAM_SUFFIX = "-markers"


class ReplayError(BCIError, RuntimeError):
    """The replay stopped before the end of the session."""


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
            raise UsageError(f"markers must be 'numeric', 'string' or 'none', got {markers!r}")
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise UsageError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        if session.raw.n_times <= chunk_size:
            raise UsageError(f"{session.source}: only {session.raw.n_times} samples, fewer than one chunk")
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
            self._marker_info = marker_stream_info(f"{name}{MARKER_STREAM_SUFFIX}", f"{source_id}{MARKER_STREAM_SUFFIX}",
                                                   strings=markers == "string")
        self._marker_outlet: StreamOutlet | None = None
        self.markers_sent = 0
        self.error: BaseException | None = None  # what stopped the player early
        self.completed = False  # the last chunk was pushed
        self.pushed = 0  # samples pushed (in this pass through the file)
        self._stop_requested = False

    @property
    def marker_count(self) -> int:
        """Markers sent per pass through the session."""
        return len(self._marker_samples)

    @property
    def marker_stream_name(self) -> str | None:
        return None if self._marker_info is None else self._marker_info.name

    def start(self) -> "SessionPlayer":
        if self._marker_info is not None:
            self._marker_outlet = StreamOutlet(self._marker_info, 1)
        self.markers_sent, self.error, self.completed, self.pushed = 0, None, False, 0
        self._stop_requested = False
        return super().start()

    def stop(self) -> "SessionPlayer":
        self._stop_requested = True
        return super().stop()

    def _del_outlets(self) -> None:
        super()._del_outlets()
        outlet, self._marker_outlet = self._marker_outlet, None
        if outlet is not None:
            try:
                outlet._del()
            except Exception:  # pragma: no cover - liblsl teardown
                pass

    # called by PlayerLSL._stream after each chunk is pushed, with the chunk's sample
    # range and the timestamp of the sample before it; an exception here stops the player
    # (PlayerLSL logs it), so it is kept for wait() to report
    def _stream_annotations(self, start: int, stop: int, start_timestamp: float) -> None:
        try:
            self._push_markers(start, stop, start_timestamp)
        except BaseException as err:
            self.error = err
            raise
        self.pushed = stop
        # the end: PlayerLSL's last call may push nothing (when the session is a multiple of
        # the chunk size) and never come here, so the last sample pushed is the sign
        if self._end_streaming or (self._n_repeat == 1 and stop == self._raw.times.size):
            self.completed = True

    def _push_markers(self, start: int, stop: int, start_timestamp: float) -> None:
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
            sample = marker_sample(value, strings=self.marker_mode == "string")
            try:
                # sample k of the chunk carries start_timestamp + (k + 1) / sfreq on the EEG outlet
                outlet.push_sample(sample, timestamp=start_timestamp + (off + 1) / sfreq)
                self.markers_sent += 1
            except Exception as err:  # the markers are half of the session: stop, and say so
                raise ReplayError(f"{self.marker_stream_name}: marker {value!r} not sent ({err})") from err

    def wait(self, poll: float = 0.05) -> None:
        """Block until the player has streamed everything (never with ``loop``).  Raises
        :class:`ReplayError` when it stopped early (an error while streaming) rather than
        at the end or on :meth:`stop`."""
        while self.running:
            time.sleep(poll)
        if not self.completed and not self._stop_requested:
            why = f"{type(self.error).__name__}: {self.error}" if self.error is not None else "see the log above"
            raise ReplayError(f"{self.session.source}: the replay stopped at sample {self.pushed} of "
                              f"{self._raw.n_times} ({why})")
