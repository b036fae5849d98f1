"""Bad input the readers must refuse: a :class:`DataFormatError` naming the file and the
field at fault, no code from the file run, no file changed, and on the command line one
``bci-train CMD: error: ...`` line (exit code 2) instead of a traceback.

Every bad file is built small in ``tmp_path``; the session fixtures are only read (their
image set is copied before anything in it is changed).
"""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from trainer.data.images import load_image_set, read_image_metadata, write_image_metadata
from trainer.data.safe_npy import load_npy_dict, save_npy_dict
from trainer.data.things_eeg2 import (
    CATCH_CODE,
    ThingsEEG2,
    read_preprocessed,
    read_raw_session,
    write_raw_session,
)
from trainer.data.things_meg import read_things_meg
from trainer.errors import DataFormatError, ForbiddenPickleError, UsageError, UsageTypeError
from trainer.preprocessing import PreprocessingSpec, select_channels

# -- helpers -----------------------------------------------------------------------------


def _assert_names(err: BaseException, path: str | Path, field: str | None) -> None:
    """The error is a DataFormatError whose message names the file and (if given) the field."""
    assert isinstance(err, DataFormatError), f"{type(err).__name__}: {err}"
    msg = str(err)
    assert Path(path).name in msg, f"file {Path(path).name!r} not named in: {msg}"
    if field is not None:
        assert repr(field) in msg or field in msg, f"field {field!r} not named in: {msg}"
        assert err.field == field, f"err.field is {err.field!r}, expected {field!r} ({msg})"


def _refused(call, path: str | Path, field: str | None, *words: str) -> DataFormatError:
    """Run ``call``; it must raise DataFormatError naming ``path`` and ``field`` (and every
    word of ``words``, case-insensitively); the file's bytes must be left as they were."""
    path = Path(path)
    before = path.read_bytes() if path.is_file() else None
    with pytest.raises(DataFormatError) as info:
        call()
    _assert_names(info.value, path, field)
    for word in words:
        assert word.lower() in str(info.value).lower(), f"{word!r} not in: {info.value}"
    if before is not None:
        assert path.read_bytes() == before, "the reader changed the file it refused"
    return info.value


# -- preprocessed files ------------------------------------------------------------------

N_IMG, N_REP, CH, T = 5, 2, ("O1", "Oz", "O2"), 10


def _valid_preprocessed() -> dict:
    rng = np.random.default_rng(0)
    return {
        "preprocessed_eeg_data": rng.standard_normal((N_IMG, N_REP, len(CH), T)).astype(np.float32),
        "ch_names": list(CH),
        "times": -0.2 + np.arange(T) / 100.0,
    }


def _drop(key):
    def edit(d):
        del d[key]
    return edit


def _set(key, value):
    def edit(d):
        d[key] = value(d) if callable(value) else value
    return edit


def _non_uniform(d):
    t = d["times"].copy()
    t[4] += 0.003
    d["times"] = t


PREPROCESSED_CASES = {
    # id: (edit of the valid dict, reader keyword arguments, field named, word in the message)
    "missing preprocessed_eeg_data": (_drop("preprocessed_eeg_data"), {}, "preprocessed_eeg_data", "missing"),
    "missing ch_names": (_drop("ch_names"), {}, "ch_names", "missing"),
    "missing times": (_drop("times"), {}, "times", "missing"),
    "data 3-D": (_set("preprocessed_eeg_data", lambda d: d["preprocessed_eeg_data"][0]), {},
                 "preprocessed_eeg_data", "4 dimensions"),
    "data 5-D": (_set("preprocessed_eeg_data", lambda d: d["preprocessed_eeg_data"][None]), {},
                 "preprocessed_eeg_data", "4 dimensions"),
    "data not numeric": (_set("preprocessed_eeg_data", [[1, 2], [3, 4]]), {}, "preprocessed_eeg_data", "numeric"),
    "ch_names too short": (_set("ch_names", list(CH[:2])), {}, "ch_names", "2 names"),
    "ch_names too long": (_set("ch_names", list(CH) + ["Pz"]), {}, "ch_names", "4 names"),
    "ch_names not strings": (_set("ch_names", [1, 2, 3]), {}, "ch_names", "strings"),
    "times too short": (_set("times", lambda d: d["times"][:-1]), {}, "times", f"{T - 1} values"),
    "times too long": (_set("times", -0.2 + np.arange(T + 3) / 100.0), {}, "times", f"{T + 3} values"),
    "times non-uniform": (_non_uniform, {}, "times", "evenly spaced"),
    "times decreasing": (_set("times", lambda d: d["times"][::-1].copy()), {}, "times", "increasing"),
    "times NaN": (_set("times", lambda d: np.where(np.arange(T) == 3, np.nan, d["times"])), {}, "times", "non-finite"),
    "wrong sfreq": (None, {"sfreq": 250.0}, "times", "expected 250"),
    "wrong image count": (None, {"n_images": N_IMG + 1}, "preprocessed_eeg_data", f"{N_IMG + 1}"),
}


