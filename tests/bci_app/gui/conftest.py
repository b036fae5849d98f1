"""The main window, with its settings and recordings in the test's own folder."""

from __future__ import annotations

import pytest


@pytest.fixture
def window(qtbot, tmp_path):
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QSettings

    from bci_app.gui.window import MainWindow

    settings = QSettings(str(tmp_path / "settings.ini"), QSettings.IniFormat)
    win = MainWindow(settings=settings)
    qtbot.addWidget(win)
    win.record_dir = tmp_path / "recordings"
    win.show()
    yield win
    win.close()
