import os
import pickle

import numpy as np
import pytest

from trainer.data import safe_npy
from trainer.data.safe_npy import load_npy_dict, load_npy_object, save_npy_dict
from trainer.errors import DataFormatError, ForbiddenPickleError


class _RunsCode:
    """Unpickling this would create a folder: the proof that code ran."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


def test_roundtrip_plain_data(tmp_path):
    data = {
        "arr": np.arange(12, dtype=np.float32).reshape(3, 4),
        "names": ["Pz", "Oz"],
        "rate": 1000,
        "scalar": np.float64(0.5),
        "nested": {"t": (1, 2.5, None, True)},
        "strs": np.asarray(["a", "bb"]),
    }
    path = save_npy_dict(tmp_path / "d.npy", data)
    back = load_npy_dict(path, required=("arr", "names"))
    assert set(back) == set(data)
    np.testing.assert_array_equal(back["arr"], data["arr"])
    assert back["arr"].dtype == np.float32
    assert back["names"] == ["Pz", "Oz"] and back["rate"] == 1000 and back["scalar"] == 0.5
    assert back["nested"] == {"t": (1, 2.5, None, True)}
    assert back["strs"].tolist() == ["a", "bb"]


def test_numpy_save_files_are_read(tmp_path):
    # files written by plain numpy.save (as THINGS did) load through the restricted path
    path = tmp_path / "things.npy"
    np.save(path, {"x": np.ones((2, 3)), "y": ["a"]})
    back = load_npy_dict(path)
    np.testing.assert_array_equal(back["x"], np.ones((2, 3)))


def test_large_arrays_are_memory_mapped(tmp_path, monkeypatch):
    monkeypatch.setattr(safe_npy, "MMAP_THRESHOLD", 1024)
    big = np.random.default_rng(0).standard_normal((50, 4, 3, 7))
    path = save_npy_dict(tmp_path / "big.npy", {"data": big, "fortran": np.asfortranarray(big[:, 0])})
    back = load_npy_dict(path)
    assert isinstance(back["data"], np.memmap)
    assert not back["data"].flags.writeable
    np.testing.assert_array_equal(back["data"], big)
    np.testing.assert_array_equal(back["fortran"], big[:, 0])
    eager = load_npy_dict(path, mmap=False)
    assert not isinstance(eager["data"], np.memmap)
    np.testing.assert_array_equal(eager["data"], big)


def test_code_in_a_pickle_is_refused_and_never_runs(tmp_path):
    sentinel = tmp_path / "code_ran"
    path = tmp_path / "evil.npy"
    np.save(path, {"preprocessed_eeg_data": np.zeros(3), "payload": _RunsCode(str(sentinel))})
    # the same file would run code through the ordinary loader (proves the test is real)
    with pytest.raises(ForbiddenPickleError) as info:
        load_npy_dict(path)
    assert not sentinel.exists()
    msg = str(info.value)
    assert str(path) in msg and "mkdir" in msg
    np.load(path, allow_pickle=True)
    assert sentinel.exists()


@pytest.mark.parametrize("target", [(os.system, ("true",)), (eval, ("1+1",)), (os.remove, ("/nonexistent/file",))])
def test_forbidden_callables(tmp_path, target):
    class Obj:
        def __reduce__(self):
            return target

    path = tmp_path / "bad.npy"
    np.save(path, {"x": Obj()})
    with pytest.raises(ForbiddenPickleError, match="refused"):
        load_npy_object(path)


def test_numpy2_protocol4_files_are_memory_mapped(tmp_path, monkeypatch):
    # numpy 2 writes protocol 4 (framed); large payloads lie outside frames
    monkeypatch.setattr(safe_npy, "MMAP_THRESHOLD", 1024)
    big = np.arange(100000, dtype=np.float64).reshape(100, 1000)
    path = tmp_path / "p4.npy"
    np.save(path, {"small": np.arange(3), "data": big, "names": ["x"] * 5})
    back = load_npy_dict(path)
    assert isinstance(back["data"], np.memmap)
    np.testing.assert_array_equal(back["data"], big)
    np.testing.assert_array_equal(back["small"], np.arange(3))


def test_plain_array_file(tmp_path):
    np.save(tmp_path / "plain.npy", np.arange(5))
    out = load_npy_object(tmp_path / "plain.npy")
    np.testing.assert_array_equal(out, np.arange(5))
    with pytest.raises(DataFormatError, match="expected a pickled dict"):
        load_npy_dict(tmp_path / "plain.npy")


def test_protocol_2_bytes(tmp_path):
    # old pickles encode bytes through _codecs.encode; admitted only for plain strings
    path = tmp_path / "p2.npy"
    arr = np.empty((), dtype=object)
    arr[()] = {"b": b"\x00\xffabc", "a": np.arange(3)}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(arr))
        pickle.dump(arr, fh, protocol=2)
    back = load_npy_dict(path)
    assert back["b"] == b"\x00\xffabc"
    np.testing.assert_array_equal(back["a"], np.arange(3))
