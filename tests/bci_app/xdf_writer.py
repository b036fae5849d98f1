"""A small XDF 1.0 writer for the tests (what LabRecorder writes, minus boundary chunks).

File layout: the magic ``XDF:``, then chunks. A chunk is ``[NumLengthBytes][Length][Tag]
[Content]``: ``Length`` (1, 4 or 8 bytes, little-endian, as ``NumLengthBytes`` says)
counts the tag and the content. Tags: 1 FileHeader (XML), 2 StreamHeader (stream id +
XML), 3 Samples (stream id, sample count, samples), 4 ClockOffset (stream id, collection
time, offset), 6 StreamFooter (stream id + XML). All numbers are little-endian.
"""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["write_xdf"]

#: XDF channel format -> little-endian numpy dtype
NUMERIC_FORMATS = {"int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8", "float32": "<f4",
                   "double64": "<f8"}

TAG_FILE_HEADER, TAG_STREAM_HEADER, TAG_SAMPLES, TAG_CLOCK_OFFSET, TAG_STREAM_FOOTER = 1, 2, 3, 4, 6


def _varlen(n: int) -> bytes:
    """A variable-length unsigned integer: one byte giving the width (1, 4 or 8), then the value."""
    if n < 0:
        raise ValueError("negative length")
    if n <= 0xFF:
        return struct.pack("<BB", 1, n)
    if n <= 0xFFFFFFFF:
        return struct.pack("<BI", 4, n)
    return struct.pack("<BQ", 8, n)


def _chunk(tag: int, content: bytes) -> bytes:
    body = struct.pack("<H", tag) + content
    return _varlen(len(body)) + body


def _xml(root: ET.Element) -> bytes:
    return b'<?xml version="1.0"?>' + ET.tostring(root, encoding="unicode").encode("utf-8")


def _sub(parent: ET.Element, tag: str, text: Any = None) -> ET.Element:
    el = ET.SubElement(parent, tag)
    if text is not None:
        el.text = str(text)
    return el


def _as_list(value: Any, n: int) -> list:
    if value is None or isinstance(value, str):
        return [value] * n
    value = list(value)
    if len(value) != n:
        raise ValueError(f"expected {n} per-channel values, got {len(value)}")
    return value


def _header(stream_id: int, s: dict, n_channels: int) -> bytes:
    info = ET.Element("info")
    _sub(info, "name", s["name"])
    _sub(info, "type", s.get("type", ""))
    _sub(info, "channel_count", n_channels)
    _sub(info, "nominal_srate", repr(float(s["nominal_srate"])))
    _sub(info, "channel_format", s["channel_format"])
    _sub(info, "source_id", s.get("source_id", f"test-{stream_id}"))
    _sub(info, "version", "1.1000000000000001")
    _sub(info, "created_at", repr(float(s.get("created_at", 0.0))))
    _sub(info, "uid", f"00000000-0000-0000-0000-{stream_id:012d}")
    _sub(info, "session_id", "default")
    _sub(info, "hostname", "localhost")
    desc = _sub(info, "desc")
    labels = s.get("labels")
    if labels is not None:
        units = _as_list(s.get("unit"), n_channels)
        types = _as_list(s.get("channel_types", s.get("type")), n_channels)
        channels = _sub(desc, "channels")
        for label, unit, ch_type in zip(_as_list(labels, n_channels), units, types):
            ch = _sub(channels, "channel")
            _sub(ch, "label", label)
            if unit is not None:
                _sub(ch, "unit", unit)
            if ch_type is not None:
                _sub(ch, "type", ch_type)
    return _chunk(TAG_STREAM_HEADER, struct.pack("<I", stream_id) + _xml(info))


def _samples(stream_id: int, fmt: str, values: Any, stamps: np.ndarray) -> bytes:
    out = [struct.pack("<I", stream_id), _varlen(len(stamps))]
    for i, t in enumerate(stamps):
        out.append(struct.pack("<Bd", 8, float(t)))
        if fmt == "string":
            for text in values[i]:
                raw = str(text).encode("utf-8")
                out.append(_varlen(len(raw)) + raw)
        else:
            out.append(values[i].tobytes())
    return _chunk(TAG_SAMPLES, b"".join(out))


