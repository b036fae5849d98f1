"""Reader of THINGS-MEG preprocessed epochs (``preprocessed_P{n}-epo.fif``, MNE Epochs)
into the common layout (images x repetitions x channels x times).

As peers use it: crop 0-1 s, resample to 200 Hz, keep occipital and parietal sensors
(CTF names ``M[LRZ]O*`` / ``M[LRZ]P*``), drop catch trials (event 999999).  Training
images are shown once, test images 12 times (200 concepts x 12 repetitions).

Which events are test images: when the event names carry the partition (``'test/...'``,
``'training/...'``, as the synthetic files do), those names decide; otherwise images shown
more than once are the test set and images shown once the training set.  Rows are sorted by
event code within each partition.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np

from ..errors import DataFormatError
from .trials import TrialSet

__all__ = ["MEG_CATCH_CODE", "MEG_SENSOR_PATTERN", "read_things_meg", "things_meg_path"]

MEG_CATCH_CODE = 999999
MEG_SENSOR_PATTERN = r"^M[LRZ][OP]"


def things_meg_path(root: str | Path, subject: int) -> Path:
    """``root/derivatives/preprocessed/preprocessed_P{subject}-epo.fif`` (root is the
    OpenNeuro ds004212 folder, or a folder holding that file directly)."""
    root = Path(root)
    for candidate in (root / "derivatives" / "preprocessed", root / "THINGS-MEG" / "derivatives" / "preprocessed", root):
        path = candidate / f"preprocessed_P{subject}-epo.fif"
        if path.is_file():
            return path
    raise DataFormatError(root, None, f"preprocessed_P{subject}-epo.fif not found (looked in derivatives/preprocessed/)")


def read_things_meg(
    path: str | Path,
    *,
    channels: Iterable[str] | str | None = MEG_SENSOR_PATTERN,
    tmin: float = 0.0,
    tmax: float = 1.0,
    sfreq: float = 200.0,
    test_repetitions: int | None = 12,
) -> tuple[TrialSet, TrialSet]:
    """Read one participant's preprocessed THINGS-MEG epochs.

    Parameters
    ----------
    path : path-like
        ``preprocessed_P{n}-epo.fif``.
    channels : list | str | None
        Sensors to keep (names, or a regular expression; None keeps all MEG sensors).
    tmin, tmax : float
        Crop window (s); ``tmax`` exclusive.
    sfreq : float
        Resample to this rate when the file has another.
    test_repetitions : int | None
        Repetitions kept per test image (each must have at least this many); None keeps
        the smallest count.

    Returns
    -------
    training, test : TrialSet
        ``training`` is (n_images, 1, C, T); ``test`` is (n_test, reps, C, T).
    """
    import mne

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "file not found")
    try:
        epochs = mne.read_epochs(path, preload=True, verbose="error")
    except Exception as err:  # MNE raises many types for a bad file
        raise DataFormatError(path, None, f"not readable as MNE epochs ({type(err).__name__}: {err})") from None
    epochs.pick("meg", exclude="bads")
    if len(epochs.ch_names) == 0:
        raise DataFormatError(path, "ch_names", "no MEG channels")
    if epochs.tmin > tmin + 1e-9 or epochs.tmax < tmax - 1.0 / epochs.info["sfreq"] - 1e-9:
        raise DataFormatError(path, "times", f"epochs span {epochs.tmin:g}..{epochs.tmax:g} s, need {tmin:g}..{tmax:g} s")
    if abs(epochs.info["sfreq"] - sfreq) > 1e-6:
        epochs.resample(sfreq, verbose="error")
    codes = epochs.events[:, 2]
    keep = codes != MEG_CATCH_CODE
    names = {code: name for name, code in epochs.event_id.items()}
    data = epochs.get_data(copy=False)
    times = epochs.times
    tkeep = (times >= tmin - 1e-9) & (times < tmax - 1e-9)
    data = data[keep][..., tkeep]
    codes = codes[keep]
    if not np.isfinite(data).all():
        raise DataFormatError(path, "data", "has non-finite values (NaN or Inf)")
    unique, counts = np.unique(codes, return_counts=True)
    by_name = {c: names.get(c, "").split("/", 1)[0] for c in unique}
    if all(p in ("training", "test") for p in by_name.values()):
        is_test = np.array([by_name[c] == "test" for c in unique])
    else:
        is_test = counts > 1
    if not is_test.any():
        raise DataFormatError(path, "events", "no test images found (no image is repeated and no event is named 'test/...')")
    if is_test.all():
        raise DataFormatError(path, "events", "no training images found")
    ch_names = tuple(epochs.ch_names)
    out = []
    for part, mask in (("training", ~is_test), ("test", is_test)):
        part_codes = unique[mask]
        part_counts = counts[mask]
        n_rep = 1 if part == "training" else (int(part_counts.min()) if test_repetitions is None else test_repetitions)
        if part_counts.min() < n_rep:
            raise DataFormatError(path, "events", f"{part} image code {int(part_codes[np.argmin(part_counts)])} has "
                                                  f"{int(part_counts.min())} repetitions, {n_rep} needed")
        rows = np.empty((len(part_codes), n_rep), dtype=np.int64)
        for i, code in enumerate(part_codes):
            rows[i] = np.flatnonzero(codes == code)[:n_rep]
        trials = TrialSet(
            data=data[rows].astype(np.float32), ch_names=ch_names, times=times[tkeep], sfreq=float(epochs.info["sfreq"]),
            partition=part, image_ids=np.arange(len(part_codes)), source=str(path), modality="meg",
        )
        if channels is not None:
            trials = trials.pick_channels(channels)
        out.append(trials)
    return out[0], out[1]
