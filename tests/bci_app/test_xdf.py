"""XDF recordings as replay sessions (:mod:`bci_app.xdf`), on files written by the test
writer next to this file."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import pytest

from bci_app.sessions import Marker, read_session
from bci_app.xdf import read_xdf
from trainer.errors import DataFormatError

_spec = importlib.util.spec_from_file_location("xdf_writer", Path(__file__).with_name("xdf_writer.py"))
xdf_writer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(xdf_writer)
write_xdf = xdf_writer.write_xdf

SFREQ = 250.0
N = 500
T0 = 51234.5678  # an LSL clock reading (seconds since the computer booted)
TIMES = T0 + np.arange(N) / SFREQ


def eeg_stream(unit="microvolts", *, name="EEG", type="EEG", labels=("Fz", "Cz", "Pz"), seed=0, **extra):
    """3 channels of float32 noise (about 20 in the unit), 2 s at 250 Hz."""
    samples = (np.random.default_rng(seed).normal(size=(N, len(labels))) * 20).astype(np.float32)
    return dict(name=name, type=type, labels=list(labels), unit=unit, nominal_srate=SFREQ,
                channel_format="float32", samples=samples, timestamps=TIMES, **extra)


def marker_stream(samples, timestamps, *, name="Markers", fmt="string"):
    return dict(name=name, type="Markers", labels=["marker"], nominal_srate=0, channel_format=fmt,
                samples=samples, timestamps=timestamps)


def bci_records(caplog):
    return [r for r in caplog.records if r.name == "bci_app"]


# ---------------------------------------------------------------------------- the writer


def test_writer_round_trips_through_pyxdf_exactly(tmp_path):
    import pyxdf

    rng = np.random.default_rng(1)
    numeric = {fmt: rng.integers(-100, 100, size=(7, 2)) for fmt in ("int8", "int16", "int32", "int64")}
    numeric["float32"] = rng.normal(size=(7, 2)).astype(np.float32)
    numeric["double64"] = rng.normal(size=(7, 2))
    stamps = 10.0 + np.arange(7) * 0.1 + rng.uniform(0, 0.01, 7)
    streams = [dict(name=f, type="T", labels=["a", "b"], unit="V", nominal_srate=10, channel_format=f,
                    samples=v, timestamps=stamps, chunk_size=3) for f, v in numeric.items()]
    strings = ["x", "", "Stimulus/S  1", "\u00b5V \u2603", "a" * 300, "y", "z"]
    streams.append(marker_stream(strings, stamps))
    path = write_xdf(tmp_path / "all.xdf", streams)

    loaded, header = pyxdf.load_xdf(str(path), dejitter_timestamps=False, synchronize_clocks=False)
    assert header["info"]["version"] == ["1.0"]
    assert [s["info"]["name"][0] for s in loaded] == [*numeric, "Markers"]
    for s, (fmt, values) in zip(loaded, numeric.items()):
        assert s["info"]["channel_format"] == [fmt]
        assert s["time_series"].dtype == np.dtype(xdf_writer.NUMERIC_FORMATS[fmt])
        np.testing.assert_array_equal(s["time_series"], values)
        np.testing.assert_array_equal(s["time_stamps"], stamps)
        channels = s["info"]["desc"][0]["channels"][0]["channel"]
        assert [c["label"][0] for c in channels] == ["a", "b"]
        assert [c["unit"][0] for c in channels] == ["V", "V"]
        assert s["footer"]["info"]["sample_count"] == ["7"]
        assert float(s["footer"]["info"]["last_timestamp"][0]) == stamps[-1]
    assert [row[0] for row in loaded[-1]["time_series"]] == strings
    np.testing.assert_array_equal(loaded[-1]["time_stamps"], stamps)


# ---------------------------------------------------------------------------- the reader


def test_eeg_and_string_markers_round_trip(tmp_path):
    eeg = eeg_stream()
    at = np.array([0, 10, 137, 250, N - 1])
    labels = ["17", "Stimulus/S  5", "rest", "stim/3", "99999"]
    path = write_xdf(tmp_path / "rec.xdf", [eeg, marker_stream(labels, TIMES[at])])

    session = read_xdf(path)

    assert session.source == str(path)
    assert session.ch_names == ["Fz", "Cz", "Pz"]
    assert session.sfreq == SFREQ
    assert session.raw.n_times == N
    assert session.raw.get_channel_types() == ["eeg"] * 3
    np.testing.assert_allclose(session.raw.get_data(), eeg["samples"].T.astype(np.float64) * 1e-6, rtol=1e-12)
    assert session.markers == [Marker(0, 17, "17"), Marker(10, 5, "Stimulus/S  5"), Marker(137, None, "rest"),
                               Marker(250, 3, "stim/3"), Marker(N - 1, 99999, "99999")]


def test_markers_between_samples_go_to_the_nearest(tmp_path):
    period = 1 / SFREQ
    stamps = [TIMES[20] + 0.4 * period, TIMES[20] + 0.6 * period, TIMES[300] - 0.45 * period]
    path = write_xdf(tmp_path / "rec.xdf", [eeg_stream(), marker_stream(["a", "b", "c"], stamps)])
    assert [(m.sample, m.label) for m in read_xdf(path).markers] == [(20, "a"), (21, "b"), (300, "c")]


def test_jittered_signal_is_dejittered_before_placing_markers(tmp_path):
    import pyxdf

    jitter = np.random.default_rng(3).uniform(-0.5e-3, 0.5e-3, N)
    at = [50, 150, 250, 350]
    for k in at:  # samples k and k+1 stamped 1.5 ms early
        jitter[k] = jitter[k + 1] = -1.5e-3
    eeg = eeg_stream()
    eeg["timestamps"] = TIMES + jitter
    # 1.1 ms after the nominal time of sample k: nearest the jittered stamp of k+1, but
    # nearest sample k once pyxdf has dejittered the signal's time stamps
    stamps = TIMES[at] + 1.1e-3
    path = write_xdf(tmp_path / "rec.xdf", [eeg, marker_stream([str(k) for k in at], stamps)])
    raw_stamps = pyxdf.load_xdf(str(path), dejitter_timestamps=False)[0][0]["time_stamps"]
    assert [int(np.argmin(np.abs(raw_stamps - t))) for t in stamps] == [k + 1 for k in at]

    markers = read_xdf(path).markers
    assert [m.sample for m in markers] == at
    assert [m.code for m in markers] == at


def test_numeric_marker_streams_give_codes(tmp_path):
    ints = marker_stream(np.array([1, 42, 7, -3], dtype=np.int32), TIMES[[5, 100, 101, 400]], name="Codes",
                         fmt="int32")
    floats = marker_stream(np.array([3.0, 2.5]), TIMES[[50, 60]], name="Floats", fmt="double64")
    path = write_xdf(tmp_path / "rec.xdf", [ints, eeg_stream(), floats])

    markers = read_xdf(path).markers

    assert markers == [Marker(5, 1, "1"), Marker(50, 3, "3"), Marker(60, None, "2.5"), Marker(100, 42, "42"),
                       Marker(101, 7, "7"), Marker(400, -3, "-3")]


def _two_signal_file(tmp_path):
    aux = dict(name="Aux", type="Accelerometer", labels=["x", "y", "z", "w"], unit="g", nominal_srate=100.0,
               channel_format="double64", samples=np.arange(800.0).reshape(200, 4),
               timestamps=T0 + np.arange(200) / 100.0)
    streams = [aux, eeg_stream(name="EEG-A"),
               marker_stream(["on", "off"], TIMES[[10, 20]], name="Markers"),
               marker_stream(["flash"], TIMES[[30]], name="Photodiode")]
    return write_xdf(tmp_path / "two.xdf", streams), aux


def test_default_picks_the_eeg_stream_and_all_marker_streams(tmp_path):
    path, _ = _two_signal_file(tmp_path)
    session = read_xdf(path)
    assert session.ch_names == ["Fz", "Cz", "Pz"]
    assert [(m.sample, m.label) for m in session.markers] == [(10, "on"), (20, "off"), (30, "flash")]


def test_stream_and_markers_select_by_name(tmp_path, caplog):
    path, aux = _two_signal_file(tmp_path)
    with caplog.at_level(logging.WARNING, logger="bci_app"):
        session = read_xdf(path, stream="Aux", markers="Photodiode")
    assert session.ch_names == ["x", "y", "z", "w"]
    assert session.sfreq == 100.0
    assert session.raw.get_channel_types() == ["misc"] * 4
    np.testing.assert_array_equal(session.raw.get_data(), aux["samples"].T)  # unit 'g' unknown: unchanged
    assert session.markers == [Marker(12, None, "flash")]  # 30 / 250 s at 100 Hz
    warnings = [r.getMessage() for r in bci_records(caplog)]
    assert len(warnings) == 1 and "'g'" in warnings[0] and "4 channel" in warnings[0]


def test_without_an_eeg_stream_the_widest_regular_stream_is_used(tmp_path):
    gaze = dict(name="Gaze", type="Gaze", labels=["x", "y"], unit="pixels", nominal_srate=60.0,
                channel_format="float32", samples=np.zeros((60, 2)), timestamps=T0 + np.arange(60) / 60)
    path = write_xdf(tmp_path / "rec.xdf", [gaze, eeg_stream(name="ExG", type="ExG", labels=list("abcde"))])
    session = read_xdf(path)
    assert session.ch_names == list("abcde")
    assert session.raw.get_channel_types() == ["misc"] * 5
    assert session.markers == []


@pytest.mark.parametrize(("kwargs", "field", "problem"), [
    (dict(stream="Nope"), "stream", "no stream named 'Nope'"),
    (dict(markers="Nope"), "markers", "no stream named 'Nope'"),
    (dict(stream="Markers"), "stream", "'Markers' is not a regular-rate numeric stream"),
    (dict(markers="Aux"), "markers", "'Aux' has a regular rate"),
])
def test_unknown_or_unfit_stream_names_are_errors_listing_the_streams(tmp_path, kwargs, field, problem):
    path, _ = _two_signal_file(tmp_path)
    with pytest.raises(DataFormatError) as info:
        read_xdf(path, **kwargs)
    assert info.value.path == str(path)
    assert info.value.field == field
    assert problem in info.value.problem
    if "no stream named" in problem:
        for name in ("'Aux'", "'EEG-A'", "'Markers'", "'Photodiode'"):
            assert name in info.value.problem


def test_file_with_only_an_irregular_stream_is_an_error(tmp_path):
    path = write_xdf(tmp_path / "markers.xdf", [marker_stream(["a", "b"], [1.0, 2.0])])
    with pytest.raises(DataFormatError, match="no regular-rate numeric stream") as info:
        read_xdf(path)
    assert "'Markers'" in info.value.problem


def test_regular_string_stream_is_not_a_signal(tmp_path):
    text = dict(name="Text", type="EEG", labels=["t"], nominal_srate=10.0, channel_format="string",
                samples=["a"] * 5, timestamps=T0 + np.arange(5) / 10)
    path = write_xdf(tmp_path / "text.xdf", [text])
    with pytest.raises(DataFormatError, match="no regular-rate numeric stream"):
        read_xdf(path)


def test_empty_signal_stream_is_an_error(tmp_path):
    empty = eeg_stream()
    empty["samples"] = np.zeros((0, 3), dtype=np.float32)
    empty["timestamps"] = []
    empty["clock_offsets"] = [(T0, 0.0)]
    path = write_xdf(tmp_path / "empty.xdf", [empty, marker_stream(["a"], [T0])])
    with pytest.raises(DataFormatError, match="'EEG' has no samples") as info:
        read_xdf(path)
    assert info.value.field == "stream"


def test_markers_outside_the_signal_are_dropped_with_one_warning(tmp_path, caplog):
    half = 0.5 / SFREQ
    stamps = [T0 - 1.0, T0 - 0.8 * half, TIMES[42], TIMES[-1] + 0.8 * half, TIMES[-1] + 1.2 * half,
              TIMES[-1] + 5.0]
    path = write_xdf(tmp_path / "rec.xdf", [eeg_stream(), marker_stream(list("abcdef"), stamps)])
    with caplog.at_level(logging.WARNING, logger="bci_app"):
        session = read_xdf(path)
    assert [(m.sample, m.label) for m in session.markers] == [(0, "b"), (42, "c"), (N - 1, "d")]
    warnings = [r.getMessage() for r in bci_records(caplog)]
    assert len(warnings) == 1 and "3 marker(s)" in warnings[0]


def test_clock_offsets_bring_markers_into_the_signal_clock(tmp_path):
    # the marker computer's clock is 0.25 s behind the recording computer's
    stim = marker_stream(["1", "2"], TIMES[[100, 200]] - 0.25)
    stim["clock_offsets"] = [(T0, 0.25)]
    path = write_xdf(tmp_path / "rec.xdf", [eeg_stream(), stim])
    assert [m.sample for m in read_xdf(path).markers] == [100, 200]


@pytest.mark.parametrize(("unit", "factor", "warned"), [
    ("microvolts", 1e-6, False), ("uV", 1e-6, False), ("\u00b5V", 1e-6, False), ("\u03bcV", 1e-6, False),
    ("volts", 1.0, False), ("V", 1.0, False), ("millivolts", 1e-3, False), ("furlongs", 1.0, True),
    (None, 1.0, True),
])
def test_units(tmp_path, caplog, unit, factor, warned):
    eeg = eeg_stream(unit)
    path = write_xdf(tmp_path / "rec.xdf", [eeg])
    with caplog.at_level(logging.WARNING, logger="bci_app"):
        session = read_xdf(path)
    np.testing.assert_allclose(session.raw.get_data(), eeg["samples"].T.astype(np.float64) * factor, rtol=1e-12)
    assert len(bci_records(caplog)) == int(warned)


def test_per_channel_units_scale_each_channel(tmp_path, caplog):
    eeg = eeg_stream(["uV", "V", "K"])
    path = write_xdf(tmp_path / "rec.xdf", [eeg])
    with caplog.at_level(logging.WARNING, logger="bci_app"):
        data = read_xdf(path).raw.get_data()
    np.testing.assert_allclose(data, eeg["samples"].T * np.array([[1e-6], [1.0], [1.0]]), rtol=1e-6)
    assert "'K'" in bci_records(caplog)[0].getMessage()


def test_missing_labels_and_duplicates_give_unique_names(tmp_path):
    bare = eeg_stream()
    del bare["labels"]
    path = write_xdf(tmp_path / "bare.xdf", [bare])
    assert read_xdf(path).ch_names == ["ch1", "ch2", "ch3"]

    dup = eeg_stream(labels=("A", "A", "B"))
    path = write_xdf(tmp_path / "dup.xdf", [dup])
    assert read_xdf(path).ch_names == ["A-0", "A-1", "B"]


def test_nan_samples_are_kept(tmp_path):
    eeg = eeg_stream()
    eeg["samples"][7, 1] = np.nan
    path = write_xdf(tmp_path / "rec.xdf", [eeg])
    data = read_xdf(path).raw.get_data()
    assert np.isnan(data[1, 7]) and np.count_nonzero(np.isnan(data)) == 1


def test_missing_or_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(DataFormatError, match="does not exist") as info:
        read_xdf(tmp_path / "nope.xdf")
    assert info.value.field == "file"

    junk = tmp_path / "junk.xdf"
    junk.write_bytes(b"not an xdf file")
    with pytest.raises(DataFormatError, match="not an XDF file") as info:
        read_xdf(junk)
    assert info.value.field == "file"

    # the magic, then a footer chunk of a stream that has no header
    broken = tmp_path / "broken.xdf"
    broken.write_bytes(b"XDF:" + bytes([1, 10]) + (6).to_bytes(2, "little") + (9).to_bytes(4, "little") + b"<a/>")
    with pytest.raises(DataFormatError, match="pyxdf cannot read it") as info:
        read_xdf(broken)
    assert info.value.field == "file"


def test_read_session_dispatches_xdf(tmp_path):
    path = write_xdf(tmp_path / "rec.XDF", [eeg_stream(), marker_stream(["5"], TIMES[[3]])])
    session = read_session(path)
    assert session.ch_names == ["Fz", "Cz", "Pz"]
    assert session.markers == [Marker(3, 5, "5")]
    assert session.source == str(path)
