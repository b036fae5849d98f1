"""The side panels of the window: streams, model, running figures and the event log.

Panels only show things and emit requests; the window decides and talks to workers."""

from __future__ import annotations

import time

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QComboBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QHeaderView,
    QLabel,
    QPlainTextEdit,
    QPushButton,
    QSpinBox,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

from ..summary import fmt_pct

__all__ = ["EventLog", "FiguresPanel", "ModelPanel", "StreamPanel"]

AUTO_MARKERS = "(auto: STREAM-markers)"


def _ms(x) -> str:
    return "–" if x is None else f"{1000 * x:.1f} ms"


def _value_label() -> QLabel:
    label = QLabel("–")
    label.setTextInteractionFlags(Qt.TextSelectableByMouse)
    label.setWordWrap(True)
    return label


class StreamPanel(QGroupBox):
    """Discovered streams, the EEG and marker stream to use, connect/disconnect, status."""

    refresh_requested = Signal()
    connect_requested = Signal(str, str)  # eeg name, marker name ("" = auto)
    disconnect_requested = Signal()

    COLUMNS = ("name", "type", "ch", "rate", "source id", "host")

    def __init__(self, parent=None):
        super().__init__("Streams", parent)
        self.table = QTableWidget(0, len(self.COLUMNS))
        self.table.setHorizontalHeaderLabels(self.COLUMNS)
        self.table.verticalHeader().hide()
        self.table.setEditTriggers(QTableWidget.NoEditTriggers)
        self.table.setSelectionBehavior(QTableWidget.SelectRows)
        self.table.horizontalHeader().setSectionResizeMode(QHeaderView.Interactive)
        self.table.horizontalHeader().setStretchLastSection(True)
        self.table.setMaximumHeight(130)
        for c, width in enumerate((150, 50, 30, 70, 110)):
            self.table.setColumnWidth(c, width)
        self.table.cellDoubleClicked.connect(self._pick)
        self.refresh_button = QPushButton("Refresh (F5)")
        self.refresh_button.clicked.connect(self.refresh_requested)
        self.eeg = QComboBox()
        self.eeg.setEditable(True)
        self.eeg.setToolTip("name of the EEG stream (double-click a stream above to choose it)")
        self.markers = QComboBox()
        self.markers.setEditable(True)
        self.markers.addItem(AUTO_MARKERS)
        self.connect_button = QPushButton("Connect")
        self.connect_button.setToolTip("connect to the EEG and marker streams and decode (Ctrl+L)")
        self.connect_button.clicked.connect(self._on_connect)
        self.state = _value_label()
        self.channels = _value_label()
        self.rate = _value_label()
        self.lag = _value_label()
        self.lost = _value_label()
        self.connected = False

        top = QHBoxLayout()
        top.addWidget(QLabel("on the network:"))
        top.addStretch(1)
        top.addWidget(self.refresh_button)
        form = QFormLayout()
        form.addRow("EEG stream", self.eeg)
        form.addRow("markers", self.markers)
        form.addRow("", self.connect_button)
        form.addRow("state", self.state)
        form.addRow("channels", self.channels)
        form.addRow("rate", self.rate)
        form.addRow("lag / clock offset", self.lag)
        form.addRow("samples lost", self.lost)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.table)
        layout.addLayout(form)

    # -- discovery ----------------------------------------------------------------------
    def set_streams(self, streams: list) -> None:
        """Fill the table with :class:`~bci_app.streams.StreamSummary` objects."""
        self.table.setRowCount(len(streams))
        for r, s in enumerate(streams):
            rate = "irregular" if s.sfreq == 0 else f"{s.sfreq:g} Hz"
            for c, text in enumerate((s.name, s.type, str(s.n_channels), rate, s.source_id, s.hostname)):
                item = QTableWidgetItem(text)
                item.setData(Qt.UserRole, s.is_marker)
                self.table.setItem(r, c, item)
        for combo, want_marker in ((self.eeg, False), (self.markers, True)):
            current = combo.currentText()
            combo.blockSignals(True)
            combo.clear()
            if want_marker:
                combo.addItem(AUTO_MARKERS)
            for name in sorted({s.name for s in streams if s.is_marker == want_marker}):
                combo.addItem(name)
            combo.setCurrentText(current)
            combo.blockSignals(False)

    def _pick(self, row: int, _col: int) -> None:
        item = self.table.item(row, 0)
        if item is None:
            return
        (self.markers if item.data(Qt.UserRole) else self.eeg).setCurrentText(item.text())

    # -- connection ---------------------------------------------------------------------
    def marker_name(self) -> str:
        text = self.markers.currentText().strip()
        return "" if text in ("", AUTO_MARKERS) else text

    def _on_connect(self) -> None:
        if self.connected:
            self.disconnect_requested.emit()
        else:
            self.connect_requested.emit(self.eeg.currentText().strip(), self.marker_name())

    def set_connection(self, state: str) -> None:
        """idle, connecting, connected, stalled, lost, stopping."""
        self.connected = state not in ("idle",)
        self.connect_button.setText("Disconnect" if self.connected else "Connect")
        self.connect_button.setEnabled(state not in ("stopping",))
        self.eeg.setEnabled(not self.connected)
        self.markers.setEnabled(not self.connected)
        self.state.setText(state)
        colour = {"connected": "#1a9641", "stalled": "#d7191c", "lost": "#d7191c", "markers lost": "#d7191c",
                  "connecting": "#e08214"}.get(state, "#444")
        self.state.setStyleSheet(f"color: {colour}; font-weight: bold;")
        if state == "idle":
            for label in (self.channels, self.rate, self.lag, self.lost):
                label.setText("–")

    def show_info(self, info: dict) -> None:
        self.channels.setText(f"{len(info['ch_names'])} ({len(info['display_channels'])} used by the model)")
        self.rate.setText(f"{info['sfreq']:g} Hz")
        if info.get("markers"):
            self.markers.setCurrentText(info["markers"])

    def show_status(self, status: dict, sfreq: float) -> None:
        self.set_connection(status["state"])
        rate = status.get("rate")
        self.rate.setText(f"{sfreq:g} Hz" + ("" if rate is None else f" ({rate:.1f} measured)"))
        offset = status.get("clock_offset")
        self.lag.setText(f"{_ms(status.get('lag'))} / {_ms(offset)}")
        s = status["summary"]
        self.lost.setText(f"{s['samples_lost']} ({s['gaps']} gaps, {s['stalls']} stalls)")


