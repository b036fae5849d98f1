"""Synthetic THINGS-like image set.

Procedural stand-in for a natural-image concept database: every *concept*
has a fixed visual identity (:class:`ConceptStyle`: shape family, palette,
surface texture, size, elongation, animacy) and every *image* of the concept
is a random variation of it (position, scale, rotation, colour, texture
phase, background gradient, pixel noise), drawn by :func:`render_image`.

Shapes are drawn as anti-aliased soft masks from approximate signed distance
fields evaluated on a pixel grid, so rendering is fully vectorised numpy and
needs no supersampling.

The module also provides :func:`image_statistics`, a small set of low-level
statistics computed from the pixels alone (luminance, contrast, colour
opponency, orientation and spatial-frequency energy, edge density, figure
eccentricity), which is useful both to check the renderer and as a
"low-level visual feature" baseline.

All randomness comes from an explicitly passed :class:`numpy.random.Generator`.
"""

from __future__ import annotations

import colorsys
import functools
import re
import zlib
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from trainer._checks import check_positive, check_type
from trainer.errors import UsageError, UsageTypeError

__all__ = [
    "CATEGORY_NAMES",
    "CONCEPT_ATTRIBUTES",
    "FAMILY_CATEGORY",
    "FAMILY_NAMES",
    "IMAGE_STATISTICS",
    "N_CATEGORIES",
    "N_FAMILIES",
    "ConceptStyle",
    "image_statistics",
    "make_concept_names",
    "make_concept_styles",
    "render_image",
]

# ---------------------------------------------------------------------------
# Families, categories, attribute names
# ---------------------------------------------------------------------------

N_FAMILIES: int = 12
"""Number of shape families."""

N_CATEGORIES: int = 4
"""Number of super-categories grouping the shape families."""

FAMILY_NAMES: tuple[str, ...] = (
    "disc",
    "ellipse",
    "ring",
    "triangle",
    "square",
    "star",
    "crescent",
    "blob",
    "spiral",
    "cross",
    "bars",
    "zigzag",
)
"""Name of each shape family, indexed by ``ConceptStyle.family``."""

CATEGORY_NAMES: tuple[str, ...] = ("round", "angular", "organic", "line_like")
"""Name of each super-category, indexed by ``ConceptStyle.category``."""

FAMILY_CATEGORY: tuple[int, ...] = (0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3)
"""Fixed mapping shape family -> super-category."""

CONCEPT_ATTRIBUTES: tuple[str, ...] = (
    tuple(f"family_{name}" for name in FAMILY_NAMES)
    + tuple(f"category_{name}" for name in CATEGORY_NAMES)
    + (
        "size",
        "elongation",
        "animacy",
        "figure_luminance",
        "texture_cos2theta",
        "texture_sin2theta",
        "texture_log_frequency",
    )
)
"""Names of the entries of :meth:`ConceptStyle.attributes`."""

IMAGE_STATISTICS: tuple[str, ...] = (
    "mean_luminance",
    "rms_contrast",
    "red_green",
    "blue_yellow",
    "saturation",
    "orientation_0",
    "orientation_45",
    "orientation_90",
    "orientation_135",
    "sf_low",
    "sf_mid",
    "sf_high",
    "edge_density",
    "com_eccentricity",
)
"""Names of the entries of :func:`image_statistics`."""

# Ranges of the concept parameters (used for sampling and normalisation).
_SIZE_RANGE = (0.3, 0.9)
_ELONGATION_RANGE = (1.0, 2.0)
_FREQ_RANGE = (2.0, 16.0)

# Rec. 709 luma weights.
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)


def _luminance(rgb: tuple[float, float, float] | np.ndarray) -> float:
    return float(np.dot(np.asarray(rgb, dtype=np.float32), _LUMA))


