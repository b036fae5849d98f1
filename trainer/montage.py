"""Channel names of the THINGS-EEG2 cap and the occipito-parietal selection."""

from __future__ import annotations

__all__ = ["THINGS_EEG2_CHANNELS", "OCCIPITO_PARIETAL_PATTERN", "THINGS_EEG2_PREPROCESSED_CHANNELS"]

#: the 63 EEG channels of THINGS-EEG2 raw files, in file order (the 64th row is 'stim')
THINGS_EEG2_CHANNELS: tuple[str, ...] = (
    "Fp1", "Fz", "F3", "F7", "FT9", "FC5", "FC1", "C3", "T7", "TP9", "CP5", "CP1", "Pz", "P3",
    "P7", "O1", "Oz", "O2", "P4", "P8", "TP10", "CP6", "CP2", "Cz", "C4", "T8", "FT10", "FC6",
    "FC2", "F4", "F8", "Fp2", "AF7", "AF3", "AFz", "F1", "F5", "FT7", "FC3", "C1", "C5", "TP7",
    "CP3", "P1", "P5", "PO7", "PO3", "POz", "PO4", "PO8", "P6", "P2", "CPz", "CP4", "TP8", "C6",
    "C2", "FC4", "FT8", "F6", "AF8", "AF4", "F2",
)

#: the official preprocessing keeps the channels whose names match this (17 of the 63)
OCCIPITO_PARIETAL_PATTERN = r"^O|^P"

#: the 17 channels of the official preprocessed files, in their order
THINGS_EEG2_PREPROCESSED_CHANNELS: tuple[str, ...] = (
    "Pz", "P3", "P7", "O1", "Oz", "O2", "P4", "P8", "P1", "P5", "PO7", "PO3", "POz", "PO4",
    "PO8", "P6", "P2",
)
