"""Readers (and writers, for the synthetic set) of THINGS-EEG2 files, unchanged formats.

- preprocessed: ``preprocessed_data/sub-XX/preprocessed_eeg_{training,test}.npy``, a
  pickled dict ``preprocessed_eeg_data`` (images x repetitions x channels x times),
  ``ch_names``, ``times``;
- raw: ``raw_data/sub-XX/ses-YY/raw_eeg_{training,test}.npy``, a pickled dict
  ``raw_eeg_data`` (channels+1 x samples, last row ``stim``), ``ch_names``, ``ch_types``,
  ``sfreq``, ``highpass``, ``lowpass``.

Stim codes: training image index 1..16540, test 1..200, catch/target trials 99999; every
code must fit a 32-bit LSL marker (``bci-replay`` sends them as ``int32``).
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..errors import DataFormatError, UsageError, UsageTypeError
from ..preprocessing import PreprocessingSpec
from .safe_npy import load_npy_dict, save_npy_dict
from .trials import TrialSet

__all__ = [
    "CATCH_CODE",
    "PARTITIONS",
    "RawSession",
    "ThingsEEG2",
    "partition_of",
    "read_preprocessed",
    "read_raw_session",
    "arrange_trials",
    "check_preprocessed_dict",
    "check_raw_dict",
    "epoch_session",
    "trials_from_raw",
    "write_preprocessed",
    "write_raw_array",
    "write_raw_session",
]

logger = logging.getLogger("trainer")

CATCH_CODE = 99999
PARTITIONS = ("training", "test")
PREPROCESSED_KEYS = ("preprocessed_eeg_data", "ch_names", "times")
RAW_KEYS = ("raw_eeg_data", "ch_names", "ch_types", "sfreq")
#: the range of a stimulus code: markers travel as int32 over LSL
INT32_RANGE = (-(2**31), 2**31 - 1)
MAX_CODE = INT32_RANGE[1]


def partition_of(path: str | Path) -> str:
    """'training' or 'test' from a THINGS file name (``*_training.npy`` / ``*_test.npy``)."""
    name = Path(path).name
    for part in PARTITIONS:
        if name.endswith(f"_{part}.npy"):
            return part
    raise DataFormatError(path, None, "cannot tell the partition from the file name (expected *_training.npy or *_test.npy)")


def _names(value: Any, path: Path, field: str) -> tuple[str, ...]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(path, field, f"must be a list of strings, got {type(value).__name__}")
    return tuple(value)


def _sfreq_from_times(times: np.ndarray, path: Path) -> float:
    if times.ndim != 1 or len(times) < 2:
        raise DataFormatError(path, "times", f"must be a 1-D array of at least 2 values, got shape {times.shape}")
    if not np.all(np.isfinite(times)):
        raise DataFormatError(path, "times", "has non-finite values")
    step = np.diff(times)
    if not np.all(step > 0) or np.ptp(step) > 1e-6 * max(1.0, abs(step.mean())) + 1e-9:
        raise DataFormatError(path, "times", "must be evenly spaced and increasing")
    return float(round(1.0 / step.mean(), 6))


def check_preprocessed_dict(d: dict, path: Path) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, float]:
    """Validate the fields of a preprocessed file's dict: (data, ch_names, times, sfreq)."""
    data = d["preprocessed_eeg_data"]
    if not isinstance(data, np.ndarray) or data.dtype.kind not in "fiu":
        raise DataFormatError(path, "preprocessed_eeg_data", f"must be a numeric array, got {type(data).__name__}")
    if data.ndim != 4:
        raise DataFormatError(
            path, "preprocessed_eeg_data",
            f"must have 4 dimensions (images x repetitions x channels x times), got shape {data.shape}",
        )
    ch_names = _names(d["ch_names"], path, "ch_names")
    times = np.asarray(d["times"])
    if times.dtype.kind not in "fiu":
        raise DataFormatError(path, "times", f"must be numbers, got {times.dtype}")
    times = times.astype(np.float64)
    if len(ch_names) != data.shape[2]:
        raise DataFormatError(path, "ch_names", f"has {len(ch_names)} names but the data has {data.shape[2]} channels")
    if times.ndim != 1 or len(times) != data.shape[3]:
        raise DataFormatError(path, "times", f"has {times.size} values but the data has {data.shape[3]} time points")
    return data, ch_names, times, _sfreq_from_times(times, path)


