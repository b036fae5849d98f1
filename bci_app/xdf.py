"""XDF recordings (LabRecorder) as replay sessions.

An XDF file holds several LSL streams, each with its own time stamps. One regular-rate
numeric stream becomes the signal to replay; the irregular-rate streams (string or
numeric) become its markers, each placed on the signal sample nearest in time (after
pyxdf's clock synchronisation, both are in the recording computer's clock).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from trainer.errors import DataFormatError

from .replay_session import Marker, ReplaySession, marker_code

__all__ = ["read_xdf"]

logger = logging.getLogger("bci_app")

#: unit (lower case) -> factor to volts
_UNIT_SCALE = {
    "microvolts": 1e-6, "microvolt": 1e-6, "uv": 1e-6, "\u00b5v": 1e-6, "\u03bcv": 1e-6,
    "millivolts": 1e-3, "millivolt": 1e-3, "mv": 1e-3,
    "volts": 1.0, "volt": 1.0, "v": 1.0,
}


def read_xdf(path: str | Path, *, stream: str | None = None, markers: str | None = None) -> ReplaySession:
    """Read an XDF recording as a session to replay.

    Parameters
    ----------
    path : str | Path
        The ``.xdf`` file.
    stream : str | None
        Name of the signal stream. By default the stream of type EEG, or else the
        regular-rate numeric stream with the most channels.
    markers : str | None
        Name of the marker stream. By default all irregular-rate streams.

    Returns
    -------
    ReplaySession
        The signal as a RawArray in volts (channels of an EEG stream are ``eeg``, others
        ``misc``) and the markers in sample order. Only the first channel of a
        multi-channel marker stream is used.

    Raises
    ------
    DataFormatError
        The file is missing or unreadable, has no regular-rate numeric stream or no
        stream of the given name, or its signal stream has no samples.
    """
    import mne
    import pyxdf

    path = Path(path)
    if not path.is_file():
        raise DataFormatError(path, "file", "does not exist")
    _check_magic(path)
    try:
        streams, _ = pyxdf.load_xdf(str(path))
    except Exception as err:  # pyxdf raises bare Exception, IOError, ValueError, ...
        raise DataFormatError(path, "file", f"pyxdf cannot read it ({type(err).__name__}: {err})") from None

    signal = _signal_stream(path, streams, stream)
    name = _name(signal)
    data = np.asarray(signal["time_series"])
    times = np.asarray(signal["time_stamps"], dtype=float)
    if data.ndim != 2 or data.shape[0] == 0 or data.shape[1] == 0 or len(times) != data.shape[0]:
        raise DataFormatError(path, "stream", f"stream {name!r} has no samples")
    sfreq = _srate(signal)
    n_channels = data.shape[1]

    channels = _channel_entries(signal["info"], n_channels)
    ch_names = _unique([_text(ch, "label") or f"ch{i + 1}" for i, ch in enumerate(channels)], path)
    scale = _scales(path, name, [_text(ch, "unit") for ch in channels])
    is_eeg = (_text(signal["info"], "type") or "").lower() == "eeg"
    info = mne.create_info(ch_names, sfreq, "eeg" if is_eeg else "misc", verbose="error")
    raw = mne.io.RawArray(data.T.astype(np.float64) * scale[:, None], info, verbose="error")

    segments = signal["info"].get("segments") or []
    if len(segments) > 1:
        logger.warning("%s: stream %r has %d breaks in its time stamps; they are replayed back to back",
                       path, name, len(segments) - 1)

    chosen = _marker_streams(path, streams, markers)
    session_markers = _place_markers(path, chosen, times, sfreq)
    return ReplaySession(raw=raw, markers=session_markers, source=str(path))


def _check_magic(path: Path) -> None:
    """Raise unless the file starts with the XDF magic ``XDF:`` (pyxdf leaves the file
    open when it does not)."""
    import gzip

    name = path.name.lower()
    opener = gzip.open if name.endswith((".xdfz", ".xdf.gz")) else open
    try:
        with opener(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise DataFormatError(path, "file", f"cannot be read ({err})") from None
    if magic != b"XDF:":
        raise DataFormatError(path, "file", "not an XDF file (it does not start with 'XDF:')")


def _child(node: Any, key: str) -> Any:
    """The first ``key`` element of a pyxdf header dict, or None."""
    if isinstance(node, dict):
        values = node.get(key)
        if isinstance(values, list) and values:
            return values[0]
    return None


def _text(node: Any, key: str) -> str | None:
    """The stripped text of the first ``key`` element, or None when absent or empty."""
    value = _child(node, key)
    if isinstance(value, str) and value.strip():
        return value.strip()
    return None


def _name(s: dict) -> str:
    return _text(s["info"], "name") or ""


def _srate(s: dict) -> float:
    return float(_text(s["info"], "nominal_srate") or 0.0)


def _is_signal(s: dict) -> bool:
    """A regular-rate numeric stream."""
    return _srate(s) > 0 and _text(s["info"], "channel_format") != "string"


def _n_channels(s: dict) -> int:
    return int(_text(s["info"], "channel_count") or 0)


def _describe(streams: list[dict]) -> str:
    """The streams of a file, for error messages."""
    parts = []
    for s in streams:
        rate = f"{_srate(s):g} Hz" if _srate(s) > 0 else "irregular"
        parts.append(f"{_name(s)!r} (type {_text(s['info'], 'type') or '?'}, {rate}, "
                     f"{_n_channels(s)} {_text(s['info'], 'channel_format') or '?'} channel(s))")
    return ", ".join(parts) if parts else "no streams"


def _signal_stream(path: Path, streams: list[dict], name: str | None) -> dict:
    """The stream to replay (see :func:`read_xdf`)."""
    if name is not None:
        named = [s for s in streams if _name(s) == name]
        if not named:
            raise DataFormatError(path, "stream", f"no stream named {name!r}; the file has {_describe(streams)}")
        usable = [s for s in named if _is_signal(s)]
        if not usable:
            raise DataFormatError(path, "stream", f"stream {name!r} is not a regular-rate numeric stream "
                                                  f"({_describe(named)})")
        return max(usable, key=_n_channels)
    candidates = [s for s in streams if _is_signal(s)]
    if not candidates:
        raise DataFormatError(path, None, f"no regular-rate numeric stream to replay; the file has "
                                          f"{_describe(streams)}")
    eeg = [s for s in candidates if (_text(s["info"], "type") or "").lower() == "eeg"]
    return max(eeg or candidates, key=_n_channels)


def _marker_streams(path: Path, streams: list[dict], name: str | None) -> list[dict]:
    """The irregular-rate streams whose samples are markers (see :func:`read_xdf`)."""
    if name is None:
        return [s for s in streams if _srate(s) == 0]
    named = [s for s in streams if _name(s) == name]
    if not named:
        raise DataFormatError(path, "markers", f"no stream named {name!r}; the file has {_describe(streams)}")
    chosen = [s for s in named if _srate(s) == 0]
    if not chosen:
        raise DataFormatError(path, "markers", f"stream {name!r} has a regular rate, it is not a marker stream "
                                               f"({_describe(named)})")
    return chosen


def _channel_entries(info: dict, n_channels: int) -> list[Any]:
    """The ``desc/channels/channel`` elements of a stream header, one per channel (None
    for channels it does not describe)."""
    channels = _child(_child(info, "desc"), "channels")
    entries = channels.get("channel", []) if isinstance(channels, dict) else []
    entries = list(entries)[:n_channels]
    return entries + [None] * (n_channels - len(entries))


def _unique(names: list[str], path: Path) -> list[str]:
    """Channel names made unique with running numbers (MNE needs unique names)."""
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    if all(c == 1 for c in counts.values()):
        return names
    taken = set(names)
    out, seen = [], {}
    for n in names:
        if counts[n] == 1:
            out.append(n)
            continue
        k = seen.get(n, 0)
        candidate = f"{n}-{k}"
        while candidate in taken:
            k += 1
            candidate = f"{n}-{k}"
        seen[n] = k + 1
        taken.add(candidate)
        out.append(candidate)
    logger.warning("%s: duplicate channel names, renamed to %s", path, ", ".join(out))
    return out


def _scales(path: Path, name: str, units: list[str | None]) -> np.ndarray:
    """Per channel factor to volts; unknown or missing units keep the values (warned once)."""
    scale = np.ones(len(units))
    unknown: dict[str, int] = {}
    for i, unit in enumerate(units):
        factor = None if unit is None else _UNIT_SCALE.get(unit.lower())
        if factor is None:
            key = "(none)" if unit is None else repr(unit)
            unknown[key] = unknown.get(key, 0) + 1
        else:
            scale[i] = factor
    if unknown:
        logger.warning("%s: stream %r: unit %s not known; the values of %d channel(s) are used unchanged",
                       path, name, ", ".join(unknown), sum(unknown.values()))
    return scale


def _labels(s: dict) -> list[str]:
    """The marker labels of an irregular stream (first channel)."""
    series = s["time_series"]
    if _text(s["info"], "channel_format") == "string":
        return [str(row[0]) if len(row) else "" for row in series]
    values = np.asarray(series)
    if values.ndim != 2 or values.shape[1] == 0:
        return [""] * len(s["time_stamps"])
    labels = []
    for v in values[:, 0]:
        labels.append(str(int(v)) if np.isfinite(v) and float(v).is_integer() else str(v))
    return labels


def _place_markers(path: Path, streams: list[dict], times: np.ndarray, sfreq: float) -> list[Marker]:
    """Markers of the given streams on the signal sample nearest in time; the ones beyond
    half a sample period outside the signal are dropped (warned once)."""
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    half = 0.5 / sfreq
    found: list[tuple[float, Marker]] = []
    dropped = 0
    for s in streams:
        stamps = np.asarray(s["time_stamps"], dtype=float)
        labels = _labels(s)
        if not len(stamps):
            continue
        inside = np.isfinite(stamps) & (stamps >= sorted_times[0] - half) & (stamps <= sorted_times[-1] + half)
        dropped += int(np.count_nonzero(~inside))
        samples = order[_nearest(sorted_times, stamps[inside])]
        for t, sample, label in zip(stamps[inside], samples, np.asarray(labels, dtype=object)[inside]):
            found.append((float(t), Marker(int(sample), marker_code(label), label)))
    if dropped:
        logger.warning("%s: %d marker(s) lie outside the signal stream's time span and are dropped", path, dropped)
    found.sort(key=lambda tm: (tm[1].sample, tm[0]))
    return [m for _, m in found]


def _nearest(sorted_times: np.ndarray, stamps: np.ndarray) -> np.ndarray:
    """Index into ``sorted_times`` of the value nearest each stamp (the earlier on a tie)."""
    if len(sorted_times) == 1:
        return np.zeros(len(stamps), dtype=int)
    right = np.clip(np.searchsorted(sorted_times, stamps), 1, len(sorted_times) - 1)
    left = right - 1
    return np.where(stamps - sorted_times[left] <= sorted_times[right] - stamps, left, right)
