"""What the presenter shows, and when: image lists and the RSVP schedule (no Qt here).

The THINGS-EEG2 paradigm (Gifford et al. 2022): images in rapid serial visual
presentation, each on for 100 ms and followed by 100 ms of blank, in sequences of 20 with a
pause between sequences; in some sequences a catch target appears, to which the
participant responds with a key.

- :func:`load_stimuli` makes the image list from a THINGS-EEG2 (or synthetic) data folder,
  a model bundle (its gallery) or any folder of images.  Each image has the marker code
  the decoder resolves (:class:`bci_app.decoder.StimulusMap`): its THINGS image number
  (1-based, in the order the EEG data uses), its gallery id, or its 1-based place in a
  folder, and a label ``concept/file``.
- :func:`make_sequences` orders them (a seeded shuffle per repetition) into sequences,
  with catch trials where asked.
- :class:`FrameTiming` turns durations into whole display frames: on a display, onsets
  are counted in frames, so a 100 ms image on a 60 Hz screen is 6 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from trainer.data.things_eeg2 import CATCH_CODE
from trainer.errors import MissingFileError, UsageError

__all__ = ["CATCH_CODE", "IMAGE_SUFFIXES", "FrameTiming", "Stimulus", "Trial", "limit_duration", "load_stimuli",
           "make_sequences"]

#: files a folder of images is read for
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Stimulus:
    """An image to show: its marker code, its label (``concept/file``) and its file."""

    id: int
    label: str
    path: Path


@dataclass(frozen=True)
class Trial:
    """One presentation: the image, its sequence and place in it, and whether it is a
    catch target (then the marker is :data:`CATCH_CODE` / ``catch``)."""

    stimulus: Stimulus
    sequence: int
    position: int
    catch: bool = False

    @property
    def code(self) -> int:
        return CATCH_CODE if self.catch else self.stimulus.id

    @property
    def label(self) -> str:
        return "catch" if self.catch else self.stimulus.label


def load_stimuli(src: str | Path, part: str = "test") -> list[Stimulus]:
    """The images of ``src``, in their own order (see the module docstring).

    Parameters
    ----------
    src : path
        A data folder in the THINGS-EEG2 layout (``image_set/``; ``part`` picks the
        ``training`` or ``test`` images), a bundle folder (``bundle.json``: its gallery's
        thumbnails, with the gallery ids), or a folder of image files (searched
        recursively, sorted by path; ids 1, 2, ...).
    part : 'test' | 'training'
    """
    src = Path(src)
    if not src.exists():
        raise MissingFileError(f"image source {src} not found (a data folder, a bundle folder or a folder of images)")
    if not src.is_dir():
        raise UsageError(f"image source {src} is a file; give a data folder, a bundle folder or a folder of images")
    if (src / "bundle.json").is_file():
        from trainer.bundle import load_bundle

        bundle = load_bundle(src)
        return [Stimulus(int(item.id), item.file.replace("\\", "/"), bundle.thumbnail_path(i))
                for i, item in enumerate(bundle.items)]
    if (src / "image_set").is_dir():
        from trainer.data import ThingsEEG2

        if part not in ("test", "training"):
            raise UsageError(f"the image set must be 'test' or 'training', got {part!r}")
        images = ThingsEEG2(src).image_set(part)
        images.check_files()
        return [Stimulus(i + 1, f"{images.concepts[i]}/{images.files[i]}", images.path(i)) for i in range(len(images))]
    files = sorted(p for p in src.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise UsageError(f"{src} holds no image files ({', '.join(IMAGE_SUFFIXES)}), no bundle.json and no "
                         "image_set/ folder")
    return [Stimulus(i + 1, p.relative_to(src).as_posix(), p) for i, p in enumerate(files)]


def make_sequences(stimuli: list[Stimulus], *, repetitions: int = 1, seed: int = 0, sequence_length: int = 20,
                   catch: Stimulus | None = None, catch_rate: float = 0.0) -> list[list[Trial]]:
    """The presentation order: each repetition shows every stimulus once, in its own
    seeded random order; the whole is cut into sequences of ``sequence_length`` (the last
    may be shorter).  With ``catch``, a fraction ``catch_rate`` of the sequences gets that
    image once more as a catch target, at a random place (not first)."""
    if not stimuli:
        raise UsageError("no images to show")
    if repetitions < 1:
        raise UsageError(f"repetitions must be >= 1, got {repetitions}")
    if sequence_length < 1:
        raise UsageError(f"the sequence length must be >= 1, got {sequence_length}")
    if not 0.0 <= catch_rate <= 1.0:
        raise UsageError(f"the catch rate must lie in 0..1, got {catch_rate}")
    rng = np.random.default_rng(seed)
    order = [stimuli[i] for _ in range(repetitions) for i in rng.permutation(len(stimuli))]
    chunks = [order[i:i + sequence_length] for i in range(0, len(order), sequence_length)]
    with_catch = set()
    if catch is not None and catch_rate > 0:
        n = int(round(catch_rate * len(chunks)))
        with_catch = set(rng.choice(len(chunks), size=n, replace=False).tolist())
    sequences = []
    for s, chunk in enumerate(chunks):
        items = [(stim, False) for stim in chunk]
        if s in with_catch:
            items.insert(int(rng.integers(1, len(items) + 1)), (catch, True))
        sequences.append([Trial(stim, s, k, is_catch) for k, (stim, is_catch) in enumerate(items)])
    return sequences


@dataclass(frozen=True)
class FrameTiming:
    """Image and blank durations in whole frames of a display refreshing at ``refresh_hz``."""

    refresh_hz: float
    on_frames: int
    off_frames: int

    @classmethod
    def for_display(cls, refresh_hz: float, on_s: float = 0.1, off_s: float = 0.1) -> "FrameTiming":
        """The nearest whole frames to ``on_s`` and ``off_s`` (at least one frame on)."""
        if not (math.isfinite(refresh_hz) and refresh_hz > 0):
            raise UsageError(f"the display's refresh rate must be a positive number, got {refresh_hz!r}")
        if on_s <= 0 or off_s < 0:
            raise UsageError(f"image and blank durations must be > 0 and >= 0 s, got {on_s} and {off_s}")
        return cls(float(refresh_hz), max(1, round(on_s * refresh_hz)), round(off_s * refresh_hz))

    @property
    def frame(self) -> float:
        """One frame, in seconds."""
        return 1.0 / self.refresh_hz

    @property
    def on_s(self) -> float:
        return self.on_frames / self.refresh_hz

    @property
    def soa_frames(self) -> int:
        """Frames from one onset to the next within a sequence."""
        return self.on_frames + self.off_frames

    def onset_frames(self, n: int) -> np.ndarray:
        """The planned onset frames of a sequence of ``n`` images, from its first onset."""
        return np.arange(n, dtype=np.int64) * self.soa_frames


def limit_duration(sequences: list[list[Trial]], timing: FrameTiming, minutes: float, pause_s: float) -> list[list[Trial]]:
    """The first sequences that fit in ``minutes`` (each sequence's images, and ``pause_s``
    before it); at least one."""
    if not (math.isfinite(minutes) and minutes > 0):
        raise UsageError(f"the duration must be a positive number of minutes, got {minutes!r}")
    budget, used = 60.0 * minutes, 0.0
    soa_s = timing.soa_frames * timing.frame
    for n, sequence in enumerate(sequences):
        used += pause_s + len(sequence) * soa_s
        if used > budget:
            return sequences[: max(n, 1)]
    return sequences
