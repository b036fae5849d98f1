"""The live decoder (:mod:`bci_app.decoder`): top-k retrieval against the bundle's
gallery, running averages per stimulus, and the marker -> stimulus id map."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from bci_app.decoder import Decoder, Prediction, StimulusMap
from trainer.bundle import GalleryItem, load_bundle
from trainer.errors import BCIError


@pytest.fixture(scope="module")
def bundle(tiny_bundle):
    """The shared tiny bundle (tests/bci_app/conftest.py), loaded once for this module."""
    return load_bundle(tiny_bundle)


@pytest.fixture(scope="module")
def epochs(bundle):
    """Eight random epochs shaped like the bundle's input."""
    return np.random.default_rng(0).standard_normal((8, bundle.n_chans, bundle.n_times)).astype(np.float32)


def _brute_force(bundle, x, k):
    """Top-k ids and confidences from bundle.embed, cosine similarity and softmax(sim / T),
    T the bundle's calibrated single-trial temperature."""
    sim = bundle.embed(x).astype(np.float64) @ bundle.gallery.T.astype(np.float64)
    logits = sim / bundle.confidence["single_trial"]["temperature"]
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return bundle.gallery_ids[order], np.take_along_axis(probs, order, axis=1)


def test_bundle_is_what_the_tests_expect(bundle):
    assert bundle.gallery.shape == (20, 32)
    assert bundle.gallery_ids.tolist() == list(range(1, 21))
    assert (bundle.n_chans, bundle.n_times) == (17, 250)
    assert bundle.temperature > 0


def test_topk_equals_a_brute_force_computation(bundle, epochs):
    decoder = Decoder(bundle, device="cpu", top_k=5)
    assert decoder.top_k == 5 and str(decoder.device) == "cpu"
    preds = decoder.decode(epochs, [None] * len(epochs))
    ids, conf = _brute_force(bundle, epochs, 5)
    assert len(preds) == len(epochs)
    for p, want_ids, want_conf in zip(preds, ids, conf):
        assert isinstance(p, Prediction)
        assert p.topk == want_ids.tolist()
        np.testing.assert_allclose(p.confidence, want_conf, rtol=1e-4, atol=1e-6)
        assert all(isinstance(i, int) for i in p.topk) and len(set(p.topk)) == 5
        assert set(p.topk) <= set(bundle.gallery_ids.tolist())
        assert p.confidence == sorted(p.confidence, reverse=True)
        assert 0 < sum(p.confidence) <= 1 + 1e-6
        assert p.avg_topk is None and p.avg_confidence is None and p.n_averaged == 0
    # the epochs are not all decoded alike (the test would be empty otherwise)
    assert len({tuple(p.topk) for p in preds}) > 1


def test_all_candidates_sum_to_one(bundle, epochs):
    decoder = Decoder(bundle, device="cpu", top_k=20)
    for p in decoder.decode(epochs[:3], [None] * 3):
        assert sorted(p.topk) == list(range(1, 21))
        assert sum(p.confidence) == pytest.approx(1.0, abs=1e-5)


def test_batch_equals_one_by_one(bundle, epochs):
    decoder = Decoder(bundle, device="cpu", top_k=5)
    batch = decoder.decode(epochs, [None] * len(epochs))
    for i, e in enumerate(epochs):
        (single,) = decoder.decode(e[None], [None])
        assert single.topk == batch[i].topk
        np.testing.assert_allclose(single.confidence, batch[i].confidence, rtol=1e-5, atol=1e-6)


