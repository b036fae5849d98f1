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

import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from trainer.errors import DataFormatError

__all__ = ["SessionRecorder", "finalize_recording", "recording_file", "FIF_NAME", "JOURNAL_NAME"]

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
        (self.folder / "session.json").write_text(json.dumps(meta, indent=2) + "\n")

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
        self._marker_log.write(json.dumps({"t": timestamp, "label": label, "sample": sample}) + "\n")
        if sample is not None:
            self._markers.append((int(sample), str(label)))

    def add_gap(self, sample: int) -> None:
        """The stream stopped before ``sample`` (samples were lost or it went away)."""
        if not self.closed:
            self._markers.append((int(sample), GAP_LABEL))

    def add_prediction(self, record: dict[str, Any]) -> None:
        if not self.closed:
            self._predictions.write(json.dumps(record) + "\n")

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
            (self.folder / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        if self.n_written == 0:
            logger.warning("recording %s: no sample was received", self.folder)
            return None
        return finalize_recording(self.folder)


def _read_vmrk(path: Path) -> list[tuple[int, str]]:
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("Mk") or "=" not in line:
            continue
        fields = line.split("=", 1)[1].split(",")
        if len(fields) < 3 or fields[0] == "New Segment":
            continue
        label = _unescape(fields[1])
        try:
            out.append((int(fields[2]) - 1, label))
        except ValueError:
            continue
    return out


def finalize_recording(folder: str | Path) -> Path:
    """Make ``recording-raw.fif`` from the journal in ``folder`` (also after a crash:
    samples and markers up to the last flush are kept).  Returns its path."""
    import mne

    folder = Path(folder).expanduser()
    vhdr = folder / f"{JOURNAL_NAME}.vhdr"
    meta_path = folder / "session.json"
    if not vhdr.is_file() or not meta_path.is_file():
        raise DataFormatError(folder, "recording", f"no {JOURNAL_NAME}.vhdr journal with its session.json")
    meta = json.loads(meta_path.read_text())
    ch_names, sfreq = list(meta["ch_names"]), float(meta["sfreq"])
    raw_bytes = np.fromfile(folder / f"{JOURNAL_NAME}.eeg", dtype="<f4")
    n = len(raw_bytes) // len(ch_names)  # a partial last sample (crash mid-write) is dropped
    if n == 0:
        raise DataFormatError(folder / f"{JOURNAL_NAME}.eeg", "samples", "the journal holds no complete sample")
    data = raw_bytes[: n * len(ch_names)].reshape(n, len(ch_names)).T.astype(np.float64) * _UV
    info = mne.create_info(ch_names, sfreq, ch_types="eeg")
    raw = mne.io.RawArray(data, info, verbose="error")
    markers = [(s, d) for s, d in _read_vmrk(folder / f"{JOURNAL_NAME}.vmrk") if 0 <= s < n]
    if markers:
        onsets = np.array([s for s, _ in markers]) / sfreq
        raw.set_annotations(mne.Annotations(onsets, np.zeros(len(onsets)), [d for _, d in markers]))
    out = folder / FIF_NAME
    raw.save(out, fmt="single", overwrite=True, verbose="error")
    return out
