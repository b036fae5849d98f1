"""The array layout every reader produces: images x repetitions x channels x times."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Sequence

import numpy as np

from ..errors import DataFormatError, UsageError
from ..preprocessing import select_channels

__all__ = ["TrialSet"]


@dataclass(frozen=True)
class TrialSet:
    """Brain responses to a set of images.

    Attributes
    ----------
    data : array (n_images, n_repetitions, n_channels, n_times)
        May be a read-only memory map (full-size THINGS files); selections copy only what
        they select.
    ch_names : tuple of str
    times : array (n_times,) in seconds relative to stimulus onset
    sfreq : float
    partition : 'training' | 'test'
    image_ids : array of int (n_images,)
        0-based index of each row's image in the partition's image set.
    source : str | None
        File the data came from (named in errors).
    modality : 'eeg' | 'meg'
    """

    data: np.ndarray
    ch_names: tuple[str, ...]
    times: np.ndarray
    sfreq: float
    partition: str
    image_ids: np.ndarray
    source: str | None = None
    modality: str = "eeg"

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_names", tuple(self.ch_names))
        if self.data.ndim != 4:
            raise DataFormatError(self.source, "data", "must have 4 dimensions (images, repetitions, channels, times), "
                                                       f"got shape {self.data.shape}")
        n_img, _, n_ch, n_t = self.data.shape
        if len(self.ch_names) != n_ch:
            raise DataFormatError(self.source, "ch_names", f"has {len(self.ch_names)} names for {n_ch} channels in the data")
        if len(self.times) != n_t:
            raise DataFormatError(self.source, "times", f"has {len(self.times)} values for {n_t} time points in the data")
        if len(self.image_ids) != n_img:
            raise DataFormatError(self.source, "image_ids", f"has {len(self.image_ids)} ids for {n_img} images in the data")

    @property
    def n_images(self) -> int:
        return self.data.shape[0]

    @property
    def n_repetitions(self) -> int:
        return self.data.shape[1]

    @property
    def n_channels(self) -> int:
        return self.data.shape[2]

    @property
    def n_times(self) -> int:
        return self.data.shape[3]

    def pick_channels(self, channels: Iterable[str] | str) -> "TrialSet":
        """Keep channels given by name (in that order) or by a regular expression."""
        idx = select_channels(self.ch_names, channels, source=self.source)
        return replace(self, data=np.asarray(self.data[:, :, idx]), ch_names=tuple(self.ch_names[i] for i in idx))

    def select_images(self, index: Sequence[int] | np.ndarray) -> "TrialSet":
        """Keep the given rows (positions in this set, not image ids)."""
        index = np.asarray(index)
        return replace(self, data=np.asarray(self.data[index]), image_ids=self.image_ids[index])

    def crop(self, tmin: float | None = None, tmax: float | None = None) -> "TrialSet":
        """Keep time points with tmin <= t < tmax."""
        lo = -np.inf if tmin is None else tmin - 1e-9
        hi = np.inf if tmax is None else tmax - 1e-9
        keep = (self.times >= lo) & (self.times < hi)
        return replace(self, data=np.asarray(self.data[..., keep]), times=self.times[keep])

    def average_repetitions(self, repetitions: int | None = None, *, chunk: int = 512) -> np.ndarray:
        """Mean over (the first ``repetitions``) repetitions: float32 (n_images, C, T).

        Works through the images in chunks, so a memory-mapped file is streamed once.
        """
        n_rep = self.n_repetitions if repetitions is None else int(repetitions)
        if not 1 <= n_rep <= self.n_repetitions:
            raise UsageError(f"repetitions must be 1..{self.n_repetitions}, got {repetitions!r}")
        out = np.empty((self.n_images, self.n_channels, self.n_times), dtype=np.float32)
        for i in range(0, self.n_images, chunk):
            out[i : i + chunk] = self.data[i : i + chunk, :n_rep].mean(axis=1, dtype=np.float64)
        return out

    def check_finite(self, *, chunk: int = 512) -> None:
        """Raise DataFormatError naming the first image whose data is NaN or infinite."""
        for i in range(0, self.n_images, chunk):
            block = np.asarray(self.data[i : i + chunk])
            bad = ~np.isfinite(block).reshape(block.shape[0], -1).all(axis=1)
            if bad.any():
                j = i + int(np.argmax(bad))
                raise DataFormatError(self.source, "data", f"non-finite values (NaN or Inf) for image row {j}")
