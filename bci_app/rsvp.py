"""The RSVP run, frame by frame, and the marker outlet it stamps (no Qt here).

The presenter window drives :class:`RsvpRun` from its display loop: before drawing a
frame it asks :meth:`RsvpRun.frame` what the frame shows; once the frame is on screen it
calls :meth:`RsvpRun.flipped` with the flip's LSL time.  A frame that begins an image
sends that image's marker **stamped with the flip time** (not the time the code ran) and
logs the onset (:class:`~bci_app.presentation.TimingLog`).  Onsets are counted in
frames: image ``k`` of a sequence is due ``k * soa_frames`` flips after the first, so a
frame the display drops delays the rest of that sequence, and the log shows by how much.

Between sequences the run waits: for :meth:`RsvpRun.proceed` (the participant's key) or,
with ``auto_pause``, that many seconds.  While :attr:`RsvpRun.hold` names a reason (the
presenter sets it while no program receives the markers), the next sequence does not
start at all and the reason is the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .presentation import TimingLog
from .stimuli import FrameTiming, Stimulus, Trial
from .streams import marker_sample, marker_stream_info

__all__ = ["Frame", "MarkerSender", "RsvpRun"]


@dataclass(frozen=True)
class Frame:
    """What one frame shows: an image (or none: blank), the fixation dot, the photodiode
    square's state, and a prompt between sequences."""

    image: Stimulus | None
    fixation: bool = True
    photodiode: bool = False
    prompt: str | None = None


class RsvpRun:
    """A run of sequences (see the module docstring).

    Parameters
    ----------
    sequences : list of list of Trial
        From :func:`~bci_app.stimuli.make_sequences`.
    timing : FrameTiming
        Image and blank durations in frames.
    send : callable(trial, flip_time)
        Sends a trial's marker stamped ``flip_time`` (:class:`MarkerSender`).
    log : TimingLog
    auto_pause : float | None
        Seconds between sequences before the next starts by itself; None: wait for
        :meth:`proceed`.
    """

    def __init__(self, sequences: list[list[Trial]], timing: FrameTiming, send: Callable[[Trial, float], None],
                 log: TimingLog, *, auto_pause: float | None = None):
        self.sequences, self.timing, self.send, self.log = sequences, timing, send, log
        self.auto_pause = auto_pause
        self.state = "waiting"  # waiting | running | paused | done | aborted
        self.sequence = 0  # the sequence running, or the next one
        self._frame = 0  # flips since the sequence's first onset
        self._pending: Frame | None = None  # the frame handed out, not yet flipped
        self._pending_trial: Trial | None = None
        self._waiting_since: float | None = None
        self._photodiode = False
        self._pause_after = False
        self.shown = 0  # images shown so far
        self.hold: str | None = None  # while set, no sequence starts (the reason is shown)

    @property
    def total(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "aborted")

    def seconds_left(self, pause_s: float) -> float:
        """The time the run still needs: the images not yet shown, and ``pause_s`` for
        each pause between sequences still to come."""
        if self.finished:
            return 0.0
        pauses = len(self.sequences) - self.sequence - (self.state == "running")
        return (self.total - self.shown) * self.timing.soa_frames * self.timing.frame + pauses * pause_s

    def proceed(self) -> None:
        """Start the next sequence at the next frame (the participant's key); not while
        :attr:`hold` is set."""
        if self.state == "waiting" and self.hold is None:
            self.state = "running"
            self._frame = 0

    def pause(self) -> None:
        """Pause between sequences: at once when waiting, else once the running sequence
        ends (a sequence is never cut)."""
        if self.state == "waiting":
            self.state = "paused"
        elif self.state == "running":
            self._pause_after = True

    def resume(self) -> None:
        self._pause_after = False
        if self.state == "paused":
            self.state = "waiting"
            self._waiting_since = None

    def abort(self) -> None:
        """Stop now; the log keeps what was shown."""
        if not self.finished:
            self.state = "aborted"
            self.log.aborted = True

    def frame(self, now: float) -> Frame:
        """What the next frame shows (``now``: the LSL time, for the automatic pause)."""
        if self.state == "waiting" and self.hold is not None:
            self._waiting_since = None  # the pause counts from the end of the hold
        elif self.state == "waiting" and self.auto_pause is not None:
            if self._waiting_since is None:
                self._waiting_since = now
            if now - self._waiting_since >= self.auto_pause:
                self.proceed()
        if self.state != "running":
            prompt = None
            if self.state == "waiting" and self.hold is not None:
                prompt = self.hold
            elif self.state == "waiting":
                prompt = (f"sequence {self.sequence + 1} of {len(self.sequences)}"
                          + ("" if self.auto_pause is not None else ": press a key to start"))
            elif self.state == "paused":
                prompt = "paused"
            self._pending, self._pending_trial = Frame(None, photodiode=self._photodiode, prompt=prompt), None
            return self._pending
        trials = self.sequences[self.sequence]
        k, phase = divmod(self._frame, self.timing.soa_frames)
        image, trial = None, None
        if k < len(trials) and phase < self.timing.on_frames:
            trial = trials[k]
            image = trial.stimulus
            if phase == 0:
                self._photodiode = not self._photodiode
        self._pending = Frame(image, photodiode=self._photodiode)
        self._pending_trial = trial if phase == 0 else None
        return self._pending

    def flipped(self, flip_time: float) -> None:
        """The frame last handed out is on screen since ``flip_time`` (LSL time)."""
        if self._pending is None:
            return
        trial, self._pending, self._pending_trial = self._pending_trial, None, None
        if trial is not None:
            self.send(trial, flip_time)
            self.log.add(trial, flip_time)
            self.shown += 1
        if self.state != "running":
            return
        self._frame += 1
        if self._frame >= len(self.sequences[self.sequence]) * self.timing.soa_frames:  # its last blank is over
            self.sequence += 1
            self._waiting_since = None
            if self.sequence >= len(self.sequences):
                self.state = "done"
            else:
                self.state = "paused" if self._pause_after else "waiting"


class MarkerSender:
    """An LSL marker outlet for the presenter: ``int32`` codes (the THINGS image numbers,
    gallery ids; catch 99999) or, with ``labels``, ``concept/file`` strings (``catch``).
    Each marker is stamped with the flip time it is given.  ``image_set`` (``'test'`` or
    ``'training'``), when the images are a data folder's, is announced in the stream's
    description: the part of the data set the numbers count in."""

    def __init__(self, name: str, *, labels: bool = False, source_id: str | None = None, image_set: str | None = None):
        from mne_lsl.lsl import StreamOutlet

        self.name, self.labels = name, labels
        self.outlet = StreamOutlet(marker_stream_info(name, source_id or f"{name}-presenter", strings=labels,
                                                      image_set=image_set))

    def __call__(self, trial: Trial, flip_time: float) -> None:
        value = trial.label if self.labels else trial.code
        self.outlet.push_sample(marker_sample(value, strings=self.labels), timestamp=float(flip_time))

    def has_consumers(self) -> bool:
        """Whether a program (a recorder, the decoder) receives the markers now."""
        return bool(self.outlet.has_consumers)

    def wait_for_consumers(self, timeout: float) -> bool:
        return bool(self.outlet.wait_for_consumers(timeout=timeout))

    def close(self) -> None:
        outlet, self.outlet = self.outlet, None
        del outlet
