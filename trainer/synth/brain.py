"""A simulated brain for the synthetic THINGS-like data set.

It never looks at a neural network.  Each image drives a set of *sources*, each with a
scalp topography and a time course:

- early sources (~80-200 ms after onset, occipital): their amplitudes are linear mixtures
  of low-level statistics computed from the image's pixels (luminance, contrast, colour
  opponency, orientation and spatial-frequency energy, edges, eccentricity);
- late sources (~250-500 ms, parietal): amplitudes mix the concept's attributes that other
  concepts share and that are visible in the pixels (shape family, its super-category,
  size, elongation, animacy-like contour style, colour, texture), so responses to unseen
  test concepts are predictable from seen ones (zero-shot retrieval can work);
- a visual evoked response common to all images (not informative).

Each subject has its own topographies (a shared core plus an individual part), latencies
and mixing weights (a shared core plus an individual part), so decoding transfers between
subjects, but worse than within one.  Single trials also vary in gain.  The background is
realistic EEG noise: spatially correlated 1/f activity, posterior ~10 Hz alpha that waxes
and wanes, 50 Hz line noise, slow drift, and blinks on frontal channels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import scipy.signal

__all__ = ["BrainModel", "SubjectBrain", "sensor_positions", "make_noise"]

UV = 1e-6  # volts per microvolt (EEG data are in volts, as MNE expects)


def sensor_positions(ch_names: Sequence[str], kind: str = "eeg") -> np.ndarray:
    """Unit-sphere-ish 3-D positions (n, 3): EEG from MNE's 10-05 montage, MEG from the
    CTF-275 layout (projected)."""
    import mne

    if kind == "eeg":
        montage = None
        for name in ("colin27_1005", "standard_1005"):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FutureWarning)
                    montage = mne.channels.make_standard_montage(name)
                break
            except ValueError:
                continue
        pos = montage.get_positions()["ch_pos"]
        xyz = np.array([pos[n] for n in ch_names], dtype=np.float64)
        xyz -= xyz.mean(axis=0)
    else:
        layout = mne.channels.read_layout("CTF-275")
        lookup = {n.split("-")[0]: p[:2] for n, p in zip(layout.names, layout.pos)}
        xy = np.array([lookup[n] for n in ch_names], dtype=np.float64)
        xy = (xy - xy.mean(axis=0)) / np.ptp(xy, axis=0).max() * 2.0
        # layout is a 2-D projection seen from above; y grows to the front
        z = np.sqrt(np.clip(1.2 - (xy**2).sum(axis=1), 0.05, None))
        xyz = np.column_stack([xy, z])
    return xyz / np.linalg.norm(xyz, axis=1).max()


def _posterior_weight(xyz: np.ndarray) -> np.ndarray:
    """0 at the front of the head, 1 at the back (y is anterior)."""
    y = xyz[:, 1]
    return np.clip((y.max() - y) / np.ptp(y), 0, 1)


def _blob(xyz: np.ndarray, centre: np.ndarray, width: float) -> np.ndarray:
    d2 = ((xyz - centre) ** 2).sum(axis=1)
    return np.exp(-d2 / (2 * width**2))


@dataclass
class SubjectBrain:
    """One simulated subject: topographies, time courses and mixing weights."""

    topographies: np.ndarray  # (n_sensors, n_sources)
    waveforms: np.ndarray  # (n_sources, n_wave) at sfreq, starting at onset
    w_low: np.ndarray  # (n_early, n_low)
    w_attr: np.ndarray  # (n_late, n_attr)
    erp_topography: np.ndarray  # (n_sensors,)
    erp_waveform: np.ndarray  # (n_wave,)
    sfreq: float
    trial_gain_sd: float
    amplitude: float

    @property
    def n_early(self) -> int:
        return self.w_low.shape[0]

    def source_amplitudes(self, low: np.ndarray, attr: np.ndarray) -> np.ndarray:
        """(n_images, n_sources) source amplitudes for standardised image features."""
        early = low @ self.w_low.T
        late = attr @ self.w_attr.T
        amps = np.concatenate([early, late], axis=1)
        return np.tanh(amps / 2.0) * 2.0 * self.amplitude  # mild saturation

    def evoked(self, low: np.ndarray, attr: np.ndarray) -> np.ndarray:
        """Noise-free responses (n_images, n_sensors, n_wave)."""
        amps = self.source_amplitudes(low, attr)
        out = np.einsum("cj,ij,jt->ict", self.topographies, amps, self.waveforms)
        out += self.erp_topography[None, :, None] * self.erp_waveform[None, None, :]
        return out

    def continuous(self, n_samples: int, onsets: np.ndarray, amps: np.ndarray, rng: np.random.Generator,
                   out: np.ndarray | None = None) -> np.ndarray:
        """Signal (n_sensors, n_samples) of responses at ``onsets`` (true visual onsets,
        samples) with source amplitudes ``amps`` (n_trials, n_sources); each trial's
        response scaled by a random gain.  Written into ``out`` when given."""
        n_src, n_wave = self.waveforms.shape
        gains = np.clip(1.0 + self.trial_gain_sd * rng.standard_normal(len(onsets)), 0.1, None)
        trains = np.zeros((n_src + 1, n_samples))
        np.add.at(trains[:n_src].T, onsets, amps * gains[:, None])
        np.add.at(trains[n_src], onsets, gains)
        waves = np.vstack([self.waveforms, self.erp_waveform[None]])
        src = scipy.signal.oaconvolve(trains, waves, mode="full", axes=1)[:, :n_samples]
        topo = np.column_stack([self.topographies, self.erp_topography])
        if out is None:
            return topo @ src
        np.matmul(topo, src, out=out)
        return out


class BrainModel:
    """Generates subjects that share a core and differ individually.

    Parameters
    ----------
    ch_names : sequence of str
        Sensors.
    n_low, n_attr : int
        Sizes of the low-level and attribute feature vectors.
    seed : int
        Seed of the shared core.
    kind : 'eeg' | 'meg'
    sfreq : float
        Rate of the waveforms.
    n_early, n_late : int
        Number of early and late sources.
    individuality : float
        Weight of the individual part of each subject (0 = identical subjects).
    """

    def __init__(
        self,
        ch_names: Sequence[str],
        n_low: int,
        n_attr: int,
        *,
        seed: int = 0,
        kind: str = "eeg",
        sfreq: float = 1000.0,
        n_early: int = 12,
        n_late: int = 16,
        individuality: float = 0.6,
        amplitude: float = 1.5 * UV,
        trial_gain_sd: float = 0.3,
    ):
        self.ch_names = list(ch_names)
        self.kind = kind
        self.sfreq = float(sfreq)
        self.xyz = sensor_positions(self.ch_names, kind)
        self.n_low, self.n_attr = n_low, n_attr
        self.n_early, self.n_late = n_early, n_late
        self.individuality = individuality
        self.amplitude = amplitude
        self.trial_gain_sd = trial_gain_sd
        rng = np.random.default_rng([seed, 7])
        self._core_w_low = rng.standard_normal((n_early, n_low)) / np.sqrt(n_low)
        self._core_w_attr = rng.standard_normal((n_late, n_attr)) / np.sqrt(n_attr)
        self._core_centres = self._source_centres(rng)
        self._core_shape = rng.uniform(size=(n_early + n_late, 3))  # freq, width, polarity

    def _source_centres(self, rng: np.random.Generator) -> np.ndarray:
        back = self.xyz[_posterior_weight(self.xyz) > 0.65]
        occ = back[back[:, 1] <= np.quantile(back[:, 1], 0.5)]
        par = back[back[:, 1] > np.quantile(back[:, 1], 0.3)]
        early = occ[rng.integers(len(occ), size=self.n_early)]
        late = par[rng.integers(len(par), size=self.n_late)]
        return np.vstack([early, late]) + 0.05 * rng.standard_normal((self.n_early + self.n_late, 3))

    def subject(self, index: int, seed: int = 0) -> SubjectBrain:
        """Subject number ``index`` (1-based); deterministic for (seed, index)."""
        rng = np.random.default_rng([seed, 11, index])
        a = self.individuality
        w_low = (self._core_w_low + a * rng.standard_normal(self._core_w_low.shape) / np.sqrt(self.n_low)) / np.sqrt(1 + a**2)
        w_attr = (self._core_w_attr + a * rng.standard_normal(self._core_w_attr.shape) / np.sqrt(self.n_attr)) / np.sqrt(1 + a**2)
        n_src = self.n_early + self.n_late
        centres = self._core_centres + 0.12 * a * rng.standard_normal((n_src, 3))
        widths = 0.22 + 0.08 * rng.uniform(size=n_src)
        topos = np.column_stack([_blob(self.xyz, centres[j], widths[j]) for j in range(n_src)])
        # a dipolar second lobe makes topographies less alike
        second = centres + 0.25 * rng.standard_normal((n_src, 3))
        topos -= 0.5 * np.column_stack([_blob(self.xyz, second[j], widths[j]) for j in range(n_src)])
        topos /= np.abs(topos).max(axis=0, keepdims=True)

        t = np.arange(int(0.8 * self.sfreq)) / self.sfreq
        shift = 0.015 * rng.standard_normal()  # subject latency shift (s)
        waves = np.empty((n_src, len(t)))
        for j in range(n_src):
            f_, w_, p_ = self._core_shape[j]
            if j < self.n_early:
                lat = 0.08 + 0.12 * (j / max(1, self.n_early - 1)) + shift + 0.01 * rng.standard_normal()
                sd = 0.015 + 0.02 * w_
            else:
                k = j - self.n_early
                lat = 0.25 + 0.25 * (k / max(1, self.n_late - 1)) + 1.5 * shift + 0.02 * rng.standard_normal()
                sd = 0.04 + 0.05 * w_
            freq = 3.0 + 6.0 * f_
            env = np.exp(-0.5 * ((t - lat) / sd) ** 2)
            waves[j] = env * np.cos(2 * np.pi * freq * (t - lat) + np.pi * (p_ > 0.5))
        waves /= np.abs(waves).max(axis=1, keepdims=True)
        post = _posterior_weight(self.xyz)
        erp_topo = post**2 * (1 + 0.2 * rng.standard_normal(len(post)))
        erp_wave = (
            -np.exp(-0.5 * ((t - 0.075 - shift) / 0.012) ** 2)
            + 1.5 * np.exp(-0.5 * ((t - 0.11 - shift) / 0.015) ** 2)
            - 1.2 * np.exp(-0.5 * ((t - 0.17 - shift) / 0.025) ** 2)
            + 0.8 * np.exp(-0.5 * ((t - 0.32 - shift) / 0.08) ** 2)
        ) * 3.0 * self.amplitude
        gain = self.amplitude if self.kind == "eeg" else self.amplitude
        return SubjectBrain(
            topographies=topos, waveforms=waves, w_low=w_low, w_attr=w_attr, erp_topography=erp_topo,
            erp_waveform=erp_wave, sfreq=self.sfreq, trial_gain_sd=self.trial_gain_sd, amplitude=gain,
        )


def _pink(rng: np.random.Generator, shape: tuple[int, ...], sfreq: float, exponent: float = 1.0) -> np.ndarray:
    """Unit-variance 1/f^exponent noise along the last axis."""
    n = shape[-1]
    spec = rng.standard_normal(shape[:-1] + (n // 2 + 1,)) + 1j * rng.standard_normal(shape[:-1] + (n // 2 + 1,))
    f = np.fft.rfftfreq(n, 1 / sfreq)
    f[0] = f[1]
    spec *= 1.0 / f ** (exponent / 2)
    spec[..., 0] = 0
    x = np.fft.irfft(spec, n=n, axis=-1)
    return x / x.std(axis=-1, keepdims=True)


def make_noise(
    rng: np.random.Generator,
    xyz: np.ndarray,
    n_samples: int,
    sfreq: float,
    *,
    frontal: np.ndarray,
    background_uv: float = 8.0,
    alpha_uv: float = 4.0,
    line_uv: float = 1.5,
    drift_uv: float = 15.0,
    blink_uv: float = 120.0,
    blink_times: np.ndarray | None = None,
    unit: float = UV,
    out: np.ndarray | None = None,
    chunk: int = 8,
) -> np.ndarray:
    """Realistic background activity (n_sensors, n_samples), in volts (or ``unit``).

    With ``out`` (float array of that shape) the noise is added into it; the work goes a
    few channels at a time, so a full-size session needs little memory beyond ``out``."""
    n_ch = len(xyz)
    # spatially correlated 1/f background: independent 1/f sources mixed by distance
    d2 = ((xyz[:, None, :] - xyz[None, :, :]) ** 2).sum(-1)
    mix = np.exp(-d2 / (2 * 0.35**2))
    mix /= np.linalg.norm(mix, axis=1, keepdims=True)
    sources = np.empty((n_ch, n_samples), dtype=np.float32)
    for i in range(0, n_ch, chunk):
        sources[i : i + chunk] = _pink(rng, (min(chunk, n_ch - i), n_samples), sfreq)
    background = mix.astype(np.float32) @ sources
    del sources
    background /= background.std(axis=1, keepdims=True)

    t = np.arange(n_samples) / sfreq
    post = _posterior_weight(xyz)
    alpha_freq = 9.5 + rng.uniform(0, 1.5)
    envelope = np.abs(_pink(rng, (n_samples,), sfreq, exponent=2.0)) * 0.8 + 0.2
    phase = 2 * np.pi * alpha_freq * t + 0.3 * np.cumsum(rng.standard_normal(n_samples)) / np.sqrt(sfreq)
    alpha = (envelope * np.sin(phase)).astype(np.float32)
    line_gain = line_uv * (0.5 + rng.uniform(size=n_ch))
    line = np.sin(2 * np.pi * 50.0 * t + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    del t, envelope, phase
    # slow drift: a random walk at 1/100 of the rate, low-passed there, interpolated up
    step = 100
    n_low = n_samples // step + 2
    drift_low = np.cumsum(rng.standard_normal((n_ch, n_low)), axis=1)
    low_rate = sfreq / step
    drift_low = scipy.signal.sosfiltfilt(scipy.signal.butter(2, min(0.5, 0.45 * low_rate), fs=low_rate, output="sos"),
                                        drift_low, axis=1)
    drift_low /= max(drift_low.std(), 1e-12)
    low_pos = np.arange(n_low) * step
    blink = None
    if blink_times is not None and len(blink_times):
        blink = np.zeros(n_samples, dtype=np.float32)
        width = int(0.3 * sfreq)
        shape = np.hanning(width) ** 2
        for s in blink_times.astype(int):
            if 0 <= s < n_samples - width:
                blink[s : s + width] += shape * (0.7 + 0.6 * rng.uniform())
    if out is None:
        out = np.zeros((n_ch, n_samples), dtype=np.float64)
    positions = np.arange(n_samples)
    for i in range(0, n_ch, chunk):
        j = min(i + chunk, n_ch)
        block = background_uv * background[i:j]
        block += (0.5 * background_uv) * rng.standard_normal((j - i, n_samples), dtype=np.float32)  # sensor noise
        block += (alpha_uv * post[i:j, None] ** 2).astype(np.float32) * alpha[None]
        block += line_gain[i:j, None].astype(np.float32) * line[None]
        for k in range(i, j):
            block[k - i] += drift_uv * np.interp(positions, low_pos, drift_low[k]).astype(np.float32)
        if blink is not None:
            block += (blink_uv * frontal[i:j, None]).astype(np.float32) * blink[None]
        out[i:j] += block * unit
    return out
