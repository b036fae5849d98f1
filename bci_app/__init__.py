"""Online side: LSL streams, online epochs, live decoding, the desktop app (coming with
their issues).  Imports the preprocessing spec and model bundle from ``trainer``."""

__all__: list[str] = []
