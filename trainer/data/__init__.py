"""Readers of THINGS-EEG2 / THINGS-MEG files into one layout, and the image set."""

from ..montage import OCCIPITO_PARIETAL_PATTERN, THINGS_EEG2_CHANNELS, THINGS_EEG2_PREPROCESSED_CHANNELS
from .images import ImageSet, load_image_set, read_image_metadata, write_image_metadata
from .safe_npy import load_npy_dict, load_npy_object, save_npy_dict
from .splits import validation_split
from .things_eeg2 import (
    CATCH_CODE,
    RawSession,
    ThingsEEG2,
    arrange_trials,
    epoch_session,
    read_preprocessed,
    read_raw_session,
    trials_from_raw,
    write_preprocessed,
    write_raw_session,
)
from .things_meg import MEG_CATCH_CODE, MEG_SENSOR_PATTERN, read_things_meg, things_meg_path
from .trials import TrialSet

__all__ = [
    "CATCH_CODE",
    "ImageSet",
    "MEG_CATCH_CODE",
    "MEG_SENSOR_PATTERN",
    "OCCIPITO_PARIETAL_PATTERN",
    "RawSession",
    "THINGS_EEG2_CHANNELS",
    "THINGS_EEG2_PREPROCESSED_CHANNELS",
    "ThingsEEG2",
    "TrialSet",
    "arrange_trials",
    "epoch_session",
    "load_image_set",
    "load_npy_dict",
    "load_npy_object",
    "read_image_metadata",
    "read_preprocessed",
    "read_raw_session",
    "read_things_meg",
    "save_npy_dict",
    "things_meg_path",
    "trials_from_raw",
    "validation_split",
    "write_image_metadata",
    "write_preprocessed",
    "write_raw_session",
]
