"""The THINGS image set: ``training_images/`` and ``test_images/`` folders plus
``image_metadata.npy``, mapping image index <-> concept <-> file.

Folder naming: ``training_images/00001_aardvark/aardvark_01b.jpg`` (concept folders
numbered from 1, images inside), ``test_images/00001_aircraft_carrier/aircraft_carrier_06s.jpg``.
``image_metadata.npy`` is a pickled dict of per-image lists: ``train_img_concepts``,
``train_img_files``, ``train_img_concepts_THINGS`` and the same with ``test_``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .._checks import check_option
from ..errors import DataFormatError
from .safe_npy import load_npy_dict, save_npy_dict

__all__ = ["ImageSet", "METADATA_KEYS", "load_image_set", "open_rgb", "read_image_metadata", "write_image_metadata"]

_PREFIX = {"training": "train", "test": "test"}
METADATA_KEYS = tuple(f"{p}_img_{k}" for p in ("train", "test") for k in ("concepts", "files", "concepts_THINGS"))


@dataclass(frozen=True)
class ImageSet:
    """The images of one partition, in the order the EEG data uses.

    Attributes
    ----------
    folder : Path
        ``.../training_images`` or ``.../test_images``.
    partition : 'training' | 'test'
    concepts : tuple of str
        Per image, the concept folder (``'00001_aardvark'``).
    files : tuple of str
        Per image, the file name inside the concept folder.
    concepts_things : tuple of str
        Per image, the concept with its THINGS-database number.
    """

    folder: Path
    partition: str
    concepts: tuple[str, ...]
    files: tuple[str, ...]
    concepts_things: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)

    def path(self, index: int) -> Path:
        return self.folder / self.concepts[index] / self.files[index]

    def paths(self) -> list[Path]:
        return [self.path(i) for i in range(len(self))]

    @property
    def concept_names(self) -> list[str]:
        """Per image, the concept name without its number (``'aardvark'``)."""
        return [c.split("_", 1)[1] if "_" in c and c.split("_", 1)[0].isdigit() else c for c in self.concepts]

    @property
    def concept_index(self) -> np.ndarray:
        """Per image, a 0-based concept number (order of first appearance)."""
        _, inverse = np.unique(np.asarray(self.concepts), return_inverse=True)
        # np.unique sorts; folders are zero-padded numbers so the sort is the THINGS order
        return inverse.astype(np.int64)

    @property
    def n_concepts(self) -> int:
        return len(set(self.concepts))

    def check_files(self, *, open_images: bool = False) -> None:
        """Raise DataFormatError naming the first image file that is missing (or, with
        ``open_images``, that Pillow cannot read)."""
        if not self.folder.is_dir():
            raise DataFormatError(self.folder, None, "image folder not found")
        for i in range(len(self)):
            p = self.path(i)
            if not p.is_file():
                raise DataFormatError(p, None, f"image {i} of the {self.partition} set is missing")
            if open_images:
                self.open(i)

    def open(self, index: int):
        """The image as an RGB ``PIL.Image``; unreadable files raise DataFormatError."""
        return open_rgb(self.path(index), f"image {index} of the {self.partition} set")


def open_rgb(path: str | Path, what: str = "image"):
    """An image file as an RGB ``PIL.Image`` (file closed); a missing or unreadable file
    raises DataFormatError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.convert("RGB")
    except FileNotFoundError:
        raise DataFormatError(path, None, f"{what} is missing") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise DataFormatError(path, None, f"unreadable image ({err})") from None


def _str_list(value: Any, path: Path, field: str) -> tuple[str, ...]:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise DataFormatError(path, field, f"must be a list of strings, got {type(value).__name__}")
    return tuple(value)


def read_image_metadata(path: str | Path) -> dict[str, tuple[str, ...]]:
    """Read and check ``image_metadata.npy`` (all six keys, equal lengths per partition)."""
    path = Path(path)
    d = load_npy_dict(path, required=METADATA_KEYS, mmap=False)
    out = {key: _str_list(d[key], path, key) for key in METADATA_KEYS}
    for prefix in ("train", "test"):
        n = len(out[f"{prefix}_img_files"])
        for key in (f"{prefix}_img_concepts", f"{prefix}_img_concepts_THINGS"):
            if len(out[key]) != n:
                raise DataFormatError(path, key, f"has {len(out[key])} entries but {prefix}_img_files has {n}")
    return out


def write_image_metadata(path: str | Path, metadata: dict[str, Sequence[str]]) -> Path:
    """Write ``image_metadata.npy`` in the THINGS format."""
    missing = [k for k in METADATA_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"write_image_metadata: missing {missing}")
    return save_npy_dict(path, {k: np.asarray(list(metadata[k])) for k in METADATA_KEYS})


def load_image_set(root: str | Path, partition: str, *, check_files: bool = True) -> ImageSet:
    """The image set of ``partition`` under ``root`` (which holds ``image_metadata.npy``
    and the ``{partition}_images`` folder).  With ``check_files``, every listed file must
    exist and every image file in the folder must be listed."""
    root = Path(root)
    check_option(partition, _PREFIX, "partition")
    meta_path = root / "image_metadata.npy"
    meta = read_image_metadata(meta_path)
    prefix = _PREFIX[partition]
    images = ImageSet(
        folder=root / f"{partition}_images",
        partition=partition,
        concepts=meta[f"{prefix}_img_concepts"],
        files=meta[f"{prefix}_img_files"],
        concepts_things=meta[f"{prefix}_img_concepts_THINGS"],
    )
    if check_files:
        images.check_files()
        on_disk = sum(1 for p in images.folder.glob("*/*") if p.is_file() and p.suffix.lower() in (".jpg", ".jpeg", ".png"))
        if on_disk != len(images):
            raise DataFormatError(
                meta_path, f"{prefix}_img_files",
                f"lists {len(images)} images but {images.folder} holds {on_disk} image files",
            )
    return images
