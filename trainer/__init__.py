"""Offline side of shallow-alignment EEG/MEG visual decoding (``bci-train``): data sets,
the preprocessing spec shared with the live app, the synthetic THINGS-like set and, with
their issues, training, evaluation and model bundles."""

from .errors import BCIError, DataFormatError, ForbiddenPickleError
from .preprocessing import NAMED_SPECS, PreprocessingSpec

__version__ = "0.1.0"

__all__ = ["BCIError", "DataFormatError", "ForbiddenPickleError", "NAMED_SPECS", "PreprocessingSpec", "__version__"]
