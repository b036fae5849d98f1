"""The candidate view shows the bundle's thumbnails for a decoded result, with confidences,
the shown image and the hit highlighted."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("PySide6")


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    from trainer.bundle import load_bundle

    return load_bundle(tiny_bundle)


def _pixels(pixmap):
    image = pixmap.toImage().convertToFormat(pixmap.toImage().Format.Format_RGB32)
    ptr = image.constBits()
    return np.frombuffer(ptr, dtype=np.uint8, count=image.sizeInBytes()).reshape(image.height(), -1).copy()


def _expected_pixels(path):
    from PySide6.QtCore import Qt
    from PySide6.QtGui import QImage, QPixmap

    from bci_app.gui.candidates import THUMB

    pm = QPixmap.fromImage(QImage(str(path))).scaled(THUMB, THUMB, Qt.KeepAspectRatio, Qt.SmoothTransformation)
    return _pixels(pm)


def test_cards_show_the_thumbnails_of_the_decoded_ids(qtbot, bundle):
    from bci_app.gui.candidates import CandidateView, Gallery

    view = CandidateView(top_k=5)
    qtbot.addWidget(view)
    view.set_gallery(Gallery.from_bundle(bundle))
    ids = [int(i) for i in bundle.gallery_ids]
    truth = ids[3]
    topk = [ids[7], truth, ids[0], ids[12], ids[5]]
    conf = [0.4, 0.3, 0.15, 0.1, 0.05]
    avg_topk = [truth, ids[7], ids[1], ids[2], ids[9]]
    view.show_record({"marker": truth, "stimulus_id": truth, "topk": topk, "confidence": conf,
                      "averaged": {"topk": avg_topk, "confidence": [0.5, 0.2, 0.1, 0.1, 0.1], "n": 3}})

    index = {int(g): i for i, g in enumerate(bundle.gallery_ids)}
    for row, want in (("single", topk), ("averaged", avg_topk)):
        cards = view.rows[row]
        assert [c.stimulus_id for c in cards[:5]] == want
        for card, sid in zip(cards, want):
            path = bundle.thumbnail_path(index[sid])
            assert card.thumbnail_path == path
            np.testing.assert_array_equal(_pixels(card.image.pixmap()), _expected_pixels(path))
            assert card.caption.text() == bundle.items[index[sid]].concept
        assert [c.hit for c in cards[:5]] == [sid == truth for sid in want]
    assert [c.bar.confidence for c in view.rows["single"][:5]] == conf
    assert view.rows["single"][0].bar.text() == "40.0 %"
    assert view.truth.stimulus_id == truth
    np.testing.assert_array_equal(_pixels(view.truth.image.pixmap()),
                                  _expected_pixels(bundle.thumbnail_path(index[truth])))
    assert "n = 3" in view.row_titles["averaged"].text()


def test_unknown_stimulus_top_k_and_missing_thumbnails(qtbot, bundle):
    from bci_app.gui.candidates import CandidateView, Gallery

    view = CandidateView(top_k=5)
    qtbot.addWidget(view)
    gallery = Gallery.from_bundle(bundle)
    ids = [int(i) for i in bundle.gallery_ids]
    del gallery.images[ids[1]]  # as if its thumbnail could not be read
    view.set_gallery(gallery)
    view.set_top_k(3)
    view.show_record({"marker": 99999, "stimulus_id": None, "topk": ids[:5], "confidence": [0.2] * 5,
                      "averaged": None})
    assert view.truth.stimulus_id is None
    assert "not in the gallery" in view.truth_note.text()
    single = view.rows["single"]
    assert [c.stimulus_id for c in single[:3]] == ids[:3]
    assert all(c.stimulus_id is None and c.isHidden() for c in single[3:])
    assert not any(c.hit for c in single)
    assert single[1].image.pixmap().isNull() and "no image" in single[1].image.text()
    assert all(c.stimulus_id is None for c in view.rows["averaged"])


def test_a_provisional_decision_is_labelled_with_its_window_then_refined(qtbot, bundle, tmp_path):
    """A --windows bundle: the 0.3 s decision shows first, labelled provisional, and the
    averaged row waits for the whole epoch; the whole epoch's decision replaces it. Whether
    the confidences are calibrated is said in the title."""
    from bci_app.gui.candidates import CandidateView, Gallery

    view = CandidateView(top_k=5)
    qtbot.addWidget(view)
    view.set_gallery(Gallery.from_bundle(bundle))
    ids = [int(i) for i in bundle.gallery_ids]
    view.show_record({"marker": ids[2], "stimulus_id": ids[2], "topk": ids[:5], "confidence": [0.3, 0.2, 0.1, 0.1, 0.1],
                      "calibrated": True, "window": 0.3, "provisional": True, "averaged": None})
    title = view.row_titles["single"].text()
    assert "provisional" in title and "0.3 s" in title and "calibrated confidence" in title
    assert "whole epoch" in view.row_titles["averaged"].text()
    assert all(c.stimulus_id is None for c in view.rows["averaged"])
    view.grab().save(str(tmp_path / "provisional.png"))
    view.show_record({"marker": ids[2], "stimulus_id": ids[2], "topk": ids[2:7], "confidence": [0.5, 0.2, 0.1, 0.1, 0.1],
                      "calibrated": False, "window": 1.0, "provisional": False,
                      "averaged": {"topk": ids[2:7], "confidence": [0.6, 0.1, 0.1, 0.1, 0.1], "n": 2}})
    title = view.row_titles["single"].text()
    assert "provisional" not in title and "1 s" in title and "not calibrated" in title
    assert [c.stimulus_id for c in view.rows["single"][:5]] == ids[2:7] and view.rows["single"][0].hit
    assert "n = 2" in view.row_titles["averaged"].text()
