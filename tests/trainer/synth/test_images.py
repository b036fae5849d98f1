"""Tests for trainer.synth.images (synthetic THINGS-like image set)."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from PIL import Image

from trainer.errors import UsageError, UsageTypeError
from trainer.synth.images import (
    CATEGORY_NAMES,
    CONCEPT_ATTRIBUTES,
    FAMILY_CATEGORY,
    FAMILY_NAMES,
    IMAGE_STATISTICS,
    N_CATEGORIES,
    N_FAMILIES,
    image_statistics,
    make_concept_names,
    make_concept_styles,
    render_image,
)


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _stat(image: np.ndarray, name: str) -> float:
    return float(image_statistics(image)[IMAGE_STATISTICS.index(name)])


def _grating(n: int, cycles: float, orientation_deg: float, contrast: float = 0.4) -> np.ndarray:
    """Grey sinusoidal grating; orientation of the stripes, CCW from horizontal."""
    c = (np.arange(n) + 0.5) / n
    x, y = c[None, :], -c[:, None]
    th = np.deg2rad(orientation_deg)
    g = 0.5 + contrast * np.sin(2 * np.pi * cycles * (-np.sin(th) * x + np.cos(th) * y))
    g = np.broadcast_to(g, (n, n))
    return np.repeat((g * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _flat(rgb: tuple[int, int, int], n: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, dtype=np.uint8), (n, n, 3)).copy()


# ---------------------------------------------------------------------------
# Constants and styles
# ---------------------------------------------------------------------------


def test_constants_consistent():
    assert len(FAMILY_NAMES) == N_FAMILIES == 12
    assert len(CATEGORY_NAMES) == N_CATEGORIES == 4
    assert len(FAMILY_CATEGORY) == N_FAMILIES
    assert set(FAMILY_CATEGORY) == set(range(N_CATEGORIES))
    assert len(set(CONCEPT_ATTRIBUTES)) == len(CONCEPT_ATTRIBUTES)
    assert len(set(IMAGE_STATISTICS)) == len(IMAGE_STATISTICS) == 14


def test_styles_deterministic_and_seed_dependent():
    a = make_concept_styles(30, _rng(0))
    b = make_concept_styles(30, _rng(0))
    c = make_concept_styles(30, _rng(1))
    assert a == b
    assert a != c
    assert make_concept_styles(0, _rng(0)) == []


def test_styles_valid_and_families_spread():
    styles = make_concept_styles(240, _rng(2))
    counts = np.bincount([s.family for s in styles], minlength=N_FAMILIES)
    assert np.all(counts == 20)
    odd = np.bincount([s.family for s in make_concept_styles(30, _rng(3))], minlength=N_FAMILIES)
    assert odd.min() >= 2 and odd.max() <= 3
    # Families are shuffled, not in a fixed cyclic order.
    assert [s.family for s in styles[:24]] != [i % N_FAMILIES for i in range(24)]
    for s in styles:
        assert s.category == FAMILY_CATEGORY[s.family]
        pal = np.asarray(s.palette)
        assert pal.shape == (3, 3)
        assert pal.min() >= 0.0 and pal.max() <= 1.0
        assert 0.0 <= s.texture_orientation < np.pi
        assert 2.0 <= s.texture_frequency <= 16.0
        assert 0.3 <= s.size <= 0.9
        assert s.elongation >= 1.0
        assert 0.0 <= s.animacy <= 1.0
    # Figure and background differ clearly in luminance.
    luma = np.array([0.2126, 0.7152, 0.0722])
    gaps = [abs(np.dot(s.palette[0], luma) - np.dot(s.palette[2], luma)) for s in styles]
    assert min(gaps) > 0.1


def test_style_validation():
    s = make_concept_styles(1, _rng(0))[0]
    with pytest.raises(ValueError):
        dataclasses.replace(s, category=(s.category + 1) % N_CATEGORIES)
    with pytest.raises(ValueError):
        dataclasses.replace(s, family=N_FAMILIES, category=0)


def test_attributes_shape_and_sharing():
    styles = make_concept_styles(120, _rng(4))
    attrs = np.stack([s.attributes() for s in styles])
    assert attrs.dtype == np.float32
    assert attrs.shape == (120, len(CONCEPT_ATTRIBUTES))
    assert np.all(np.isfinite(attrs))
    # Continuous part is roughly unit scale.
    assert np.abs(attrs).max() <= 1.5
    fam = np.array([s.family for s in styles])
    cat = np.array([s.category for s in styles])
    assert np.array_equal(attrs[:, :N_FAMILIES].argmax(1), fam)
    assert np.array_equal(attrs[:, N_FAMILIES : N_FAMILIES + N_CATEGORIES].argmax(1), cat)
    assert np.all(attrs[:, : N_FAMILIES + N_CATEGORIES].sum(1) == 2)
    # Same-family concepts share the one-hot part, so they are more similar.
    unit = attrs / np.linalg.norm(attrs, axis=1, keepdims=True)
    sim = unit @ unit.T
    same = fam[:, None] == fam[None, :]
    off_diag = ~np.eye(len(styles), dtype=bool)
    same_cat_diff_fam = (cat[:, None] == cat[None, :]) & ~same
    other = cat[:, None] != cat[None, :]
    assert sim[same & off_diag].mean() > sim[same_cat_diff_fam].mean() > sim[other].mean()
    # ... but not identical: the continuous part differs.
    i, j = np.argwhere(same & off_diag)[0]
    assert not np.array_equal(attrs[i], attrs[j])


# ---------------------------------------------------------------------------
# Names
# ---------------------------------------------------------------------------


def test_names_valid_unique_deterministic():
    names = make_concept_names(2054, _rng(5))
    assert len(names) == 2054
    assert len(set(names)) == 2054
    pattern = re.compile(r"^[a-z]+(_[a-z]+)?$")
    for name in names:
        assert pattern.match(name), name
        assert 4 <= len(name) <= 20, name
        assert not re.search(r"(.)\1\1", name), name
    assert any("_" in n for n in names)
    assert sum("_" in n for n in names) < len(names) / 2
    assert make_concept_names(2054, _rng(5)) == names
    assert make_concept_names(50, _rng(6)) != names[:50]


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


def test_render_shape_dtype_determinism():
    style = make_concept_styles(1, _rng(7))[0]
    a = render_image(style, _rng(8))
    b = render_image(style, _rng(8))
    c = render_image(style, _rng(9))
    assert a.shape == (128, 128, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    small = render_image(style, _rng(8), size=48)
    assert small.shape == (48, 48, 3) and small.dtype == np.uint8
    assert a.std() > 5  # not a flat image


def test_no_global_rng_use():
    state = np.random.get_state()
    styles = make_concept_styles(5, _rng(0))
    make_concept_names(5, _rng(0))
    for s in styles:
        image_statistics(render_image(s, _rng(1), size=32))
    after = np.random.get_state()
    assert state[0] == after[0] and np.array_equal(state[1], after[1]) and state[2:] == after[2:]


def test_every_family_renders_a_figure():
    base = make_concept_styles(1, _rng(10))[0]
    for fam in range(N_FAMILIES):
        s = dataclasses.replace(base, family=fam, category=FAMILY_CATEGORY[fam], size=0.6)
        img = render_image(s, _rng(fam), size=64).astype(np.float32) / 255
        bg = np.asarray(s.palette[2])
        figure = np.sqrt(((img - bg) ** 2).sum(2)) > 0.15
        frac = figure.mean()
        assert 0.04 < frac < 0.8, (FAMILY_NAMES[fam], frac)


def test_families_differ_with_identical_palette_and_texture():
    """Shape alone separates families (compared through the figure masks)."""
    base = dataclasses.replace(
        make_concept_styles(1, _rng(11))[0], size=0.7, elongation=1.2, animacy=0.2
    )
    rng = _rng(12)
    feats, labels = [], []
    for fam in range(N_FAMILIES):
        s = dataclasses.replace(base, family=fam, category=FAMILY_CATEGORY[fam])
        for _ in range(4):
            img = render_image(s, rng, size=64).astype(np.float32) / 255
            mask = np.sqrt(((img - np.asarray(s.palette[2])) ** 2).sum(2)) > 0.15
            small = Image.fromarray(mask.astype(np.float32)).resize((16, 16), Image.BOX)
            feats.append(np.asarray(small).ravel())
            labels.append(fam)
    x, y = np.stack(feats), np.array(labels)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    same = y[:, None] == y[None, :]
    off = ~np.eye(len(y), dtype=bool)
    assert d[same & off].mean() < 0.85 * d[~same].mean()
    # Despite +-25 deg rotation and jitter, the family is recognisable from
    # the raw mask (chance is 1/12).
    assert _loo_nearest_centroid(x, y, standardise=False) > 0.35


def _loo_nearest_centroid(x: np.ndarray, y: np.ndarray, standardise: bool = True) -> float:
    """Leave-one-out nearest-centroid accuracy."""
    if standardise:
        x = (x - x.mean(0)) / (x.std(0) + 1e-6)
    classes = np.unique(y)
    correct = 0
    for i in range(len(y)):
        keep = np.arange(len(y)) != i
        cents = np.stack([x[keep & (y == c)].mean(0) for c in classes])
        correct += classes[np.argmin(((cents - x[i]) ** 2).sum(1))] == y[i]
    return correct / len(y)


def test_images_of_a_concept_are_alike():
    rng = _rng(13)
    styles = make_concept_styles(20, rng)
    feats, labels = [], []
    for c, s in enumerate(styles):
        for _ in range(5):
            img = render_image(s, rng, size=64)
            small = np.asarray(Image.fromarray(img).resize((8, 8), Image.BOX), np.float32)
            feats.append(np.concatenate([image_statistics(img), small.ravel() / 255]))
            labels.append(c)
    x, y = np.stack(feats), np.array(labels)
    acc = _loo_nearest_centroid(x, y)
    assert acc > 0.6  # chance is 0.05
    # Statistics alone also identify the concept well above chance.
    assert _loo_nearest_centroid(x[:, : len(IMAGE_STATISTICS)], y) > 0.4
    # Images of one concept still vary.
    first = x[y == 0]
    assert np.ptp(first, axis=0).max() > 0.02


# ---------------------------------------------------------------------------
# Image statistics
# ---------------------------------------------------------------------------


def test_statistics_shape_dtype_determinism():
    img = render_image(make_concept_styles(1, _rng(14))[0], _rng(15))
    a, b = image_statistics(img), image_statistics(img.copy())
    assert a.dtype == np.float32 and a.shape == (len(IMAGE_STATISTICS),)
    assert np.array_equal(a, b)
    assert np.all(np.isfinite(a))
    o = a[IMAGE_STATISTICS.index("orientation_0") : IMAGE_STATISTICS.index("orientation_135") + 1]
    f = a[IMAGE_STATISTICS.index("sf_low") : IMAGE_STATISTICS.index("sf_high") + 1]
    assert o.sum() == pytest.approx(1.0, abs=1e-4)
    assert f.sum() == pytest.approx(1.0, abs=1e-4)
    # Non-square input works.
    rect = image_statistics(np.ascontiguousarray(img[:, :96]))
    assert rect.shape == a.shape and np.all(np.isfinite(rect))
    with pytest.raises(UsageError):
        image_statistics(img[..., 0])
    with pytest.raises(UsageTypeError):
        image_statistics(img.astype(np.float32))


def test_argument_checks():
    style = make_concept_styles(1, _rng(0))[0]
    with pytest.raises(ValueError):
        make_concept_styles(-1, _rng(0))
    with pytest.raises(TypeError):
        make_concept_names(3, 0)
    with pytest.raises(TypeError):
        render_image(style, np.random.RandomState(0))
    with pytest.raises(UsageError):
        render_image(style, _rng(0), size=2)


def test_statistics_luminance_and_contrast():
    dark, bright = _flat((40, 40, 40)), _flat((200, 200, 200))
    assert _stat(bright, "mean_luminance") > _stat(dark, "mean_luminance")
    assert _stat(bright, "mean_luminance") == pytest.approx(200 / 255, abs=1e-3)
    assert _stat(dark, "rms_contrast") == pytest.approx(0.0, abs=1e-6)
    strong, weak = _grating(64, 4, 0, 0.4), _grating(64, 4, 0, 0.1)
    assert _stat(strong, "rms_contrast") > _stat(weak, "rms_contrast")


def test_statistics_colour():
    red, green = _flat((200, 30, 30)), _flat((30, 200, 30))
    blue, yellow = _flat((30, 30, 200)), _flat((200, 200, 30))
    grey = _flat((120, 120, 120))
    assert _stat(red, "red_green") > 0.3
    assert _stat(green, "red_green") < -0.3
    assert _stat(blue, "blue_yellow") > 0.3
    assert _stat(yellow, "blue_yellow") < -0.3
    assert _stat(grey, "red_green") == pytest.approx(0.0, abs=1e-6)
    assert _stat(grey, "saturation") == pytest.approx(0.0, abs=1e-6)
    assert _stat(red, "saturation") > 0.5


@pytest.mark.parametrize("orientation", [0, 45, 90, 135])
def test_statistics_orientation(orientation):
    stats = image_statistics(_grating(128, 8, orientation))
    first = IMAGE_STATISTICS.index("orientation_0")
    o = stats[first : first + 4]
    assert int(np.argmax(o)) == [0, 45, 90, 135].index(orientation)
    assert o.max() > 0.8


def test_statistics_vertical_grating_is_orientation_90():
    stats = image_statistics(_grating(96, 6, 90))
    # A vertical grating: luminance varies along x only.
    img = _grating(96, 6, 90).astype(int)
    assert np.all(img[0] == img[-1])
    assert stats[IMAGE_STATISTICS.index("orientation_90")] > 0.9


def test_statistics_spatial_frequency_bands():
    names = ("sf_low", "sf_mid", "sf_high")
    idx = [IMAGE_STATISTICS.index(n) for n in names]
    for cycles, band in ((2, 0), (8, 1), (40, 2)):
        s = image_statistics(_grating(128, cycles, 30))[idx]
        assert int(np.argmax(s)) == band, (cycles, s)
        assert s[band] > 0.7


def test_statistics_edges_and_eccentricity():
    flat = _flat((100, 100, 100), 96)
    centred = flat.copy()
    centred[32:64, 32:64] = 230
    shifted = flat.copy()
    shifted[8:40, 56:88] = 230
    assert _stat(flat, "edge_density") == 0.0
    assert _stat(centred, "edge_density") > 0.02
    assert _stat(centred, "com_eccentricity") < 0.05
    assert _stat(shifted, "com_eccentricity") > 0.5
    # More edges -> higher edge density.
    many = flat.copy()
    for k in range(4):
        many[8 + 22 * k : 20 + 22 * k, 8:88] = 230
    assert _stat(many, "edge_density") > _stat(centred, "edge_density")


def test_statistics_roughly_size_invariant():
    rng = _rng(16)
    styles = make_concept_styles(6, rng)
    for k, s in enumerate(styles):
        big = render_image(s, _rng(100 + k), size=128)
        small = render_image(s, _rng(100 + k), size=64)
        resized = np.asarray(Image.fromarray(big).resize((64, 64), Image.LANCZOS))
        a = image_statistics(big)
        assert np.abs(a - image_statistics(small)).max() < 0.12
        assert np.abs(a - image_statistics(resized)).max() < 0.12