@pytest.mark.parametrize("edit, kwargs, field, word", list(PREPROCESSED_CASES.values()), ids=list(PREPROCESSED_CASES))
def test_preprocessed_bad_content(tmp_path, edit, kwargs, field, word):
    d = _valid_preprocessed()
    path = tmp_path / "preprocessed_eeg_training.npy"
    save_npy_dict(path, d)
    read_preprocessed(path)  # the unedited file is fine: the refusal below is the edit's doing
    if edit is not None:
        edit(d)
        save_npy_dict(path, d)
    _refused(lambda: read_preprocessed(path, **kwargs), path, field, word)


def test_preprocessed_not_a_dict(tmp_path):
    path = tmp_path / "preprocessed_eeg_test.npy"
    np.save(path, np.zeros((N_IMG, N_REP, len(CH), T), dtype=np.float32))
    _refused(lambda: read_preprocessed(path), path, None, "dict")


def test_preprocessed_object_array_not_a_dict(tmp_path):
    path = tmp_path / "preprocessed_eeg_test.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    _refused(lambda: read_preprocessed(path), path, None, "dict")


@pytest.mark.parametrize("content", [b"preprocessed_eeg_data,ch_names,times\n1,2,3\n", b"", b"\x93NUMPY"],
                         ids=["text", "empty", "magic only"])
def test_preprocessed_not_npy(tmp_path, content):
    path = tmp_path / "preprocessed_eeg_training.npy"
    path.write_bytes(content)
    _refused(lambda: read_preprocessed(path), path, None, "not a valid .npy")