# ---------------------------------------------------------------------------
# Concept style
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ConceptStyle:
    """Visual identity of one synthetic concept.

    Parameters
    ----------
    family : int
        Shape family, ``0 .. N_FAMILIES - 1`` (see :data:`FAMILY_NAMES`).
    category : int
        Super-category, ``0 .. N_CATEGORIES - 1``; must equal
        ``FAMILY_CATEGORY[family]``.
    palette : tuple of three RGB triples
        ``(figure, secondary, background)`` colours, components in ``[0, 1]``.
        The figure is painted in ``figure`` with stripes of ``secondary``.
    texture_orientation : float
        Orientation of the texture stripes in radians, counter-clockwise from
        horizontal (``0`` = horizontal stripes, ``pi/2`` = vertical stripes).
    texture_frequency : float
        Texture frequency in cycles per image width (about 2 .. 16).
    size : float
        Extent of the shape (its half major axis) as a fraction of the image
        half-width, about 0.3 .. 0.9.
    elongation : float
        Aspect ratio (major / minor axis) of the shape, ``>= 1``.
    animacy : float
        In ``[0, 1]``: 0 gives crisp straight edges and sharp corners, 1 gives
        wobbly, rounded, softer contours.
    """

    family: int
    category: int
    palette: tuple[
        tuple[float, float, float],
        tuple[float, float, float],
        tuple[float, float, float],
    ]
    texture_orientation: float
    texture_frequency: float
    size: float
    elongation: float
    animacy: float

    def __post_init__(self) -> None:
        if not 0 <= self.family < N_FAMILIES:
            raise ValueError(f"family must be in [0, {N_FAMILIES}), got {self.family}")
        if self.category != FAMILY_CATEGORY[self.family]:
            raise ValueError(
                f"category {self.category} does not match family {self.family} "
                f"(expected {FAMILY_CATEGORY[self.family]})"
            )
        if len(self.palette) != 3 or any(len(c) != 3 for c in self.palette):
            raise ValueError("palette must be three RGB triples")

    def attributes(self) -> np.ndarray:
        """Attribute vector describing the concept.

        Concepts of the same family share the one-hot family and category
        parts; concepts of the same category share the category part; the
        continuous part is shared to the degree the parameters are similar.

        Returns
        -------
        numpy.ndarray
            float32 vector of length ``len(CONCEPT_ATTRIBUTES)``: one-hot
            family, one-hot category, then size, elongation, animacy, figure
            luminance, ``cos(2 theta)``, ``sin(2 theta)`` of the texture
            orientation and log texture frequency. The continuous entries are
            scaled to roughly ``[-1, 1]``.
        """
        out = np.zeros(len(CONCEPT_ATTRIBUTES), dtype=np.float32)
        out[self.family] = 1.0
        out[N_FAMILIES + self.category] = 1.0
        lo, hi = _SIZE_RANGE
        size = (self.size - 0.5 * (lo + hi)) / (0.5 * (hi - lo))
        elong = 2.0 * np.log(self.elongation) / np.log(_ELONGATION_RANGE[1]) - 1.0
        flo, fhi = np.log2(_FREQ_RANGE[0]), np.log2(_FREQ_RANGE[1])
        logf = (np.log2(self.texture_frequency) - 0.5 * (flo + fhi)) / (0.5 * (fhi - flo))
        lum = 2.0 * _luminance(self.palette[0]) - 1.0
        two_theta = 2.0 * self.texture_orientation
        out[N_FAMILIES + N_CATEGORIES :] = (
            size,
            elong,
            2.0 * self.animacy - 1.0,
            lum,
            np.cos(two_theta),
            np.sin(two_theta),
            logf,
        )
        return out


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (float(r), float(g), float(b))