class ModelPanel(QGroupBox):
    """The bundle: what it is, how it scored offline; the device and top-k to decode with."""

    open_requested = Signal()

    def __init__(self, parent=None):
        super().__init__("Model", parent)
        self.open_button = QPushButton("Open bundle… (Ctrl+O)")
        self.open_button.clicked.connect(self.open_requested)
        self.path = QLabel("no bundle")
        self.path.setWordWrap(True)
        self.path.setTextInteractionFlags(Qt.TextSelectableByMouse)
        self.backbone = _value_label()
        self.layer = _value_label()
        self.encoder = _value_label()
        self.gallery = _value_label()
        self.trained = _value_label()
        self.offline = _value_label()
        self.device = QComboBox()
        self.device.addItems(["auto", "cpu", "cuda"])
        self.device.setToolTip("auto: the GPU when there is one (applies at the next connect)")
        self.top_k = QSpinBox()
        self.top_k.setRange(1, 10)
        self.top_k.setValue(5)
        form = QFormLayout()
        form.addRow("backbone", self.backbone)
        form.addRow("layer", self.layer)
        form.addRow("encoder", self.encoder)
        form.addRow("gallery", self.gallery)
        form.addRow("trained on", self.trained)
        form.addRow("offline test", self.offline)
        form.addRow("device", self.device)
        form.addRow("top-k", self.top_k)
        layout = QVBoxLayout(self)
        layout.addWidget(self.open_button)
        layout.addWidget(self.path)
        layout.addLayout(form)

    def show_bundle(self, bundle) -> None:
        cfg = bundle.config
        bb = cfg.get("backbone", {})
        self.path.setText(str(bundle.path))
        self.backbone.setText(f"{bb.get('name', '?')} ({bb.get('weights', '?')})")
        n_layers = bb.get("n_layers")
        layer = cfg.get("layer")
        self.layer.setText(str(layer) + (f" of {n_layers} stages" if isinstance(layer, int) and n_layers else ""))
        enc = cfg.get("encoder", {})
        self.encoder.setText(f"{enc.get('name', '?')}: {bundle.n_chans} channels x {bundle.n_times} samples")
        self.gallery.setText(f"{len(bundle.items)} images")
        prov = cfg.get("provenance", {})
        self.trained.setText(f"subject {prov.get('subject', '?')}, {prov.get('source', '?')} data")
        self.trained.setToolTip(str(prov.get("data", "")))
        m = cfg.get("metrics", {})
        if m:
            n_way = m.get("n_way")
            self.offline.setText(f"top-1 {fmt_pct(m.get('averaged', {}).get('top1'))} averaged, "
                                 f"{fmt_pct(m.get('single_trial', {}).get('top1'))} single"
                                 + (f" ({n_way}-way, chance {fmt_pct(1 / n_way)})" if n_way else ""))
        else:
            self.offline.setText("–")