def _footer(stream_id: int, stamps: np.ndarray, offsets: Sequence[tuple[float, float]]) -> bytes:
    info = ET.Element("info")
    if len(stamps):
        _sub(info, "first_timestamp", repr(float(stamps[0])))
        _sub(info, "last_timestamp", repr(float(stamps[-1])))
    _sub(info, "sample_count", len(stamps))
    clock = _sub(info, "clock_offsets")
    for time, value in offsets:
        off = _sub(clock, "offset")
        _sub(off, "time", repr(float(time)))
        _sub(off, "value", repr(float(value)))
    return _chunk(TAG_STREAM_FOOTER, struct.pack("<I", stream_id) + _xml(info))


def write_xdf(path: str | Path, streams: Sequence[dict]) -> Path:
    """Write streams to an XDF 1.0 file.

    Parameters
    ----------
    path : str | Path
        The file to write.
    streams : sequence of dict
        One per stream, with ``name``, ``type``, ``nominal_srate`` (0 for irregular),
        ``channel_format`` (``float32``, ``double64``, ``int8``, ``int16``, ``int32``,
        ``int64`` or ``string``), ``samples`` (array samples x channels, a 1-D array for
        one channel, or a list of str / list of lists of str), ``timestamps`` (one per
        sample, in the stream's own clock). Optional: ``labels`` (channel labels; without
        them the header has no channel description), ``unit`` (one for all channels or
        one per channel; None leaves it out), ``channel_types``, ``clock_offsets``
        (list of (collection time, offset), default one offset of 0), ``chunk_size``
        (samples per Samples chunk, default 100).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    prepared = []
    for stream_id, s in enumerate(streams, start=1):
        fmt = s["channel_format"]
        stamps = np.asarray(s["timestamps"], dtype=np.float64).reshape(-1)
        if fmt == "string":
            values = [[v] if isinstance(v, str) else list(v) for v in s["samples"]]
            n_channels = len(values[0]) if values else len(s.get("labels") or [None])
        elif fmt in NUMERIC_FORMATS:
            values = np.asarray(s["samples"])
            if values.ndim == 1:
                values = values[:, None]
            values = np.ascontiguousarray(values.astype(NUMERIC_FORMATS[fmt]))
            n_channels = values.shape[1]
        else:
            raise ValueError(f"unknown channel format {fmt!r}")
        if len(values) != len(stamps):
            raise ValueError(f"stream {s['name']!r}: {len(values)} samples but {len(stamps)} time stamps")
        first = float(stamps[0]) if len(stamps) else 0.0
        offsets = list(s.get("clock_offsets", [(first, 0.0)]))
        prepared.append((stream_id, s, fmt, values, stamps, n_channels, offsets, int(s.get("chunk_size", 100))))

    chunks = [b"XDF:", _chunk(TAG_FILE_HEADER, _xml(_file_info()))]
    chunks += [_header(sid, s, n) for sid, s, _, _, _, n, _, _ in prepared]
    # samples interleaved between streams, chunk by chunk, as a recorder writes them
    per_stream = [[_samples(sid, fmt, values[a:a + size], stamps[a:a + size]) for a in range(0, len(stamps), size)]
                  for sid, _, fmt, values, stamps, _, _, size in prepared]
    for k in range(max((len(c) for c in per_stream), default=0)):
        chunks += [c[k] for c in per_stream if k < len(c)]
    for sid, _, _, _, _, _, offsets, _ in prepared:
        for time, value in offsets:
            chunks.append(_chunk(TAG_CLOCK_OFFSET, struct.pack("<Idd", sid, float(time), float(value))))
    chunks += [_footer(sid, stamps, offsets) for sid, _, _, _, stamps, _, offsets, _ in prepared]
    path.write_bytes(b"".join(chunks))
    return path


def _file_info() -> ET.Element:
    info = ET.Element("info")
    _sub(info, "version", "1.0")
    _sub(info, "datetime", "2024-01-01T00:00:00+0000")
    return info