def _make_palette(
    rng: np.random.Generator,
) -> tuple[tuple[float, float, float], tuple[float, float, float], tuple[float, float, float]]:
    hue = float(rng.random())
    figure = _hsv(hue, float(rng.uniform(0.45, 1.0)), float(rng.uniform(0.45, 1.0)))
    if rng.random() < 0.5:
        # Contrasting hue.
        secondary = _hsv(
            hue + float(rng.uniform(0.25, 0.75)),
            float(rng.uniform(0.4, 1.0)),
            float(rng.uniform(0.3, 1.0)),
        )
    else:
        # Same hue, clearly darker or lighter.
        v = float(rng.uniform(0.1, 0.35)) if rng.random() < 0.6 else float(rng.uniform(0.85, 1.0))
        secondary = _hsv(hue + float(rng.normal(0.0, 0.04)), float(rng.uniform(0.2, 0.9)), v)
    # Background: desaturated, with luminance contrasting with the figure.
    if _luminance(figure) > 0.45:
        bg_v = float(rng.uniform(0.08, 0.35))
    else:
        bg_v = float(rng.uniform(0.7, 0.97))
    background = _hsv(float(rng.random()), float(rng.uniform(0.0, 0.3)), bg_v)
    return (figure, secondary, background)


def make_concept_styles(n: int, rng: np.random.Generator) -> list[ConceptStyle]:
    """Draw the visual identities of ``n`` concepts.

    Families are spread evenly (each family appears ``n // N_FAMILIES`` or
    ``n // N_FAMILIES + 1`` times, in random order). Palettes, textures,
    sizes and elongations are random; animacy is random but biased by
    category (organic shapes tend to be animate, angular ones inanimate).

    Parameters
    ----------
    n : int
        Number of concepts, ``>= 0``.
    rng : numpy.random.Generator
        Source of randomness; the result is a deterministic function of its
        state.

    Returns
    -------
    list of ConceptStyle
        ``n`` concept styles.
    """
    check_positive(n, "n", strict=False, integer=True)
    check_type(rng, np.random.Generator, "rng")
    families = rng.permutation(np.arange(n) % N_FAMILIES)
    animacy_beta = {0: (2.0, 2.0), 1: (1.5, 4.0), 2: (4.0, 1.5), 3: (2.0, 3.0)}
    styles: list[ConceptStyle] = []
    for fam in families.tolist():
        cat = FAMILY_CATEGORY[fam]
        palette = _make_palette(rng)
        orientation = float(rng.uniform(0.0, np.pi))
        frequency = float(np.exp(rng.uniform(np.log(_FREQ_RANGE[0]), np.log(_FREQ_RANGE[1]))))
        size = float(rng.uniform(*_SIZE_RANGE))
        elongation = float(
            np.exp(rng.uniform(np.log(_ELONGATION_RANGE[0]), np.log(_ELONGATION_RANGE[1])))
        )
        a, b = animacy_beta[cat]
        animacy = float(rng.beta(a, b))
        styles.append(
            ConceptStyle(
                family=int(fam),
                category=cat,
                palette=palette,
                texture_orientation=orientation,
                texture_frequency=frequency,
                size=size,
                elongation=elongation,
                animacy=animacy,
            )
        )
    return styles


# ---------------------------------------------------------------------------
# Concept names
# ---------------------------------------------------------------------------

_ONSETS: tuple[str, ...] = (
    "b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t",
    "v", "w", "z", "br", "bl", "cr", "cl", "dr", "fl", "fr", "gr", "gl", "pl",
    "pr", "sh", "sl", "sp", "st", "tr", "ch", "th", "qu", "",
)  # fmt: skip
_VOWELS: tuple[str, ...] = (
    "a", "e", "i", "o", "u", "a", "e", "o", "ai", "ea", "oo", "ou", "ie", "y",
)  # fmt: skip
_CODAS: tuple[str, ...] = (
    "", "", "", "", "n", "r", "l", "s", "t", "m", "ck", "nd", "rt", "st", "ng",
    "x", "sh", "p",
)  # fmt: skip


_TRIPLE_LETTER = re.compile(r"(.)\1\1")


def _pseudo_word(rng: np.random.Generator) -> str:
    n_syll = int(rng.choice([1, 2, 3], p=[0.2, 0.55, 0.25]))
    parts = []
    for i in range(n_syll):
        onset = _ONSETS[int(rng.integers(len(_ONSETS)))]
        vowel = _VOWELS[int(rng.integers(len(_VOWELS)))]
        # Codas are rarer inside a word than at its end.
        p_coda = 0.7 if i == n_syll - 1 else 0.3
        coda = _CODAS[int(rng.integers(len(_CODAS)))] if rng.random() < p_coda else ""
        parts.append(onset + vowel + coda)
    return "".join(parts)


