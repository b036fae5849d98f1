"""The signal view's display buffer and one redraw."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")


def test_trace_buffer_block_means_across_chunks_and_ring_wrap():
    from bci_app.gui.signal_view import TraceBuffer

    rng = np.random.default_rng(0)
    buf = TraceBuffer(3, sfreq=1000.0, seconds=0.5, display_rate=250.0)  # factor 4, 125 display samples
    assert buf.factor == 4 and buf.size == 125
    data = rng.normal(size=(2003, 3)).astype(np.float32)
    times = np.arange(2003) / 1000.0
    for a, b in ((0, 7), (7, 10), (10, 1000), (1000, 2003)):  # chunk sizes not multiples of 4
        buf.add(data[a:b], times[a:b])
    out, t = buf.latest()
    n_full = 2003 // 4
    want = data[: n_full * 4].reshape(n_full, 4, 3).mean(axis=1)[-125:]
    np.testing.assert_allclose(out, want, rtol=1e-6)
    np.testing.assert_allclose(t, times[: n_full * 4].reshape(n_full, 4)[:, -1][-125:])
    assert buf.count == n_full
    with pytest.raises(ValueError, match="channels"):
        buf.add(np.zeros((4, 2), np.float32), times[:4])


def test_redraw_draws_every_channel_and_the_markers_in_view(qtbot):
    from bci_app.gui.signal_view import SignalView

    view = SignalView(seconds=2.0)
    qtbot.addWidget(view)
    view.reset(["O1", "Oz", "O2"], 1000.0)
    t = 100.0 + np.arange(3000) / 1000.0
    data = (np.sin(np.outer(t, [1, 2, 3])) * 1e-5).astype(np.float32)
    view.add_samples(data, t)
    view.add_markers([(t[-1] - 1.0, "5", 5), (t[-1] - 0.5, "99999", None), (t[-1] - 10.0, "7", 7)])
    view.redraw()
    x, y = view.curve.getData()
    n = view.buffer.size
    assert len(x) == 3 * (n + 1) and np.isnan(y[n::n + 1]).all()  # one NaN-separated trace per channel
    for ch in range(3):  # each trace sits around its own row
        row = y[ch * (n + 1): ch * (n + 1) + n]
        assert abs(np.mean(row) - (2 - ch)) < 0.2
    kx, _ = view.ticks_known.getData()
    ox, _ = view.ticks_other.getData()
    np.testing.assert_allclose(kx, [-1.0, -1.0], atol=0.01)  # the marker 10 s ago is out of view
    np.testing.assert_allclose(ox, [-0.5, -0.5], atol=0.01)
    view.stop()
