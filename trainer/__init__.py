"""Offline side of shallow-alignment EEG/MEG visual decoding (``bci-train``): data sets,
the preprocessing spec shared with the live app, the synthetic THINGS-like set, EEG
encoders, vision targets, training, evaluation and model bundles."""

from .errors import BCIError, DataFormatError, ForbiddenPickleError
from .preprocessing import NAMED_SPECS, PreprocessingSpec

__version__ = "0.1.0"

# torch-based names load on first use, so data-only commands start fast
_LAZY = {
    "Bundle": "bundle", "load_bundle": "bundle", "save_bundle": "bundle",
    "create_encoder": "encoders", "list_encoders": "encoders",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")

__all__ = [
    "BCIError",
    "Bundle",
    "DataFormatError",
    "ForbiddenPickleError",
    "NAMED_SPECS",
    "PreprocessingSpec",
    "__version__",
    "create_encoder",
    "list_encoders",
    "load_bundle",
    "save_bundle",
]
