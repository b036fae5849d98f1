"""``bci-replay --simulate``: a simulated participant, over LSL.

A subject of a synthetic data set (or a new person of its population; see
:mod:`trainer.synth.live`) watches the images a presenter shows: this module reads the
presenter's marker stream, adds the subject's response to each image to the subject's
continuous EEG, and streams that EEG on an LSL outlet like an amplifier would:

- the THINGS 63-channel cap at the set's rate (1000 Hz), ``float32`` volts, described
  with channel labels, type ``EEG``, unit ``volts`` and the electrode positions;
- sample ``i`` stamped ``t0 + i / sfreq`` (``t0``: the LSL clock when streaming began) and
  pushed, in chunks of ``chunk_size``, once the wall clock has passed the time of the
  chunk's last sample by ``latency`` (50 ms by default, less than many amplifiers' own
  buffering), never before; it streams from the start, as an amplifier does, and
  looks for the marker stream meanwhile (an error when it has not appeared in ``timeout``
  seconds); it stops once the marker stream has been gone for ``marker_timeout`` seconds;
- a marker stamped ``t`` adds the response from sample ``round((t + delay - t0) * sfreq)``
  on.  Markers are read before each push, so a marker that arrives less than ``delay +
  latency`` after its time is on time; one that arrives after its onset sample went out
  gets the rest of its response, and is counted late (with one warning).

**The delay.**  In the data set the trigger comes ``trigger_delay`` (11 ms) *after* the
image appears, and its epochs are cut at the trigger: a response starts 11 ms before the
epoch's zero.  By default the simulator takes each marker as that trigger: ``delay =
-trigger_delay``, a response starts 11 ms *before* its marker, and epochs cut at the
markers are exactly the data set's (which is why samples are held back by ``latency``:
the marker has to arrive before its response's onset goes out).  A simulated session is
then the same experiment as the data set, and a model trained on the set decodes it as it
decodes the set's test data.  ``delay=0`` takes a marker as the moment the image is seen
(a presenter's flip time, with a display that adds no lag), ``delay=+0.011`` as a trigger
sent 11 ms before the image is seen.  Each shifts the responses against the data set's
epochs (by 11 and 22 ms): epochs recorded with ``+0.011`` correlate only about 0.6 with
the set's epochs of the same image (noise-free), and the test's small ``tiny`` bundle,
at 0.107 single-trial top-1 on the set's epochs, falls to 0.050 (chance) on them.

Markers: ``int32`` (or any number) codes are 1-based image numbers in one part of the
set (the test images unless ``image_set`` says otherwise: the option, or an
``image_set`` entry in the marker stream's description); strings are ``concept/file``
labels, looked up in both parts (numbers as strings count as codes).  A catch trial
(code 99999, label ``catch``) gets the common visual ERP and no image response, as the
set's recordings do.  Anything else is counted as unknown and logged once.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from trainer.data.things_eeg2 import CATCH_CODE
from trainer.errors import UsageError
from trainer.synth.live import ContinuousSignal, SimulatedSubject

from .streams import resolve_one

if TYPE_CHECKING:
    from .stimuli import FrameTiming, Trial

__all__ = ["DEFAULT_LATENCY", "IMAGE_SETS", "SimulationStats", "Simulator", "eeg_stream_info", "marker_target",
           "presentation_times", "record_simulated_session"]

logger = logging.getLogger("bci_app")

#: names of the image parts a marker stream may announce, and the part each means
IMAGE_SETS = {"test": "test", "train": "training", "training": "training"}
#: seconds samples are held back after their time by default (see the module docstring)
DEFAULT_LATENCY = 0.05
#: distinct unknown marker values logged (the rest are counted only)
_UNKNOWN_LOGGED = 5


@dataclass
class SimulationStats:
    """What a simulation did (``markers`` counts every marker read)."""

    markers: int = 0
    responses: int = 0  # image responses added, whole or in part (catch trials not included)
    catch: int = 0
    late: int = 0  # markers that came after their onset sample had gone out
    unknown: int = 0
    samples: int = 0  # samples pushed
    max_late_ms: float = 0.0
    unknown_values: dict = field(default_factory=dict)

    def describe(self) -> str:
        late = f", {self.late} late (by up to {self.max_late_ms:.0f} ms)" if self.late else ", 0 late"
        return (f"{self.markers} markers, {self.responses} responses added{late}, {self.catch} catch, "
                f"{self.unknown} unknown; {self.samples} samples streamed")


def _plain(value: Any) -> Any:
    """A marker as a plain Python value (an inlet gives a numeric stream's sample as an
    array of one value)."""
    if isinstance(value, (np.ndarray, list, tuple)) and len(value) == 1:
        value = value[0]
    return value.item() if isinstance(value, np.generic) else value


def marker_target(value: Any, subject: SimulatedSubject, part: str) -> tuple[str, int] | str | None:
    """What marker ``value`` shows: ``(part, index)`` of an image, ``'catch'``, or None
    (unknown).  Numbers (and strings of digits) are 1-based image numbers in ``part``."""
    value = _plain(value)
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        if text.lower() == "catch":
            return "catch"
        if not text.isdigit():
            return subject.find(text)
        value = int(text)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if not math.isfinite(value) or value != int(value):
        return None
    code = int(value)
    if code == CATCH_CODE:
        return "catch"
    if 1 <= code <= subject.n_images(part):
        return part, code - 1
    return None


def eeg_stream_info(name: str, source_id: str, ch_names: list[str], sfreq: float):
    """The EEG outlet's description: labels, type EEG, unit volts, electrode positions
    (MNE's 10-05 positions, as the simulated brain places its sensors, where it has them)."""
    import warnings

    import mne
    from mne_lsl.lsl import StreamInfo

    info = mne.create_info(list(ch_names), sfreq, "eeg")
    montage = None
    for kind in ("colin27_1005", "standard_1005"):  # newer MNE names the second the first way
        try:
            montage = mne.channels.make_standard_montage(kind)
            break
        except ValueError:
            continue
    if montage is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a montage without some channels: those get no position
            info.set_montage(montage, on_missing="ignore")
    sinfo = StreamInfo(name, "EEG", len(ch_names), float(sfreq), "float32", source_id)
    sinfo.set_channel_info(info)
    sinfo.set_channel_units("volts")
    return sinfo


class _MarkerInlet:
    """The subscription to the marker stream: one plain inlet (numbers or strings), clock
    corrected, that also reads the stream's description (its ``image_set``).

    Not mne-lsl's event stream (:class:`~bci_app.streams.NumericMarkers`), which polls every
    millisecond: that alone took 20 % of a core here.  One inlet only, subscribed as late as
    possible: a presenter may start as soon as it sees a consumer, so the first clock
    correction (0.6 s) comes before the subscription, and the subscription is the first
    pull, not ``open_stream`` (mne-lsl sleeps 0.5 s after it): markers are read from a few
    milliseconds after the presenter can see us on."""

    def __init__(self, sinfo, *, timeout: float):
        from mne_lsl.lsl import StreamInlet

        self.name = sinfo.name
        self._inlet = StreamInlet(sinfo, max_buffered=360, processing_flags=("clocksync",))
        self._inlet.time_correction(timeout=timeout)
        self._early = self._pull()  # subscribes
        try:  # the full description (an inlet that pulled is open)
            announced = self._inlet.get_sinfo(timeout=timeout).desc.child_value("image_set")
        except Exception as err:  # none: the default applies
            logger.debug("description of %r: %s", self.name, err)
            announced = ""
        self.image_set = announced.strip() or None

    def _pull(self) -> list[tuple[float, Any]]:
        data, ts = self._inlet.pull_chunk(timeout=0.0)
        if not len(ts):
            return []
        values = data[:, 0].tolist() if isinstance(data, np.ndarray) else [row[0] for row in data]
        return list(zip(np.asarray(ts, dtype=float).tolist(), values))

    def poll(self) -> list[tuple[float, Any]]:
        """The markers received since the last call: (LSL time, value)."""
        if self._inlet is None:
            return []
        early, self._early = self._early, []
        return early + self._pull()

    def close(self) -> None:
        inlet, self._inlet = self._inlet, None
        if inlet is not None:
            try:
                inlet.close_stream()
            except Exception as err:  # pragma: no cover - liblsl teardown
                logger.debug("marker inlet: %s", err)


class Simulator:
    """The simulated participant's LSL side: see the module docstring.

    Parameters
    ----------
    subject : SimulatedSubject
    name : str
        EEG stream name.
    markers : str
        Name of the marker stream to answer.
    source_id : str | None
        The EEG stream's source id (default: unique per run).
    image_set : 'test' | 'train' | 'training' | None
        The part numeric markers count in; None: what the marker stream announces, else test.
    chunk_size : int
        Samples per push.
    noise : bool
        False: the evoked responses alone.
    seed : int
        Seed of the noise and of the per-trial gains.
    delay : float | None
        Seconds from a marker's time to the onset of its response (default: minus the
        set's trigger delay, see the module docstring); below 0 only with a larger
        ``latency``.
    latency : float
        Seconds each chunk is held back after its last sample's time before it is pushed
        (default 0.05).
    marker_timeout : float
        Stop once the marker stream has been gone this long.
    timeout : float
        Seconds to wait for the marker stream at the start.
    """

    def __init__(self, subject: SimulatedSubject, *, name: str, markers: str, source_id: str | None = None,
                 image_set: str | None = None, chunk_size: int = 10, noise: bool = True, seed: int = 0,
                 delay: float | None = None, latency: float = DEFAULT_LATENCY, marker_timeout: float = 5.0,
                 timeout: float = 10.0):
        if image_set is not None and image_set not in IMAGE_SETS:
            raise UsageError(f"image_set must be one of {', '.join(IMAGE_SETS)}, got {image_set!r}")
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise UsageError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
        for label, value in (("marker_timeout", marker_timeout), ("timeout", timeout)):
            if not value > 0:
                raise UsageError(f"{label} must be > 0, got {value}")
        delay = -subject.config.trigger_delay if delay is None else float(delay)
        latency = float(latency)
        if not (math.isfinite(latency) and latency >= 0):
            raise UsageError(f"latency must be >= 0 seconds, got {latency}")
        if not (math.isfinite(delay) and delay + latency >= 0.005):
            raise UsageError(f"delay + latency must be at least 0.005 s (time for a marker to arrive before its "
                             f"response's onset goes out), got {delay:g} + {latency:g} s")
        self.subject = subject
        self.name, self.marker_name = name, markers
        self.source_id = source_id or f"bci-simulate-{uuid.uuid4().hex[:12]}"
        self.image_set = image_set
        self.part = IMAGE_SETS[image_set] if image_set else "test"
        self.chunk_size = chunk_size
        self.delay, self.latency = delay, latency
        self.marker_timeout, self.timeout = float(marker_timeout), float(timeout)
        self.signal: ContinuousSignal = subject.signal(noise=noise, seed=seed)
        self.sfreq = self.signal.sfreq
        self.delay_samples = delay * self.sfreq
        self.stats = SimulationStats()
        self.t0: float | None = None
        self.stopped_because: str | None = None
        self.connected = threading.Event()  # set once markers sent are certainly received
        self._outlet = None
        self._markers = None
        self._failure: BaseException | None = None  # why the marker stream could not be subscribed to
        self._last_seen = 0.0  # LSL clock when the marker stream was last found on the network
        self._stop_threads = threading.Event()
        self._threads: list[threading.Thread] = []

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> "Simulator":
        """Open the EEG outlet (streaming begins with :meth:`run`, as an amplifier's does,
        whether a presenter is there or not) and look for the marker stream in the
        background; :meth:`run` raises a :class:`~bci_app.streams.StreamError` when it has
        not appeared within ``timeout`` seconds."""
        from mne_lsl.lsl import StreamOutlet, local_clock

        self.signal.prepare(self.chunk_size)  # the first noise block (the thread below makes the next ones)
        info = eeg_stream_info(self.name, self.source_id, list(self.subject.model.ch_names), self.sfreq)
        self._outlet = StreamOutlet(info, self.chunk_size)
        self._threads = [threading.Thread(target=self._connect, name=f"markers-{self.marker_name}", daemon=True)]
        if self.signal.noise:
            self._threads.append(threading.Thread(target=self._prefetch, name=f"noise-{self.name}", daemon=True))
        for thread in self._threads:
            thread.start()
        self.t0 = local_clock()
        return self

    def close(self) -> None:
        """Stop looking and watching, unsubscribe, and take the EEG outlet off the network."""
        self._stop_threads.set()
        for thread in self._threads:
            thread.join(5.0)
        markers, self._markers = self._markers, None
        if markers is not None:
            markers.close()
        outlet, self._outlet = self._outlet, None
        if outlet is not None:
            try:
                outlet._del()  # off the network now (as PlayerLSL does it)
            except Exception as err:  # pragma: no cover - liblsl teardown
                logger.debug("outlet: %s", err)

    def _connect(self) -> None:
        """Find the marker stream and subscribe (its image set first, when it announces
        one); then look it up four times a second, so that :meth:`run` sees it go (a
        look-up that finds nothing takes its whole timeout: not on the pushing thread)."""
        from mne_lsl.lsl import local_clock, resolve_streams

        try:
            sinfo = resolve_one(self.marker_name, timeout=self.timeout, markers=True, cancel=self._stop_threads.is_set)
            markers = _MarkerInlet(sinfo, timeout=self.timeout)
        except BaseException as err:  # run() raises it
            self._failure = err
            return
        announced = markers.image_set
        if self.image_set is None and announced is not None:
            if announced in IMAGE_SETS:
                self.part = IMAGE_SETS[announced]
            else:
                logger.warning("marker stream %r announces image_set %r, which is none of %s: its numbers count in "
                               "the test images", self.marker_name, announced, ", ".join(IMAGE_SETS))
        source_id = sinfo.source_id or None
        dtype = sinfo.dtype if isinstance(sinfo.dtype, str) else np.dtype(sinfo.dtype).name
        logger.info("marker stream %r (%s) found: numbers count in the %s images", self.marker_name, dtype, self.part)
        self._last_seen = local_clock()
        self._markers = markers  # read from now on
        # liblsl subscribes in the background (what mne-lsl's open_stream sleeps 0.5 s for):
        # after that, markers sent are certainly received
        subscribed = local_clock() + 0.5
        while not self._stop_threads.wait(0.25):
            try:  # found: at once; not found: after the whole timeout
                found = resolve_streams(timeout=0.5, name=self.marker_name, source_id=source_id)
            except Exception as err:  # the network in flux: try again
                logger.debug("marker stream look-up: %s", err)
                found = []
            if found:
                self._last_seen = local_clock()
            if not self.connected.is_set() and local_clock() >= subscribed:
                self.connected.set()

    def _prefetch(self) -> None:
        """Make the next noise block's slow part ahead, on this thread: made by the pushing
        loop, it held the pushes up by 60-90 ms every block (with it: 10 ms at most)."""
        while not self._stop_threads.wait(0.1):
            try:
                self.signal.prefetch(self.signal.blocks_made)
            except Exception as err:  # pragma: no cover - the pushing loop makes the block itself then
                logger.debug("noise ahead: %s", err)
                return

    # -- streaming -------------------------------------------------------------------------
    def run(self, stop: threading.Event | None = None) -> str:
        """Stream until ``stop`` is set or the marker stream has been gone for
        ``marker_timeout`` seconds; returns why it stopped (Ctrl-C raises
        ``KeyboardInterrupt`` as usual: the counts so far are in :attr:`stats`)."""
        from mne_lsl.lsl import local_clock

        if self.t0 is None or self._outlet is None:
            raise RuntimeError("Simulator.run: call start() first")
        chunk, sfreq, t0 = self.chunk_size, self.sfreq, self.t0
        stop = stop or threading.Event()
        while not stop.is_set():
            now = local_clock()
            due = int(math.floor((now - self.latency - t0) * sfreq)) + 1  # samples whose time has come
            target = due - due % chunk  # whole chunks
            self.signal.prepare(target)  # in case the block was not made ahead: before the markers are read
            if self._failure is not None:
                raise self._failure
            markers = self._markers
            if markers is not None:
                self._take_markers(markers)
            while self.signal.position + chunk <= target:
                first = self.signal.position
                data = np.ascontiguousarray(self.signal.read(chunk).T, dtype=np.float32)
                if chunk == 1:  # mne-lsl warns about a chunk of one sample
                    self._outlet.push_sample(data[0], timestamp=t0 + first / sfreq)
                else:
                    self._outlet.push_chunk(data, timestamp=t0 + (first + np.arange(chunk)) / sfreq)
                self.stats.samples += chunk
            if markers is not None and now - self._last_seen > self.marker_timeout:
                self.stopped_because = f"the marker stream {self.marker_name!r} was gone for {self.marker_timeout:g} s"
                return self.stopped_because
            wait = t0 + self.latency + (self.signal.position + chunk - 1) / sfreq - local_clock()
            time.sleep(min(max(wait, 0.0005), 0.005))
        self.stopped_because = "stopped"
        return self.stopped_because

    def _take_markers(self, markers) -> None:
        for t, value in markers.poll():
            self.respond(t, value)

    def onset_sample(self, t: float) -> int:
        """The stream sample at which the response to a marker stamped ``t`` (LSL time)
        begins: ``round((t + delay - t0) * sfreq)``."""
        if self.t0 is None:
            raise RuntimeError("Simulator.onset_sample: no t0 yet (call start() first)")
        return int(round((t - self.t0) * self.sfreq + self.delay_samples))

    def respond(self, t: float, value: Any) -> None:
        """Answer one marker (LSL time ``t``, ``value`` as the marker stream gives it): add
        its response to :attr:`signal` from :meth:`onset_sample` on, and count it.  What
        :meth:`run` does with each marker it reads, and what
        :func:`record_simulated_session` does without LSL."""
        value = _plain(value)
        self.stats.markers += 1
        target = marker_target(value, self.subject, self.part)
        if target is None:
            self._unknown(value)
            return
        amplitudes = None if target == "catch" else self.subject.amplitudes(*target)
        missed = self.signal.add_response(self.onset_sample(t), amplitudes)
        if target == "catch":
            self.stats.catch += 1
        elif missed < self.signal.n_wave:
            self.stats.responses += 1
        if missed:
            self._late(value, missed)

    def _unknown(self, value: Any) -> None:
        self.stats.unknown += 1
        key = str(value)
        seen = self.stats.unknown_values
        if key in seen or len(seen) >= _UNKNOWN_LOGGED:
            if key in seen:
                seen[key] += 1
            return
        seen[key] = 1
        hint = (f"numbers count 1..{self.subject.n_images(self.part)} in the {self.part} images"
                if not isinstance(value, str) or value.strip().isdigit() else "labels are concept_folder/file")
        more = "" if len(seen) < _UNKNOWN_LOGGED else " (further unknown values are only counted)"
        logger.warning("marker %r names no image of %s (%s); no response%s", value, self.subject.root, hint, more)

    def _late(self, value: Any, missed: int) -> None:
        ms = 1000.0 * missed / self.sfreq
        self.stats.late += 1
        if self.stats.late == 1:
            logger.warning("marker %r came %.0f ms after its response began (those samples had gone out): the rest "
                           "of the response is added; later ones are counted", value, ms)
        self.stats.max_late_ms = max(self.stats.max_late_ms, ms)


# -- a recorded session, simulated faster than real time ---------------------------------------

#: seconds of signal made and written at a time by :func:`record_simulated_session`
_OFFLINE_BLOCK_S = 4.0
#: seconds recorded after the last image's onset at least (its response and epoch window)
_OFFLINE_TAIL_S = 1.5


def presentation_times(sequences: list[list[Trial]], timing: FrameTiming, pause_s: float, *,
                       start: float = 0.0) -> list[tuple[Trial, float]]:
    """The flip time of every trial of ``sequences`` as ``bci-app present --pause
    pause_s`` shows them on a display that never drops a frame: the presenter's own run
    (:class:`~bci_app.rsvp.RsvpRun`) driven frame by frame, flip ``k`` at ``start + k /
    refresh_hz``.  The first sequence starts once ``pause_s`` has passed, as every
    following one does after the previous sequence's last blank.  Returns (trial, flip
    time) in the order shown."""
    from .presentation import TimingLog
    from .rsvp import RsvpRun

    if not (math.isfinite(pause_s) and pause_s >= 0):
        raise UsageError(f"pause_s must be >= 0 seconds, got {pause_s!r}")
    if not sequences or not all(sequences):
        raise UsageError("no trials to show (an empty list of sequences, or an empty sequence)")
    shown: list[tuple[Trial, float]] = []
    run = RsvpRun(sequences, timing, lambda trial, flip: shown.append((trial, flip)), TimingLog(timing, "simulated"),
                  auto_pause=float(pause_s))
    now, k = start, 0
    while not run.finished:
        run.frame(now)  # as the display loop does: the next frame is asked for at the last flip
        k += 1
        now = start + k * timing.frame
        run.flipped(now)
    return shown


def record_simulated_session(subject: SimulatedSubject, sequences: list[list[Trial]], folder: str | Path, *,
                             timing: FrameTiming | None = None, pause_s: float = 2.0, seed: int = 0,
                             noise: bool = True, delay: float | None = None, image_set: str | None = None) -> Path:
    """The folder ``bci-app --record folder`` writes while ``bci-app present --labels
    --pause pause_s`` shows ``sequences`` to ``bci-replay --simulate`` playing ``subject``,
    made as fast as numpy goes (about 1.5 s a minute of session, mostly the noise) instead
    of in real time.

    The same code as the live path: the presenter's run gives the flip times
    (:func:`presentation_times`, a display that drops no frame, the LSL clock at 0 when
    the recording starts); a :class:`Simulator` (with its ``seed``, ``noise`` and
    ``delay``, whose default is minus the set's trigger delay) answers each marker
    (:meth:`Simulator.respond`: the response from ``round((t + delay) * sfreq)`` on, a
    catch trial its ERP only), in the order shown, so the per-trial gains are drawn as
    live; its signal is recorded sample by sample by a
    :class:`~bci_app.recording.SessionRecorder` (``float32`` volts, as the EEG stream
    carries them), each marker, labelled ``Trial.label`` (``concept/file``, ``catch``), at
    the sample nearest its time, as ``bci-app`` places it.  The recording starts
    ``pause_s`` before the first image and ends ``pause_s`` after the last sequence (and
    at least 1.5 s after the last image).  ``session.json`` says it was simulated offline,
    by whom, and ``image_set`` (``'training'`` or ``'test'``) when given; ``summary.json``
    holds the simulation's counts (:class:`SimulationStats`).

    Parameters
    ----------
    subject : SimulatedSubject
    sequences : list of list of Trial
        From :func:`~bci_app.stimuli.make_sequences` (and perhaps
        :func:`~bci_app.stimuli.limit_duration`).
    folder : path-like
        A new folder (one that holds a recording already is refused).
    timing : FrameTiming | None
        The display (default: 60 Hz, 100 ms on, 100 ms off).
    pause_s : float
        Seconds between sequences (``bci-app present --pause``).
    seed, noise, delay
        As for :class:`Simulator`.
    image_set : 'test' | 'train' | 'training' | None
        The part of the set the images are from, for ``session.json`` (labels are found
        in both parts).

    Returns
    -------
    Path
        ``folder``.
    """
    from .recording import SessionRecorder
    from .stimuli import FrameTiming

    if image_set is not None and image_set not in IMAGE_SETS:
        raise UsageError(f"image_set must be one of {', '.join(IMAGE_SETS)}, got {image_set!r}")
    if delay is not None and not math.isfinite(delay):
        raise UsageError(f"delay must be a finite number of seconds, got {delay!r}")
    timing = timing or FrameTiming.for_display(60.0)
    shown = presentation_times(sequences, timing, pause_s)
    # offline every marker is known before its samples are made: no latency is needed, but
    # the Simulator checks that a live one would have enough
    live_delay = -subject.config.trigger_delay if delay is None else float(delay)
    sim = Simulator(subject, name="bci-simulate", markers="bci-presenter", image_set=image_set, noise=noise, seed=seed,
                    delay=live_delay, latency=max(DEFAULT_LATENCY, 0.005 - live_delay))
    sim.t0 = 0.0
    sfreq = sim.sfreq
    end_s = max(shown[-1][1] - shown[-1][0].position * timing.soa_frames * timing.frame
                + len(sequences[-1]) * timing.soa_frames * timing.frame + pause_s, shown[-1][1] + _OFFLINE_TAIL_S)
    n_total = int(math.ceil(end_s * sfreq))
    info = {"stream": sim.name, "source_id": sim.source_id, "markers": sim.marker_name,
            "simulated": (f"offline, faster than real time (bci_app.simulate.record_simulated_session): "
                          f"{subject.describe()}, seed {seed}, {'with' if noise else 'without'} noise, delay "
                          f"{sim.delay:+.4f} s, {timing.refresh_hz:g} Hz display, {pause_s:g} s pauses")}
    if image_set is not None:
        info["image_set"] = IMAGE_SETS[image_set]
    recorder = SessionRecorder(folder, list(subject.model.ch_names), sfreq, info=info)
    block = max(1, int(round(_OFFLINE_BLOCK_S * sfreq)))
    j = 0
    try:
        while sim.signal.position < n_total:
            stop = min(sim.signal.position + block, n_total)
            while j < len(shown) and sim.onset_sample(shown[j][1]) < stop:  # responses before their samples
                trial, t = shown[j]
                sim.respond(t, trial.label)
                recorder.add_marker(t, trial.label, int(round((t - sim.t0) * sfreq)))
                j += 1
            first = sim.signal.position
            data = sim.signal.read(stop - first).T.astype(np.float32)  # what the stream carries
            recorder.add_samples(data.astype(np.float64), sim.t0 + np.arange(first, stop) / sfreq)
            sim.stats.samples += stop - first
        for trial, t in shown[j:]:  # responses that would begin after the end (a delay of seconds)
            sample = int(round((t - sim.t0) * sfreq))
            recorder.add_marker(t, trial.label, sample if sample < n_total else None)
    except BaseException:
        recorder.abort()
        raise
    recorder.close(asdict(sim.stats))
    return Path(folder).expanduser()