def make_concept_names(n: int, rng: np.random.Generator) -> list[str]:
    """Make ``n`` unique pseudo-word concept names in the style of THINGS.

    Names are built from consonant-vowel syllables, have one word (mostly)
    or two words joined by an underscore (e.g. ``"brotan"``,
    ``"shea_plorick"``), use only ``a-z`` and ``_`` and are 4 to 20
    characters long.

    Parameters
    ----------
    n : int
        Number of names, ``>= 0``.
    rng : numpy.random.Generator
        Source of randomness; the result is a deterministic function of its
        state.

    Returns
    -------
    list of str
        ``n`` distinct names, in generation order.
    """
    check_positive(n, "n", strict=False, integer=True)
    check_type(rng, np.random.Generator, "rng")
    names: list[str] = []
    seen: set[str] = set()
    max_attempts = 100 * n + 1000
    attempts = 0
    while len(names) < n:
        attempts += 1
        if attempts > max_attempts:  # pragma: no cover - astronomically unlikely
            raise RuntimeError("could not generate enough unique names")
        name = _pseudo_word(rng)
        if rng.random() < 0.22:
            name = name + "_" + _pseudo_word(rng)
        if not 4 <= len(name) <= 20 or name in seen or _TRIPLE_LETTER.search(name):
            continue
        seen.add(name)
        names.append(name)
    return names


# ---------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1], x to the right, y upwards."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size * 2.0 - 1.0
    x = np.broadcast_to(c[None, :], (size, size))
    y = np.broadcast_to(-c[:, None], (size, size))
    x = np.ascontiguousarray(x)
    y = np.ascontiguousarray(y)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


@dataclass(frozen=True)
class _ShapeParams:
    """Concept-fixed shape details derived deterministically from a style."""

    blob_phases: tuple[float, float, float]
    blob_amps: tuple[float, float, float]
    wobble_k: int
    wobble_phase: float
    mirror: bool


@functools.lru_cache(maxsize=4096)
def _shape_params(style: ConceptStyle) -> _ShapeParams:
    # A stable per-concept seed (Python's hash() is salted, crc32 is not).
    seed = zlib.crc32(repr(style).encode("ascii"))
    r = np.random.default_rng(seed)
    return _ShapeParams(
        blob_phases=tuple(float(v) for v in r.uniform(0.0, 2.0 * np.pi, 3)),
        blob_amps=(
            float(r.uniform(0.1, 0.22)),
            float(r.uniform(0.05, 0.15)),
            float(r.uniform(0.03, 0.08)),
        ),
        wobble_k=int(r.integers(4, 8)),
        wobble_phase=float(r.uniform(0.0, 2.0 * np.pi)),
        mirror=bool(r.random() < 0.5),
    )