def test_averaged_prediction_is_the_prediction_of_the_mean(bundle, epochs):
    decoder = Decoder(bundle, device="cpu", top_k=5)
    reference = Decoder(bundle, device="cpu", top_k=5)
    assert decoder.avg_temperature != decoder.temperature  # calibrated apart
    reference.temperature = reference.avg_temperature  # averages are scored at the averaged temperature
    sid = 7
    for k in range(1, 5):
        (p,) = decoder.decode(epochs[k - 1 : k], [sid])
        mean = epochs[:k].astype(np.float64).mean(axis=0).astype(np.float32)
        (want,) = reference.decode(mean[None], [None])
        assert p.n_averaged == k
        assert p.avg_topk == want.topk
        np.testing.assert_allclose(p.avg_confidence, want.confidence, rtol=1e-5, atol=1e-6)
        # the single-trial part is the epoch's own
        (own,) = reference.decode(epochs[k - 1 : k], [None])
        assert p.topk == own.topk
    # the averages differ from the single trials after a few epochs
    assert p.avg_topk != p.topk or not np.allclose(p.avg_confidence, p.confidence)


def test_averages_in_one_batch_and_per_stimulus(bundle, epochs):
    decoder = Decoder(bundle, device="cpu", top_k=3)
    reference = Decoder(bundle, device="cpu", top_k=3)
    reference.temperature = reference.avg_temperature  # averages are scored at the averaged temperature
    preds = decoder.decode(epochs[:5], [1, 2, None, 1, 1])
    assert [p.n_averaged for p in preds] == [1, 1, 0, 2, 3]
    assert preds[2].avg_topk is None and preds[2].avg_confidence is None

    def mean_prediction(rows):
        mean = epochs[rows].astype(np.float64).mean(axis=0).astype(np.float32)
        return reference.decode(mean[None], [None])[0]

    for i, rows in ((0, [0]), (1, [1]), (3, [0, 3]), (4, [0, 3, 4])):
        want = mean_prediction(rows)
        assert preds[i].avg_topk == want.topk
        np.testing.assert_allclose(preds[i].avg_confidence, want.confidence, rtol=1e-5, atol=1e-6)
    # epochs without a stimulus id do not update any average
    decoder.decode(epochs[5:8], [None, None, None])
    (p,) = decoder.decode(epochs[5:6], [1])
    assert p.n_averaged == 4
    want = mean_prediction([0, 3, 4, 5])
    assert p.avg_topk == want.topk
    np.testing.assert_allclose(p.avg_confidence, want.confidence, rtol=1e-5, atol=1e-6)
    (q,) = decoder.decode(epochs[6:7], [2])
    assert q.n_averaged == 2
    # reset
    decoder.reset_averages()
    (r,) = decoder.decode(epochs[7:8], [1])
    assert r.n_averaged == 1 and r.avg_topk == r.topk


@pytest.mark.parametrize("shape", [(17, 250), (2, 16, 250), (2, 17, 200), (1, 2, 17, 250)])
def test_bad_shapes(bundle, shape):
    decoder = Decoder(bundle, device="cpu")
    with pytest.raises(ValueError, match=r"epochs must be \(n, 17, 250\)") as info:
        decoder.decode(np.zeros(shape, np.float32), [None] * shape[0])
    assert str(shape).replace(" ", "") in str(info.value).replace(" ", "")


def test_one_stimulus_id_per_epoch(bundle, epochs):
    decoder = Decoder(bundle, device="cpu")
    with pytest.raises(ValueError, match="one stimulus id"):
        decoder.decode(epochs[:3], [None, 1])


def test_top_k_is_capped_at_the_gallery_size(bundle, epochs):
    decoder = Decoder(bundle, device="cpu", top_k=1000)
    assert decoder.top_k == 20
    (p,) = decoder.decode(epochs[:1], [4])
    assert len(p.topk) == len(p.confidence) == len(p.avg_topk) == 20


@pytest.mark.parametrize("top_k", [0, -1, 2.0, "5"])
def test_bad_top_k(bundle, top_k):
    with pytest.raises(ValueError, match="top_k"):
        Decoder(bundle, device="cpu", top_k=top_k)