@pytest.mark.parametrize("mmap", [True, False], ids=["mmap", "read"])
@pytest.mark.parametrize("cut", ["half", "last byte"])
@pytest.mark.parametrize("n_images", [N_IMG, 700], ids=["small", "large"])  # 700 images: > 8 MB, memory-mapped
def test_preprocessed_truncated(tmp_path, mmap, cut, n_images):
    d = _valid_preprocessed()
    d["preprocessed_eeg_data"] = np.zeros((n_images, N_REP, len(CH), 500), dtype=np.float32)
    d["times"] = np.arange(500) / 250.0
    full = tmp_path / "full" / "preprocessed_eeg_training.npy"
    save_npy_dict(full, d)
    assert read_preprocessed(full, mmap=mmap).n_images == n_images
    raw = full.read_bytes()
    path = tmp_path / "preprocessed_eeg_training.npy"
    path.write_bytes(raw[: len(raw) // 2] if cut == "half" else raw[:-1])
    err = _refused(lambda: read_preprocessed(path, mmap=mmap), path, None)
    assert "corrupt" in str(err) or "truncated" in str(err), str(err)


def test_preprocessed_missing_file(tmp_path):
    path = tmp_path / "sub-01" / "preprocessed_eeg_training.npy"
    _refused(lambda: read_preprocessed(path), path, None, "not found")


def test_preprocessed_folder_instead_of_file(tmp_path):
    path = tmp_path / "preprocessed_eeg_training.npy"
    path.mkdir()
    _refused(lambda: read_preprocessed(path), path, None, "not a file")


class _Marker:
    """A pickle that, if unpickled with the plain unpickler, would create a file."""

    def __init__(self, source: Path, target: Path):
        self.source, self.target = source, target

    def __reduce__(self):
        return (shutil.copyfile, (str(self.source), str(self.target)))


def test_preprocessed_pickle_runs_no_code(tmp_path):
    marker = tmp_path / "pwned"
    (tmp_path / "source.txt").write_text("x")
    d = _valid_preprocessed()
    d["ch_names"] = _Marker(tmp_path / "source.txt", marker)
    path = tmp_path / "preprocessed_eeg_training.npy"
    array = np.empty((), dtype=object)
    array[()] = d
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, np.lib.format.header_data_from_array_1_0(array))
        pickle.dump(array, fh, protocol=3)
    with pytest.raises(ForbiddenPickleError) as info:
        read_preprocessed(path)
    _assert_names(info.value, path, None)
    assert "shutil.copyfile" in str(info.value), str(info.value)
    assert not marker.exists(), "code from the file ran"


# -- raw sessions ------------------------------------------------------------------------

RAW_CH = ("O1", "Oz", "O2")
RAW_N_IMAGES = 5


def _valid_raw(path: Path) -> dict:
    rng = np.random.default_rng(1)
    n = 3000
    stim = np.zeros(n)
    for i, code in enumerate([1, 2, 3, CATCH_CODE, 4, 5]):
        stim[200 + 400 * i] = code
    write_raw_session(path, rng.standard_normal((len(RAW_CH), n)) * 1e-5, stim, RAW_CH, 1000.0)
    return load_npy_dict(path, mmap=False)


def _rename_stim(d):
    d["ch_names"] = [n if n != "stim" else "STI 014" for n in d["ch_names"]]


def _eeg_value(value):
    def edit(d):
        data = np.array(d["raw_eeg_data"])
        data[1, 1234] = value
        d["raw_eeg_data"] = data
    return edit


def _stim_code(code):
    def edit(d):
        data = np.array(d["raw_eeg_data"])
        data[-1, 2800] = code
        d["raw_eeg_data"] = data
    return edit


def _as_dtype(dtype):
    def edit(d):
        with np.errstate(over="ignore", invalid="ignore"):  # float16 makes the catch code 99999 inf
            d["raw_eeg_data"] = np.asarray(d["raw_eeg_data"]).astype(dtype)
    return edit


RAW_CASES = {
    # id: (edit, reader keyword arguments, field named, word in the message)
    "missing raw_eeg_data": (_drop("raw_eeg_data"), {}, "raw_eeg_data", "missing"),
    "missing ch_names": (_drop("ch_names"), {}, "ch_names", "missing"),
    "missing ch_types": (_drop("ch_types"), {}, "ch_types", "missing"),
    "missing sfreq": (_drop("sfreq"), {}, "sfreq", "missing"),
    "data 1-D": (_set("raw_eeg_data", lambda d: np.asarray(d["raw_eeg_data"])[0]), {}, "raw_eeg_data", "2-D"),
    "no stim channel": (_rename_stim, {}, "ch_names", "stim"),
    "ch_names length": (_set("ch_names", lambda d: d["ch_names"][1:]), {}, "ch_names", "rows"),
    "ch_types too short": (_set("ch_types", lambda d: d["ch_types"][1:]), {}, "ch_types", "3 types"),
    "ch_types too long": (_set("ch_types", lambda d: ["eeg"] + d["ch_types"]), {}, "ch_types", "5 types"),
    "ch_types unknown type": (_set("ch_types", lambda d: ["brainwave"] + d["ch_types"][1:]), {}, "ch_types", "brainwave"),
    "sfreq string": (_set("sfreq", "1000 Hz"), {}, "sfreq", "number"),
    "sfreq None": (_set("sfreq", None), {}, "sfreq", "number"),
    "sfreq NaN": (_set("sfreq", float("nan")), {}, "sfreq", "number"),
    "sfreq negative": (_set("sfreq", -1000.0), {}, "sfreq", "positive"),
    "sfreq zero": (_set("sfreq", 0.0), {}, "sfreq", "positive"),
    "sfreq not 1000": (_set("sfreq", 500.0), {"sfreq": 1000.0}, "sfreq", "expected 1000"),
    "highpass string": (_set("highpass", "0.01 Hz"), {}, "highpass", "number"),
    "EEG NaN": (_eeg_value(np.nan), {}, "raw_eeg_data", "non-finite"),
    "EEG Inf": (_eeg_value(np.inf), {}, "raw_eeg_data", "non-finite"),
    "stim code above n_images": (_stim_code(RAW_N_IMAGES + 2), {"n_images": RAW_N_IMAGES}, "raw_eeg_data",
                                 str(RAW_N_IMAGES + 2)),
    "stim code 99998": (_stim_code(CATCH_CODE - 1), {"n_images": RAW_N_IMAGES}, "raw_eeg_data", str(CATCH_CODE - 1)),
    "stim code fractional": (_stim_code(2.5), {}, "raw_eeg_data", "integer"),
    "stim code negative": (_stim_code(-3), {}, "raw_eeg_data", "integer"),
    "stim Inf": (_stim_code(np.inf), {}, "raw_eeg_data", "row 'stim' has non-finite values"),
    "stim NaN": (_stim_code(np.nan), {}, "raw_eeg_data", "row 'stim' has non-finite values"),
    "stim code 1e12": (_stim_code(1e12), {}, "raw_eeg_data", "code 1000000000000 at sample 2800"),
    "stim code 2**31": (_stim_code(2.0**31), {}, "raw_eeg_data", "32-bit"),
    "data float16": (_as_dtype(np.float16), {}, "raw_eeg_data", "is float16"),
    "data longdouble": (_as_dtype(np.longdouble), {}, "raw_eeg_data", "store float32 or float64"),
    "data int32": (_as_dtype(np.int32), {}, "raw_eeg_data", "is int32"),
    "data int8": (_as_dtype(np.int8), {}, "raw_eeg_data", "is int8"),
    "data uint16": (_as_dtype(np.uint16), {}, "raw_eeg_data", "is uint16"),
    "data bool": (_as_dtype(bool), {}, "raw_eeg_data", "is bool"),
    "data complex": (_as_dtype(np.complex128), {}, "raw_eeg_data", "is complex128"),
    "data object": (_as_dtype(object), {}, "raw_eeg_data", "is object"),
    "ch_names duplicated": (_set("ch_names", lambda d: ["O1", "O1"] + d["ch_names"][2:]), {}, "ch_names", "duplicate"),
}


@pytest.mark.parametrize("edit, kwargs, field, word", list(RAW_CASES.values()), ids=list(RAW_CASES))
def test_raw_bad_content(tmp_path, edit, kwargs, field, word):
    path = tmp_path / "ses-01" / "raw_eeg_training.npy"
    d = _valid_raw(path)
    # the unedited file is fine with the same arguments: the refusal below is the edit's doing
    session = read_raw_session(path, **kwargs)
    assert session.events[:, 2].tolist() == [1, 2, 3, 4, 5]
    assert session.catch_events[:, 2].tolist() == [CATCH_CODE]
    edit(d)
    save_npy_dict(path, d)
    _refused(lambda: read_raw_session(path, **kwargs), path, field, word)


def test_raw_float32_is_read_like_float64(tmp_path):
    """float32 holds EEG and every code up to 2**24: the valid counterpart of the dtype refusals."""
    path = tmp_path / "ses-01" / "raw_eeg_training.npy"
    d = _valid_raw(path)
    reference = read_raw_session(path)
    d["raw_eeg_data"] = np.asarray(d["raw_eeg_data"]).astype(np.float32)
    save_npy_dict(path, d)
    session = read_raw_session(path)
    np.testing.assert_array_equal(session.events, reference.events)
    np.testing.assert_allclose(session.raw.get_data(), reference.raw.get_data(), rtol=1e-6)


def test_raw_eeg_non_finite_names_the_channel(tmp_path):
    path = tmp_path / "ses-01" / "raw_eeg_training.npy"
    d = _valid_raw(path)
    _eeg_value(np.inf)(d)
    save_npy_dict(path, d)
    _refused(lambda: read_raw_session(path), path, "raw_eeg_data", "non-finite", "Oz")


def test_raw_not_a_dict_and_truncated(tmp_path):
    path = tmp_path / "raw_eeg_test.npy"
    np.save(path, np.zeros((4, 100)))
    _refused(lambda: read_raw_session(path), path, None, "dict")
    full = tmp_path / "full" / "raw_eeg_test.npy"
    _valid_raw(full)
    raw = full.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    err = _refused(lambda: read_raw_session(path), path, None)
    assert "corrupt" in str(err) or "truncated" in str(err), str(err)
    _refused(lambda: read_raw_session(tmp_path / "nope" / "raw_eeg_test.npy"),
             tmp_path / "nope" / "raw_eeg_test.npy", None, "not found")


# -- image metadata and image set --------------------------------------------------------


def _copy_image_set(tiny_dataset, tmp_path) -> Path:
    dst = tmp_path / "image_set"
    shutil.copytree(tiny_dataset / "image_set", dst)
    return dst


def _metadata(tiny_dataset) -> dict:
    return {k: list(v) for k, v in read_image_metadata(tiny_dataset / "image_set" / "image_metadata.npy").items()}


@pytest.mark.parametrize("key", ["train_img_files", "test_img_concepts", "test_img_concepts_THINGS"])
def test_image_metadata_missing_key(tiny_dataset, tmp_path, key):
    meta = _metadata(tiny_dataset)
    del meta[key]
    path = save_npy_dict(tmp_path / "image_metadata.npy", meta)
    _refused(lambda: read_image_metadata(path), path, key, "missing")


@pytest.mark.parametrize("key", ["train_img_concepts", "train_img_concepts_THINGS", "test_img_concepts"])
def test_image_metadata_unequal_lengths(tiny_dataset, tmp_path, key):
    meta = _metadata(tiny_dataset)
    meta[key] = meta[key][:-1]
    path = write_image_metadata(tmp_path / "image_metadata.npy", meta)
    _refused(lambda: read_image_metadata(path), path, key, "entries")


def test_image_metadata_not_strings(tiny_dataset, tmp_path):
    meta = _metadata(tiny_dataset)
    meta["test_img_files"] = list(range(len(meta["test_img_files"])))
    path = save_npy_dict(tmp_path / "image_metadata.npy", meta)
    _refused(lambda: read_image_metadata(path), path, "test_img_files", "strings")


def test_image_set_listed_file_missing(tiny_dataset, tmp_path):
    root = _copy_image_set(tiny_dataset, tmp_path)
    images = load_image_set(root, "training")
    victim = images.path(3)
    victim.unlink()
    err = _refused(lambda: load_image_set(root, "training"), victim, None, "missing")
    assert str(victim) in str(err)
    _refused(lambda: images.check_files(), victim, None, "missing")
    _refused(lambda: images.open(3), victim, None, "missing")


def test_image_set_unlisted_extra_file(tiny_dataset, tmp_path):
    root = _copy_image_set(tiny_dataset, tmp_path)
    images = load_image_set(root, "test")
    extra = images.path(0).with_name("extra_99s.jpg")
    shutil.copyfile(images.path(0), extra)
    err = _refused(lambda: load_image_set(root, "test"), root / "image_metadata.npy", "test_img_files")
    assert f"{len(images)} images" in str(err) and f"{len(images) + 1} image files" in str(err), str(err)


@pytest.mark.parametrize("content", [b"\x00garbage, not a JPEG" * 20, None], ids=["garbage", "truncated JPEG"])
def test_image_unreadable(tiny_dataset, tmp_path, content):
    root = _copy_image_set(tiny_dataset, tmp_path)
    images = load_image_set(root, "training")
    victim = images.path(2)
    assert images.open(2).size[0] > 0
    good = victim.read_bytes()
    victim.write_bytes(content if content is not None else good[: len(good) // 3])
    _refused(lambda: images.open(2), victim, None, "unreadable")
    _refused(lambda: images.check_files(open_images=True), victim, None, "unreadable")


# -- preprocessing spec ------------------------------------------------------------------

SPEC_CASES = {
    # id: (dict, field)
    "unknown field": ({"sfreq": 250.0, "notch": 50.0}, "preprocessing.notch"),
    "not an object": (["O1", "O2"], "preprocessing"),
    "channels a string": ({"channels": "O1,O2"}, "preprocessing.channels"),
    "channels not names": ({"channels": [1, 2]}, "preprocessing.channels"),
    "channels duplicated": ({"channels": ["O1", "O1"]}, "preprocessing.channels"),
    "sfreq negative": ({"sfreq": -250.0}, "preprocessing.sfreq"),
    "sfreq zero": ({"sfreq": 0}, "preprocessing.sfreq"),
    "sfreq string": ({"sfreq": "250"}, "preprocessing.sfreq"),
    "sfreq boolean": ({"sfreq": True}, "preprocessing.sfreq"),
    "tmin string": ({"tmin": "0"}, "preprocessing.tmin"),
    "tmax equal tmin": ({"tmin": 0.5, "tmax": 0.5}, "preprocessing.tmax"),
    "tmax below tmin": ({"tmin": 0.5, "tmax": 0.1}, "preprocessing.tmax"),
    "tmax off grid": ({"tmax": 1.001}, "preprocessing.tmax"),
    "baseline after tmax": ({"baseline": [1.0, 1.2]}, "preprocessing.baseline"),
    "baseline reversed": ({"baseline": [0.0, -0.2]}, "preprocessing.baseline"),
    "baseline not a list": ({"baseline": 0.2}, "preprocessing.baseline"),
    "baseline three values": ({"baseline": [-0.2, -0.1, 0.0]}, "preprocessing.baseline"),
    "baseline not numbers": ({"baseline": ["start", 0.0]}, "preprocessing.baseline"),
    "l_freq negative": ({"l_freq": -1.0}, "preprocessing.l_freq"),
    "h_freq below l_freq": ({"l_freq": 30.0, "h_freq": 10.0}, "preprocessing.h_freq"),
    "filter_order float": ({"filter_order": 4.5}, "preprocessing.filter_order"),
    "norm_mean length": ({"channels": ["O1", "O2"], "norm_mean": [0.0], "norm_std": [1.0, 1.0]},
                         "preprocessing.norm_mean"),
    "norm_std length": ({"channels": ["O1", "O2"], "norm_mean": [0.0, 0.0], "norm_std": [1.0]},
                        "preprocessing.norm_std"),
    "norm_std without norm_mean": ({"channels": ["O1"], "norm_std": [1.0]}, "preprocessing.norm_std"),
    "norm_std zero": ({"channels": ["O1"], "norm_mean": [0.0], "norm_std": [0.0]}, "preprocessing.norm_std"),
    "norm_mean not numbers": ({"channels": ["O1"], "norm_mean": ["x"], "norm_std": [1.0]}, "preprocessing.norm_mean"),
    "channel_pattern invalid regex": ({"channel_pattern": "^(O|P"}, "preprocessing.channel_pattern"),
    "channel_pattern not a string": ({"channel_pattern": 5}, "preprocessing.channel_pattern"),
}


@pytest.mark.parametrize("data, field", list(SPEC_CASES.values()), ids=list(SPEC_CASES))
def test_spec_from_dict_refuses(data, field):
    with pytest.raises(DataFormatError) as info:
        PreprocessingSpec.from_dict(data, source="model/spec.json")
    _assert_names(info.value, "model/spec.json", field)


def test_spec_from_dict_roundtrip_is_accepted():
    """The valid counterpart of the cases above: what to_dict writes is read back."""
    spec = PreprocessingSpec(channels=("O1", "O2"), norm_mean=(0.0, 1.0), norm_std=(1.0, 2.0))
    assert PreprocessingSpec.from_dict(spec.to_dict(), source="model/spec.json") == spec


def test_select_channels_lists_missing_names():
    have = ["O1", "Oz", "O2", "Pz"]
    with pytest.raises(DataFormatError) as info:
        select_channels(have, ["O1", "PO7", "Oz", "Iz"], source="rec/raw_eeg_training.npy")
    _assert_names(info.value, "rec/raw_eeg_training.npy", "ch_names")
    missing_part = str(info.value).split("missing", 1)[1].split("(available", 1)[0]
    assert "PO7" in missing_part and "Iz" in missing_part
    assert "O1" not in missing_part and "Oz" not in missing_part
    with pytest.raises(DataFormatError) as info:
        select_channels(have, "^T", source="rec/raw_eeg_training.npy")
    _assert_names(info.value, "rec/raw_eeg_training.npy", "ch_names")
    assert "'^T'" in str(info.value)


def test_spec_resolve_lists_missing_names():
    spec = PreprocessingSpec(channels=("O1", "PO8", "Oz"))
    with pytest.raises(DataFormatError) as info:
        spec.resolve(["O1", "Oz", "O2"], source="stream:BioSemi")
    assert "stream:BioSemi" in str(info.value) and info.value.field == "ch_names"
    assert "PO8" in str(info.value).split("(available", 1)[0]
    with pytest.raises(DataFormatError) as info:
        PreprocessingSpec(channel_pattern="^P").resolve(["O1", "Oz"], source="stream:BioSemi")
    assert "stream:BioSemi" in str(info.value) and "'^P'" in str(info.value)


# -- the data folder ---------------------------------------------------------------------


def test_things_eeg2_folder_missing(tmp_path):
    path = tmp_path / "THINGS-EEG2"
    _refused(lambda: ThingsEEG2(path), path, None, "not found")
    assert not path.exists()


def test_things_eeg2_subject_not_present(tiny_dataset):
    ds = ThingsEEG2(tiny_dataset)
    have = ds.subjects()
    assert have, "the fixture has subjects"
    absent = max(have) + 5
    for call in (lambda: ds.preprocessed_path(absent, "training"), lambda: ds.raw_paths(absent, "test"),
                 lambda: ds.preprocessed(absent, "test")):
        with pytest.raises(DataFormatError) as info:
            call()
        msg = str(info.value)
        assert f"sub-{absent:02d}" in msg, msg
        assert f"subjects here: {', '.join(map(str, have))}" in msg, msg


def test_things_eeg2_missing_preprocessed_and_raw(tiny_dataset, tmp_path):
    _copy_image_set(tiny_dataset, tmp_path)
    (tmp_path / "preprocessed_data" / "sub-01").mkdir(parents=True)
    (tmp_path / "raw_data" / "sub-01" / "ses-01").mkdir(parents=True)
    ds = ThingsEEG2(tmp_path)
    expected = tmp_path / "preprocessed_data" / "sub-01" / "preprocessed_eeg_training.npy"
    err = _refused(lambda: ds.preprocessed(1, "training"), expected, None, "not found")
    assert str(expected) in str(err)
    _refused(lambda: ds.raw_sessions(1, "test"), tmp_path / "raw_data" / "sub-01", None, "raw_eeg_test.npy")


def _partial_folder(tiny_dataset, root, *, raw=(), preprocessed=()):
    """A THINGS-EEG2 folder linking to the tiny set's image set and to the given subjects'
    raw and preprocessed folders only."""
    root.mkdir(exist_ok=True)
    (root / "image_set").symlink_to(tiny_dataset / "image_set", target_is_directory=True)
    for base, subjects in (("raw_data", raw), ("preprocessed_data", preprocessed)):
        (root / base).mkdir()
        for s in subjects:
            (root / base / f"sub-{s:02d}").symlink_to(tiny_dataset / base / f"sub-{s:02d}", target_is_directory=True)
    return root


def _names_missing(err, root, base, subject, *words):
    missing = root / base / f"sub-{subject:02d}"
    _assert_names(err, missing, None)
    msg = str(err)
    assert msg.startswith(f"{missing}: missing"), msg
    for word in words:
        assert word in msg, f"{word!r} not in: {msg}"


def test_subject_with_preprocessed_data_only(tiny_dataset, tmp_path):
    from trainer.datasets import load_fit_data, load_test_data

    root = _partial_folder(tiny_dataset, tmp_path / "data", raw=[1], preprocessed=[1, 2])
    ds = ThingsEEG2(root)
    assert ds.subjects() == [1, 2]
    words = ("subject 2 has preprocessed_data/sub-02 but no raw data", "--source preprocessed")
    for call in (lambda: ds.raw_paths(2, "test"), lambda: ds.raw_sessions(2, "training"),
                 lambda: load_fit_data(root, 2, source="raw")):
        with pytest.raises(DataFormatError) as info:
            call()
        _names_missing(info.value, root, "raw_data", 2, *words)
    spec = PreprocessingSpec(channels=("O1", "Oz"), norm_mean=(0.0, 0.0), norm_std=(1.0, 1.0))
    with pytest.raises(DataFormatError) as info:
        load_test_data(root, 2, spec, source="raw")
    _names_missing(info.value, root, "raw_data", 2, *words)
    # leave-one-subject-out from subject 1's raw sessions: subject 2 has none
    with pytest.raises(DataFormatError) as info:
        load_fit_data(root, 1, inter=True)
    _names_missing(info.value, root, "raw_data", 2, *words)


def test_subject_with_raw_data_only(tiny_dataset, tmp_path):
    from trainer.datasets import load_fit_data

    root = _partial_folder(tiny_dataset, tmp_path / "data", raw=[1], preprocessed=[2])
    ds = ThingsEEG2(root)
    assert ds.subjects() == [1, 2]
    words = ("subject 1 has raw_data/sub-01 but no preprocessed data", "--source raw")
    for call in (lambda: ds.preprocessed_path(1, "test"), lambda: ds.preprocessed(1, "training"),
                 lambda: load_fit_data(root, 1, source="preprocessed")):
        with pytest.raises(DataFormatError) as info:
            call()
        _names_missing(info.value, root, "preprocessed_data", 1, *words)
    # another preprocessed variant folder: named as such
    (root / "preprocessed_data_63ch_250hz").mkdir()
    with pytest.raises(DataFormatError) as info:
        ds.preprocessed(1, "test", folder="preprocessed_data_63ch_250hz")
    _names_missing(info.value, root, "preprocessed_data_63ch_250hz", 1, "subject 1 has raw_data/sub-01 but no data in "
                   "preprocessed_data_63ch_250hz/")


def test_subject_folders_are_two_digit_numbers(tiny_dataset, tmp_path):
    root = _partial_folder(tiny_dataset, tmp_path / "data", raw=[1])
    (root / "raw_data" / "sub-3").mkdir()  # not how THINGS names subject 3: not a subject
    ds = ThingsEEG2(root)
    assert ds.subjects() == [1]
    with pytest.raises(DataFormatError) as info:
        ds.raw_paths(3, "test")
    _names_missing(info.value, root, "raw_data", 3, "subject 3 not found (subjects here: 1)")
    with pytest.raises(UsageTypeError, match="subject"):
        ds.raw_paths("1", "test")
    with pytest.raises(UsageTypeError, match="subject"):
        ds.raw_paths(True, "test")
    with pytest.raises(UsageError, match="subject"):
        ds.raw_paths(0, "test")


def test_things_eeg2_no_image_metadata(tmp_path):
    (tmp_path / "preprocessed_data" / "sub-01").mkdir(parents=True)
    ds = ThingsEEG2(tmp_path)
    _refused(lambda: ds.preprocessed(1, "training"), tmp_path, "image_metadata.npy", "not found")


# -- THINGS-MEG --------------------------------------------------------------------------


def test_meg_missing_file(tmp_path):
    path = tmp_path / "derivatives" / "preprocessed" / "preprocessed_P1-epo.fif"
    _refused(lambda: read_things_meg(path), path, None, "not found")


def _small_epochs_fif(path: Path) -> None:
    import mne

    info = mne.create_info(["MLO11-4408", "MRO11-4408", "MZO01-4408"], 200.0, "mag", verbose="error")
    data = np.random.default_rng(2).standard_normal((4, 3, 240)) * 1e-13
    events = np.c_[np.arange(4) * 300, np.zeros(4, int), [1, 2, 3, 3]]
    mne.EpochsArray(data, info, events, tmin=-0.1, event_id={"training/a": 1, "training/b": 2, "test/c": 3},
                    verbose="error").save(path, verbose="error")


@pytest.mark.parametrize("kind", ["garbage", "text", "truncated FIF"])
def test_meg_not_fif(tmp_path, kind):
    path = tmp_path / "preprocessed_P1-epo.fif"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(3).bytes(4096))
    elif kind == "text":
        path.write_text("this is not a FIF file\n")
    else:
        _small_epochs_fif(path)
        train, test = read_things_meg(path, test_repetitions=2)  # the whole file is readable
        assert (train.n_images, test.n_images) == (2, 1)
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
    _refused(lambda: read_things_meg(path), path, None)


# -- command line ------------------------------------------------------------------------


def _run_cli(capsys, argv) -> tuple[int, str]:
    from trainer.cli import main

    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    return code, err


def _assert_one_error_line(code: int, err: str, command: str, *words: str) -> str:
    assert code == 2, f"exit code {code}, stderr: {err}"
    assert "Traceback" not in err, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    line = lines[0]
    assert line.startswith(f"bci-train {command}: error: "), line
    for word in words:
        assert word in line, f"{word!r} not in: {line}"
    return line


def test_cli_info_missing_folder(tmp_path, capsys):
    path = tmp_path / "no_such_folder"
    code, err = _run_cli(capsys, ["info", path])
    _assert_one_error_line(code, err, "info", str(path), "not found")


def _corrupt_truncated(path: Path) -> None:
    save_npy_dict(path, _valid_preprocessed())
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def _corrupt_text(path: Path) -> None:
    path.write_text("not numpy\n")


def _corrupt_not_a_dict(path: Path) -> None:
    np.save(path, np.zeros(10))


def _corrupt_missing_key(path: Path) -> None:
    d = _valid_preprocessed()
    del d["times"]
    save_npy_dict(path, d)


def _corrupt_3d(path: Path) -> None:
    d = _valid_preprocessed()
    d["preprocessed_eeg_data"] = d["preprocessed_eeg_data"][0]
    save_npy_dict(path, d)


def _corrupt_data_list(path: Path) -> None:
    d = _valid_preprocessed()
    d["preprocessed_eeg_data"] = d["preprocessed_eeg_data"].tolist()
    save_npy_dict(path, d)


@pytest.mark.parametrize(
    "corrupt, words",
    [
        (_corrupt_truncated, ("corrupt or truncated",)),
        (_corrupt_text, ("not a valid .npy",)),
        (_corrupt_not_a_dict, ("dict",)),
        (_corrupt_missing_key, ("'times'", "missing")),
        (_corrupt_3d, ("'preprocessed_eeg_data'",)),
        (_corrupt_data_list, ("'preprocessed_eeg_data'",)),
    ],
    ids=["truncated", "text", "not a dict", "missing key", "data 3-D", "data a list"],
)
def test_cli_info_corrupt_preprocessed(tiny_dataset, tmp_path, capsys, corrupt, words):
    _copy_image_set(tiny_dataset, tmp_path)
    path = tmp_path / "preprocessed_data" / "sub-01" / "preprocessed_eeg_training.npy"
    path.parent.mkdir(parents=True)
    corrupt(path)
    before = path.read_bytes()
    code, err = _run_cli(capsys, ["info", tmp_path])
    _assert_one_error_line(code, err, "info", str(path), *words)
    assert path.read_bytes() == before


def test_cli_info_bad_raw_session(tiny_dataset, tmp_path, capsys):
    _copy_image_set(tiny_dataset, tmp_path)
    path = tmp_path / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_test.npy"
    d = _valid_raw(path)
    _stim_code(np.inf)(d)
    save_npy_dict(path, d)
    code, err = _run_cli(capsys, ["info", tmp_path])
    _assert_one_error_line(code, err, "info", str(path), "'raw_eeg_data'", "row 'stim' has non-finite values")


@pytest.mark.parametrize("content", ["{oops", "[1, 2]", '{"config": 3}'], ids=["not JSON", "a list", "config a number"])
def test_cli_info_bad_synth_json(tiny_dataset, tmp_path, capsys, content):
    _copy_image_set(tiny_dataset, tmp_path)
    (tmp_path / "synth.json").write_text(content)
    code, err = _run_cli(capsys, ["info", tmp_path])
    _assert_one_error_line(code, err, "info", str(tmp_path / "synth.json"))


def test_cli_info_valid_folder_succeeds(tiny_dataset, capsys):
    """The counterpart of the refusals above: a good folder gives exit code 0 and no error."""
    code, err = _run_cli(capsys, ["info", tiny_dataset])
    assert code == 0 and "error" not in err, err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--subjects", "0"], ("--subjects", "0")),
        (["--subjects", "-2"], ("--subjects", "-2")),
        (["--variants", "official,bogus"], ("'bogus'", "official", "63ch-250hz")),
        (["--variants", "63ch_250hz"], ("'63ch_250hz'",)),
    ],
    ids=["subjects 0", "subjects negative", "unknown variant", "misspelt variant"],
)
def test_cli_synth_bad_arguments(tmp_path, capsys, args, words):
    out = tmp_path / "synth_out"
    code, err = _run_cli(capsys, ["synth", out, *args])
    _assert_one_error_line(code, err, "synth", *words)
    assert not out.exists(), "a refused synth run must not create (or touch) the output folder"


@pytest.mark.parametrize("bad", ["truncated", "sfreq a string", "no stim"])
def test_cli_info_corrupt_raw(tiny_dataset, tmp_path, capsys, bad):
    _copy_image_set(tiny_dataset, tmp_path)
    path = tmp_path / "raw_data" / "sub-01" / "ses-01" / "raw_eeg_training.npy"
    d = _valid_raw(path)
    if bad == "truncated":
        raw = path.read_bytes()
        path.write_bytes(raw[: len(raw) // 2])
        words = ("corrupt or truncated",)
    elif bad == "sfreq a string":
        d["sfreq"] = "1000 Hz"
        save_npy_dict(path, d)
        words = ("'sfreq'",)
    else:
        _rename_stim(d)
        save_npy_dict(path, d)
        words = ("'ch_names'", "stim")
    code, err = _run_cli(capsys, ["info", tmp_path])
    _assert_one_error_line(code, err, "info", str(path), *words)