def _sdf(
    family: int,
    u: np.ndarray,
    v: np.ndarray,
    theta: np.ndarray | None,
    r: np.ndarray,
    sp: _ShapeParams,
) -> np.ndarray:
    """Approximate signed distance (negative inside) of a unit-sized shape.

    ``u, v`` are local shape coordinates; the shape fits roughly in the unit
    disc. ``r`` is ``hypot(u, v)`` and ``theta`` is ``arctan2(v, u)`` (only
    computed when needed).
    """
    if family == 0:  # disc
        return r - 0.95
    if family == 1:  # ellipse (intrinsic 1.6:1 on top of the concept elongation)
        return (np.sqrt(u * u + 2.56 * v * v) - 0.95) * 0.7
    if family == 2:  # ring
        return np.abs(r - 0.68) - 0.3
    if family == 3:  # triangle, pointing up, circumradius ~1.1
        a = 0.55
        c, s = 0.8660254, 0.5
        d1 = -v - a
        d2 = c * u + s * v - a
        d3 = -c * u + s * v - a
        return np.maximum(np.maximum(d1, d2), d3)
    if family == 4:  # square
        return np.maximum(np.abs(u), np.abs(v)) - 0.72
    if family == 5:  # five-pointed star
        assert theta is not None
        sector = 2.0 * np.pi / 5.0
        a = np.abs(np.mod(theta - np.pi / 2.0 + sector / 2.0, sector) - sector / 2.0)
        pu, pv = r * np.cos(a), r * np.sin(a)
        r_out, r_in = 1.05, 0.45
        p2u, p2v = r_in * np.cos(sector / 2.0), r_in * np.sin(sector / 2.0)
        eu, ev = p2u - r_out, p2v
        norm = np.hypot(eu, ev)
        nu, nv = ev / norm, -eu / norm  # outward normal of edge P1 -> P2
        return (pu - r_out) * nu + pv * nv
    if family == 6:  # crescent opening to the right (or left, per concept)
        su = -u if sp.mirror else u
        outer = r - 0.95
        inner = np.hypot(su - 0.45, v - 0.12) - 0.78
        return np.maximum(outer, -inner)
    if family == 7:  # blob: concept-specific smooth radial profile
        assert theta is not None
        (p1, p2, p3), (a1, a2, a3) = sp.blob_phases, sp.blob_amps
        radius = (
            0.78
            + a1 * np.sin(2.0 * theta + p1)
            + a2 * np.sin(3.0 * theta + p2)
            + a3 * np.sin(5.0 * theta + p3)
        )
        return (r - radius) * 0.8
    if family == 8:  # Archimedean spiral stroke with a solid centre
        assert theta is not None
        turns = 2.25
        pitch = 1.0 / turns
        b = pitch / (2.0 * np.pi)
        th = -theta if sp.mirror else theta
        m = np.mod(r - b * th, pitch)
        dist = np.minimum(m, pitch - m)
        stroke = np.maximum(dist - 0.115, r - 1.0)
        return np.minimum(stroke, r - 0.2)
    if family == 9:  # plus-shaped cross
        au, av = np.abs(u), np.abs(v)
        arm1 = np.maximum(au - 0.95, av - 0.28)
        arm2 = np.maximum(au - 0.28, av - 0.95)
        return np.minimum(arm1, arm2)
    if family == 10:  # three parallel bars
        av = np.abs(v)
        bars = np.minimum(av - 0.2, np.abs(av - 0.66) - 0.2)
        return np.maximum(bars, np.abs(u) - 0.95)
    if family == 11:  # zigzag band
        period, amp, half_width = 0.55, 0.42, 0.2
        phase = np.mod(u / period + 0.25, 1.0)
        center = amp * (4.0 * np.abs(phase - 0.5) - 1.0)
        slope = 4.0 * amp / period
        band = np.abs(v - center) / np.sqrt(1.0 + slope * slope) - half_width * 0.5
        return np.maximum(band, np.abs(u) - 0.95)
    raise ValueError(f"unknown family {family}")  # pragma: no cover


_NEEDS_THETA = frozenset({5, 7, 8})
# Families with thin strokes or horns: contour rounding/wobble must stay small.
_STROKE_FAMILIES = frozenset({2, 6, 8, 10, 11})


