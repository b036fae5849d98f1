"""A recorded session ready to replay: the signal to stream and its stimulus markers
(the readers that make one are in :mod:`bci_app.sessions` and :mod:`bci_app.xdf`)."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from typing import Any

from trainer.data.things_eeg2 import INT32_RANGE

__all__ = ["INT32", "Marker", "ReplaySession", "marker_code"]

logger = logging.getLogger("bci_app")

#: the range of a numeric LSL marker (``int32``), the format trigger codes travel in
INT32 = INT32_RANGE

_PREFIXED_NUMBER = re.compile(r"^(?:[A-Za-z ]+/)?\s*[A-Za-z]?\s*(-?\d+)$")


def marker_code(label: str) -> int | None:
    """The integer a marker label stands for: ``"17"``, ``"Stimulus/S 17"`` (BrainVision)
    or ``"stim/17"`` give 17; anything else, and a number that does not fit an ``int32``
    marker, gives None."""
    m = _PREFIXED_NUMBER.match(label.strip())
    if not m:
        return None
    code = int(m.group(1))
    return code if INT32[0] <= code <= INT32[1] else None


@dataclass(frozen=True)
class Marker:
    """One stimulus marker: the sample it belongs to (0 = first sample of the
    recording), its integer code (None when it has none) and its label."""

    sample: int
    code: int | None
    label: str


@dataclass
class ReplaySession:
    """A recording ready to stream.

    Attributes
    ----------
    raw : mne.io.BaseRaw
        The channels to stream (data channels only; stim channels are removed), loaded.
    markers : list of Marker
        In sample order.
    source : str
        Where it came from (for messages).
    """

    raw: Any
    markers: list[Marker] = field(default_factory=list)
    source: str = ""

    @property
    def sfreq(self) -> float:
        return float(self.raw.info["sfreq"])

    @property
    def ch_names(self) -> list[str]:
        return list(self.raw.ch_names)

    @property
    def duration(self) -> float:
        return self.raw.n_times / self.sfreq

    def __post_init__(self) -> None:
        for m in self.markers:
            if m.code is not None and not INT32[0] <= m.code <= INT32[1]:
                from trainer.errors import DataFormatError

                raise DataFormatError(self.source or None, "markers",
                                      f"marker code {m.code} at sample {m.sample} does not fit an int32 LSL marker "
                                      f"({INT32[0]}..{INT32[1]})")

    def numeric_markers(self) -> list[Marker]:
        """The markers that have an integer code; the others are reported once."""
        bad = sorted({m.label for m in self.markers if m.code is None})
        if bad:
            logger.warning("%s: %d marker label(s) are not int32 numbers and are not sent as numeric markers: %s",
                           self.source, len(bad), ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
        return [m for m in self.markers if m.code is not None]


