"""The retrieved images: the top-k candidates of the last epoch (single trial) and of the
running average over the repetitions of its stimulus, each with rank, concept and a
confidence bar; the image actually shown when the marker tells it, and the hit
highlighted."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QImage, QPainter, QPixmap
from PySide6.QtWidgets import QFrame, QGridLayout, QHBoxLayout, QLabel, QSizePolicy, QVBoxLayout, QWidget

__all__ = ["CandidateCard", "CandidateView", "Gallery"]

THUMB = 112  # displayed thumbnail size (px)
MAX_K = 10  # most candidates shown per row
# one style sheet on the view; a card's look follows its "state" property, so a new result
# re-polishes only the cards whose state changed (setting style sheets per card is slow)
VIEW_STYLE = """
QFrame#card { border: 1px solid #c8c8c8; border-radius: 6px; background: white; }
QFrame#card[state="hit"] { border: 3px solid #1a9641; background: #e6f5e9; }
QFrame#card[state="truth"] { border: 2px solid #2b5aa6; background: #eef3fb; }
QFrame#card QLabel { border: none; background: transparent; }
QFrame#card QLabel#thumb { background: #f0f0f0; }
QFrame#card QLabel#rank { font-weight: bold; }
"""

@dataclass
class Gallery:
    """What the view needs from a bundle: per stimulus id its concept and thumbnail
    (images are loaded off the GUI thread as ``QImage``; pixmaps are made on first use)."""

    concepts: dict[int, str]
    paths: dict[int, Path]
    images: dict[int, QImage]

    @classmethod
    def from_bundle(cls, bundle) -> "Gallery":
        """Read the thumbnails (safe on a worker thread)."""
        concepts, paths, images = {}, {}, {}
        for item in bundle.items:
            concepts[item.id] = item.concept
            if item.thumbnail:
                path = bundle.path / item.thumbnail
                image = QImage(str(path))
                if not image.isNull():
                    paths[item.id], images[item.id] = path, image
        return cls(concepts, paths, images)


class ConfidenceBar(QWidget):
    """A filled bar with the confidence in per cent.  Painted on the next update, never
    synchronously (QProgressBar repaints at once on every setValue, which costs
    milliseconds per card)."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.confidence: float | None = None
        self._text = ""

    def set_confidence(self, confidence: float | None) -> None:
        text = "" if confidence is None else f"{100 * confidence:.1f} %"
        if confidence != self.confidence or text != self._text:
            self.confidence, self._text = confidence, text
            self.update()

    def text(self) -> str:
        return self._text

    def paintEvent(self, event) -> None:
        p = QPainter(self)
        r = self.rect().adjusted(0, 0, -1, -1)
        p.setPen(QColor(180, 180, 180))
        p.setBrush(QColor(245, 245, 245))
        p.drawRect(r)
        if self.confidence:
            w = int(round(r.width() * min(max(self.confidence, 0.0), 1.0)))
            p.fillRect(r.x() + 1, r.y() + 1, max(w - 1, 0), r.height() - 1, QColor(58, 120, 200))
        p.setPen(QColor(20, 20, 20))
        p.drawText(r, Qt.AlignCenter, self._text)
        p.end()


class CandidateCard(QFrame):
    """One image with its rank, concept and confidence."""

    def __init__(self, title: str = "", parent=None):
        super().__init__(parent)
        self.setObjectName("card")
        self.setProperty("state", "plain")
        self.stimulus_id: int | None = None
        self.thumbnail_path: Path | None = None
        self.hit = False
        self.title = QLabel(title)
        self.title.setObjectName("rank")
        self.title.setAlignment(Qt.AlignCenter)
        self.image = QLabel()
        self.image.setObjectName("thumb")
        self.image.setFixedSize(THUMB, THUMB)
        self.image.setAlignment(Qt.AlignCenter)
        self.caption = QLabel("")
        self.caption.setAlignment(Qt.AlignCenter)
        self.caption.setFixedWidth(THUMB + 8)
        self.bar = ConfidenceBar()
        self.bar.setFixedSize(THUMB, 16)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(6, 4, 6, 6)
        layout.setSpacing(3)
        layout.addWidget(self.title)
        layout.addWidget(self.image, 0, Qt.AlignHCenter)
        layout.addWidget(self.caption)
        layout.addWidget(self.bar, 0, Qt.AlignHCenter)
        self.setSizePolicy(QSizePolicy.Fixed, QSizePolicy.Fixed)
        self.clear()

    def _set_state(self, state: str) -> None:
        if self.property("state") != state:
            self.setProperty("state", state)
            self.style().unpolish(self)
            self.style().polish(self)

    def clear(self) -> None:
        self.stimulus_id, self.thumbnail_path, self.hit = None, None, False
        self.image.clear()
        self.image.setText("–")
        self.caption.setText("")
        self.bar.set_confidence(None)
        self._set_state("plain")

    def show_stimulus(self, stimulus_id: int, view: "CandidateView", confidence: float | None = None,
                      hit: bool = False, truth: bool = False) -> None:
        sid = int(stimulus_id)
        if sid != self.stimulus_id:  # new image: only then touch the pixmap and caption
            self.stimulus_id = sid
            self.thumbnail_path = view.gallery.paths.get(sid) if view.gallery else None
            pixmap = view.pixmap(sid)
            if pixmap is None:
                self.image.clear()
                self.image.setText(f"#{sid}\n(no image)")
            else:
                self.image.setPixmap(pixmap)
            concept = view.gallery.concepts.get(sid, "?") if view.gallery else "?"
            self.caption.setText(concept)
            self.caption.setToolTip(f"stimulus {sid}: {concept}")
        self.bar.set_confidence(None if confidence is None else float(confidence))
        self.hit = hit
        self._set_state("truth" if truth else "hit" if hit else "plain")


