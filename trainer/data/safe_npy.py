"""Restricted reading (and plain writing) of the THINGS ``.npy`` files that hold a pickled dict.

``numpy.save(path, some_dict)`` writes a ``.npy`` header followed by a *pickle* of a 0-d
object array.  Unpickling such a file with ``numpy.load`` and pickles allowed runs
whatever callable the file names.  :func:`load_npy_dict` instead unpickles with an
allow-list: numpy arrays, dtypes and numpy scalars, plus the plain containers and scalars
that pickle builds without calling anything (dict, list, tuple, str, bytes, int, float,
bool, None).  Any other global is refused before it is called, with an error that names
the file and the object, so no code from the file runs.

Large array payloads are not read into memory: they are memory-mapped read-only straight
from the file (the bytes of an array pickled with protocol 3 lie contiguous in the file),
which keeps a 16540 x 4 x 63 x 250 training file lean.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataFormatError, ForbiddenPickleError
from ..files import atomic_path

__all__ = ["load_npy_dict", "load_npy_object", "save_npy_dict"]

#: payloads at least this large are memory-mapped instead of read
MMAP_THRESHOLD = 8 * 1024 * 1024


def _numpy_module(name: str):
    # numpy 2 moved numpy.core to numpy._core; importing the old name warns. Pickles name
    # either, depending on the numpy that wrote them.
    import importlib

    suffix = name.split(".", 2)[2] if name.count(".") >= 2 else ""
    for candidate in (f"numpy._core.{suffix}", f"numpy.core.{suffix}"):
        try:
            return importlib.import_module(candidate)
        except ImportError:
            continue
    raise ImportError(name)


def _allowed(module: str, name: str) -> Any | None:
    """Return the object a pickle may name, or None when it is not on the allow-list."""
    if module == "numpy" and name in ("ndarray", "dtype"):
        return getattr(np, name)
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
        return getattr(_numpy_module(module), name)
    if module in ("numpy.core.numeric", "numpy._core.numeric") and name == "_frombuffer":
        return getattr(_numpy_module(module), name)
    if module in ("collections",) and name == "OrderedDict":
        import collections

        return collections.OrderedDict
    if module in ("builtins", "__builtin__") and name in ("set", "frozenset", "complex", "bytearray"):
        import builtins

        return getattr(builtins, name)
    if module == "_codecs" and name == "encode":
        # protocol-2 pickles encode bytes as _codecs.encode(str, 'latin1')
        import _codecs

        def encode(obj: Any, encoding: str = "utf-8") -> bytes:
            if not isinstance(obj, str) or encoding not in ("latin1", "latin-1", "utf-8", "ascii"):
                raise pickle.UnpicklingError("_codecs.encode with unexpected arguments")
            return _codecs.encode(obj, encoding)

        return encode
    return None


class _Deferred:
    """A large bytes payload left in the file: where it starts and how long it is."""

    __slots__ = ("offset", "nbytes")

    def __init__(self, offset: int, nbytes: int):
        self.offset = offset
        self.nbytes = nbytes


class _RestrictedUnpickler(pickle._Unpickler):  # the pure-Python unpickler, to hook opcodes
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: io.BufferedReader, path: Path, mmap: bool):
        super().__init__(file, encoding="latin1")
        self._fileobj = file
        self._path = path
        self._mmap = mmap

    def find_class(self, module: str, name: str) -> Any:
        obj = _allowed(module, name)
        if obj is None:
            raise ForbiddenPickleError(
                self._path,
                None,
                f"refused to load: the file asks for '{module}.{name}', which is not plain data "
                "(only numpy arrays, dtypes and plain containers/scalars are admitted); "
                "nothing from the file was run",
            )
        return obj

    # -- large payloads ---------------------------------------------------------------
    def _bytes_payload(self, nbytes: int) -> None:
        frame = self._unframer.current_frame
        if frame is not None and frame.tell() >= len(frame.getbuffer()):
            self._unframer.current_frame = frame = None  # an exhausted frame: back on the file
        if self._mmap and nbytes >= MMAP_THRESHOLD and frame is None:
            offset = self._fileobj.tell()
            self._fileobj.seek(nbytes, os.SEEK_CUR)
            if self._fileobj.tell() - offset != nbytes or offset + nbytes > self._size:
                raise EOFError("payload runs past the end of the file")
            self.append(_Deferred(offset, nbytes))
        else:
            data = self.read(nbytes)
            if len(data) != nbytes:
                raise EOFError("payload runs past the end of the file")
            self.append(data)

    def load_binbytes(self) -> None:
        (nbytes,) = struct.unpack("<I", self.read(4))
        self._bytes_payload(nbytes)

    def load_binbytes8(self) -> None:
        (nbytes,) = struct.unpack("<Q", self.read(8))
        self._bytes_payload(nbytes)

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if (
            isinstance(inst, np.ndarray)
            and isinstance(state, tuple)
            and len(state) == 5
            and isinstance(state[4], _Deferred)
        ):
            _version, shape, dtype, is_fortran, payload = state
            self.stack.pop()
            expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
            if expected != payload.nbytes or np.dtype(dtype).hasobject:
                raise pickle.UnpicklingError("array payload does not match its shape and dtype")
            self.stack[-1] = np.memmap(
                self._path,
                dtype=dtype,
                mode="r",
                offset=payload.offset,
                shape=tuple(shape),
                order="F" if is_fortran else "C",
            )
            return
        super().load_build()

    dispatch[pickle.BINBYTES[0]] = load_binbytes
    dispatch[pickle.BINBYTES8[0]] = load_binbytes8
    dispatch[pickle.BUILD[0]] = load_build

    def load(self) -> Any:
        self._size = os.fstat(self._fileobj.fileno()).st_size
        return super().load()


def _materialise(obj: Any, file: io.BufferedReader) -> Any:
    """Replace any deferred payload that did not become an array by its bytes."""
    if isinstance(obj, _Deferred):
        file.seek(obj.offset)
        return file.read(obj.nbytes)
    if isinstance(obj, dict):
        return {k: _materialise(v, file) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialise(v, file) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialise(v, file) for v in obj)
    return obj


def load_npy_object(path: str | os.PathLike, *, mmap: bool = True) -> Any:
    """Load a ``.npy`` file written by ``numpy.save``, without running code from it.

    Parameters
    ----------
    path : path-like
        The file.
    mmap : bool
        Memory-map large array payloads instead of reading them.

    Returns
    -------
    object
        A plain array for a plain ``.npy``; for a pickled object the unpickled object
        (``item()`` of the 0-d object array, e.g. a dict).
    """
    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, None, "file not found" if not path.exists() else "not a file")
    try:
        fh = open(path, "rb")
    except OSError as err:
        raise DataFormatError(path, None, f"cannot open: {err.strerror or err}") from None
    with fh:
        try:
            version = np.lib.format.read_magic(fh)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
            else:
                raise ValueError(f"unsupported .npy format version {version}")
        except ValueError as err:
            raise DataFormatError(path, None, f"not a valid .npy file ({err})") from None
        if not dtype.hasobject:
            return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        try:
            obj = _RestrictedUnpickler(fh, path, mmap).load()
            obj = _materialise(obj, fh)
        except ForbiddenPickleError:
            raise
        except (pickle.UnpicklingError, EOFError, struct.error, ValueError, TypeError, AttributeError,
                IndexError, KeyError, MemoryError) as err:
            raise DataFormatError(path, None, f"corrupt or truncated pickled data ({type(err).__name__}: {err})") from None
    if isinstance(obj, np.ndarray) and obj.dtype.hasobject and obj.shape == ():
        return obj.item()
    return obj


def load_npy_dict(path: str | os.PathLike, *, required: tuple[str, ...] = (), mmap: bool = True) -> dict:
    """Load a THINGS-style ``.npy`` dict with :func:`load_npy_object` and check its keys.

    Raises
    ------
    DataFormatError
        When the file does not hold a dict, or a required key is missing (the message names
        the file and the key).
    """
    obj = load_npy_object(path, mmap=mmap)
    if not isinstance(obj, dict):
        raise DataFormatError(path, None, f"expected a pickled dict (numpy.save of a dict), found {type(obj).__name__}")
    for key in required:
        if key not in obj:
            raise DataFormatError(path, key, f"missing key (the file has: {', '.join(map(str, obj)) or 'no keys'})")
    return obj


def save_npy_dict(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as THINGS does (``numpy.save`` of a dict), atomically.

    The THINGS format itself is a pickle; this is the only place the project writes one,
    and only plain data (arrays, lists, strings, numbers) goes in.
    """
    path = Path(path)
    array = np.empty((), dtype=object)
    array[()] = data
    with atomic_path(path) as tmp, open(tmp, "xb") as fh:
        # what numpy.save does for an object array: header, then a protocol-3 pickle
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        pickle.dump(array, fh, protocol=3)
    return path
