"""The preprocessing spec: geometry, filtering, alignment, channel order, serialisation."""

import numpy as np
import pytest

from trainer.data import THINGS_EEG2_CHANNELS
from trainer.errors import DataFormatError, UsageError
from trainer.preprocessing import NAMED_SPECS, PreprocessingSpec, select_channels

CH = list(THINGS_EEG2_CHANNELS)


def _recording(sfreq=1000.0, seconds=12.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((len(CH), int(seconds * sfreq))) * 1e-5 + 3e-3  # big DC offset


def test_window_geometry():
    spec = PreprocessingSpec()
    assert spec.n_times == 250
    np.testing.assert_allclose(spec.times[:2], [0.0, 0.004])
    start, n = spec.window(1000.0)
    assert start <= -700  # 0.5 s pad before the -0.2 s baseline
    assert start % 4 == 0  # on both the 1000 Hz and the 250 Hz grid
    assert start + n >= 1000  # reaches tmax


def test_pulse_lands_on_the_right_sample():
    # no filter, no baseline: a pulse centred at onset + 100 ms peaks at output sample 25
    # (250 Hz), symmetrically: the resampling adds no shift
    spec = PreprocessingSpec(channels=("Oz",), l_freq=None, h_freq=None, baseline=None, pad=0.0)
    start, n = spec.window(1000.0)
    x = np.zeros((1, 1, n))
    x[..., -start + 96 : -start + 105] = 1.0
    out = spec.apply(x, 1000.0)[0, 0]
    assert int(np.argmax(out)) == 25
    assert out[24] == pytest.approx(out[26], rel=1e-4)
    assert out[20] == pytest.approx(0.0, abs=0.02)


def test_baseline_removes_offset_and_filter_passes_band():
    spec = PreprocessingSpec()
    data = _recording()
    t = np.arange(data.shape[1]) / 1000.0
    data[CH.index("Oz")] += 2e-5 * np.sin(2 * np.pi * 10 * t)
    epochs, kept = spec.epochs_from_continuous(data, 1000.0, CH, [3000, 6000])
    assert kept.all() and epochs.shape == (2, 17, 250)
    oz = epochs[0, spec.resolve(CH).channels.index("Oz")]
    ref = 2e-5 * np.sin(2 * np.pi * 10 * (3.0 + spec.times))
    assert np.corrcoef(oz, ref)[0, 1] > 0.9
    assert np.abs(epochs).max() < 1e-3  # the 3 mV DC offset is gone


def test_channels_by_name_whatever_the_order():
    spec = PreprocessingSpec().resolve(CH)
    data = _recording()
    onsets = np.array([2500, 4000, 7000])
    ref, _ = spec.epochs_from_continuous(data, 1000.0, CH, onsets)
    perm = np.random.default_rng(1).permutation(len(CH))
    extra = np.vstack([data[perm], np.ones((2, data.shape[1]))])
    names = [CH[i] for i in perm] + ["EXG1", "EXG2"]
    out, _ = spec.epochs_from_continuous(extra, 1000.0, names, onsets)
    np.testing.assert_array_equal(out, ref)
    keep = [i for i, name in enumerate(CH) if name not in ("Oz", "PO7")]
    with pytest.raises(DataFormatError, match="missing required channel.*Oz, PO7"):
        spec.epochs_from_continuous(data[keep], 1000.0, [CH[i] for i in keep], onsets)


def test_other_input_rate_gives_nearly_the_same_epochs():
    spec = PreprocessingSpec(l_freq=None, h_freq=40.0)
    t = np.arange(12000) / 1000.0
    slow = np.sin(2 * np.pi * 3 * t) + 0.5 * np.sin(2 * np.pi * 7 * t + 1)
    data = np.tile(slow, (len(CH), 1)) * 1e-5
    a, _ = spec.epochs_from_continuous(data, 1000.0, CH, [5000])
    b, _ = spec.epochs_from_continuous(data[:, ::2], 500.0, CH, [2500])
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.999


def test_windows_past_the_ends_are_skipped():
    spec = PreprocessingSpec()
    data = _recording(seconds=3.0)
    _, kept = spec.epochs_from_continuous(data, 1000.0, CH, [100, 1500, 2900])
    assert kept.tolist() == [False, True, False]


def test_apply_checks_window_shape():
    spec = PreprocessingSpec().resolve(CH)
    with pytest.raises(ValueError, match="windows must be"):
        spec.apply(np.zeros((1, 17, 10)), 1000.0)


def test_normalisation_and_roundtrip():
    spec = PreprocessingSpec().resolve(CH)
    epochs, _ = spec.epochs_from_continuous(_recording(), 1000.0, CH, np.arange(2000, 10000, 500))
    normed = spec.with_normalisation(epochs)
    again, _ = normed.epochs_from_continuous(_recording(), 1000.0, CH, np.arange(2000, 10000, 500))
    np.testing.assert_allclose(again.mean(axis=(0, 2)), 0, atol=1e-4)
    np.testing.assert_allclose(again.std(axis=(0, 2)), 1, rtol=1e-3)
    back = PreprocessingSpec.from_dict(normed.to_dict())
    assert back == normed
    import json

    assert PreprocessingSpec.from_dict(json.loads(json.dumps(normed.to_dict()))) == normed


def test_named_specs():
    official = NAMED_SPECS["official"].resolve(CH)
    assert len(official.channels) == 17 and official.n_times == 100 and official.sfreq == 100
    assert NAMED_SPECS["63ch-250hz"].resolve(CH).channels == tuple(CH)


def test_select_channels():
    assert select_channels(CH, ["Oz", "Fp1"]) == [CH.index("Oz"), 0]
    assert len(select_channels(CH, "^PO")) == 5
    with pytest.raises(DataFormatError, match="XX"):
        select_channels(CH, ["Oz", "XX"])
    with pytest.raises(ValueError, match="regular expression"):
        select_channels(CH, "([")


# -- any input rate --------------------------------------------------------------------------

RATES = [2048.0, 512.0, 2000.0, 1024.0, 500.0, 256.0, 200.0, 100.0, 499.907, 1000.5]


def _band_limited(t):
    """3-35 Hz (below every rate's Nyquist frequency) on a 3 mV offset, in volts."""
    return 2e-5 * (np.sin(2 * np.pi * 3 * t) + 0.6 * np.sin(2 * np.pi * 9 * t + 1)
                   + 0.4 * np.sin(2 * np.pi * 23 * t + 2) + 0.2 * np.sin(2 * np.pi * 35 * t)) + 3e-3


def _epoch_at(spec, sfreq_in):
    """One epoch of the same continuous signal sampled at ``sfreq_in``, the stimulus
    onset on a sample (its time is 0)."""
    onset = round(3.0 * sfreq_in)
    t = (np.arange(int(6 * sfreq_in)) - onset) / sfreq_in
    epochs, kept = spec.epochs_from_continuous(np.tile(_band_limited(t), (len(CH), 1)), sfreq_in, CH, [onset])
    assert kept.all()
    return epochs[0]


@pytest.mark.parametrize("sfreq_in", RATES)
def test_any_input_rate_gives_the_same_epoch(sfreq_in):
    # no low-pass: a causal low-pass's phase lag depends on the input rate it is designed for
    spec = PreprocessingSpec(h_freq=None)
    ref = _epoch_at(spec, 1000.0)
    out = _epoch_at(spec, sfreq_in)
    assert out.shape == ref.shape == (17, 250)
    # what differs is where the causal 0.1 Hz high-pass starts: the raw window begins on an
    # input sample, so up to one input sample earlier at one rate than at another
    assert np.abs(out - ref).max() < 2e-2 * np.abs(ref).max()
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.9999


def test_biosemi_2048_hz_gives_the_1000_hz_epoch_with_the_paper_spec():
    spec = NAMED_SPECS["paper"]
    ref, out = _epoch_at(spec, 1000.0), _epoch_at(spec, 2048.0)
    assert np.abs(out - ref).max() < 1e-2 * np.abs(ref).max()
    assert np.corrcoef(out.ravel(), ref.ravel())[0, 1] > 0.99995


@pytest.mark.parametrize("sfreq_in", RATES + [250.0, 250.01])
def test_output_samples_fall_on_the_epoch_times(sfreq_in):
    """No filter, no baseline: the epoch is the signal at ``onset + times`` (up to the
    resampling kernel's 0.2 % ripple); half an input sample off at 2048 Hz would be 5x that."""
    spec = PreprocessingSpec(channels=("Oz",), l_freq=None, h_freq=None, baseline=None, tmin=-0.1, tmax=0.9)

    def s(t):
        return np.sin(2 * np.pi * 2 * t) + 0.5 * np.sin(2 * np.pi * 5 * t + 1)

    x = s(np.arange(int(20 * sfreq_in)) / sfreq_in)[None]
    onsets = np.array([int(3 * sfreq_in) + 7, int(9.5 * sfreq_in) + 3, int(15 * sfreq_in)])
    epochs, kept = spec.epochs_from_continuous(x, sfreq_in, ["Oz"], onsets)
    assert kept.all()
    expected = s(onsets[:, None] / sfreq_in + spec.times[None, :])
    assert np.abs(epochs[:, 0] - expected).max() < 2e-3


def test_integer_decimation_is_resample_poly():
    """1000 -> 250 Hz gives what scipy.signal.resample_poly gives (the epochs of bundles
    trained before any rate was accepted are unchanged)."""
    import scipy.signal

    spec = PreprocessingSpec(channels=("Oz", "Pz"), l_freq=None, h_freq=None, baseline=None)
    start, n = spec.window(1000.0)
    windows = np.random.default_rng(3).standard_normal((4, 2, n))
    poly = scipy.signal.resample_poly(windows, 1, 4, axis=-1, padtype="line")
    k0 = round((spec.tmin - start / 1000.0) * 250)  # resample_poly's output k lies at start / 1000 + k / 250
    np.testing.assert_allclose(spec.apply(windows, 1000.0), poly[..., k0:k0 + spec.n_times], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("sfreq_in", RATES)
def test_raw_window_grows_with_the_rate_only(sfreq_in):
    """The window is the pad, the epoch and the kernel's half-length on each side, however
    the ratio of the rates reduces (a polyphase filter for 499.907 -> 250 Hz would need
    5 million taps and a window on a multiple of 499 907 samples)."""
    spec = PreprocessingSpec()
    start, n = spec.window(sfreq_in)
    half = 10 * max(1.0, sfreq_in / spec.sfreq)
    first = -0.2  # the baseline start
    assert start <= (first - spec.pad) * sfreq_in and start + n >= (spec.tmax - 1 / spec.sfreq) * sfreq_in + half - 1
    assert n <= (spec.tmax - first + spec.pad) * sfreq_in + 2 * half + 3


@pytest.mark.parametrize("sfreq_in", [0, -1000.0, float("nan"), float("inf"), "1000", True])
def test_bad_input_rate_is_a_usage_error(sfreq_in):
    spec = PreprocessingSpec().resolve(CH)
    with pytest.raises(UsageError, match="sfreq_in"):
        spec.window(sfreq_in)