def test_cuda_without_a_gpu_is_a_bci_error(bundle):
    import torch

    if torch.cuda.is_available():  # pragma: no cover - this machine has none
        pytest.skip("a GPU is present")
    with pytest.raises(BCIError, match="CUDA is not available"):
        Decoder(bundle, device="cuda")


def test_bad_device_name(bundle):
    with pytest.raises(ValueError, match="device must be"):
        Decoder(bundle, device="gpu0")


# --------------------------------------------------------------------------- StimulusMap
def test_stimulus_map_on_the_bundle(bundle):
    smap = StimulusMap(bundle)
    for item in bundle.items:
        folder, name = item.file.split("/")
        stem = name.rsplit(".", 1)[0]
        for value in (item.id, np.int64(item.id), float(item.id), str(item.id), f" {item.id} ", item.file, name, stem,
                      item.concept):
            assert smap(value) == item.id, value
        assert not smap.is_catch(item.id) and not smap.is_catch(item.file)
    first = bundle.items[0]
    assert first.file.startswith("00001_") and first.file.endswith(".jpg")  # "concept folder/file"


@pytest.mark.parametrize("value", [0, 21, -1, 99999, "99999", "0", "21", "-3", 2.5, float("nan"), float("inf"), None,
                                   "catch", "Catch", "unknown", "", "cat/unknown.jpg", b"1", [1]])
def test_stimulus_map_unknown_values(bundle, value):
    assert StimulusMap(bundle)(value) is None


@pytest.mark.parametrize("value, catch", [
    (99999, True), ("99999", True), (" 99999 ", True), (99999.0, True), (np.int64(99999), True), ("catch", True),
    (" Catch ", True), ("CATCH", True),
    (1, False), ("1", False), ("catcher", False), (None, False), (float("nan"), False), (float("inf"), False),
    ("unknown", False), (9999, False),
])
def test_is_catch(value, catch):
    assert StimulusMap.is_catch(value) is catch


def test_stimulus_map_concepts_with_several_images():
    items = [GalleryItem(11, "dog", "00001_dog/dog_01b.jpg", ""), GalleryItem(12, "dog", "00001_dog/dog_02b.jpg", ""),
             GalleryItem(13, "cat", "00002_cat/cat_01b.jpg", ""), GalleryItem(14, "bird", "birds\\bird_01b.png", "")]
    smap = StimulusMap(SimpleNamespace(gallery_ids=np.array([11, 12, 13, 14]), items=items))
    assert smap("dog") is None  # two images: ambiguous
    assert smap("cat") == 13 and smap("bird") == 14
    assert smap("dog_02b.jpg") == 12 and smap("dog_01b") == 11 and smap("00001_dog/dog_02b.jpg") == 12
    assert smap("birds/bird_01b.png") == 14 and smap("bird_01b.png") == 14  # Windows separators
    assert smap(11) == 11 and smap("14") == 14 and smap(1) is None


def test_averages_kept_after_the_input_layer_equal_averages_of_the_epochs(bundle, epochs, monkeypatch):
    """The averages kept as sums of the input layer's outputs (EEGProject) give the
    predictions of averaging the epochs themselves (the path of encoders without one)."""
    split = Decoder(bundle, device="cpu", top_k=5)
    assert split._linear is not None  # the tiny bundle's EEGProject
    monkeypatch.setattr(Decoder, "_first_layer", lambda self: None)
    whole = Decoder(bundle, device="cpu", top_k=5)
    assert whole._linear is None
    sids = [3, 3, None, 4, 3, 4, 3, 3]
    for a, b in zip(split.decode(epochs, sids), whole.decode(epochs, sids)):
        assert (a.topk, a.avg_topk, a.n_averaged) == (b.topk, b.avg_topk, b.n_averaged)
        np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-6, atol=1e-7)
        if a.avg_confidence is not None:
            np.testing.assert_allclose(a.avg_confidence, b.avg_confidence, rtol=1e-5, atol=1e-6)
