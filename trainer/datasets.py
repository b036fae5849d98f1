"""Loading one subject's (or, leave-one-subject-out, several subjects') training and test
arrays for fitting, with the preprocessing spec that produced them."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import numpy as np

from ._checks import check_option
from .data import ThingsEEG2, TrialSet, read_things_meg, things_meg_path, trials_from_raw
from .data.images import ImageSet
from .errors import DataFormatError
from .files import atomic_path
from .preprocessing import NAMED_SPECS, PreprocessingSpec

__all__ = ["SOURCES", "SubjectData", "load_fit_data", "load_image_sets", "load_test_data"]

logger = logging.getLogger("trainer")

SOURCES = ("auto", "raw", "preprocessed", "meg")


@dataclass
class SubjectData:
    """Arrays ready for training and evaluation.

    Attributes
    ----------
    spec : PreprocessingSpec
        Resolved, with the z-score statistics fitted on the training trials.
    train : np.ndarray (n_train_images, C, T) float32
        Normalised training epochs, repetitions averaged (pooled over subjects for --inter).
    train_image_ids : np.ndarray (n_train_images,)
        Row -> index in ``train_images``.
    test : np.ndarray (n_test_images, reps, C, T) float32
        Normalised single-trial test epochs.
    test_image_ids : np.ndarray (n_test_images,)
    train_images, test_images : ImageSet
    source : str
        'raw', 'preprocessed' or 'meg'.
    train_trials : tuple of arrays (n_images_s, reps_s, C, T)
        The single training trials behind ``train``, one array per training subject in the
        order of ``train``'s rows, not normalised (may be memory maps): read only by
        :meth:`train_single_trials`.
    """

    spec: PreprocessingSpec
    train: np.ndarray
    train_image_ids: np.ndarray
    test: np.ndarray
    test_image_ids: np.ndarray
    train_images: ImageSet
    test_images: ImageSet
    source: str
    subjects_train: list[int]
    subject_test: int
    train_trials: tuple = ()

    def train_single_trials(self, rows: np.ndarray) -> np.ndarray:
        """Normalised single training trials of ``train``'s ``rows``: float32 (n_rows, reps, C, T),
        reps the fewest any training subject has (only the rows asked for are read)."""
        if not self.train_trials:
            raise ValueError("this SubjectData holds no single training trials")
        reps = min(part.shape[1] for part in self.train_trials)
        starts = np.cumsum([0] + [len(part) for part in self.train_trials])
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), reps, *self.train.shape[1:]), dtype=np.float32)
        for k, part in enumerate(self.train_trials):
            mine = np.flatnonzero((rows >= starts[k]) & (rows < starts[k + 1]))
            if len(mine):
                local = rows[mine] - starts[k]
                order = np.argsort(local)  # a memory map is read in file order
                picked = np.asarray(part[local[order], :reps], dtype=np.float32)
                out[mine[order]] = _norm(picked.reshape(-1, *picked.shape[2:]), self.spec).reshape(picked.shape)
        return out


def _epoch_cache_key(paths: Sequence[Path], spec: PreprocessingSpec) -> str:
    h = hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def _raw_trials(ds: ThingsEEG2, subject: int, partition: str, spec: PreprocessingSpec,
                cache_dir: Path | None) -> TrialSet:
    """Epochs from the raw sessions, cached (safetensors) by spec and file identity."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    paths = ds.raw_paths(subject, partition)
    images = ds.image_set(partition)
    cache = None
    if cache_dir is not None:
        cache = cache_dir / f"epochs-sub{subject:02d}-{partition}-{_epoch_cache_key(paths, spec)}.safetensors"
        if cache.is_file():
            try:
                with safe_open(str(cache), framework="numpy") as fh:
                    meta = fh.metadata()
                    arrays = {k: fh.get_tensor(k) for k in ("data", "times", "image_ids")}
                return TrialSet(data=arrays["data"], ch_names=tuple(json.loads(meta["channels"])), times=arrays["times"],
                                sfreq=float(meta["sfreq"]), partition=partition, image_ids=arrays["image_ids"],
                                source=str(paths[0]))
            except Exception as err:  # any unreadable cache is recomputed
                logger.warning("ignoring unreadable epoch cache %s (%s)", cache, err)
    trials = trials_from_raw(ds.iter_raw_sessions(subject, partition), spec, n_images=len(images))
    if cache is not None:
        with atomic_path(cache) as tmp:
            save_file({"data": np.ascontiguousarray(trials.data), "times": np.asarray(trials.times),
                       "image_ids": np.asarray(trials.image_ids, dtype=np.int64)}, str(tmp),
                      metadata={"channels": json.dumps(list(trials.ch_names)), "sfreq": str(trials.sfreq)})
    return trials


