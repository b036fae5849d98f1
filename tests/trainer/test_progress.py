"""Progress on stderr: a bar on a terminal, a log line every 10 % in a log file."""

from __future__ import annotations

import logging

from trainer.progress import ProgressBars


def test_without_a_terminal_progress_is_logged_every_tenth(caplog):
    """bci-train run into a log file (nohup, CI, a notebook) used to say nothing for the
    whole of a 25-minute pretrain."""
    bars = ProgressBars(terminal=False)
    with caplog.at_level(logging.INFO, logger="trainer"):
        for done in range(0, 1001, 7):
            bars("model: layer_2 (3/6): epoch 13/50", done, 1000)
        bars("model: layer_2 (3/6): epoch 50/50", 1000, 1000)
        bars("next job", 0, 10)  # a new job starts its own count
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split("%")[0] for line in lines[:11]] == [str(10 * k) for k in range(11)]
    assert all(line.endswith("model: layer_2 (3/6): epoch 13/50") for line in lines[1:10])
    assert "left" in lines[5] and "left" not in lines[10]
    assert lines[11].startswith("0% done") and lines[11].endswith("next job")
    bars.close()


def test_on_a_terminal_there_is_a_bar_and_no_log(caplog, capsys):
    bars = ProgressBars(terminal=True)
    with caplog.at_level(logging.INFO, logger="trainer"):
        bars("features", 3, 10)
        bars("features", 10, 10)
    bars.close()
    assert caplog.records == []