def _check_raw_dtype(data: Any, path: Path) -> np.ndarray:
    """``raw_eeg_data`` as a 2-D float32/float64 array, or a DataFormatError saying why not.

    Raw EEG is in volts (microvolt-sized values) with the stim codes in the same array, so
    only float32 and float64 hold both: float16 keeps about 3 significant digits and cannot
    represent every code above 2048; integers cannot hold volts (and int8/int16 not the
    catch code 99999); bool, complex, object and other dtypes are not samples at all.
    """
    if not isinstance(data, np.ndarray) or data.ndim != 2:
        got = f"shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataFormatError(path, "raw_eeg_data", f"must be a 2-D array (channels x samples), got {got}")
    dtype = data.dtype
    if dtype.kind == "f" and dtype.itemsize in (4, 8):
        return data
    if dtype.kind == "f" and dtype.itemsize == 2:
        why = "too coarse for EEG (about 3 significant digits) and for stim codes (not every integer above 2048 exists)"
    elif dtype.kind in "iu":
        why = "raw EEG is stored in volts, which integers cannot hold"
    else:
        why = "not real-valued samples"
    raise DataFormatError(path, "raw_eeg_data", f"is {dtype.name}: {why}; store float32 or float64")


def _check_stim(stim: np.ndarray, path: Path) -> None:
    """The stim row: finite, non-negative integer codes that fit an int32 LSL marker."""
    stim = np.asarray(stim, dtype=np.float64)
    bad = ~np.isfinite(stim)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(path, "raw_eeg_data", f"row 'stim' has non-finite values ({stim[i]} at sample {i}, "
                                                    f"{int(bad.sum())} in all)")
    bad = (stim != np.round(stim)) | (stim < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(path, "raw_eeg_data", f"row 'stim' must hold non-negative integer codes "
                                                    f"(sample {i} holds {stim[i]!r})")
    bad = stim > MAX_CODE
    if bad.any():
        i = int(np.argmax(bad))
        raise DataFormatError(path, "raw_eeg_data", f"row 'stim' has code {stim[i]:.0f} at sample {i}, which does not "
                                                    f"fit a 32-bit LSL marker (codes must be at most {MAX_CODE})")


def check_raw_dict(d: dict, path: Path) -> tuple[np.ndarray, tuple[str, ...], tuple[str, ...], float]:
    """Validate the fields of a raw session's dict: (data, ch_names, ch_types, sfreq).

    Checks the data's shape and dtype (float32 or float64), the names and types, the rate,
    and the stim row (finite, non-negative integer codes that fit an int32 marker); it reads
    the stim row only, so the EEG rows of a memory-mapped file stay on disk."""
    data = _check_raw_dtype(d["raw_eeg_data"], path)
    ch_names = _names(d["ch_names"], path, "ch_names")
    ch_types = _names(d["ch_types"], path, "ch_types")
    if len(ch_names) != data.shape[0]:
        raise DataFormatError(path, "ch_names", f"has {len(ch_names)} names but raw_eeg_data has {data.shape[0]} rows")
    if len(ch_types) != len(ch_names):
        raise DataFormatError(path, "ch_types", f"has {len(ch_types)} types for {len(ch_names)} channels")
    if len(set(ch_names)) != len(ch_names):
        dup = sorted({n for n in ch_names if ch_names.count(n) > 1})
        raise DataFormatError(path, "ch_names", f"has duplicate names: {', '.join(map(repr, dup[:5]))}")
    if "stim" not in ch_names:
        raise DataFormatError(path, "ch_names", "has no 'stim' channel (the row of the triggers, last in THINGS files)")
    rate = _number(d["sfreq"], path, "sfreq")
    if rate <= 0:
        raise DataFormatError(path, "sfreq", f"must be positive, got {rate}")
    _check_stim(data[ch_names.index("stim")], path)
    return data, ch_names, ch_types, rate


def read_preprocessed(
    path: str | Path,
    *,
    partition: str | None = None,
    channels: Iterable[str] | str | None = None,
    sfreq: float | None = None,
    n_images: int | None = None,
    mmap: bool = True,
) -> TrialSet:
    """Read a preprocessed THINGS-EEG2 file (official 17 ch x 100 samples at 100 Hz, the
    63 ch x 250 samples at 250 Hz variant, or any other uniform layout).

    Parameters
    ----------
    path : path-like
        ``preprocessed_eeg_training.npy`` or ``preprocessed_eeg_test.npy``.
    partition : 'training' | 'test' | None
        Default: from the file name.
    channels : list of str | str | None
        Keep these channels (names, order kept) or those matching a regular expression.
    sfreq : float | None
        Expected sampling rate; a file at another rate is refused.
    n_images : int | None
        Expected number of images (e.g. from the image metadata).
    mmap : bool
        Memory-map the data array (lean for full-size files).
    """
    path = Path(path)
    partition = partition or partition_of(path)
    d = load_npy_dict(path, required=PREPROCESSED_KEYS, mmap=mmap)
    data, ch_names, times, rate = check_preprocessed_dict(d, path)
    if sfreq is not None and abs(rate - sfreq) > 1e-3 * sfreq:
        raise DataFormatError(path, "times", f"sampling rate is {rate:g} Hz, expected {sfreq:g} Hz")
    if n_images is not None and data.shape[0] != n_images:
        raise DataFormatError(
            path, "preprocessed_eeg_data", f"has {data.shape[0]} images but the image set has {n_images}"
        )
    trials = TrialSet(
        data=data, ch_names=ch_names, times=times, sfreq=rate, partition=partition,
        image_ids=np.arange(data.shape[0]), source=str(path),
    )
    if channels is not None:
        trials = trials.pick_channels(channels)
    return trials


def write_preprocessed(path: str | Path, trials: TrialSet) -> Path:
    """Write ``trials`` in the preprocessed THINGS-EEG2 format (rows must be images 0..n-1)."""
    if not np.array_equal(trials.image_ids, np.arange(trials.n_images)):
        raise ValueError("write_preprocessed: rows must hold images 0..n-1 in order")
    return save_npy_dict(
        path,
        {
            "preprocessed_eeg_data": np.ascontiguousarray(trials.data),
            "ch_names": list(trials.ch_names),
            "times": np.asarray(trials.times, dtype=np.float64),
        },
    )


@dataclass
class RawSession:
    """One raw THINGS-EEG2 session file as MNE data plus its decoded events.

    Attributes
    ----------
    raw : mne.io.RawArray
        All channels including ``stim``.
    events : array (n, 3)
        MNE events of the image trials (sample, previous stim value, image code 1..n_images).
    catch_events : array (m, 3)
        Catch/target trials (code 99999), kept apart.
    partition : 'training' | 'test'
    source : str
    highpass, lowpass : float | None
        Hardware filter edges stored in the file.
    """

    raw: Any
    events: np.ndarray
    catch_events: np.ndarray
    partition: str
    source: str
    highpass: float | None = None
    lowpass: float | None = None

    @property
    def sfreq(self) -> float:
        return float(self.raw.info["sfreq"])

    @property
    def eeg_names(self) -> list[str]:
        return [n for n in self.raw.ch_names if n != "stim"]


def _number(value: Any, path: Path, field: str, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, np.ndarray) and value.shape == ():
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(float(value)):
        raise DataFormatError(path, field, f"must be a finite number, got {value!r:.60}")
    return float(value)


def read_raw_session(
    path: str | Path,
    *,
    partition: str | None = None,
    sfreq: float | None = None,
    n_images: int | None = None,
) -> RawSession:
    """Read a raw THINGS-EEG2 session into an ``mne.io.RawArray`` and decode its events.

    Parameters
    ----------
    path : path-like
        ``raw_eeg_training.npy`` or ``raw_eeg_test.npy``.
    partition : 'training' | 'test' | None
        Default: from the file name.
    sfreq : float | None
        Expected sampling rate (1000 for THINGS-EEG2); another rate is refused.
    n_images : int | None
        Number of images of the partition; stim codes above it (other than the catch code)
        are refused.  Whatever it is, codes must fit an int32 marker.
    """
    import mne

    path = Path(path)
    partition = partition or partition_of(path)
    d = load_npy_dict(path, required=RAW_KEYS, mmap=True)
    data, ch_names, ch_types, rate = check_raw_dict(d, path)
    if sfreq is not None and abs(rate - sfreq) > 1e-6 * sfreq:
        raise DataFormatError(path, "sfreq", f"is {rate:g} Hz, expected {sfreq:g} Hz")
    highpass = _number(d.get("highpass"), path, "highpass", optional=True)
    lowpass = _number(d.get("lowpass"), path, "lowpass", optional=True)
    try:
        info = mne.create_info(list(ch_names), rate, list(ch_types), verbose="error")
    except (ValueError, KeyError, TypeError) as err:
        raise DataFormatError(path, "ch_types", str(err)) from None
    values = np.asarray(data, dtype=np.float64)
    finite = np.isfinite(values).all(axis=1)  # the stim row is known to be finite
    if not finite.all():
        bad = [ch_names[i] for i in np.flatnonzero(~finite)]
        raise DataFormatError(path, "raw_eeg_data", f"has non-finite values (NaN or Inf) in channel(s) "
                                                    f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}")
    raw = mne.io.RawArray(values, info, verbose="error")
    events = mne.find_events(raw, stim_channel="stim", shortest_event=1, consecutive=True, initial_event=True, verbose="error")
    catch = events[events[:, 2] == CATCH_CODE]
    events = events[events[:, 2] != CATCH_CODE]
    if len(events) and (events[:, 2].min() < 1 or (n_images is not None and events[:, 2].max() > n_images)):
        bad = events[(events[:, 2] < 1) | (events[:, 2] > (n_images or np.inf)), 2]
        raise DataFormatError(
            path, "raw_eeg_data", f"row 'stim' has code(s) {sorted(set(bad.tolist()))[:5]} outside 1..{n_images} and not {CATCH_CODE}"
        )
    return RawSession(raw=raw, events=events, catch_events=catch, partition=partition, source=str(path),
                      highpass=highpass, lowpass=lowpass)


def write_raw_session(
    path: str | Path,
    eeg: np.ndarray,
    stim: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    *,
    highpass: float = 0.01,
    lowpass: float = 100.0,
) -> Path:
    """Write a raw session in the THINGS-EEG2 format (``stim`` appended as the last row)."""
    eeg = np.asarray(eeg)
    if eeg.ndim != 2 or eeg.shape[0] != len(ch_names) or stim.shape != (eeg.shape[1],):
        raise ValueError(f"write_raw_session: eeg {eeg.shape}, stim {stim.shape} and {len(ch_names)} names disagree")
    data = np.empty((eeg.shape[0] + 1, eeg.shape[1]), dtype=np.float64)
    data[:-1] = eeg
    data[-1] = stim
    return write_raw_array(path, data, ch_names, sfreq, highpass=highpass, lowpass=lowpass)


def write_raw_array(
    path: str | Path,
    data: np.ndarray,
    ch_names: Sequence[str],
    sfreq: float,
    *,
    highpass: float = 0.01,
    lowpass: float = 100.0,
) -> Path:
    """Like :func:`write_raw_session` for data that already hold the stim row last
    (channels + 1, samples), written without a copy."""
    if data.ndim != 2 or data.shape[0] != len(ch_names) + 1:
        raise ValueError(f"write_raw_array: data {data.shape} must have {len(ch_names)} channels + stim")
    return save_npy_dict(
        path,
        {
            "raw_eeg_data": data,
            "ch_names": list(ch_names) + ["stim"],
            "ch_types": ["eeg"] * len(ch_names) + ["stim"],
            "sfreq": float(sfreq),
            "highpass": float(highpass),
            "lowpass": float(lowpass),
        },
    )


def epoch_session(session: RawSession, spec: PreprocessingSpec) -> tuple[np.ndarray, np.ndarray]:
    """Offline preprocessing of one raw session: (epochs (n, C, T) float32, image codes).

    Catch trials are not epoched; trials too close to either end of the recording are
    skipped with a warning."""
    spec = spec.resolve(session.eeg_names, source=session.source)
    data = session.raw.get_data(picks=list(spec.channels))  # copies only the spec's channels
    epochs, kept = spec.epochs_from_continuous(data, session.sfreq, spec.channels, session.events[:, 0],
                                               source=session.source)
    if not kept.all():
        logger.warning("%s: %d trial(s) too close to the recording's ends were skipped", session.source, int((~kept).sum()))
    return epochs, session.events[kept, 2]


def arrange_trials(
    parts: Sequence[tuple[np.ndarray, np.ndarray]],
    spec: PreprocessingSpec,
    *,
    partition: str,
    n_images: int | None = None,
    repetitions: int | None = None,
    source: str | None = None,
) -> TrialSet:
    """Arrange epochs with image codes (from :func:`epoch_session`, sessions in recording
    order) as images x repetitions x channels x times.

    Repetitions are taken in recording order.  Every image must have at least
    ``repetitions`` trials (default: the smallest count over the images present).
    """
    if not parts:
        raise ValueError("arrange_trials: no epochs given")
    if not spec.channels:
        raise ValueError("arrange_trials: the spec must be resolved to channel names (PreprocessingSpec.resolve)")
    epochs = np.concatenate([p[0] for p in parts])
    codes = np.concatenate([p[1] for p in parts])
    present, counts = np.unique(codes, return_counts=True)
    if n_images is not None:
        missing = np.setdiff1d(np.arange(1, n_images + 1), present)
        if len(missing):
            raise DataFormatError(
                source, "raw_eeg_data",
                f"{len(missing)} of {n_images} images have no trial in these sessions (e.g. image {int(missing[0])})",
            )
    n_rep = int(counts.min()) if repetitions is None else int(repetitions)
    if counts.min() < n_rep:
        raise DataFormatError(source, "raw_eeg_data", f"image {int(present[np.argmin(counts)])} has only "
                                                      f"{int(counts.min())} trial(s), {n_rep} requested")
    order = np.argsort(codes, kind="stable")  # groups codes, keeps recording order within
    starts = np.searchsorted(codes[order], present)
    rows = order[starts[:, None] + np.arange(n_rep)[None, :]]  # (n_images, n_rep)
    return TrialSet(
        data=epochs[rows], ch_names=spec.channels, times=spec.times, sfreq=spec.sfreq,
        partition=partition, image_ids=present - 1, source=source,
    )


def trials_from_raw(
    sessions: Iterable[RawSession],
    spec: PreprocessingSpec,
    *,
    n_images: int | None = None,
    repetitions: int | None = None,
) -> TrialSet:
    """Run the offline preprocessing on raw sessions of one partition and arrange the
    epochs as images x repetitions x channels x times, like the preprocessed files.

    ``sessions`` may be a generator: each session is epoched and can be freed before the
    next is read, which keeps full-size subjects within memory."""
    parts, partition, source = [], None, None
    for s in sessions:
        if partition is not None and s.partition != partition:
            raise ValueError(f"trials_from_raw: sessions mix partitions {partition!r} and {s.partition!r}")
        partition, source = s.partition, source or s.source
        spec = spec.resolve(s.eeg_names, source=s.source)
        parts.append(epoch_session(s, spec))
    if not parts:
        raise ValueError("trials_from_raw: no sessions given")
    return arrange_trials(parts, spec, partition=partition, n_images=n_images, repetitions=repetitions, source=source)


class ThingsEEG2:
    """A THINGS-EEG2 folder (real or synthetic): finds subjects, sessions and files.

    Layout (as downloaded): ``raw_data/sub-XX/ses-YY/raw_eeg_{partition}.npy``,
    ``preprocessed_data/sub-XX/preprocessed_eeg_{partition}.npy`` and the image set
    (``training_images/``, ``test_images/``, ``image_metadata.npy``) either in
    ``image_set/`` or at the top.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root).expanduser()
        if not self.root.is_dir():
            raise DataFormatError(self.root, None, "data folder not found")
        self._image_sets: dict = {}

    @property
    def image_root(self) -> Path:
        for candidate in (self.root / "image_set", self.root):
            if (candidate / "image_metadata.npy").exists():
                return candidate
        raise DataFormatError(self.root, "image_metadata.npy", "not found here or in image_set/")

    def _subject_numbers(self, base: str) -> set[int]:
        """Subjects with a ``base/sub-XX`` folder (two or more digits, as THINGS names them)."""
        found = set()
        for p in (self.root / base).glob("sub-*"):
            m = re.fullmatch(r"sub-(\d+)", p.name)
            if m and p.name == f"sub-{int(m.group(1)):02d}" and p.is_dir():
                found.add(int(m.group(1)))
        return found

    def subjects(self, folder: str = "preprocessed_data") -> list[int]:
        """Subjects with raw data or data in ``folder``, each may have only one of the two
        (:meth:`raw_paths` and :meth:`preprocessed_path` say which is missing)."""
        return sorted(self._subject_numbers("raw_data") | self._subject_numbers(folder))

    def _subject_dir(self, base: str, subject: int) -> Path:
        """``base/sub-XX``; when it is missing, the error names it and says where else the
        subject has data (raw but no preprocessed data, or the other way round)."""
        if isinstance(subject, bool) or not isinstance(subject, (int, np.integer)):
            raise UsageTypeError(f"subject must be of type int, got {type(subject).__name__} ({subject!r:.80})")
        if subject < 1:
            raise UsageError(f"subject must be a positive integer, got {subject!r}")
        name = f"sub-{subject:02d}"
        path = self.root / base / name
        if path.is_dir():
            return path
        kind = "raw data" if base == "raw_data" else "preprocessed data" if base == "preprocessed_data" else f"data in {base}/"
        folders = ["raw_data"] + sorted(p.name for p in self.root.glob("preprocessed_data*") if p.is_dir())
        elsewhere = [f for f in folders if f != base and (self.root / f / name).is_dir()]
        if elsewhere:
            has = ", ".join(f"{f}/{name}" for f in elsewhere)
            if base == "raw_data":
                hint = "train on its preprocessed files (--source preprocessed) or add its raw sessions"
            elif "raw_data" in elsewhere:
                hint = "epoch its raw sessions (--source raw) or add its preprocessed files"
            else:
                hint = "add its preprocessed files"
            problem = f"missing (subject {subject} has {has} but no {kind}; {hint})"
        else:
            have = self.subjects(base if base != "raw_data" else "preprocessed_data")
            problem = f"missing: subject {subject} not found (subjects here: {', '.join(map(str, have)) or 'none'})"
        raise DataFormatError(path, None, problem)

    def preprocessed_path(self, subject: int, partition: str, folder: str = "preprocessed_data") -> Path:
        path = self._subject_dir(folder, subject) / f"preprocessed_eeg_{partition}.npy"
        if not path.is_file():
            raise DataFormatError(path, None, "file not found")
        return path

    def raw_paths(self, subject: int, partition: str) -> list[Path]:
        base = self._subject_dir("raw_data", subject)
        paths = sorted(base.glob(f"ses-*/raw_eeg_{partition}.npy"))
        if not paths:
            raise DataFormatError(base, None, f"no ses-*/raw_eeg_{partition}.npy files")
        return paths

    def image_set(self, partition: str):
        """The partition's ImageSet, read and checked once per instance (16 740 files)."""
        from .images import load_image_set

        if partition not in self._image_sets:
            self._image_sets[partition] = load_image_set(self.image_root, partition)
        return self._image_sets[partition]

    def preprocessed(self, subject: int, partition: str, *, folder: str = "preprocessed_data", **kwargs) -> TrialSet:
        n_images = kwargs.pop("n_images", None)
        if n_images is None:
            n_images = len(self.image_set(partition))
        return read_preprocessed(self.preprocessed_path(subject, partition, folder), partition=partition, n_images=n_images, **kwargs)

    def raw_sessions(self, subject: int, partition: str, *, sfreq: float | None = None) -> list[RawSession]:
        n_images = len(self.image_set(partition))
        return [read_raw_session(p, partition=partition, sfreq=sfreq, n_images=n_images) for p in self.raw_paths(subject, partition)]

    def iter_raw_sessions(self, subject: int, partition: str, *, sfreq: float | None = None):
        """Like :meth:`raw_sessions`, one session at a time (for :func:`trials_from_raw`)."""
        n_images = len(self.image_set(partition))
        for p in self.raw_paths(subject, partition):
            yield read_raw_session(p, partition=partition, sfreq=sfreq, n_images=n_images)
