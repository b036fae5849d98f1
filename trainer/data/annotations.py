"""Stimulus markers from the annotations of a raw file: this project's recordings (their
markers are annotations whose description is the marker's label) and any file MNE reads.
``bci-replay`` (:mod:`bci_app.sessions`) and ``bci-train adapt`` read them here."""

from __future__ import annotations

from pathlib import Path

__all__ = ["annotation_markers"]

#: annotations that are not stimuli: MNE's bad spans and edges, BrainVision's segments
_NOT_MARKERS = ("BAD_", "BAD ", "EDGE ")


def annotation_markers(raw, path: str | Path) -> tuple[list[tuple[int, str]], list[tuple[int, int]]]:
    """(markers, bad spans) of ``raw``'s annotations, in samples from the file's first.

    Markers are ``(sample, description)``; MNE's ``<type>/`` prefix of BrainVision markers
    is taken off.  ``BAD_*`` annotations are not markers but spans ``(start, stop)``
    (stop = start for one of duration 0, such as the recorder's gaps: a cut before that
    sample); ``EDGE`` and BrainVision's "New Segment" are neither."""
    sfreq = float(raw.info["sfreq"])
    onsets = raw.time_as_index(raw.annotations.onset, use_rounding=True) - raw.first_samp
    brainvision = Path(path).suffix.lower() == ".vhdr"
    markers, bad = [], []
    for sample, duration, desc in zip(onsets, raw.annotations.duration, raw.annotations.description):
        if brainvision and "/" in desc:  # MNE names BrainVision markers "<type>/<description>"
            desc = desc.split("/", 1)[1]
        upper = desc.upper()
        if upper.startswith(_NOT_MARKERS) or upper == "NEW SEGMENT":
            if upper.startswith(("BAD_", "BAD ")):
                bad.append((int(sample), int(sample) + int(round(float(duration) * sfreq))))
            continue
        markers.append((int(sample), str(desc)))
    return markers, bad
