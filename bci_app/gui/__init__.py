"""The desktop window of ``bci-app`` (PySide6 + pyqtgraph).  The only package that imports
Qt; it drives the same :class:`~bci_app.pipeline.LiveSession` as the headless app, on
worker threads."""

__all__ = ["run_window"]


def run_window(args) -> int:
    from .app import run_window as run

    return run(args)
