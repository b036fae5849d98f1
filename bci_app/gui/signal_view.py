"""Scrolling traces of the model's channels with marker ticks (pyqtgraph).

Samples arrive from the live worker in chunks; :class:`TraceBuffer` reduces them to the
display rate (block means) into a preallocated ring, and :class:`SignalView` redraws from
it on a timer: one curve for all channels (NaN-separated) and one for the marker ticks, so
a frame is two ``setData`` calls whatever the channel count.
"""

from __future__ import annotations

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QTimer
from PySide6.QtWidgets import QGraphicsItem, QVBoxLayout, QWidget

from ..timeline import ring_positions

__all__ = ["SignalView", "TraceBuffer"]


class TraceBuffer:
    """A ring of the last ``seconds`` of (n_channels) traces at about ``display_rate`` Hz."""

    def __init__(self, n_channels: int, sfreq: float, seconds: float = 5.0, display_rate: float = 250.0):
        self.n_channels = int(n_channels)
        self.factor = max(1, int(round(sfreq / display_rate)))
        self.rate = sfreq / self.factor
        self.size = max(int(np.ceil(seconds * self.rate)), 2)
        self.data = np.zeros((self.size, self.n_channels), dtype=np.float32)
        self.times = np.full(self.size, np.nan)
        self.count = 0  # display samples written since the start
        self._rest = np.zeros((0, self.n_channels), dtype=np.float32)
        self._rest_t = np.zeros(0)

    def add(self, data: np.ndarray, times: np.ndarray) -> None:
        if len(times) == 0:
            return
        if data.shape[1] != self.n_channels:
            raise ValueError(f"expected {self.n_channels} channels, got {data.shape[1]}")
        if len(self._rest):
            data, times = np.concatenate([self._rest, data]), np.concatenate([self._rest_t, times])
        n = (len(times) // self.factor) * self.factor
        self._rest, self._rest_t = data[n:], times[n:]
        if n == 0:
            return
        f = self.factor
        block = data[:n].reshape(n // f, f, self.n_channels).mean(axis=1)
        t = times[:n].reshape(n // f, f)[:, -1]
        if len(t) > self.size:  # only the newest fit; count them all, as if written in turn
            self.count += len(t) - self.size
            block, t = block[-self.size:], t[-self.size:]
        pos = ring_positions(self.count, self.count + len(t), self.size)
        self.data[pos] = block
        self.times[pos] = t
        self.count += len(t)

    def latest(self) -> tuple[np.ndarray, np.ndarray]:
        """The buffered display samples in time order: (n, n_channels), (n,)."""
        n = min(self.count, self.size)
        if n == 0:
            return self.data[:0], self.times[:0]
        order = ring_positions(self.count - n, self.count, self.size)
        return self.data[order], self.times[order]


class SignalView(QWidget):
    """Traces of the displayed channels (µV, centred per channel) over the last seconds,
    with a tick at every marker (green: a stimulus of the gallery, grey: other)."""

    def __init__(self, parent=None, seconds: float = 5.0, fps: float = 30.0, display_rate: float = 125.0):
        super().__init__(parent)
        self.seconds = float(seconds)
        # about one point per pixel column: drawing the path is most of a frame's cost
        self.display_rate = float(display_rate)
        self.plot = pg.PlotWidget(background="w")
        self.plot.setMenuEnabled(False)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.setLabel("bottom", "time (s)")
        self.plot.setXRange(-self.seconds, 0, padding=0)
        self.plot.showGrid(x=True, y=False, alpha=0.15)
        for side in ("left", "bottom"):  # axes change rarely: paint them from a cached pixmap
            self.plot.getAxis(side).setCacheMode(QGraphicsItem.CacheMode.DeviceCoordinateCache)
        self.curve = self.plot.plot(pen=pg.mkPen((40, 60, 110), width=1), connect="finite")
        self.ticks_known = self.plot.plot(pen=pg.mkPen((20, 150, 60), width=1.5), connect="pairs")
        self.ticks_other = self.plot.plot(pen=pg.mkPen((150, 150, 150), width=1.5), connect="pairs")
        self.ticks_known.setZValue(-1)
        self.ticks_other.setZValue(-1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.plot)
        self.buffer: TraceBuffer | None = None
        self.channels: list[str] = []
        self.marker_times = np.full(256, np.nan)
        self.marker_known = np.zeros(256, dtype=bool)
        self._n_markers = 0
        self.spacing_uv = 0.0  # vertical distance between channels (µV), set from the data
        self.frames = 0
        self._dirty = False
        self.timer = QTimer(self)
        self.timer.setInterval(int(1000 / fps))
        self.timer.timeout.connect(self.redraw)

    def reset(self, channels: list[str], sfreq: float) -> None:
        self.channels = list(channels)
        self.buffer = TraceBuffer(len(channels), sfreq, self.seconds, display_rate=self.display_rate)
        self.marker_times[:] = np.nan
        self._n_markers = 0
        self.spacing_uv = 0.0
        n = len(channels)
        self.plot.getAxis("left").setTicks([[(float(n - 1 - i), c) for i, c in enumerate(channels)]])
        self.plot.setYRange(-1, n, padding=0)
        self.curve.setData([], [])
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()

    def clear(self) -> None:
        """Empty the view (before a new connection)."""
        self.timer.stop()
        self.buffer = None
        self._n_markers = 0
        self.marker_times[:] = np.nan
        for item in (self.curve, self.ticks_known, self.ticks_other):
            item.setData([], [])

    def add_samples(self, data: np.ndarray, times: np.ndarray) -> None:
        if self.buffer is not None:
            self.buffer.add(data, times)
            self._dirty = True

    def add_markers(self, markers: list) -> None:
        for t, _label, sid in markers:
            i = self._n_markers % len(self.marker_times)
            self.marker_times[i] = t
            self.marker_known[i] = sid is not None
            self._n_markers += 1
        self._dirty = True

    def redraw(self) -> None:
        if self.buffer is None or not self._dirty:
            return
        self._dirty = False
        data, times = self.buffer.latest()
        if len(times) < 2:
            return
        now = times[-1]
        x = (times - now).astype(np.float32)
        uv = data * 1e6
        uv = uv - uv.mean(axis=0)
        if not self.spacing_uv or self.frames % 30 == 0:  # rescale about once a second
            spread = float(np.median(np.std(uv, axis=0)))
            self.spacing_uv = max(spread * 6.0, 1e-3)
        n_ch = uv.shape[1]
        offsets = np.arange(n_ch - 1, -1, -1, dtype=np.float32)
        y = np.empty((n_ch, len(x) + 1), dtype=np.float32)
        y[:, :-1] = uv.T / self.spacing_uv + offsets[:, None]
        y[:, -1] = np.nan
        xx = np.empty_like(y)
        xx[:, :-1] = x
        xx[:, -1] = np.nan
        self.curve.setData(xx.ravel(), y.ravel())
        rel = self.marker_times - now
        visible = np.isfinite(rel) & (rel >= -self.seconds) & (rel <= 0.5)
        for item, mask in ((self.ticks_known, visible & self.marker_known), (self.ticks_other, visible & ~self.marker_known)):
            t = rel[mask]
            item.setData(np.repeat(t, 2), np.tile([-1.0, float(n_ch)], len(t)))
        self.frames += 1
