"""The preprocessing spec: one object that turns raw samples around a stimulus onset into
the epoch a model sees, applied identically offline (trainer) and online (bci_app).

Every step works on one window of raw samples around each onset, so the online decoder,
which holds exactly such a window once ``tmax`` has passed, computes the same numbers as
the offline pipeline (no continuous-filter state that depends on when a stream was joined):

1. pick the spec's channels **by name**, in the spec's order;
2. take the raw window ``[t0, tmax + right pad)`` around the onset, where ``t0`` lies
   ``pad`` seconds (at least the resampling kernel's half-length) before the earliest
   sample needed (baseline start or ``tmin``), and the right pad is the kernel's half-length;
3. band-pass with a causal Butterworth filter (designed by MNE, second-order sections)
   started in its steady state for the window's first sample, so the pad lets it settle;
4. resample to ``sfreq`` by band-limited interpolation: each output sample is computed at
   its exact time ``tmin + k / sfreq`` after the onset (see :func:`_resampler`), whatever
   the input rate (1000, 2048, 499.907 Hz...);
5. subtract the mean of the baseline interval, crop to ``[tmin, tmax)``;
6. optionally z-score each channel with statistics fitted on training data.

The band-pass is causal because an online decoder cannot see the future; offline uses the
same causal filter (train as you decode).  This differs from the paper's zero-phase
filtering by a small phase lag, learned by the encoder like any other feature.

Resampling evaluates, at each output time, the anti-aliasing kernel that
``scipy.signal.resample_poly`` designs (a Kaiser-windowed sinc, beta 5, cut off at the lower
of the two Nyquist frequencies, ten zero crossings on each side).  A polyphase filter needs
the ratio of the rates as a fraction ``up / down``: its filter grows with ``max(up, down)``
(2048 -> 250 Hz is 125 / 1024; 499.907 -> 250 Hz is 250000 / 499907) and its output grid
only meets ``tmin + k / sfreq`` when the window starts on a multiple of ``down`` samples.
Evaluating the kernel at the exact output times has neither limit: the cost of an epoch
depends on the two rates, not on how their ratio reduces (about ``20 * max(1, sfreq_in /
sfreq)`` input samples per output sample), and the output times are exact up to the
float64 rounding of ``(tmin + k / sfreq) * sfreq_in`` (far below 1e-9 of an input sample).
For an integer decimation (1000 -> 250 Hz) the result is the one ``resample_poly`` gives.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from typing import Any, Iterable, Sequence

import numpy as np
import scipy.signal

from .errors import DataFormatError, UsageError
from .montage import OCCIPITO_PARIETAL_PATTERN

__all__ = ["PreprocessingSpec", "flat_channels", "select_channels", "window_problem"]

_EPS = 1e-9


def flat_channels(window: np.ndarray) -> np.ndarray:
    """Rows of a raw window (C, n) that are constant over it (a disconnected electrode)."""
    return np.flatnonzero(window.max(axis=1) == window.min(axis=1))


def window_problem(window: np.ndarray) -> str | None:
    """Why a raw window (C, n) of the model's channels cannot become an epoch: "non-finite"
    samples, a "flat" channel (:func:`flat_channels`), or None.  The live app and
    ``bci-train adapt`` reject epochs by it alike."""
    if not np.isfinite(window).all():
        return "non-finite"
    if len(flat_channels(window)):
        return "flat"
    return None


def select_channels(
    ch_names: Sequence[str],
    channels: Iterable[str] | str | None = None,
    *,
    source: Any = None,
) -> list[int]:
    """Indices of the wanted channels in ``ch_names``, in the wanted order.

    Parameters
    ----------
    ch_names : sequence of str
        The channels available.
    channels : list of str | str | None
        Explicit names (order kept), or a regular expression (``re.match`` on each name,
        file order kept, e.g. ``'^O|^P'``), or None for all.
    source : object
        Named in the error message (a file, a stream).
    """
    ch_names = list(ch_names)
    if channels is None:
        return list(range(len(ch_names)))
    if isinstance(channels, str):
        try:
            regex = re.compile(channels)
        except re.error as err:
            raise UsageError(f"channels: invalid regular expression {channels!r} ({err})") from None
        idx = [i for i, name in enumerate(ch_names) if regex.match(name)]
        if not idx:
            raise DataFormatError(source, "ch_names", f"no channel matches {channels!r} (channels: {', '.join(ch_names)})")
        return idx
    wanted = list(channels)
    lookup = {name: i for i, name in enumerate(ch_names)}
    missing = [name for name in wanted if name not in lookup]
    if missing:
        raise DataFormatError(
            source, "ch_names", f"missing required channel(s): {', '.join(missing)} (available: {', '.join(ch_names)})"
        )
    return [lookup[name] for name in wanted]


@lru_cache(maxsize=32)
def _design_sos(sfreq_in: float, l_freq: float | None, h_freq: float | None, order: int) -> np.ndarray | None:
    import mne

    nyq = sfreq_in / 2.0
    if h_freq is not None and h_freq >= nyq * 0.99:
        h_freq = None  # the input rate already limits the band
    if l_freq is None and h_freq is None:
        return None
    params = mne.filter.create_filter(
        None,
        sfreq_in,
        l_freq,
        h_freq,
        method="iir",
        iir_params=dict(order=order, ftype="butter", output="sos"),
        phase="forward",
        verbose="error",
    )
    return np.asarray(params["sos"], dtype=np.float64)


@lru_cache(maxsize=32)
def _sos_zi(sfreq_in: float, l_freq: float | None, h_freq: float | None, order: int) -> np.ndarray:
    """The filter's steady state for a unit step (``sosfilt_zi``; computed once per filter,
    as the live app asks for it on every epoch)."""
    zi = scipy.signal.sosfilt_zi(_design_sos(sfreq_in, l_freq, h_freq, order))
    zi.setflags(write=False)
    return zi


#: the resampling kernel: scipy.signal.resample_poly's Kaiser window and its half-length in
#: zero crossings of the sinc
_KAISER_BETA = 5.0
_ZERO_CROSSINGS = 10
#: output samples resampled together with one matrix product (bounds the zeros multiplied)
_BLOCK = 32


def _check_rate(sfreq_in: Any) -> float:
    if isinstance(sfreq_in, (bool, np.bool_)) or not isinstance(sfreq_in, (int, float, np.integer, np.floating)) \
            or not math.isfinite(sfreq_in) or sfreq_in <= 0:
        raise UsageError(f"sfreq_in must be a finite sampling rate > 0 (Hz), got {sfreq_in!r}")
    return float(sfreq_in)


def _half_width(sfreq_in: float, sfreq_out: float) -> float:
    """Half-length of the resampling kernel, in input samples (0: no resampling)."""
    if sfreq_in == sfreq_out:
        return 0.0
    return _ZERO_CROSSINGS * max(1.0, sfreq_in / sfreq_out)


@lru_cache(maxsize=32)
def _resampler(sfreq_in: float, sfreq_out: float, first: float, n_out: int, start: int, n_in: int) -> tuple:
    """Blocks ``(j0, j1, k0, k1, weights (j1 - j0, k1 - k0))``: output samples ``k0..k1-1``
    are ``window[..., j0:j1] @ weights`` for a window of ``n_in`` samples.

    Output ``k`` lies at ``first + k / sfreq_out`` seconds from the onset, i.e. at the
    fractional input position ``tau_k = first * sfreq_in + k * sfreq_in / sfreq_out -
    start`` of a window that starts ``start`` samples from the onset.  Its weights are the
    kernel ``sinc(r u) * kaiser(u / half)`` at the distances ``u = tau_k - j`` to the input
    samples ``j`` (``r = min(1, sfreq_out / sfreq_in)``, ``half = 10 / r``), divided by their
    sum so that a constant passes unchanged.  For ``sfreq_in = m * sfreq_out`` these are
    exactly the taps of ``scipy.signal.resample_poly(x, 1, m)``.
    """
    ratio = sfreq_in / sfreq_out
    r = min(1.0, sfreq_out / sfreq_in)
    half = _half_width(sfreq_in, sfreq_out)
    tau = first * sfreq_in - start + np.arange(n_out) * ratio
    norm = float(np.i0(_KAISER_BETA))
    blocks = []
    for k0 in range(0, n_out, _BLOCK):
        k1 = min(k0 + _BLOCK, n_out)
        # the samples strictly within the kernel (rounded as window() rounds: a sample it
        # leaves out lies within 1e-6 of the kernel's end, where its weight is ~1e-8)
        j0 = max(0, math.floor(round(tau[k0] - half, 6)) + 1)
        j1 = min(n_in, math.ceil(round(tau[k1 - 1] + half, 6)))
        u = tau[k0:k1, None] - np.arange(j0, j1)[None, :]
        inside = np.abs(u) < half
        w = np.sinc(r * u) * np.i0(_KAISER_BETA * np.sqrt(np.clip(1.0 - (u / half) ** 2, 0.0, None))) / norm
        w = np.where(inside, w, 0.0)
        w /= w.sum(axis=1, keepdims=True)
        weights = np.ascontiguousarray(w.T)
        weights.setflags(write=False)
        blocks.append((j0, j1, k0, k1, weights))
    return tuple(blocks)


@dataclass(frozen=True)
class PreprocessingSpec:
    """How raw samples around an onset become a model's epoch (see the module docstring).

    Parameters
    ----------
    channels : tuple of str
        Channel names in model order.  Empty until :meth:`resolve` fills it from
        ``channel_pattern`` and a recording's channel names.
    channel_pattern : str | None
        Regular expression selecting channels when ``channels`` is empty.
    sfreq : float
        Output sampling rate (Hz).
    tmin, tmax : float
        Epoch window relative to the onset (s); ``tmax`` is exclusive, so the epoch has
        ``round((tmax - tmin) * sfreq)`` samples.
    baseline : (float, float) | None
        Interval (s, both ends included) whose per-channel mean is subtracted.
    l_freq, h_freq : float | None
        Causal band-pass edges (Hz); None skips that edge.
    filter_order : int
        Butterworth order of each edge.
    pad : float
        Seconds of raw signal before the earliest needed sample, for the filter to settle
        (the window always holds at least the resampling kernel's half-length there).
    norm_mean, norm_std : tuple of float | None
        Per-channel z-score statistics (fitted on training data), or None.
    """

    channels: tuple[str, ...] = ()
    channel_pattern: str | None = OCCIPITO_PARIETAL_PATTERN
    sfreq: float = 250.0
    tmin: float = 0.0
    tmax: float = 1.0
    baseline: tuple[float, float] | None = (-0.2, 0.0)
    l_freq: float | None = 0.1
    h_freq: float | None = 100.0
    filter_order: int = 4
    pad: float = 0.5
    norm_mean: tuple[float, ...] | None = None
    norm_std: tuple[float, ...] | None = None

    # -- construction and validation -------------------------------------------------
    def __post_init__(self) -> None:
        object.__setattr__(self, "channels", tuple(self.channels))
        for name in ("baseline", "norm_mean", "norm_std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(value))
        self._validate()
        for name in ("baseline", "norm_mean", "norm_std"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(float(v) for v in value))

    def _validate(self, source: Any = None) -> None:
        def bad(fieldname: str, problem: str) -> DataFormatError:
            return DataFormatError(source, f"preprocessing.{fieldname}", problem)

        def is_number(value: Any) -> bool:
            return (
                isinstance(value, (int, float, np.integer, np.floating))
                and not isinstance(value, (bool, np.bool_))
                and math.isfinite(value)
            )

        if not all(isinstance(c, str) and c for c in self.channels):
            raise bad("channels", "must be a list of non-empty channel names")
        if self.channel_pattern is not None:
            if not isinstance(self.channel_pattern, str):
                raise bad("channel_pattern", f"must be a regular expression string or null, got {self.channel_pattern!r}")
            try:
                re.compile(self.channel_pattern)
            except re.error as err:
                raise bad("channel_pattern", f"invalid regular expression {self.channel_pattern!r} ({err})") from None
        for name in ("baseline", "norm_mean", "norm_std"):
            value = getattr(self, name)
            if value is not None and not all(is_number(v) for v in value):
                raise bad(name, f"must be a list of finite numbers, got {list(value)!r:.80}")
        if len(set(self.channels)) != len(self.channels):
            raise bad("channels", "has duplicate names")
        if not self.channels and not self.channel_pattern:
            raise bad("channels", "empty and no channel_pattern to resolve it")
        for name in ("sfreq", "pad"):
            value = getattr(self, name)
            if not is_number(value) or value < 0 or (name == "sfreq" and value == 0):
                raise bad(name, f"must be a finite {'positive' if name == 'sfreq' else 'non-negative'} number, got {value!r}")
        for name in ("tmin", "tmax"):
            value = getattr(self, name)
            if not is_number(value):
                raise bad(name, f"must be a finite number, got {value!r}")
        if self.tmax <= self.tmin:
            raise bad("tmax", f"must be greater than tmin ({self.tmin}), got {self.tmax}")
        for name in ("tmin", "tmax"):
            if abs(getattr(self, name) * self.sfreq - round(getattr(self, name) * self.sfreq)) > 1e-6:
                raise bad(name, f"{getattr(self, name)} s is not on the {self.sfreq} Hz sample grid")
        if self.baseline is not None:
            if len(self.baseline) != 2 or not self.baseline[0] <= self.baseline[1]:
                raise bad("baseline", f"must be (start, end) with start <= end, got {self.baseline!r}")
            if self.baseline[1] >= self.tmax:
                raise bad("baseline", f"ends at or after tmax ({self.tmax})")
            if abs(self.baseline[0] * self.sfreq - round(self.baseline[0] * self.sfreq)) > 1e-6:
                raise bad("baseline", f"start {self.baseline[0]} s is not on the {self.sfreq} Hz grid")
        for name in ("l_freq", "h_freq"):
            value = getattr(self, name)
            if value is not None and (not is_number(value) or not value > 0):
                raise bad(name, f"must be a positive frequency or null, got {value!r}")
        if self.l_freq is not None and self.h_freq is not None and self.l_freq >= self.h_freq:
            raise bad("h_freq", f"must be above l_freq ({self.l_freq}), got {self.h_freq}")
        if not isinstance(self.filter_order, int) or isinstance(self.filter_order, bool) or not 1 <= self.filter_order <= 8:
            raise bad("filter_order", f"must be an integer 1..8, got {self.filter_order!r}")
        if (self.norm_mean is None) != (self.norm_std is None):
            raise bad("norm_std", "norm_mean and norm_std must both be set or both be null")
        if self.norm_mean is not None:
            for name in ("norm_mean", "norm_std"):
                value = getattr(self, name)
                if len(value) != len(self.channels):
                    raise bad(name, f"has {len(value)} values for {len(self.channels)} channels")
                if not all(math.isfinite(v) for v in value):
                    raise bad(name, "has non-finite values")
            if not all(v > 0 for v in self.norm_std):
                raise bad("norm_std", "must be positive")

    def to_dict(self) -> dict:
        """A JSON-ready dict (for the model bundle)."""
        out = asdict(self)
        out["channels"] = list(self.channels)
        for name in ("baseline", "norm_mean", "norm_std"):
            if out[name] is not None:
                out[name] = list(out[name])
        return out

    @classmethod
    def from_dict(cls, data: Any, *, source: Any = None) -> "PreprocessingSpec":
        """Build and validate a spec from :meth:`to_dict` output; errors name the bad field."""
        if not isinstance(data, dict):
            raise DataFormatError(source, "preprocessing", f"must be an object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DataFormatError(source, f"preprocessing.{unknown[0]}", "unknown field")
        kwargs = dict(data)
        for name in ("channels", "baseline", "norm_mean", "norm_std"):
            if name in kwargs and kwargs[name] is not None:
                if not isinstance(kwargs[name], (list, tuple)):
                    raise DataFormatError(source, f"preprocessing.{name}", f"must be a list, got {kwargs[name]!r:.60}")
                kwargs[name] = tuple(kwargs[name])
        try:
            spec = cls.__new__(cls)
            for name, fdef in cls.__dataclass_fields__.items():
                object.__setattr__(spec, name, kwargs.get(name, fdef.default))
            spec.__post_init__()
        except DataFormatError as err:
            raise DataFormatError(source, err.field, err.problem) from None
        except (TypeError, ValueError) as err:
            raise DataFormatError(source, "preprocessing", str(err)) from None
        return spec

    def resolve(self, ch_names: Sequence[str], *, source: Any = None) -> "PreprocessingSpec":
        """This spec with ``channels`` set from ``ch_names`` (pattern) or checked against them."""
        if self.channels:
            select_channels(ch_names, self.channels, source=source)
            return self
        idx = select_channels(ch_names, self.channel_pattern, source=source)
        return replace(self, channels=tuple(ch_names[i] for i in idx))

    def with_normalisation(self, epochs: np.ndarray) -> "PreprocessingSpec":
        """This spec with per-channel z-score statistics fitted on ``epochs`` (n, C, T)
        produced by a spec without normalisation."""
        if self.norm_mean is not None:
            raise RuntimeError("this spec already has normalisation statistics")
        epochs = np.asarray(epochs)
        if epochs.ndim != 3 or epochs.shape[1] != len(self.channels):
            raise ValueError(f"epochs must be (n, {len(self.channels)}, T), got {epochs.shape}")
        mean = epochs.mean(axis=(0, 2), dtype=np.float64)
        std = epochs.std(axis=(0, 2), dtype=np.float64)
        std = np.where(std > 0, std, 1.0)
        return replace(self, norm_mean=tuple(mean.tolist()), norm_std=tuple(std.tolist()))

    # -- geometry ---------------------------------------------------------------------
    @property
    def n_times(self) -> int:
        return int(round((self.tmax - self.tmin) * self.sfreq))

    @property
    def times(self) -> np.ndarray:
        return self.tmin + np.arange(self.n_times) / self.sfreq

    @property
    def _first(self) -> float:
        """The earliest time the epoch needs (baseline start or ``tmin``), on the output grid."""
        return min(self.tmin, self.baseline[0]) if self.baseline is not None else self.tmin

    @property
    def _n_needed(self) -> int:
        """Output samples from :attr:`_first` up to ``tmax`` (exclusive)."""
        return int(round((self.tmax - self._first) * self.sfreq))

    def window(self, sfreq_in: float) -> tuple[int, int]:
        """The raw window needed at input rate ``sfreq_in``: (start offset from the onset
        sample, number of samples).  Online, an epoch is ready once the sample at
        ``onset + start + n - 1`` has arrived.

        The window holds ``pad`` seconds (at least the resampling kernel's half-length)
        before the earliest needed time, and the kernel's half-length after the last output
        sample."""
        sfreq_in = _check_rate(sfreq_in)
        half = _half_width(sfreq_in, self.sfreq)
        first_pos = self._first * sfreq_in  # output sample 0, in input samples from the onset
        last_pos = first_pos + (self._n_needed - 1) * (sfreq_in / self.sfreq)
        start = math.floor(round(first_pos - max(self.pad * sfreq_in, half), 6))
        stop = math.ceil(round(last_pos + half, 6)) if half else int(round(last_pos)) + 1
        return start, stop - start

    # -- application ------------------------------------------------------------------
    def apply(self, windows: np.ndarray, sfreq_in: float) -> np.ndarray:
        """Turn raw windows into epochs.

        Parameters
        ----------
        windows : array, shape (n_epochs, n_channels, n_samples)
            Raw samples of the spec's channels, in the spec's order, cut with
            :meth:`window` at ``sfreq_in``.
        sfreq_in : float
            Their sampling rate.

        Returns
        -------
        array, float32, shape (n_epochs, n_channels, n_times)
        """
        windows = np.asarray(windows)
        sfreq_in = _check_rate(sfreq_in)
        start, n_in = self.window(sfreq_in)
        if windows.ndim != 3 or windows.shape[1] != len(self.channels) or windows.shape[2] != n_in:
            raise ValueError(
                f"windows must be (n, {len(self.channels)}, {n_in}) at {sfreq_in} Hz, got {windows.shape}"
            )
        x = windows.astype(np.float64, copy=False)  # every step below makes a new array (no view is returned)
        sos = _design_sos(float(sfreq_in), self.l_freq, self.h_freq, self.filter_order)
        if sos is not None and x.shape[0]:
            zi = _sos_zi(float(sfreq_in), self.l_freq, self.h_freq, self.filter_order)[:, None, None, :] * x[None, :, :, :1]
            x, _ = scipy.signal.sosfilt(sos, x, axis=-1, zi=zi)
        first, n_needed = self._first, self._n_needed
        if sfreq_in == self.sfreq:  # output k is input sample first_pos + k: a slice
            j0 = int(round(first * sfreq_in)) - start
            x = x[..., j0 : j0 + n_needed]
        else:
            flat = x.reshape(-1, n_in)
            y = np.empty((flat.shape[0], n_needed))
            for j0, j1, k0, k1, weights in _resampler(sfreq_in, float(self.sfreq), first, n_needed, start, n_in):
                y[:, k0:k1] = flat[:, j0:j1] @ weights
            x = y.reshape(x.shape[:-1] + (n_needed,))
        # output sample k lies at first + k / sfreq
        k_min = int(round((self.tmin - first) * self.sfreq))
        if self.baseline is not None:
            b0 = int(round((self.baseline[0] - first) * self.sfreq))
            b1 = int(math.floor((self.baseline[1] - first) * self.sfreq + _EPS))
            x = x - x[..., b0 : b1 + 1].mean(axis=-1, keepdims=True)
        out = x[..., k_min : k_min + self.n_times]
        if self.norm_mean is not None:
            out = (out - np.asarray(self.norm_mean)[:, None]) / np.asarray(self.norm_std)[:, None]
        return out.astype(np.float32)

    def epochs_from_continuous(
        self,
        data: np.ndarray,
        sfreq_in: float,
        ch_names: Sequence[str],
        onsets: np.ndarray,
        *,
        batch_size: int | None = None,
        source: Any = None,
        progress: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Epochs of a continuous recording at the given onset samples.

        Parameters
        ----------
        data : array (n_channels_all, n_samples)
            Continuous raw data (any channel order; the spec picks by name).
        sfreq_in : float
            Its sampling rate.
        ch_names : sequence of str
            Names of the rows of ``data``.
        onsets : array of int
            Onset sample indices.
        batch_size : int | None
            Epochs processed at a time (bounds memory for full-size sessions).  By default
            about 48 MB of float64 windows: batches that stay small are several times
            faster than large ones (memory traffic, not arithmetic, is the cost).
        progress : callable | None
            Called with the number of epochs done after each batch.

        Returns
        -------
        epochs : array float32 (n_kept, n_channels, n_times)
        kept : array of bool (n_onsets,)
            False where the window runs past either end of the recording.
        """
        spec = self.resolve(ch_names, source=source)
        picks = np.asarray(select_channels(ch_names, spec.channels, source=source))
        onsets = np.asarray(onsets, dtype=np.int64).ravel()
        start, n_in = spec.window(sfreq_in)
        kept = (onsets + start >= 0) & (onsets + start + n_in <= data.shape[1])
        good = onsets[kept]
        out = np.empty((len(good), len(picks), spec.n_times), dtype=np.float32)
        offsets = np.arange(n_in)
        if batch_size is None:
            batch_size = max(1, (48 << 20) // (8 * max(len(picks), 1) * n_in))
        picked = np.asarray(data[picks])  # (n_channels, n_samples), once
        for b in range(0, len(good), batch_size):
            idx = good[b : b + batch_size, None] + start + offsets[None, :]  # (nb, n_in)
            windows = picked[:, idx].transpose(1, 0, 2)
            out[b : b + batch_size] = spec.apply(windows, sfreq_in)
            if progress is not None:
                progress(min(b + batch_size, len(good)))
        return out, kept


#: named specs: the official THINGS-EEG2 preprocessed layout (17 ch, 100 Hz, -0.2..0.8 s,
#: no filter; the official files are additionally MVNN-whitened per session, which is not
#: reproduced), the peers' 63 ch x 250 Hz 0..1 s variant, and the paper's training spec
#: (17 occipito-parietal channels, 0.1-100 Hz, 250 Hz, 0..1 s, baseline -0.2..0 s)
NAMED_SPECS: dict[str, PreprocessingSpec] = {
    "official": PreprocessingSpec(
        channel_pattern=OCCIPITO_PARIETAL_PATTERN, sfreq=100.0, tmin=-0.2, tmax=0.8,
        baseline=(-0.2, 0.0), l_freq=None, h_freq=None, pad=0.0,
    ),
    "63ch-250hz": PreprocessingSpec(channel_pattern=".*", sfreq=250.0, tmin=0.0, tmax=1.0),
    "paper": PreprocessingSpec(),
}
__all__.append("NAMED_SPECS")
