"""A simulated participant's continuous EEG, produced block by block (pure numpy, no LSL).

:class:`SimulatedSubject` is one subject of a synthetic data set (``bci-train synth``),
or a new person of its population, with the set's images as that brain sees them: the
same brain model, image features and amplitude as the set's recordings, so a simulated
session and the data set are the same experiment.  :class:`ContinuousSignal` is the
subject's EEG as an endless stream: call :meth:`~ContinuousSignal.add_response` with the
sample at which an image appears, and :meth:`~ContinuousSignal.read` the next samples.
``bci-replay --simulate`` (:mod:`bci_app.simulate`) paces it on the wall clock over LSL;
without LSL it runs as fast as numpy does (a calibration session in seconds).

The signal is the sum of

- the evoked responses: each scheduled trial adds ``gain * response`` from its onset
  sample on (800 ms), where the response is the subject's sources driven by the image's
  features plus the common visual ERP (:meth:`SubjectBrain.continuous` writes the same
  sum for a whole recording), and ``gain`` the per-trial gain (1 +- 30 %);
- the background noise of the data set's recordings (:func:`~trainer.synth.brain.make_noise`:
  spatially correlated 1/f activity, sensor noise, waxing and waning alpha, blinks),
  generated in blocks of :data:`BLOCK_SECONDS` with :data:`FADE_SECONDS` more, each block's
  extra tail cross-faded (equal power: sine and cosine ramps) into the next block's head,
  so the noise has no step at block edges and keeps its variance across the fade;
- the two parts of that noise that a block cannot make continuous are made here for the
  whole stream instead: 50 Hz line noise (one phase, one gain per channel) and the slow
  drift (a random walk held around zero, ``tau`` = 20 s, low-passed at 0.5 Hz as the
  data set's drift is, 15 microvolts).

Blinks (about 9 a minute) fall inside a block's own part, never in a fade.  Every block
comes from its own random key (seed, block number), so the noise is the same for a seed
whatever the reads and responses; gains come from their own key in the order the
responses are added.

One difference from a data set's session remains: the 1/f background is scaled to its
level per block, which leaves out its power below 1/4.5 Hz and makes the rest about 15 %
stronger than in a one-minute session (a filter from 0.1 Hz and a baseline take little of
that power anyway).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np
import scipy.signal

from .._checks import check_type
from ..errors import UsageError
from .brain import UV, BrainModel, SubjectBrain, make_noise
from .dataset import (
    ImageFeatures,
    SynthConfig,
    check_rendered_images,
    eeg_brain_model,
    frontal_weights,
    image_features,
    read_synth_config,
    subject_brain,
)

__all__ = ["BLINK_RATE", "BLOCK_SECONDS", "FADE_SECONDS", "ContinuousSignal", "SimulatedSubject"]

logger = logging.getLogger("trainer")

#: seconds of noise made at a time (the look-ahead), and of the cross-fade between blocks
BLOCK_SECONDS = 4.0
FADE_SECONDS = 0.5
#: blinks per second (in the data set's sessions: about one per sequence of 20 images)
BLINK_RATE = 0.15

_LINE_UV, _DRIFT_UV, _DRIFT_TAU, _DRIFT_CUTOFF = 1.5, 15.0, 20.0, 0.5  # as in the data set's make_noise


@dataclass
class _Response:
    onset: int
    data: np.ndarray  # (n_sensors, n_wave)


class ContinuousSignal:
    """One subject's EEG as an endless stream of samples (see the module docstring).

    Parameters
    ----------
    brain : SubjectBrain
        The subject (:meth:`SimulatedSubject.signal` makes one for a data set's subject).
    xyz : array (n_sensors, 3)
        Sensor positions (:attr:`BrainModel.xyz`), for the noise's spatial correlation.
    noise : bool
        False: the evoked responses alone (for checks).
    seed : int
        Seed of the noise and of the per-trial gains.
    frontal : array (n_sensors,) | None
        How much of a blink each sensor sees (default: :func:`frontal_weights` of ``xyz``).
    block_seconds, fade_seconds : float
        Noise block and cross-fade lengths.
    blink_rate : float
        Blinks per second.
    """

    def __init__(self, brain: SubjectBrain, xyz: np.ndarray, *, noise: bool = True, seed: int = 0,
                 frontal: np.ndarray | None = None, block_seconds: float = BLOCK_SECONDS,
                 fade_seconds: float = FADE_SECONDS, blink_rate: float = BLINK_RATE):
        check_type(seed, int, "seed")
        if seed < 0:
            raise UsageError(f"seed must be >= 0, got {seed}")
        self.brain = brain
        self.sfreq = float(brain.sfreq)
        self.xyz = np.asarray(xyz, dtype=np.float64)
        self.n_sensors = len(self.xyz)
        self.noise, self.seed = bool(noise), seed
        self.frontal = frontal_weights(self.xyz) if frontal is None else np.asarray(frontal, dtype=np.float64)
        self._step = max(1, int(round(self.sfreq / 10)))  # the drift's points: 10 a second
        self.block = max(1, int(round(block_seconds * self.sfreq / self._step))) * self._step
        self.fade = int(round(fade_seconds * self.sfreq))
        if not 0 < self.fade < self.block:
            raise UsageError(f"the fade ({fade_seconds} s) must be longer than one sample and shorter than a block "
                             f"({block_seconds} s)")
        if self.block + self.fade < self.sfreq:  # make_noise low-passes its drift at 10 points a second
            raise UsageError(f"a block and its fade must last 1 s or more, got {block_seconds} + {fade_seconds} s")
        if not blink_rate >= 0:
            raise UsageError(f"blink_rate must be >= 0, got {blink_rate}")
        self.blink_rate = float(blink_rate)
        ramp = np.sin(0.5 * np.pi * (np.arange(self.fade) + 0.5) / self.fade)
        self._fade_in, self._fade_out = ramp, np.sqrt(1.0 - ramp**2)
        self.position = 0  # the next sample read() returns
        self._ready = np.zeros((self.n_sensors, 0))  # noise made, not read yet: samples [position, position + its length)
        self._blocks = 0  # noise blocks made
        self._prefetched: dict[int, np.ndarray] = {}  # block number -> its make_noise part, made ahead
        self._tail: np.ndarray | None = None  # the previous block's extra part, faded into the next block
        self._responses: list[_Response] = []
        self._gain_rng = np.random.default_rng([seed, 8])
        if self.noise:
            rng = np.random.default_rng([seed, 7])
            self._line_gain = _LINE_UV * UV * (0.5 + rng.uniform(size=self.n_sensors))
            self._line_phase = rng.uniform(0, 2 * np.pi)
            self._drift_a = math.exp(-self._step / self.sfreq / _DRIFT_TAU)
            self._drift_sos = scipy.signal.butter(2, _DRIFT_CUTOFF, fs=self.sfreq / self._step, output="sos")
            walk = rng.standard_normal(self.n_sensors)  # the random walk starts in its steady state
            self._walk = walk
            self._drift_zi = scipy.signal.sosfilt_zi(self._drift_sos)[:, None, :] * walk[None, :, None]
            self._drift_last = walk.copy()  # the low-passed drift at the next block's first sample

    # -- responses ----------------------------------------------------------------------
    @property
    def n_wave(self) -> int:
        """Samples of one response."""
        return self.brain.waveforms.shape[1]

    def response(self, amplitudes: np.ndarray | None, gain: float = 1.0) -> np.ndarray:
        """One trial's response (n_sensors, n_wave): the sources at ``amplitudes``
        (:meth:`SubjectBrain.source_amplitudes` of the image; None: no image, as a catch
        trial) plus the common ERP, times ``gain``."""
        b = self.brain
        out = (gain * b.erp_topography)[:, None] * b.erp_waveform[None, :]
        if amplitudes is not None:
            amplitudes = np.asarray(amplitudes, dtype=np.float64)
            if amplitudes.shape != (b.waveforms.shape[0],):
                raise ValueError(f"amplitudes must have shape ({b.waveforms.shape[0]},), got {amplitudes.shape}")
            # einsum, not matmul: a BLAS call per trial would wake (and spin) BLAS's threads
            out += np.einsum("cj,jt->ct", b.topographies, (gain * amplitudes)[:, None] * b.waveforms)
        return out

    def draw_gain(self) -> float:
        """The next per-trial gain (as :meth:`SubjectBrain.continuous` draws them)."""
        return float(max(1.0 + self.brain.trial_gain_sd * self._gain_rng.standard_normal(), 0.1))

    def add_response(self, onset: int, amplitudes: np.ndarray | None, gain: float | None = None) -> int:
        """Add a trial's response from sample ``onset`` on (``gain``: drawn when None).
        Returns how many of its samples were already read (0 when on time; then those are
        missing from the stream and the rest is added)."""
        onset = int(onset)
        gain = self.draw_gain() if gain is None else float(gain)
        missed = min(max(self.position - onset, 0), self.n_wave)
        if missed < self.n_wave:
            self._responses.append(_Response(onset, self.response(amplitudes, gain)))
        return missed

    @property
    def pending(self) -> int:
        """Responses not completely read yet."""
        return len(self._responses)

    # -- reading --------------------------------------------------------------------------
    def prepare(self, stop: int) -> None:
        """Make the noise for every sample before ``stop`` now (it is made a block at a
        time; :meth:`read` does it when needed, this lets a real-time caller choose when)."""
        if not self.noise:
            return
        parts = [self._ready]
        have = self.position + self._ready.shape[1]
        while have < stop:
            block = self._next_block()
            parts.append(block)
            have += block.shape[1]
        if len(parts) > 1:
            self._ready = np.concatenate(parts, axis=1)

    def read(self, n: int) -> np.ndarray:
        """The next ``n`` samples (n_sensors, n), in volts."""
        n = int(n)
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        start, stop = self.position, self.position + n
        if self.noise:
            self.prepare(stop)
            out = self._ready[:, :n].copy()
            self._ready = self._ready[:, n:]
        else:
            out = np.zeros((self.n_sensors, n))
        keep = []
        for r in self._responses:
            a, b = max(start, r.onset), min(stop, r.onset + r.data.shape[1])
            if a < b:
                out[:, a - start : b - start] += r.data[:, a - r.onset : b - r.onset]
            if r.onset + r.data.shape[1] > stop:
                keep.append(r)
        self._responses = keep
        self.position = stop
        return out

    # -- noise ------------------------------------------------------------------------------
    @property
    def blocks_made(self) -> int:
        """Noise blocks made so far (the next one is block number ``blocks_made``)."""
        return self._blocks

    def prefetch(self, k: int) -> None:
        """Make the slow part of noise block ``k`` now, for later (it depends on ``k`` and
        the seed only).  Safe to call from another thread than the reader's, which is
        what a real-time caller does so that a new block does not hold up its pushes."""
        if self.noise and k >= self._blocks and k not in self._prefetched:
            self._prefetched[k] = self._raw_block(k)

    def _raw_block(self, k: int) -> np.ndarray:
        """make_noise's part of block ``k`` (block + fade samples), blinks included."""
        B, F = self.block, self.fade
        rng = np.random.default_rng([self.seed, 5, k])
        width = int(0.3 * self.sfreq)  # make_noise's blink length
        blinks = np.zeros(0)
        if self.blink_rate > 0 and B - width > F:
            n_blinks = rng.poisson(self.blink_rate * B / self.sfreq)
            blinks = np.sort(rng.integers(F, B - width, size=n_blinks))  # inside the block's own part
        return make_noise(rng, self.xyz, B + F, self.sfreq, frontal=self.frontal, line_uv=0.0, drift_uv=0.0,
                          blink_times=blinks)

    def _next_block(self) -> np.ndarray:
        """The next ``block`` samples of noise: the block's own part, its head faded in over
        the previous block's tail, plus line noise and drift."""
        k, B, F = self._blocks, self.block, self.fade
        raw = self._prefetched.pop(k, None)
        if raw is None:
            raw = self._raw_block(k)
        for old in [j for j in list(self._prefetched) if j < k]:  # made too late to be used
            self._prefetched.pop(old, None)
        out = raw[:, :B]
        if self._tail is not None:
            out[:, :F] = out[:, :F] * self._fade_in + self._tail * self._fade_out
        self._tail = raw[:, B:].copy()
        t = (k * B + np.arange(B)) / self.sfreq
        out += self._line_gain[:, None] * np.sin(2 * np.pi * 50.0 * t + self._line_phase)[None, :]
        out += _DRIFT_UV * UV * self._drift(B // self._step)
        self._blocks += 1
        return out

    def _drift(self, m: int) -> np.ndarray:
        """The drift over the next ``m`` points (m * step samples), continuing the last."""
        rng = np.random.default_rng([self.seed, 6, self._blocks])
        a = self._drift_a
        walk = np.empty((self.n_sensors, m))
        x = self._walk
        steps = math.sqrt(1 - a * a) * rng.standard_normal((self.n_sensors, m))
        for j in range(m):
            x = a * x + steps[:, j]
            walk[:, j] = x
        self._walk = x
        low, self._drift_zi = scipy.signal.sosfilt(self._drift_sos, walk, axis=1, zi=self._drift_zi)
        points = np.concatenate([self._drift_last[:, None], low], axis=1)  # at samples 0, step, ..., m * step
        self._drift_last = low[:, -1].copy()
        pos = np.arange(m * self._step)
        i, frac = pos // self._step, (pos % self._step) / self._step
        return points[:, i] * (1 - frac) + points[:, i + 1] * frac


@dataclass
class SimulatedSubject:
    """A subject of a synthetic data set (or a new person of its population) with the
    set's images, ready to respond to them.  Make one with :meth:`open`.

    Attributes
    ----------
    root : Path
        The data set.
    config : SynthConfig
        The set's configuration (with the ``snr`` in use).
    features : ImageFeatures
    model : BrainModel
    brain : SubjectBrain
    subject : int
    person : int | None
        A new person's seed (None: the set's subject ``subject``).
    """

    root: Path
    config: SynthConfig
    features: ImageFeatures
    model: BrainModel
    brain: SubjectBrain
    subject: int
    person: int | None = None
    _amplitudes: dict = field(default_factory=dict, repr=False)
    _labels: dict = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, root: str | Path, subject: int, *, person: int | None = None, snr: float | None = None,
             progress: Callable[[str, int, int], None] | None = None) -> "SimulatedSubject":
        """Subject ``subject`` of the synthetic set in ``root`` or, with ``person`` (>= 0),
        a new person (see :func:`~trainer.synth.dataset.subject_brain`); ``snr`` replaces
        the set's.  The set's images are rendered again from its seed (1-8 ms an image) for
        their features, and the first and last image of each part are checked against the
        set's JPEG files: a set made by another version of the generator is refused."""
        root = Path(root)
        cfg = read_synth_config(root)
        if snr is not None:
            if isinstance(snr, bool) or not isinstance(snr, (int, float)) or not (math.isfinite(snr) and snr > 0):
                raise UsageError(f"snr must be a positive number, got {snr!r}")
            cfg = replace(cfg, snr=float(snr))
        check_type(subject, int, "subject")
        if person is None and not 1 <= subject <= cfg.subjects:
            raise UsageError(f"{root} has subjects 1..{cfg.subjects}, not {subject} (a new person: give a subject "
                             "seed)")
        sampled = {("training", 0), ("training", cfg.n_train_images - 1), ("test", 0), ("test", cfg.n_test_concepts - 1)}
        rendered: dict[tuple[str, int], np.ndarray] = {}

        def keep(part: str, index: int, folder: str, fname: str, pixels: np.ndarray) -> None:
            if (part, index) in sampled:
                rendered[(part, index)] = pixels

        features = image_features(cfg, on_image=keep, progress=progress)
        check_rendered_images(root, features, rendered)
        model = eeg_brain_model(cfg, features.n_low, features.n_attr)
        brain = subject_brain(model, cfg, subject, person=person)
        return cls(root=root, config=cfg, features=features, model=model, brain=brain, subject=subject, person=person)

    def describe(self) -> str:
        if self.person is None:
            return f"subject {self.subject} of {self.root}"
        return f"a new person (subject seed {self.person}, subject {self.subject}) of {self.root}'s population"

    def n_images(self, part: str) -> int:
        return len(self.features.low[part])

    def amplitudes(self, part: str, index: int) -> np.ndarray:
        """The source amplitudes (n_sources,) of image ``index`` (0-based) of ``part``."""
        if part not in self._amplitudes:
            self._amplitudes[part] = self.brain.source_amplitudes(self.features.low[part], self.features.attr[part])
        return self._amplitudes[part][index]

    def evoked(self, part: str, index: int) -> np.ndarray:
        """The noise-free response to image ``index`` of ``part`` (n_sensors, 800 samples
        from the visual onset), with gain 1."""
        return self.brain.evoked(self.features.low[part][index : index + 1], self.features.attr[part][index : index + 1])[0]

    def find(self, label: str) -> tuple[str, int] | None:
        """(part, index) of the image labelled ``concept_folder/file`` (either part; a
        ``training/`` or ``test/`` prefix picks one), or None."""
        if not self._labels:
            for part in ("training", "test"):
                for i, lab in enumerate(self.features.labels(part)):
                    self._labels[lab] = (part, i)
                    self._labels[f"{part}/{lab}"] = (part, i)
        return self._labels.get(str(label).strip().replace("\\", "/"))

    def signal(self, *, noise: bool = True, seed: int = 0, **kwargs) -> ContinuousSignal:
        """This subject's continuous EEG (:class:`ContinuousSignal`)."""
        return ContinuousSignal(self.brain, self.model.xyz, noise=noise, seed=seed, **kwargs)