def _subject_trials(ds: ThingsEEG2 | None, root: Path, subject: int, source: str, spec: PreprocessingSpec,
                    cache_dir: Path | None, test_repetitions: int | None) -> tuple[TrialSet, TrialSet, PreprocessingSpec]:
    if source == "meg":
        train, test = read_things_meg(things_meg_path(root, subject), test_repetitions=test_repetitions)
        meg_spec = PreprocessingSpec(channels=train.ch_names, channel_pattern=None, sfreq=train.sfreq,
                                     tmin=float(train.times[0]), tmax=float(train.times[0] + train.n_times / train.sfreq),
                                     baseline=None, l_freq=None, h_freq=None, pad=0.0)
        return train, test, meg_spec
    if source == "raw":
        from .data import load_npy_dict
        from .data.things_eeg2 import RAW_KEYS, check_raw_dict

        first = ds.raw_paths(subject, "test")[0]
        names = [n for n in check_raw_dict(load_npy_dict(first, required=RAW_KEYS), first)[1] if n != "stim"]
        spec = spec.resolve(names, source=first)
        return (_raw_trials(ds, subject, "training", spec, cache_dir),
                _raw_trials(ds, subject, "test", spec, cache_dir), spec)
    # official preprocessed files: their own layout, described by the 'official' spec
    train = ds.preprocessed(subject, "training")
    test = ds.preprocessed(subject, "test")
    official = replace(NAMED_SPECS["official"], channels=train.ch_names, channel_pattern=None,
                       sfreq=train.sfreq, tmin=float(np.round(train.times[0], 6)),
                       tmax=float(np.round(train.times[0] + train.n_times / train.sfreq, 6)))
    return train, test, official


def _norm(x: np.ndarray, spec: PreprocessingSpec) -> np.ndarray:
    mean = np.asarray(spec.norm_mean, dtype=np.float32)[:, None]
    std = np.asarray(spec.norm_std, dtype=np.float32)[:, None]
    return ((x - mean) / std).astype(np.float32)


def load_image_sets(data: str | Path, source: str = "auto") -> tuple[ImageSet, ImageSet]:
    """The training and the test images of a data folder (a THINGS-EEG2 folder; for
    ``source='meg'`` the ``image_set/`` beside or above a THINGS-MEG folder)."""
    check_option(source, SOURCES, "--source (source)")
    root = Path(data).expanduser()
    if source == "meg":
        image_root = next((p for p in (root / "image_set", root.parent / "image_set", root) if (p / "image_metadata.npy").is_file()), None)
        if image_root is None:
            raise DataFormatError(root, "image_metadata.npy", "MEG training needs the image set (image_set/ beside the MEG folder)")
        from .data.images import load_image_set

        return load_image_set(image_root, "training"), load_image_set(image_root, "test")
    ds = ThingsEEG2(root)
    return ds.image_set("training"), ds.image_set("test")