def render_image(style: ConceptStyle, rng: np.random.Generator, size: int = 128) -> np.ndarray:
    """Render one image of a concept.

    The concept's shape is drawn in its figure colour, striped with its
    secondary colour along the concept's texture orientation and frequency,
    over its background colour. Per-image variation drawn from ``rng``:
    position jitter, scale jitter (+-15 %), rotation (+-25 deg), colour
    jitter, small texture orientation/frequency jitter, texture phase, a small
    linear background gradient, contour wobble phase and pixel noise.

    Parameters
    ----------
    style : ConceptStyle
        The concept to draw.
    rng : numpy.random.Generator
        Source of per-image randomness; the image is a deterministic function
        of ``style`` and the state of ``rng``.
    size : int, optional
        Image side in pixels (default 128).

    Returns
    -------
    numpy.ndarray
        uint8 array of shape ``(size, size, 3)``.
    """
    check_type(style, ConceptStyle, "style")
    check_type(rng, np.random.Generator, "rng")
    check_positive(size, "size", integer=True)
    if size < 4:
        raise UsageError(f"size must be >= 4, got {size}")
    sp = _shape_params(style)
    x, y = _grid(size)
    f32 = np.float32

    # --- per-image geometry -------------------------------------------------
    scale = style.size * rng.uniform(0.85, 1.15)
    jitter = 0.04 + 0.12 * (1.0 - style.size)
    cx, cy = rng.uniform(-jitter, jitter, 2)
    rot = np.deg2rad(rng.uniform(-25.0, 25.0))
    s_major = scale
    s_minor = scale / style.elongation
    cr, sr = np.cos(rot), np.sin(rot)
    dx = x - f32(cx)
    dy = y - f32(cy)
    u = (f32(cr / s_major) * dx + f32(sr / s_major) * dy)
    v = (f32(-sr / s_minor) * dx + f32(cr / s_minor) * dy)

    # Animacy: rounded corners (shrink-then-dilate) and a wobbly contour.
    anim = style.animacy
    stroke = style.family in _STROKE_FAMILIES
    rounding = (0.03 if stroke else 0.16) * anim
    if rounding > 0.0:
        k = f32(1.0 / (1.0 - rounding))
        u = u * k
        v = v * k
    r = np.hypot(u, v)
    need_theta = style.family in _NEEDS_THETA or anim > 0.05
    theta = np.arctan2(v, u) if need_theta else None
    d = _sdf(style.family, u, v, theta, r, sp)
    if rounding > 0.0:
        d = d * f32(1.0 - rounding) - f32(rounding)
    if anim > 0.05:
        wob_phase = sp.wobble_phase + rng.normal(0.0, 0.4)
        # Wobble fades to zero at the centre so thin strokes are not broken.
        amp = (0.02 if stroke else 0.045) * anim
        d = d + f32(amp) * np.sin(sp.wobble_k * theta + f32(wob_phase)) * np.minimum(r, 1.0)
    else:
        rng.normal(0.0, 0.4)  # keep the random stream aligned across styles

    # Soft, anti-aliased mask: signed distance in pixels / edge width.
    px_per_unit = np.sqrt(s_major * s_minor) * size / 2.0
    edge_px = 0.75 + 0.9 * anim
    alpha = np.clip(f32(0.5) - d * f32(px_per_unit / edge_px), 0.0, 1.0)

    # --- texture ------------------------------------------------------------
    phi = style.texture_orientation + rng.normal(0.0, 0.06)
    freq = style.texture_frequency * np.exp(rng.normal(0.0, 0.05))
    tphase = rng.uniform(0.0, 2.0 * np.pi)
    # Stripes of orientation phi are modulated along the normal (-sin, cos).
    # Coordinates are in half-widths, so one image width spans 2 units.
    w = f32(-np.sin(phi) * np.pi * freq) * dx + f32(np.cos(phi) * np.pi * freq) * dy
    tex = np.tanh(f32(2.0) * np.sin(w + f32(tphase))) * f32(0.5 / np.tanh(2.0)) + f32(0.5)

    # --- colours ------------------------------------------------------------
    fig_c, sec_c, bg_c = (np.asarray(c, dtype=np.float64) for c in style.palette)
    gain = 1.0 + rng.normal(0.0, 0.035, 3)
    bright = rng.normal(0.0, 0.03)
    fig_c = np.clip(fig_c * gain + bright, 0.0, 1.0)
    sec_c = np.clip(sec_c * gain + bright, 0.0, 1.0)
    bg_c = np.clip(bg_c * (1.0 + rng.normal(0.0, 0.03, 3)) + rng.normal(0.0, 0.02), 0.0, 1.0)
    tex_strength = 0.8

    # Background gradient (luminance ramp along a random direction).
    g_dir = rng.uniform(0.0, 2.0 * np.pi)
    g_amp = rng.uniform(0.0, 0.06)
    grad = f32(g_amp * np.cos(g_dir)) * x + f32(g_amp * np.sin(g_dir)) * y

    # image = bg + grad + alpha * (fig + tex * (sec - fig) - bg - grad)
    diff_fs = (sec_c - fig_c).astype(f32) * f32(tex_strength)
    diff_fb = (fig_c - bg_c).astype(f32)
    at = alpha * tex
    img = (
        at[..., None] * diff_fs
        + alpha[..., None] * diff_fb
        + (grad * (f32(1.0) - alpha))[..., None]
        + bg_c.astype(f32)
    )
    noise = rng.standard_normal((size, size, 3), dtype=np.float32)
    img += noise * f32(0.012)
    img *= f32(255.0)
    img += f32(0.5)
    np.clip(img, 0.0, 255.0, out=img)
    return img.astype(np.uint8)