class FiguresPanel(QGroupBox):
    """Live accuracy, epoch counts and latency."""

    def __init__(self, parent=None):
        super().__init__("Running figures", parent)
        self.labels: dict[str, QLabel] = {}
        form = QFormLayout(self)
        for key, title in (("single", "single trial"), ("averaged", "averaged"), ("epochs", "epochs decoded"),
                           ("rejected", "rejected"), ("markers", "markers"), ("latency", "latency last"),
                           ("latency_pct", "latency p50 / p99"), ("marker_latency", "marker → decision p50")):
            self.labels[key] = _value_label()
            form.addRow(title, self.labels[key])
        self.labels["latency"].setToolTip("epoch ready -> decision (preprocessing and inference)")
        self.reset()

    def reset(self) -> None:
        for label in self.labels.values():
            label.setText("–")
            label.setToolTip(label.toolTip())

    def show_last(self, record: dict) -> None:
        self.labels["latency"].setText(f"{1000 * (record['t_decided'] - record['t_ready']):.1f} ms")

    def show_summary(self, s: dict) -> None:
        st, av = s["single_trial"], s["averaged"]
        self.labels["single"].setText(f"top-1 {fmt_pct(st['top1'])}, top-5 {fmt_pct(st['top5'])} (n = {st['n']})")
        self.labels["averaged"].setText(f"top-1 {fmt_pct(av['top1'])}, top-5 {fmt_pct(av['top5'])} "
                                        f"({av['n_stimuli']} stimuli)")
        self.labels["epochs"].setText(str(s["epochs_decoded"]))
        rej = s["epochs_rejected"]
        self.labels["rejected"].setText(str(sum(rej.values())) + (
            " (" + ", ".join(f"{k}: {v}" for k, v in rej.items() if v) + ")" if any(rej.values()) else ""))
        self.labels["markers"].setText(f"{s['markers_seen']} ({s['markers_unknown']} unknown, "
                                       f"{s['catch_markers']} catch)")
        lat, mlat = s.get("decision_latency"), s.get("marker_to_decision_latency")
        if lat:
            self.labels["latency_pct"].setText(f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms")
        if mlat:
            self.labels["marker_latency"].setText(f"{mlat['p50_ms']:.0f} ms")


class EventLog(QGroupBox):
    """Timestamped messages: connection changes, recording, errors."""

    def __init__(self, parent=None, max_lines: int = 500):
        super().__init__("Events", parent)
        self.text = QPlainTextEdit()
        self.text.setReadOnly(True)
        self.text.setMaximumBlockCount(max_lines)
        layout = QVBoxLayout(self)
        layout.addWidget(self.text)
        self.lines: list[str] = []

    def add(self, message: str, error: bool = False) -> None:
        line = f"{time.strftime('%H:%M:%S')}  {'error: ' if error else ''}{message}"
        self.lines.append(line)
        self.text.appendPlainText(line)


class Banner(QWidget):
    """A closable error line across the top of the window."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        self.label.setTextInteractionFlags(Qt.TextSelectableByMouse)
        close = QPushButton("×")
        close.setFixedWidth(28)
        close.setFlat(True)
        close.clicked.connect(self.hide)
        layout = QHBoxLayout(self)
        layout.setContentsMargins(10, 4, 4, 4)
        layout.addWidget(self.label, 1)
        layout.addWidget(close)
        self.setAutoFillBackground(True)
        self.setStyleSheet("background: #fbe3e4; color: #8a1f11;")
        self.hide()

    def show_error(self, message: str) -> None:
        self.label.setText(message)
        self.show()

    @property
    def message(self) -> str:
        return self.label.text() if self.isVisible() else ""