class CandidateView(QWidget):
    """The shown image, and the top-k of the single trial and of the averaged repetitions."""

    def __init__(self, top_k: int = 5, parent=None):
        super().__init__(parent)
        self.setStyleSheet(VIEW_STYLE)
        self.gallery: Gallery | None = None
        self._pixmaps: dict[int, QPixmap] = {}
        self.truth = CandidateCard("shown")
        self.truth.bar.hide()
        self.truth_note = QLabel("")
        self.truth_note.setAlignment(Qt.AlignCenter)
        self.truth_note.setWordWrap(True)
        self.truth_note.setMaximumWidth(THUMB + 20)
        self.rows: dict[str, list[CandidateCard]] = {}
        self.row_titles: dict[str, QLabel] = {}
        self.records = 0  # records shown: the window shows the last of each decoded batch
        grid = QGridLayout(self)
        grid.setContentsMargins(6, 6, 6, 6)
        grid.setHorizontalSpacing(8)
        left = QVBoxLayout()
        left.addStretch(1)
        left.addWidget(self.truth)
        left.addWidget(self.truth_note)
        left.addStretch(1)
        grid.addLayout(left, 0, 0, 2, 1)
        separator = QFrame()
        separator.setFrameShape(QFrame.VLine)
        grid.addWidget(separator, 0, 1, 2, 1)
        for r, (key, title) in enumerate((("single", "single trial"), ("averaged", "averaged repetitions"))):
            box = QVBoxLayout()
            label = QLabel(title)
            label.setStyleSheet("font-weight: bold; font-size: 13px;")
            self.row_titles[key] = label
            box.addWidget(label)
            cards_row = QHBoxLayout()
            self.rows[key] = []
            for k in range(MAX_K):
                card = CandidateCard(f"{k + 1}")
                self.rows[key].append(card)
                cards_row.addWidget(card)
            cards_row.addStretch(1)
            box.addLayout(cards_row)
            grid.addLayout(box, r, 2)
        grid.setColumnStretch(2, 1)
        self.set_top_k(top_k)
        self.clear()

    def set_top_k(self, k: int) -> None:
        """Show ``k`` candidates per row (at most :data:`MAX_K`)."""
        self.top_k = max(1, min(int(k), MAX_K))
        for cards in self.rows.values():
            for i, card in enumerate(cards):
                card.setVisible(i < self.top_k)

    # -- gallery ------------------------------------------------------------------------
    def set_gallery(self, gallery: Gallery | None) -> None:
        self.gallery = gallery
        self._pixmaps = {}
        for card in [self.truth, *(c for cards in self.rows.values() for c in cards)]:
            card.stimulus_id = None  # forget pixmaps of the previous gallery
        self.clear()

    def pixmap(self, stimulus_id: int) -> QPixmap | None:
        if self.gallery is None:
            return None
        pm = self._pixmaps.get(stimulus_id)
        if pm is None:
            image = self.gallery.images.get(stimulus_id)
            if image is None:
                return None
            pm = QPixmap.fromImage(image).scaled(THUMB, THUMB, Qt.KeepAspectRatio, Qt.SmoothTransformation)
            self._pixmaps[stimulus_id] = pm
        return pm

    # -- results ------------------------------------------------------------------------
    def clear(self) -> None:
        self.truth.clear()
        self.truth_note.setText("waiting for the first epoch")
        for cards in self.rows.values():
            for card in cards:
                card.clear()
        self.row_titles["single"].setText("single trial")
        self.row_titles["averaged"].setText("averaged repetitions")
        self.records = 0

    def show_record(self, record: dict) -> None:
        """Show one decoded epoch (a record of :meth:`LiveSession.step`)."""
        self.records += 1
        truth = record.get("stimulus_id")
        if truth is not None:
            self.truth.show_stimulus(truth, self, truth=True)
            self.truth_note.setText(f"marker {record.get('marker')}")
        else:
            self.truth.clear()
            self.truth_note.setText(f"marker {record.get('marker')}: not in the gallery")
        calibrated = record.get("calibrated")
        window = record.get("window")
        stage = "" if window is None else f" · {'provisional, ' if record.get('provisional') else ''}first {window:g} s"
        self.row_titles["single"].setText("single trial" + stage + (
            "" if calibrated is None else " · calibrated confidence" if calibrated
            else " · confidence not calibrated (the bundle has no calibration)"))
        self._fill("single", record.get("topk") or [], record.get("confidence") or [], truth)
        avg = record.get("averaged")
        if record.get("provisional"):
            self.row_titles["averaged"].setText("averaged repetitions (when the whole epoch is in)")
            for card in self.rows["averaged"]:
                card.clear()
        elif avg:
            self.row_titles["averaged"].setText(f"averaged repetitions (n = {avg.get('n')})")
            self._fill("averaged", avg.get("topk") or [], avg.get("confidence") or [], truth)
        else:
            self.row_titles["averaged"].setText("averaged repetitions (no stimulus id)")
            for card in self.rows["averaged"]:
                card.clear()

    def _fill(self, key: str, topk: list, confidence: list, truth: int | None) -> None:
        for k, card in enumerate(self.rows[key]):
            if k < len(topk) and k < self.top_k:
                sid = int(topk[k])
                card.show_stimulus(sid, self, confidence[k] if k < len(confidence) else None,
                                   hit=truth is not None and sid == truth)
            else:
                card.clear()
