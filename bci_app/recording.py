"""Session recording (``bci-app --record DIR``), written so that a crash loses at most
about a second.

While the app runs, the folder holds a BrainVision journal that is appended to and
flushed to disk every ``flush_interval`` seconds and that MNE reads as it is, even after a
crash (``mne.io.read_raw_brainvision``):

- ``recording.vhdr`` / ``recording.eeg`` / ``recording.vmrk``: the raw samples of every
  stream channel (float32, microvolts) and the stimulus markers at their samples;
- ``recording.times``: the LSL timestamp of every sample (float64);
- ``markers.jsonl``: every marker received, with its LSL time and its sample (null when no
  data came for it);
- ``predictions.jsonl``: the decoded epochs, one JSON line each, as the headless app
  prints them.

When the session ends, ``recording-raw.fif`` is made from the journal: an MNE raw file
with the markers as annotations (description = marker label) and ``BAD_gap``
annotations where the stream stopped.  A journal left by a crash becomes that file with
:func:`finalize_recording` (``bci-app recover DIR``).  ``bci-replay DIR`` replays either.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainer.errors import DataFormatError
from trainer.files import atomic_write_text

__all__ = ["FIF_NAME", "JOURNAL_NAME", "RecorderFeed", "SessionRecorder", "finalize_recording", "recording_file"]

logger = logging.getLogger("bci_app")

JOURNAL_NAME = "recording"
FIF_NAME = "recording-raw.fif"
GAP_LABEL = "BAD_gap"
_UV = 1e-6


def _escape(text: str) -> str:
    # BrainVision separates fields with commas; a comma inside a field is written \1
    return str(text).replace("\\", "\\\\").replace(",", r"\1").replace("\n", " ")


def _unescape(text: str) -> str:
    return re.sub(r"\\(\\|1)", lambda m: "," if m.group(1) == "1" else "\\", text)


def recording_file(folder: str | Path) -> Path:
    """The file to replay in a recording folder: the final ``.fif``, or the journal."""
    folder = Path(folder)
    for name in (FIF_NAME, f"{JOURNAL_NAME}.vhdr"):
        if (folder / name).is_file():
            return folder / name
    raise DataFormatError(folder, "recording", f"no {FIF_NAME} or {JOURNAL_NAME}.vhdr in this folder")


class SessionRecorder:
    """Writes one session into ``folder`` (created; must not hold a recording already).

    Parameters
    ----------
    folder : path-like
    ch_names : sequence of str
        The stream's channels, in stream order.
    sfreq : float
        The stream's nominal rate.
    flush_interval : float
        Seconds between flushes to disk (what a crash can lose).
    info : dict
        Written to ``session.json`` (stream name, bundle, start time...).
    """

    def __init__(self, folder: str | Path, ch_names: Sequence[str], sfreq: float, *, flush_interval: float = 1.0,
                 info: dict | None = None):
        self.folder = Path(folder).expanduser()
        if self.folder.exists() and any((self.folder / n).exists() for n in
                                        (f"{JOURNAL_NAME}.vhdr", FIF_NAME, "predictions.jsonl")):
            raise FileExistsError(f"--record: {self.folder} already holds a recording; choose a new folder")
        if not ch_names:
            raise ValueError("SessionRecorder: no channels")
        if not (sfreq > 0):
            raise ValueError(f"SessionRecorder: sfreq must be > 0, got {sfreq}")
        self.folder.mkdir(parents=True, exist_ok=True)
        self.ch_names = list(ch_names)
        self.sfreq = float(sfreq)
        self.flush_interval = float(flush_interval)
        self.n_samples = 0  # samples received (the next sample's index)
        self.n_written = 0  # samples on disk
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._markers: list[tuple[int, str]] = []  # (sample, label) not yet in the .vmrk
        self._n_vmrk = 1
        self._last_flush = time.monotonic()
        self.closed = False
        self._write_header()
        self._eeg = open(self.folder / f"{JOURNAL_NAME}.eeg", "ab")
        self._times = open(self.folder / f"{JOURNAL_NAME}.times", "ab")
        self._vmrk = open(self.folder / f"{JOURNAL_NAME}.vmrk", "a", encoding="utf-8")
        self._marker_log = open(self.folder / "markers.jsonl", "a", encoding="utf-8")
        self._predictions = open(self.folder / "predictions.jsonl", "a", encoding="utf-8")
        meta = {"ch_names": self.ch_names, "sfreq": self.sfreq, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        meta.update(info or {})
        atomic_write_text(self.folder / "session.json", json.dumps(meta, indent=2) + "\n")

    def _write_header(self) -> None:
        base = JOURNAL_NAME
        lines = [
            "Brain Vision Data Exchange Header File Version 1.0",
            "; written by bci-app --record (a crash-safe journal; recording-raw.fif is made from it)",
            "",
            "[Common Infos]",
            "Codepage=UTF-8",
            f"DataFile={base}.eeg",
            f"MarkerFile={base}.vmrk",
            "DataFormat=BINARY",
            "DataOrientation=MULTIPLEXED",
            f"NumberOfChannels={len(self.ch_names)}",
            f"SamplingInterval={1e6 / self.sfreq!r}",
            "",
            "[Binary Infos]",
            "BinaryFormat=IEEE_FLOAT_32",
            "",
            "[Channel Infos]",
        ]
        lines += [f"Ch{i + 1}={_escape(n)},,1,µV" for i, n in enumerate(self.ch_names)]
        (self.folder / f"{base}.vhdr").write_text("\n".join(lines) + "\n", encoding="utf-8")
        (self.folder / f"{base}.vmrk").write_text(
            "Brain Vision Data Exchange Marker File, Version 1.0\n\n[Common Infos]\nCodepage=UTF-8\n"
            f"DataFile={base}.eeg\n\n[Marker Infos]\n", encoding="utf-8")

    # -- input ------------------------------------------------------------------------
    def add_samples(self, data: np.ndarray, timestamps: np.ndarray) -> None:
        """Append samples (n_samples, n_channels) in volts with their LSL timestamps."""
        if self.closed:
            return
        data = np.asarray(data)
        if data.ndim != 2 or data.shape[1] != len(self.ch_names) or len(timestamps) != len(data):
            raise ValueError(f"add_samples: expected (n, {len(self.ch_names)}) samples with n timestamps, "
                             f"got {data.shape} and {len(timestamps)}")
        self._pending.append(((data / _UV).astype("<f4"), np.asarray(timestamps, dtype="<f8")))
        self.n_samples += len(data)
        if time.monotonic() - self._last_flush >= self.flush_interval:
            self.flush()

    def add_marker(self, timestamp: float, label: str, sample: int | None) -> None:
        """A marker received at LSL time ``timestamp``, at recording sample ``sample``
        (None when no data came for it: then it is only in ``markers.jsonl``)."""
        if self.closed:
            return
        self._marker_log.write(json.dumps({"t": timestamp, "label": label, "sample": sample}, allow_nan=False) + "\n")
        if sample is not None:
            self._markers.append((int(sample), str(label)))

    def add_gap(self, sample: int) -> None:
        """The stream stopped before ``sample`` (samples were lost or it went away)."""
        if not self.closed:
            self._markers.append((int(sample), GAP_LABEL))

    def add_prediction(self, record: dict[str, Any]) -> None:
        if not self.closed:
            self._predictions.write(json.dumps(record, allow_nan=False) + "\n")

    # -- output -----------------------------------------------------------------------
    def flush(self) -> None:
        """Write what was received to disk (and fsync)."""
        if self.closed:
            return
        for data, ts in self._pending:
            self._eeg.write(data.tobytes())
            self._times.write(ts.tobytes())
            self.n_written += len(data)
        self._pending.clear()
        keep = []
        for sample, label in sorted(self._markers):
            if sample < self.n_written:
                self._n_vmrk += 1
                kind = "Comment" if label == GAP_LABEL else "Stimulus"
                self._vmrk.write(f"Mk{self._n_vmrk}={kind},{_escape(label)},{sample + 1},1,0\n")
            else:
                keep.append((sample, label))
        self._markers = keep
        for f in (self._eeg, self._times, self._vmrk, self._marker_log, self._predictions):
            f.flush()
            os.fsync(f.fileno())
        self._last_flush = time.monotonic()

    def abort(self) -> None:
        """Stop writing after a write failed (a full disk): close the files, dropping
        what was not flushed; the journal on disk stays readable (``bci-app recover``)."""
        if self.closed:
            return
        self.closed = True
        self._pending.clear()
        for f in (self._eeg, self._times, self._vmrk, self._marker_log, self._predictions):
            try:
                f.close()
            except OSError:  # the buffered rest cannot be written either
                pass

    def close(self, summary: dict | None = None) -> Path | None:
        """Flush, close the journal and write ``recording-raw.fif`` (and ``summary.json``).
        Returns the .fif path (None when no sample was recorded)."""
        if self.closed:
            return None
        self.flush()
        self.closed = True
        for f in (self._eeg, self._times, self._vmrk, self._marker_log, self._predictions):
            f.close()
        if summary is not None:
            atomic_write_text(self.folder / "summary.json", json.dumps(summary, indent=2, allow_nan=False) + "\n")
        if self.n_written == 0:
            logger.warning("recording %s: no sample was received", self.folder)
            return None
        return finalize_recording(self.folder)


class RecorderFeed:
    """Hands a :class:`SessionRecorder` every sample an :class:`~bci_app.streams.EEGSource`
    received from stream sample ``start`` on, exactly once, with its gaps (``BAD_gap``),
    and maps stream samples to recording samples.

    Each :meth:`feed` takes what is available in one locked read of the source, so a
    chunk that arrives meanwhile is left for the next call, never counted as written
    without being written.  Samples that left the ring buffer before they were written
    (the app fell more than the buffer behind) become a gap in the recording.
    """

    def __init__(self, source, recorder: SessionRecorder, start: int):
        self.source, self.recorder = source, recorder
        self.next = int(start)  # the next stream sample to write
        # runs of stream samples written without a skip: run k holds stream samples
        # starts[k]:ends[k] (the last run: up to next) at recording sample = stream sample + offsets[k]
        self._starts, self._ends, self._offsets = [self.next], [], [recorder.n_samples - self.next]
        self.skipped = 0  # samples that left the buffer unwritten

    def feed(self) -> int:
        """Write what arrived since the last call; returns the number of samples written.
        Raises OSError when the recorder cannot write (a full disk)."""
        rec = self.recorder
        first, data, ts, gaps = self.source.read_new(self.next)
        if first > self.next:
            self.skipped += first - self.next
            logger.warning("recording %s: %d samples left the buffer before they were written (a gap in the "
                           "recording)", rec.folder, first - self.next)
            rec.add_gap(rec.n_samples)
            self._ends.append(self.next)
            self._starts.append(first)
            self._offsets.append(rec.n_samples - first)
        if not len(data):
            self.next = first
            return 0
        offset = self._offsets[-1]
        for g in gaps:
            rec.add_gap(g + offset)
        rec.add_samples(data, ts)
        self.next = first + len(data)
        return len(data)

    def recording_sample(self, sample: int | None) -> int | None:
        """Recording sample of stream sample ``sample``, or None when it is not (yet, or
        ever: it left the buffer unwritten) in the recording."""
        if sample is None:
            return None
        k = bisect.bisect_right(self._starts, sample) - 1
        if k < 0:  # before the recording began (a marker whose window was cut before it started)
            return None
        end = self._ends[k] if k < len(self._ends) else self.next
        return sample + self._offsets[k] if sample < end else None


def _read_vmrk(path: Path) -> list[tuple[int, str]]:
    """(sample, label) of the journal's markers.  A last line cut short (a crash while it
    was written) is dropped; an invalid byte anywhere else is an error naming the line."""
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out = []
    for number, line in enumerate(lines, 1):
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as err:
            if number == len(lines):  # no newline after it: written when the app stopped
                logger.warning("%s: its last line is incomplete (the app stopped while writing it); dropped", path)
                break
            raise DataFormatError(path, f"line {number}", f"is not valid UTF-8 (byte {err.start + 1}: "
                                  f"{line[err.start:err.start + 1]!r})") from None
        if not text.startswith("Mk") or "=" not in text:
            continue
        fields = text.split("=", 1)[1].rstrip("\r").split(",")
        if len(fields) < 3 or fields[0] == "New Segment":
            continue
        label = _unescape(fields[1])
        try:
            out.append((int(fields[2]) - 1, label))
        except ValueError:
            continue
    return out


def _journal_layout(folder: Path) -> tuple[list[str], float]:
    """Channel names and rate of a journal, from its ``.vhdr`` header (which describes the
    ``.eeg`` file), checked against ``session.json``."""
    vhdr, meta_path = folder / f"{JOURNAL_NAME}.vhdr", folder / "session.json"
    if not vhdr.is_file() or not meta_path.is_file():
        raise DataFormatError(folder, "recording", f"no {JOURNAL_NAME}.vhdr journal with its session.json")
    try:
        header = vhdr.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataFormatError(vhdr, None, f"is not valid UTF-8 ({err})") from None
    fields = dict(line.split("=", 1) for line in header.splitlines() if "=" in line and not line.startswith(";"))
    try:
        n_channels = int(fields["NumberOfChannels"])
        sfreq = 1e6 / float(fields["SamplingInterval"])
        names = [_unescape(fields[f"Ch{i + 1}"].split(",")[0]) for i in range(n_channels)]
    except (KeyError, ValueError, ZeroDivisionError) as err:
        raise DataFormatError(vhdr, None, f"not a journal header bci-app wrote ({type(err).__name__}: {err})") from None
    if n_channels < 1 or not math.isfinite(sfreq) or sfreq <= 0:
        raise DataFormatError(vhdr, "NumberOfChannels", f"{n_channels} channels at {sfreq} Hz")
    if fields.get("BinaryFormat") != "IEEE_FLOAT_32" or fields.get("DataOrientation") != "MULTIPLEXED":
        raise DataFormatError(vhdr, "BinaryFormat", "the journal is float32, multiplexed")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        meta_names, meta_sfreq = list(meta["ch_names"]), float(meta["sfreq"])
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
        raise DataFormatError(meta_path, "ch_names", f"unreadable ({type(err).__name__}: {err})") from None
    if meta_names != names or abs(meta_sfreq - sfreq) > 1e-6 * sfreq:
        raise DataFormatError(meta_path, "ch_names", f"disagrees with {vhdr.name}, which describes the samples: "
                              f"{len(meta_names)} channels at {meta_sfreq:g} Hz here, {len(names)} at {sfreq:g} Hz "
                              "there; was one of them edited?")
    return names, sfreq


def finalize_recording(folder: str | Path) -> Path:
    """Make ``recording-raw.fif`` from the journal in ``folder`` (also after a crash:
    samples and markers up to the last flush are kept).  Returns its path."""
    import mne

    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataFormatError(folder, None, "recording folder not found")
    ch_names, sfreq = _journal_layout(folder)
    eeg = folder / f"{JOURNAL_NAME}.eeg"
    if not eeg.is_file():
        raise DataFormatError(eeg, None, "missing")
    raw_bytes = np.fromfile(eeg, dtype="<f4")
    n = len(raw_bytes) // len(ch_names)  # a partial last sample (crash mid-write) is dropped
    if n == 0:
        raise DataFormatError(eeg, "samples", "the journal holds no complete sample")
    data = raw_bytes[: n * len(ch_names)].reshape(n, len(ch_names)).T.astype(np.float64) * _UV
    info = mne.create_info(ch_names, sfreq, ch_types="eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    markers = [(s, d) for s, d in _read_vmrk(folder / f"{JOURNAL_NAME}.vmrk") if 0 <= s < n]
    if markers:
        onsets = np.array([s for s, _ in markers]) / sfreq
        raw.set_annotations(mne.Annotations(onsets, np.zeros(len(onsets)), [d for _, d in markers]))
    out = folder / FIF_NAME  # written in place: the journal stays the truth, recover redoes it
    raw.save(out, fmt="single", overwrite=True, verbose="error")
    return out