# ---------------------------------------------------------------------------
# Image statistics
# ---------------------------------------------------------------------------

# Spatial-frequency band edges, in cycles per image.
_SF_EDGES = (1.0, 4.0, 16.0)
# Gaussian pre-blur of the edge detector, as a fraction of the image width.
_EDGE_SIGMA = 1.0 / 64.0
# Gradient threshold (luminance per image width) for an "edge" pixel:
# a blurred step of height h peaks at about h / (sqrt(2 pi) * sigma) = 25.5 h.
_EDGE_THRESHOLD = 2.5
_ORIENT_CENTRES = np.deg2rad(np.array([0.0, 45.0, 90.0, 135.0]))


@functools.lru_cache(maxsize=16)
def _spectral_weights(h: int, w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Window, orientation weights (4, h, w//2+1) and band weights (3, ...)."""
    win = np.outer(np.hanning(h), np.hanning(w)).astype(np.float32)
    fy = np.fft.fftfreq(h) * h  # cycles per image, rows pointing down
    fx = np.fft.rfftfreq(w) * w
    FX, FY = np.meshgrid(fx, -fy)  # y up
    rad = np.hypot(FX, FY)
    # Each rfft coefficient with 0 < fx < w/2 stands for itself and its
    # conjugate twin.
    mult = np.full(fx.shape, 2.0)
    mult[0] = 1.0
    if w % 2 == 0:
        mult[-1] = 1.0
    mult = np.broadcast_to(mult[None, :], rad.shape)
    nyq = min(h, w) / 2.0
    valid = (rad >= _SF_EDGES[0]) & (rad <= nyq)
    # Stripe orientation is perpendicular to the frequency vector.
    stripe = np.arctan2(FY, FX) + np.pi / 2.0
    delta = stripe[None] - _ORIENT_CENTRES[:, None, None]
    orient = np.clip(np.cos(2.0 * delta), 0.0, None) ** 2 * (valid * mult)[None]
    edges = (*_SF_EDGES, np.inf)
    bands = np.stack(
        [((rad >= lo) & (rad < hi) & valid) * mult for lo, hi in zip(edges[:-1], edges[1:])]
    )
    return win, orient.astype(np.float32), bands.astype(np.float32)


def image_statistics(image: np.ndarray) -> np.ndarray:
    """Low-level statistics of an RGB image, computed from its pixels only.

    Parameters
    ----------
    image : numpy.ndarray
        uint8 array of shape ``(H, W, 3)``, any size ``>= 8`` (a UsageTypeError is
        raised for other dtypes, a UsageError for other shapes).

    Returns
    -------
    numpy.ndarray
        float32 vector named by :data:`IMAGE_STATISTICS`:

        * ``mean_luminance``: mean Rec. 709 luma in ``[0, 1]``;
        * ``rms_contrast``: standard deviation of luma;
        * ``red_green``: mean ``R - G`` (positive = reddish);
        * ``blue_yellow``: mean ``B - (R + G) / 2`` (positive = bluish);
        * ``saturation``: mean chroma ``max(R,G,B) - min(R,G,B)``;
        * ``orientation_0 .. orientation_135``: share of luma spectral
          power (Hann-windowed, 1 cycle/image up to Nyquist) by orientation of
          the *structure* (stripes/edges), counter-clockwise from horizontal;
          ``orientation_90`` is vertical stripes. Sums to 1;
        * ``sf_low, sf_mid, sf_high``: share of luma spectral power in the
          bands 1-4, 4-16 and > 16 cycles per image. Sums to 1;
        * ``edge_density``: fraction of pixels whose luma gradient, after a
          Gaussian blur of 1/64 image width, exceeds a fixed threshold
          (about a 0.1 luma step);
        * ``com_eccentricity``: distance of the figure's centre of mass from
          the image centre, in units of the image half-width, the figure
          being the pixels whose colour differs from the border (background)
          median.

        The statistics are measured in image-relative units, so they are
        roughly invariant to resizing the image.
    """
    img = np.asarray(image)
    if img.dtype != np.uint8:
        raise UsageTypeError(f"image must be uint8, got dtype {img.dtype}")
    if img.ndim != 3 or img.shape[2] != 3:
        raise UsageError(f"image must be (H, W, 3), got shape {img.shape}")
    h, w = img.shape[:2]
    if h < 8 or w < 8:
        raise UsageError(f"image must be at least 8x8, got {h}x{w}")
    rgb = img.astype(np.float32) * np.float32(1.0 / 255.0)
    R, G, B = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    Y = rgb @ _LUMA

    mean_lum = float(Y.mean())
    contrast = float(Y.std())
    rg = float((R - G).mean())
    by = float((B - 0.5 * (R + G)).mean())
    sat = float((rgb.max(axis=2) - rgb.min(axis=2)).mean())

    # --- spectral power by orientation and band --------------------------
    win, orient_w, band_w = _spectral_weights(h, w)
    Yc = Y - np.float32(mean_lum)
    spec = np.fft.rfft2(Yc * win)
    power = (spec.real**2 + spec.imag**2).astype(np.float32)
    orient = np.tensordot(orient_w, power, axes=([1, 2], [0, 1]))
    bands = np.tensordot(band_w, power, axes=([1, 2], [0, 1]))
    o_sum, b_sum = float(orient.sum()), float(bands.sum())
    orient = orient / o_sum if o_sum > 0 else np.full(4, 0.25)
    bands = bands / b_sum if b_sum > 0 else np.full(3, 1.0 / 3.0)

    # --- edge density ----------------------------------------------------
    sigma = _EDGE_SIGMA * np.sqrt(h * w)
    Ys = ndimage.gaussian_filter(Y, sigma=sigma, mode="nearest", truncate=3.0)
    gy, gx = np.gradient(Ys)
    gmag = np.hypot(gx * np.float32(w), gy * np.float32(h))  # per image width
    edge_density = float((gmag > _EDGE_THRESHOLD).mean())

    # --- figure centre-of-mass eccentricity ------------------------------
    border = np.concatenate([rgb[0], rgb[-1], rgb[1:-1, 0], rgb[1:-1, -1]], axis=0)
    bg = np.median(border, axis=0)
    dist = np.sqrt(((rgb - bg) ** 2).sum(axis=2))
    weight = np.clip((dist - 0.08) / 0.08, 0.0, 1.0)
    total = float(weight.sum())
    if total > 0:
        xs = (np.arange(w, dtype=np.float32) + 0.5) / w * 2.0 - 1.0
        ys = (np.arange(h, dtype=np.float32) + 0.5) / h * 2.0 - 1.0
        cx = float(weight.sum(axis=0) @ xs) / total
        cy = float(weight.sum(axis=1) @ ys) / total
        ecc = float(np.hypot(cx, cy))
    else:
        ecc = 0.0

    return np.array(
        [mean_lum, contrast, rg, by, sat, *orient, *bands, edge_density, ecc],
        dtype=np.float32,
    )