def load_fit_data(
    data: str | Path,
    subject: int,
    *,
    source: str = "auto",
    spec: PreprocessingSpec | str = "paper",
    inter: bool = False,
    cache_dir: str | Path | None = None,
    test_repetitions: int | None = None,
    train_subjects: Sequence[int] | str | None = None,
) -> SubjectData:
    """Load what :func:`trainer.fit.fit` needs.

    Parameters
    ----------
    data : path
        A THINGS-EEG2 folder (real or synthetic); for ``source='meg'`` a THINGS-MEG folder
        (``derivatives/preprocessed/preprocessed_P{n}-epo.fif``) whose images are found in
        ``image_set/`` beside or above it.
    subject : int
        The subject to test on (and, unless ``inter``, to train on).
    source : 'auto' | 'raw' | 'preprocessed' | 'meg'
        'raw' epochs the raw sessions with ``spec`` (what the live decoder reproduces);
        'preprocessed' reads the official preprocessed files; 'auto' takes raw when the
        subject has raw sessions.
    spec : PreprocessingSpec | str
        For raw: a spec or a name from ``NAMED_SPECS``.
    inter : bool
        Leave one subject out: train on every other subject, test on ``subject``.
    train_subjects : 'all' | list of int | None
        Whom to train on instead: every subject of the set ('all': the base model for
        new people, see ``bci-train adapt``), or the subjects listed.
    """
    check_option(source, SOURCES, "--source (source)")
    if isinstance(spec, str):
        spec = NAMED_SPECS[check_option(spec, NAMED_SPECS, "--spec (spec)")]
    root = Path(data).expanduser()
    cache = Path(cache_dir) if cache_dir is not None else None
    train_images, test_images = load_image_sets(root, source)
    if source == "meg":
        ds = None
        subjects = sorted(int(p.name[len("preprocessed_P"):-len("-epo.fif")]) for p in root.rglob("preprocessed_P*-epo.fif"))
    else:
        ds = ThingsEEG2(root)
        subjects = ds.subjects()
        if source == "auto":
            source = "raw" if (root / "raw_data" / f"sub-{subject:02d}").is_dir() else "preprocessed"
    if subject not in subjects:
        raise DataFormatError(root, "subject", f"subject {subject} not found (subjects here: {', '.join(map(str, subjects)) or 'none'})")
    if train_subjects == "all":
        train_subjects = list(subjects)
    elif train_subjects:
        absent = [s for s in train_subjects if s not in subjects]
        if absent:
            raise DataFormatError(root, "subject", f"--train-subjects: subject(s) {', '.join(map(str, absent))} not found "
                                                   f"(subjects here: {', '.join(map(str, subjects))})")
        train_subjects = list(train_subjects)
    else:
        train_subjects = [s for s in subjects if s != subject] if inter else [subject]
    if not train_subjects:
        raise DataFormatError(root, "subject", "--inter needs at least one other subject to train on")

    loaded: dict[int, tuple[TrialSet, TrialSet, PreprocessingSpec]] = {}

    def trials_of(s: int) -> tuple[TrialSet, TrialSet, PreprocessingSpec]:
        if s not in loaded:  # each subject's files are read once
            loaded[s] = _subject_trials(ds, root, s, source, spec, cache, test_repetitions)
        return loaded[s]

    _, test, spec_used = trials_of(subject)
    train_parts = []
    for s in train_subjects:
        train, _, spec_s = trials_of(s)
        if spec_s.channels != spec_used.channels or train.n_times != test.n_times:
            raise DataFormatError(root, "ch_names", f"subject {s} has other channels or times than subject {subject}")
        train_parts.append(train)
    for t in train_parts + [test]:
        t.check_finite()
    # z-score statistics from single training trials (all repetitions, all training subjects)
    stats_src = np.concatenate([np.asarray(t.data).reshape(-1, t.n_channels, t.n_times)[:: max(1, t.n_repetitions * t.n_images // 20000)]
                                for t in train_parts])
    spec_final = replace(spec_used, norm_mean=None, norm_std=None).with_normalisation(stats_src)
    train_x = np.concatenate([_norm(t.average_repetitions(), spec_final) for t in train_parts])
    train_ids = np.concatenate([t.image_ids for t in train_parts])
    test_x = _norm(np.asarray(test.data, dtype=np.float32), spec_final)
    return SubjectData(spec=spec_final, train=train_x, train_image_ids=train_ids, test=test_x,
                       test_image_ids=np.asarray(test.image_ids), train_images=train_images, test_images=test_images,
                       source=source, subjects_train=train_subjects, subject_test=subject,
                       train_trials=tuple(t.data for t in train_parts))


def load_test_data(
    data: str | Path,
    subject: int,
    spec: PreprocessingSpec,
    *,
    source: str = "auto",
    cache_dir: str | Path | None = None,
    test_repetitions: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A subject's test epochs prepared exactly as a bundle's spec says (channels by name,
    its normalisation): (epochs (n_images, reps, C, T) float32, image ids)."""
    if spec.norm_mean is None or not spec.channels:
        raise ValueError("load_test_data: the spec must be resolved and carry normalisation statistics")
    check_option(source, SOURCES, "--source (source)")
    root = Path(data).expanduser()
    plain = replace(spec, norm_mean=None, norm_std=None)
    ds = None if source == "meg" else ThingsEEG2(root)
    if source == "auto":
        source = "raw" if (root / "raw_data" / f"sub-{subject:02d}").is_dir() else "preprocessed"
    if ds is not None and subject not in ds.subjects():
        have = ", ".join(map(str, ds.subjects())) or "none"
        raise DataFormatError(root, "subject", f"subject {subject} not found (subjects here: {have})")
    cache = Path(cache_dir) if cache_dir is not None else None
    if source == "raw":
        test = _raw_trials(ds, subject, "test", plain, cache)
    else:
        _, test, _ = _subject_trials(ds, root, subject, source, plain, cache, test_repetitions)
        test = test.pick_channels(list(spec.channels))
    if abs(test.sfreq - spec.sfreq) > 1e-6 or test.n_times != spec.n_times:
        raise DataFormatError(test.source, "times", f"the data have {test.n_times} samples at {test.sfreq:g} Hz; "
                              f"the bundle needs {spec.n_times} at {spec.sfreq:g} Hz")
    test.check_finite()
    return _norm(np.asarray(test.data, dtype=np.float32), spec), np.asarray(test.image_ids)
