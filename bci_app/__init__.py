"""Online side: LSL streams, online epochs identical to the offline ones, the live
decoder, session recording and replay (``bci-app``, ``bci-replay``).  Imports the
preprocessing spec and the model bundle from ``trainer``; Qt lives in ``bci_app.gui``
only (the desktop window)."""

__all__ = ["LiveSession", "Decoder", "StimulusMap", "OnlineEpocher", "SessionPlayer", "SessionRecorder",
           "ReplaySession", "read_session", "list_streams"]


def __getattr__(name):  # lazy: importing bci_app does not load torch or liblsl
    if name == "LiveSession":
        from .pipeline import LiveSession as obj
    elif name in ("Decoder", "StimulusMap"):
        from . import decoder as mod

        obj = getattr(mod, name)
    elif name == "OnlineEpocher":
        from .epochs import OnlineEpocher as obj
    elif name == "SessionPlayer":
        from .replay import SessionPlayer as obj
    elif name == "SessionRecorder":
        from .recording import SessionRecorder as obj
    elif name in ("ReplaySession", "read_session"):
        from . import sessions as mod

        obj = getattr(mod, name)
    elif name == "list_streams":
        from .streams import list_streams as obj
    else:
        raise AttributeError(f"module 'bci_app' has no attribute {name!r}")
    return obj
