"""Recorded sessions to replay: the signal to stream and its stimulus markers.

Three kinds of file become a :class:`ReplaySession`:

- a THINGS-EEG2 raw session (``raw_eeg_{training,test}.npy``): the EEG rows are streamed,
  the ``stim`` row becomes markers carrying the image code (catch trials: code 99999,
  label ``catch``);
- any file ``mne.io.read_raw`` reads (``.fif``, ``.vhdr``, ``.edf``, ``.set``, ...,
  including this app's recordings): a stim channel gives the markers, otherwise the
  annotations do (their description is the marker label);
- an ``.xdf`` recording (LabRecorder): see :mod:`bci_app.xdf`.

A marker has the sample it belongs to, an integer code when it has one and a text label;
``bci-replay --markers numeric`` sends the codes, ``--markers string`` the labels.
"""

from __future__ import annotations

import logging
from pathlib import Path

from trainer.data.things_eeg2 import CATCH_CODE
from trainer.errors import DataFormatError, UsageError

from .replay_session import Marker, ReplaySession, marker_code

__all__ = ["CATCH_CODE", "Marker", "ReplaySession", "read_session", "read_things_raw", "read_mne_file",
           "marker_code"]

logger = logging.getLogger("bci_app")

def _image_labels(path: Path, partition: str) -> dict[int, str] | None:
    """code -> "concept/file" of the THINGS image set next to a raw session file, when
    the folder has one (…/raw_data/sub-XX/ses-YY/raw_eeg_test.npy)."""
    from trainer.data.things_eeg2 import ThingsEEG2

    for parent in path.parents:
        if parent.name == "raw_data":
            try:
                images = ThingsEEG2(parent.parent).image_set(partition)
            except (DataFormatError, OSError, ValueError):
                return None
            return {i + 1: f"{c}/{f}" for i, (c, f) in enumerate(zip(images.concepts, images.files))}
    return None


def read_things_raw(path: str | Path) -> ReplaySession:
    """A THINGS-EEG2 raw session file (``raw_eeg_training.npy`` / ``raw_eeg_test.npy``)."""
    from trainer.data.things_eeg2 import partition_of, read_raw_session

    path = Path(path)
    session = read_raw_session(path)
    raw = session.raw.copy().pick(session.eeg_names)
    raw.load_data()
    labels = _image_labels(path, partition_of(path)) or {}
    markers = [Marker(int(s), int(c), labels.get(int(c), str(int(c)))) for s, _, c in session.events]
    markers += [Marker(int(s), CATCH_CODE, "catch") for s, _, _ in session.catch_events]
    markers.sort(key=lambda m: m.sample)
    return ReplaySession(raw=raw, markers=markers, source=str(path))


def read_mne_file(path: str | Path) -> ReplaySession:
    """Any file ``mne.io.read_raw`` reads; markers from its stim channel(s), or else its
    annotations (``BAD_``/``EDGE`` annotations and gap marks are not markers)."""
    import mne

    path = Path(path)
    try:
        raw = mne.io.read_raw(path, preload=True, verbose="error")
    except Exception as err:  # MNE raises many types for unreadable files
        raise DataFormatError(path, "file", f"MNE cannot read it ({type(err).__name__}: {err})") from None
    stim = [raw.ch_names[i] for i in mne.pick_types(raw.info, stim=True)]
    markers: list[Marker] = []
    if stim:
        events = mne.find_events(raw, stim_channel=stim, shortest_event=1, initial_event=True, consecutive=True,
                                 verbose="error")
        markers = [Marker(int(s) - raw.first_samp, int(c), "catch" if c == CATCH_CODE else str(int(c)))
                   for s, _, c in events]
        raw.drop_channels(stim)
    else:
        from trainer.data.annotations import annotation_markers

        markers = [Marker(sample, marker_code(desc), desc) for sample, desc in annotation_markers(raw, path)[0]]
    if not len(raw.ch_names):
        raise DataFormatError(path, "channels", "no data channel to stream")
    markers.sort(key=lambda m: m.sample)
    return ReplaySession(raw=raw, markers=markers, source=str(path))


def read_session(path: str | Path, *, xdf_stream: str | None = None, xdf_markers: str | None = None) -> ReplaySession:
    """Read whatever ``bci-replay`` is given: a THINGS raw ``.npy``, an ``.xdf`` (with
    ``xdf_stream`` / ``xdf_markers`` picking its streams by name) or a file (or a
    ``bci-app --record`` folder) MNE reads."""
    path = Path(path).expanduser()
    if path.is_dir():
        from .recording import recording_file

        path = recording_file(path)
    if not path.exists():
        raise DataFormatError(path, "file", "does not exist")
    suffix = path.suffix.lower()
    if (xdf_stream or xdf_markers) and suffix != ".xdf":
        raise UsageError(f"--xdf-stream and --xdf-markers are for .xdf files; {path} is not one")
    if suffix == ".npy":
        return read_things_raw(path)
    if suffix == ".xdf":
        from .xdf import read_xdf

        return read_xdf(path, stream=xdf_stream, markers=xdf_markers)
    return read_mne_file(path)
