"""A deterministic synthetic object-detection dataset: yoloprune's own offline benchmark.

``synthesize(out)`` draws images of geometric shapes whose classes differ in small details (circle vs ring, triangle vs
notched triangle, square vs rounded square, plus vs X, 5- vs 6-pointed star, ...), filled with random colours and
textures so that colour is never the class cue, over textured or photographic backgrounds, with clutter, distractor
shapes that belong to no class, occlusion, border cuts, blur, noise and JPEG artefacts. It is meant to be hard enough
that a small detector trained briefly stays well below a perfect score, so pruning shows its mAP cost.

Layout written under ``out``::

    data.yaml                        ultralytics data yaml (absolute ``path``, ``train``, ``val``, ``names``)
    meta.json, README.md             generator version, seed, parameters, class table, counts
    images/{train,val}/NNNNNN.jpg    JPEG, quality 90, ``imgsz`` x ``imgsz``
    labels/{train,val}/NNNNNN.txt    YOLO labels ``cls cx cy w h`` normalised to [0, 1], 6 decimals
    annotations/instances_{train,val}.json   COCO detection json

Class mapping: YOLO class ``k`` (0-based, the ``names`` key in ``data.yaml``) is COCO ``category_id`` ``k + 1``
(COCO ids start at 1). COCO image ids are ``index + 1`` within their split, annotation ids count from 1 per split, and
annotations appear in the same order as the lines of the image's YOLO label file.

Labelling rules: a box is the full object's extent (as if nothing covered it), clipped to the image. Objects are drawn
in order, later ones over earlier ones; an object is labelled only if at least ``MIN_VISIBLE`` of its area remains
visible after occlusion by later objects and clutter and after the image border cut, otherwise it stays in the image
unlabelled. The COCO ``area`` is the object's visible area in pixels (as COCO's segmentation areas are).

Determinism: image ``i`` of a split is drawn from ``numpy.random.default_rng([seed, split, i])`` (split 0 = train,
1 = val) alone, so the same seed and parameters give byte-identical files with the same numpy and OpenCV, and the val
images do not depend on the number of train images.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GENERATOR_VERSION = "1"
MIN_VISIBLE = 0.4  # an object with less than this fraction of its pixels visible is not labelled
JPEG_QUALITY = 90
MIN_REL_SIZE, MAX_REL_SIZE = 0.04, 0.6  # longest box side relative to the image side
MAX_OBJECTS = 8
PHOTO_PROBABILITY = 0.25  # share of backgrounds cropped from the photos ultralytics ships
OBJECTS_INSIDE = 0.5  # probability that an object's box lies wholly inside the image


@dataclass(frozen=True)
class Difficulty:
    """How hard the images are. ``hard`` is the benchmark; ``easy`` (no clutter or photos, 1-3 larger objects) lets a
    detector trained from scratch on a CPU for a few minutes learn enough for pruning effects to show."""

    clutter: bool = True
    photo_probability: float = PHOTO_PROBABILITY
    sizes: tuple[float, float] = (MIN_REL_SIZE, MAX_REL_SIZE)
    max_objects: int = MAX_OBJECTS


DIFFICULTIES = {
    "hard": Difficulty(),
    "easy": Difficulty(clutter=False, photo_probability=0.0, sizes=(0.2, 0.6), max_objects=3),
}
_SUPERSAMPLE = 4  # polygons are filled at this many times the resolution, then area-averaged: exact anti-aliasing
_SHIFT = 2  # sub-pixel bits for cv2 polygon vertices at the supersampled resolution

Points = np.ndarray  # (N, 2) float64 polygon vertices
Outline = tuple[list[Points], list[Points]]  # filled polygons, holes cut out of them


# --------------------------------------------------------------------------------------------------------------------
# Shape classes, in unit coordinates around the origin (scale and position are applied later)
# --------------------------------------------------------------------------------------------------------------------


def _ellipse(rx: float, ry: float, n: int = 48) -> Points:
    """Vertices of an axis-aligned ellipse."""
    t = np.linspace(0.0, 2.0 * math.pi, n, endpoint=False)
    return np.stack([rx * np.cos(t), ry * np.sin(t)], axis=1)


def _regular(n: int, radii: np.ndarray, start_deg: float = 90.0) -> Points:
    """Vertices at ``n`` equally spaced angles with the given radii (cycled)."""
    ang = np.deg2rad(start_deg + 360.0 * np.arange(n) / n)
    r = np.resize(radii, n)
    return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)


def _rect(w: float, h: float) -> Points:
    """Vertices of an axis-aligned rectangle centred at the origin."""
    return np.array([[-w, -h], [w, -h], [w, h], [-w, h]], dtype=np.float64) / 2.0


def _circle(rng: np.random.Generator) -> Outline:
    return [_ellipse(rng.uniform(0.92, 1.08), 1.0)], []


def _ring(rng: np.random.Generator) -> Outline:
    a, r = rng.uniform(0.92, 1.08), rng.uniform(0.42, 0.68)
    return [_ellipse(a, 1.0)], [_ellipse(a * r, r)]


def _triangle_points(rng: np.random.Generator) -> Points:
    ang = np.deg2rad(90.0 + 120.0 * np.arange(3) + rng.uniform(-12.0, 12.0, 3))
    r = rng.uniform(0.85, 1.0, 3)
    return np.stack([r * np.cos(ang), r * np.sin(ang)], axis=1)


def _triangle(rng: np.random.Generator) -> Outline:
    return [_triangle_points(rng)], []


def _notched_triangle(rng: np.random.Generator) -> Outline:
    """A triangle with a rectangular notch cut into the middle of one edge."""
    p = np.roll(_triangle_points(rng), -int(rng.integers(3)), axis=0)
    a, b, c = p
    edge = b - a
    normal = np.array([-edge[1], edge[0]]) / np.linalg.norm(edge)
    if np.dot(c - a, normal) < 0:
        normal = -normal
    height = float(np.dot(c - a, normal))
    t, half, depth = rng.uniform(0.42, 0.58), rng.uniform(0.1, 0.15), rng.uniform(0.28, 0.42) * height
    e1, e2 = a + (t - half) * edge, a + (t + half) * edge
    return [np.stack([a, e1, e1 + depth * normal, e2 + depth * normal, e2, b, c])], []


def _square(rng: np.random.Generator) -> Outline:
    return [_rect(1.0, rng.uniform(0.7, 1.4))], []


def _rounded_square(rng: np.random.Generator) -> Outline:
    w, h = 1.0, rng.uniform(0.7, 1.4)
    r = rng.uniform(0.15, 0.3) * min(w, h)
    corners = [
        (w / 2 - r, h / 2 - r, 0),
        (-w / 2 + r, h / 2 - r, 90),
        (-w / 2 + r, -h / 2 + r, 180),
        (w / 2 - r, -h / 2 + r, 270),
    ]
    arcs = []
    for cx, cy, start in corners:
        t = np.deg2rad(start + np.linspace(0.0, 90.0, 7))
        arcs.append(np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], axis=1))
    return [np.concatenate(arcs)], []


def _plus_points(rng: np.random.Generator) -> Points:
    h = rng.uniform(0.14, 0.21)  # half the arm thickness; arms reach about 1
    e, n, w, s = rng.uniform(0.9, 1.0, 4)
    return np.array(
        [[h, n], [h, h], [e, h], [e, -h], [h, -h], [h, -s], [-h, -s], [-h, -h], [-w, -h], [-w, h], [-h, h], [-h, n]]
    )


def _plus(rng: np.random.Generator) -> Outline:
    return [_plus_points(rng)], []


def _cross(rng: np.random.Generator) -> Outline:
    return [_rotate(_plus_points(rng), 45.0)], []


def _star(points: int) -> Callable[[np.random.Generator], Outline]:
    def build(rng: np.random.Generator) -> Outline:
        radii = np.array([1.0, rng.uniform(0.4, 0.55)])
        return [_regular(2 * points, radii)], []

    return build


def _ellipse_class(rng: np.random.Generator) -> Outline:
    return [_ellipse(rng.uniform(1.6, 2.6), 1.0)], []


def _hexagon(rng: np.random.Generator) -> Outline:
    return [_regular(6, rng.uniform(0.94, 1.0, 6), start_deg=0.0)], []


@dataclass(frozen=True)
class ShapeClass:
    """One object class: its name, its outline builder and how far it may be rotated (degrees either way)."""

    name: str
    build: Callable[[np.random.Generator], Outline]
    max_rotation: float = 180.0


# Confusable pairs come first so that small ``classes`` values still need fine distinctions. Plus and X are rotated
# at most 15 degrees, so that neither turns into the other.
SHAPES: tuple[ShapeClass, ...] = (
    ShapeClass("circle", _circle),
    ShapeClass("ring", _ring),
    ShapeClass("triangle", _triangle),
    ShapeClass("notched_triangle", _notched_triangle),
    ShapeClass("square", _square),
    ShapeClass("rounded_square", _rounded_square),
    ShapeClass("plus", _plus, max_rotation=15.0),
    ShapeClass("x_cross", _cross, max_rotation=15.0),
    ShapeClass("star5", _star(5)),
    ShapeClass("star6", _star(6)),
    ShapeClass("ellipse", _ellipse_class),
    ShapeClass("hexagon", _hexagon),
)
CLASS_NAMES: tuple[str, ...] = tuple(s.name for s in SHAPES)


# --------------------------------------------------------------------------------------------------------------------
# Distractors: shapes that are no class
# --------------------------------------------------------------------------------------------------------------------


def _blob(rng: np.random.Generator) -> Outline:
    """An irregular polygon with jagged radii."""
    n = int(rng.integers(7, 13))
    return [_regular(n, rng.uniform(0.45, 1.0, n), start_deg=rng.uniform(0, 360))], []


def _sector(rng: np.random.Generator) -> Outline:
    """A pie slice of 50 to 200 degrees (never close to a full circle)."""
    span = rng.uniform(50.0, 200.0)
    t = np.deg2rad(np.linspace(0.0, span, 24))
    return [np.concatenate([[[0.0, 0.0]], np.stack([np.cos(t), np.sin(t)], axis=1)])], []


def _l_shape(rng: np.random.Generator) -> Outline:
    t = rng.uniform(0.2, 0.45)
    return [np.array([[0, 0], [1, 0], [1, t], [t, t], [t, rng.uniform(0.8, 1.4)], [0, rng.uniform(0.8, 1.4)]])], []


def _frame(rng: np.random.Generator) -> Outline:
    """A thin rectangular outline."""
    w, h, t = 1.0, rng.uniform(0.3, 1.0), rng.uniform(0.05, 0.1)
    return [_rect(w, h)], [_rect(w - 2 * t, h - 2 * t)]


DISTRACTORS: tuple[Callable[[np.random.Generator], Outline], ...] = (_blob, _sector, _l_shape, _frame)


# --------------------------------------------------------------------------------------------------------------------
# Geometry and rendering
# --------------------------------------------------------------------------------------------------------------------


def _rotate(p: Points, deg: float) -> Points:
    a = math.radians(deg)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    return p @ rot.T


def _place(outline: Outline, deg: float, size: float, centre: tuple[float, float]) -> Outline:
    """Rotate an outline, scale it so its longest box side is ``size`` pixels and centre its box at ``centre``."""
    polys, holes = ([_rotate(p, deg) for p in group] for group in outline)
    allp = np.concatenate(polys)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    scale = size / float((hi - lo).max())
    shift = np.asarray(centre) - (lo + hi) / 2.0 * scale
    return [p * scale + shift for p in polys], [p * scale + shift for p in holes]


@dataclass
class Sprite:
    """An outline rasterised into its own patch: ``alpha`` (uint8) covers the full object, at ``(x0, y0)``."""

    alpha: np.ndarray
    x0: int
    y0: int
    box: tuple[float, float, float, float]  # full-object x1, y1, x2, y2 in pixels, not clipped


def _rasterise(outline: Outline) -> Sprite:
    """Fill an outline (holes cut out) into a patch of coverage alpha.

    Coordinates are continuous with pixel ``i`` spanning ``[i, i + 1)``, as box labels count them; cv2 fills every
    pixel whose centre lies inside or on the polygon, so filling at ``_SUPERSAMPLE`` times the resolution and averaging
    blocks gives each pixel its covered fraction to within a fraction of a pixel at the edges.
    """
    polys, holes = outline
    allp = np.concatenate(polys)
    lo, hi = allp.min(axis=0), allp.max(axis=0)
    x0, y0 = math.floor(lo[0]) - 1, math.floor(lo[1]) - 1
    w, h = math.ceil(hi[0]) + 2 - x0, math.ceil(hi[1]) + 2 - y0
    s = _SUPERSAMPLE
    fine = np.zeros((h * s, w * s), np.uint8)
    origin = np.array([x0, y0], dtype=np.float64)
    for group, value in ((polys, 255), (holes, 0)):
        if group:
            pts = [np.round(((p - origin) * s - 0.5) * (1 << _SHIFT)).astype(np.int32) for p in group]
            cv2.fillPoly(fine, pts, value, cv2.LINE_8, _SHIFT)
    alpha = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
    return Sprite(alpha, x0, y0, (float(lo[0]), float(lo[1]), float(hi[0]), float(hi[1])))


def _window(sprite: Sprite, n: int) -> tuple[slice, slice, slice, slice] | None:
    """Image and sprite slices of the part of a sprite inside an ``n`` x ``n`` image, or None if none is."""
    h, w = sprite.alpha.shape
    ix0, iy0 = max(sprite.x0, 0), max(sprite.y0, 0)
    ix1, iy1 = min(sprite.x0 + w, n), min(sprite.y0 + h, n)
    if ix0 >= ix1 or iy0 >= iy1:
        return None
    return (
        slice(iy0, iy1),
        slice(ix0, ix1),
        slice(iy0 - sprite.y0, iy1 - sprite.y0),
        slice(ix0 - sprite.x0, ix1 - sprite.x0),
    )


def _composite(img: np.ndarray, sprite: Sprite, texture: np.ndarray) -> np.ndarray | None:
    """Alpha-blend ``texture`` (sprite-sized) into ``img`` in place; return the visible-pixel mask (image window)."""
    win = _window(sprite, img.shape[0])
    if win is None:
        return None
    iy, ix, sy, sx = win
    a = sprite.alpha[sy, sx].astype(np.float32)[..., None] * (1.0 / 255.0)
    img[iy, ix] = img[iy, ix] * (1.0 - a) + texture[sy, sx] * a
    return sprite.alpha[sy, sx] >= 128


# --------------------------------------------------------------------------------------------------------------------
# Textures and backgrounds (float32 BGR, 0..255)
# --------------------------------------------------------------------------------------------------------------------


def _colour(rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(0.0, 255.0, 3).astype(np.float32)


def _coords(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """Pixel coordinates projected on a random direction."""
    a = rng.uniform(0.0, math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return xx * math.cos(a) + yy * math.sin(a)


def _two_tone(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    c1, c2 = _colour(rng), _colour(rng)
    return np.where(mask[..., None], c1, c2).astype(np.float32)


def _solid(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    return np.broadcast_to(_colour(rng), (h, w, 3)).copy()


def _stripes(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    return _two_tone((_coords(h, w, rng) / period) % 2.0 < 1.0, rng)


def _checker(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    u, v = _coords(h, w, rng), _coords(h, w, rng)
    return _two_tone(((u // period + v // period) % 2) == 0, rng)


def _gradient(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    t = _coords(h, w, rng)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    c1, c2 = _colour(rng), _colour(rng)
    return c1 + t[..., None] * (c2 - c1)


def _value_noise(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    """Perlin-like noise: smooth random grids at several octaves, mapped between two colours."""
    acc = np.zeros((h, w), np.float32)
    cells, weight = max(2.0, max(h, w) / (4.0 * period)), 1.0
    for _ in range(3):
        g = int(min(cells, max(h, w))) + 2
        acc += weight * cv2.resize(rng.random((g, g), dtype=np.float32), (w, h), interpolation=cv2.INTER_CUBIC)
        cells, weight = cells * 2.0, weight * 0.5
    acc = (acc - acc.min()) / max(float(acc.max() - acc.min()), 1e-6)
    c1, c2 = _colour(rng), _colour(rng)
    return c1 + acc[..., None] * (c2 - c1)


def _speckle(h: int, w: int, rng: np.random.Generator, period: float) -> np.ndarray:
    """A colour with strong per-pixel noise."""
    noise = rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(15.0, 45.0)
    return np.clip(_colour(rng) + noise, 0.0, 255.0)


Texture = Callable[[int, int, np.random.Generator, float], np.ndarray]
_OBJECT_TEXTURES: tuple[tuple[Texture, float], ...] = (
    (_solid, 0.3),
    (_stripes, 0.2),
    (_checker, 0.15),
    (_speckle, 0.15),
    (_gradient, 0.1),
    (_value_noise, 0.1),
)
_BACKGROUNDS: tuple[tuple[Texture, float], ...] = (
    (_value_noise, 0.3),
    (_gradient, 0.2),
    (_stripes, 0.1),
    (_checker, 0.1),
    (_speckle, 0.1),
    (_solid, 0.2),
)


def _pick(rng: np.random.Generator, table: tuple[tuple[Texture, float], ...]) -> Texture:
    weights = np.array([w for _, w in table])
    return table[int(rng.choice(len(table), p=weights / weights.sum()))][0]


def _mean_colour(img: np.ndarray) -> np.ndarray:
    return np.array(cv2.mean(np.ascontiguousarray(img))[:3])


def _object_texture(h: int, w: int, rng: np.random.Generator, n: int, under: np.ndarray | None) -> np.ndarray:
    """A random texture for a sprite, inverted if its mean colour is too close to what it covers."""
    tex = _pick(rng, _OBJECT_TEXTURES)(h, w, rng, rng.uniform(0.01, 0.04) * n + 1.0)
    if under is not None and under.size and np.abs(_mean_colour(tex) - _mean_colour(under)).sum() < 90.0:
        tex = 255.0 - tex
    return tex


@functools.lru_cache(maxsize=1)
def _photos() -> tuple[np.ndarray, ...]:
    """The sample photos shipped with ultralytics (empty if unavailable)."""
    try:
        from ultralytics.utils import ASSETS
    except ImportError:  # pragma: no cover - ultralytics is a dependency
        return ()
    images = (cv2.imread(str(ASSETS / name), cv2.IMREAD_COLOR) for name in ("bus.jpg", "zidane.jpg"))
    return tuple(im for im in images if im is not None)


def _photo_crop(n: int, rng: np.random.Generator) -> np.ndarray | None:
    """A random square crop of a shipped photo resized to ``n``, maybe flipped and recoloured."""
    photos = _photos()
    if not photos:
        return None
    photo = photos[int(rng.integers(len(photos)))]
    h, w = photo.shape[:2]
    side = int(rng.uniform(0.3, 1.0) * min(h, w))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(photo[y : y + side, x : x + side], (n, n), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop * rng.uniform(0.8, 1.2, 3).astype(np.float32), 0.0, 255.0)


def _background(n: int, rng: np.random.Generator, photo: float = PHOTO_PROBABILITY) -> np.ndarray:
    if rng.random() < photo:
        crop = _photo_crop(n, rng)
        if crop is not None:
            return np.ascontiguousarray(crop)
    return _pick(rng, _BACKGROUNDS)(n, n, rng, rng.uniform(0.02, 0.12) * n + 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------------
# One image
# --------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A labelled object: YOLO class, clipped full-object box (pixels, x1 y1 x2 y2) and visible area (pixels)."""

    cls: int
    xyxy: tuple[float, float, float, float]
    area: float


def _random_sprite(
    builder: Callable[[np.random.Generator], Outline],
    max_rot: float,
    n: int,
    rng: np.random.Generator,
    inside: float,
    margin: float,
    sizes: tuple[float, float] = (MIN_REL_SIZE, MAX_REL_SIZE),
) -> Sprite:
    """Build, rotate, scale (log-uniform size) and place an outline, then rasterise it.

    With probability ``inside`` the box lies wholly in the image; otherwise its centre is anywhere in the image widened
    by ``margin`` (relative) on each side, so the border may cut it.
    """
    outline = builder(rng)
    size = math.exp(rng.uniform(math.log(sizes[0]), math.log(sizes[1]))) * n
    lo, hi = (size / 2, n - size / 2) if rng.random() < inside else (-margin * n, (1.0 + margin) * n)
    centre = (rng.uniform(lo, hi), rng.uniform(lo, hi))
    return _rasterise(_place(outline, rng.uniform(-max_rot, max_rot), size, centre))


def _draw_textured(img: np.ndarray, sprite: Sprite, rng: np.random.Generator) -> np.ndarray | None:
    win = _window(sprite, img.shape[0])
    under = img[win[0], win[1]] if win is not None else None
    tex = _object_texture(*sprite.alpha.shape, rng, img.shape[0], under)
    return _composite(img, sprite, tex)


def _lines(img: np.ndarray, rng: np.random.Generator, count: int) -> np.ndarray:
    """Draw random straight lines; return the mask of the pixels they cover."""
    n = img.shape[0]
    mask = np.zeros((n, n), np.uint8)
    for _ in range(count):
        p1 = tuple(int(v) for v in rng.integers(-n // 4, n + n // 4, 2))
        p2 = tuple(int(v) for v in rng.integers(0, n, 2))
        thick = int(rng.integers(1, max(2, n // 80) + 1))
        cv2.line(img, p1, p2, tuple(float(c) for c in _colour(rng)), thick, cv2.LINE_AA)
        cv2.line(mask, p1, p2, 1, thick, cv2.LINE_8)
    return mask.astype(bool)


def _clutter(img: np.ndarray, rng: np.random.Generator, shapes: int, lines: int) -> np.ndarray:
    """Draw distractor shapes and lines; return the mask of the pixels they cover."""
    n = img.shape[0]
    covered = _lines(img, rng, lines)
    for _ in range(shapes):
        builder = DISTRACTORS[int(rng.integers(len(DISTRACTORS)))]
        sprite = _random_sprite(builder, 180.0, n, rng, inside=0.5, margin=0.1)
        vis = _draw_textured(img, sprite, rng)
        if vis is not None:
            iy, ix, _, _ = _window(sprite, n)
            covered[iy, ix] |= vis
    return covered


def _objects(
    img: np.ndarray, rng: np.random.Generator, classes: int, level: Difficulty = Difficulty()
) -> tuple[list[tuple[int, Sprite]], np.ndarray]:
    """Draw 1 to MAX_OBJECTS class objects, later ones over earlier ones.

    Returns the (class, sprite) list and the owner map: per pixel, the index of the object visible there, or -1.
    """
    n = img.shape[0]
    owner = np.full((n, n), -1, np.int16)
    drawn: list[tuple[int, Sprite]] = []
    for k in range(int(rng.integers(1, level.max_objects + 1))):
        cls = int(rng.integers(classes))
        shape = SHAPES[cls]
        sprite = _random_sprite(shape.build, shape.max_rotation, n, rng, OBJECTS_INSIDE, 0.0, level.sizes)
        vis = _draw_textured(img, sprite, rng)
        if vis is not None:
            iy, ix, _, _ = _window(sprite, n)
            owner[iy, ix][vis] = k
        drawn.append((cls, sprite))
    return drawn, owner


def _visible_area(sprite: Sprite, owner: np.ndarray, k: int) -> float:
    """Covered area (pixels, anti-aliased coverage summed) of sprite ``k`` over the pixels it still owns."""
    win = _window(sprite, owner.shape[0])
    if win is None:
        return 0.0
    iy, ix, sy, sx = win
    return float(sprite.alpha[sy, sx][owner[iy, ix] == k].sum(dtype=np.int64)) / 255.0


def _label(objects: list[tuple[int, Sprite]], owner: np.ndarray) -> list[Box]:
    """Boxes of the objects that stay at least MIN_VISIBLE visible, clipped to the image."""
    n = owner.shape[0]
    boxes = []
    for k, (cls, sprite) in enumerate(objects):
        full = float(sprite.alpha.sum(dtype=np.int64)) / 255.0
        visible = _visible_area(sprite, owner, k)
        if full == 0.0 or visible < MIN_VISIBLE * full:
            continue
        x1, y1, x2, y2 = (min(max(v, 0.0), float(n)) for v in sprite.box)
        if x2 - x1 >= 1.0 and y2 - y1 >= 1.0:
            boxes.append(Box(cls, (x1, y1, x2, y2), round(visible, 2)))
    return boxes


def _photometric(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Contrast/brightness/colour jitter, blur, sensor noise and JPEG artefacts; returns uint8 BGR."""
    img = img * rng.uniform(0.7, 1.3) + rng.uniform(-30.0, 30.0)
    if rng.random() < 0.5:
        img = img * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    if rng.random() < 0.35:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 1.3))
    if rng.random() < 0.6:
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2.0, 12.0)
    out = np.clip(img, 0.0, 255.0).round().astype(np.uint8)
    if rng.random() < 0.3:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(20, 61))])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else out
    return out


def render(
    seed: int, split: int, index: int, imgsz: int, classes: int, difficulty: str = "hard"
) -> tuple[bytes, list[Box]]:
    """Draw one image; return its JPEG bytes and labelled boxes. Depends only on its arguments."""
    level = DIFFICULTIES[difficulty]
    rng = np.random.default_rng([seed, split, index])
    img = _background(imgsz, rng, level.photo_probability)
    if level.clutter:
        _clutter(img, rng, shapes=int(rng.integers(0, 6)), lines=int(rng.integers(0, 5)))
    objects, owner = _objects(img, rng, classes, level)
    if level.clutter:
        owner[_clutter(img, rng, shapes=int(rng.integers(0, 3)), lines=int(rng.integers(0, 3)))] = -1
    boxes = _label(objects, owner)
    ok, buf = cv2.imencode(".jpg", _photometric(img, rng), [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 BGR image
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes(), boxes


# --------------------------------------------------------------------------------------------------------------------
# Dataset writer
# --------------------------------------------------------------------------------------------------------------------

SPLITS = ("train", "val")


def _validate(train: int, val: int, imgsz: int, classes: int, seed: int) -> None:
    checks = [
        (train, 1, None, "train"),
        (val, 1, None, "val"),
        (imgsz, 32, 2048, "imgsz"),
        (classes, 1, len(SHAPES), "classes"),
        (seed, 0, None, "seed"),
    ]
    for value, lo, hi, name in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {value!r}")
        if value < lo or (hi is not None and value > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f"at least {lo}"
            raise ValueError(f"{name} must be {bound}, got {value}")


def _progress(items: Iterable[int], total: int, desc: str, enabled: bool) -> Iterator[int]:
    """Iterate with a tqdm bar if asked for and installed, else with a few plain progress lines on stderr."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm import tqdm
    except ImportError:
        step = max(1, total // 10)
        for i in items:
            yield i
            if (i + 1) % step == 0 or i + 1 == total:
                print(f"{desc}: {i + 1}/{total}", file=sys.stderr, flush=True)
        return
    yield from tqdm(items, total=total, desc=desc)


def _yolo_line(box: Box, n: int) -> str:
    x1, y1, x2, y2 = box.xyxy
    return f"{box.cls} {(x1 + x2) / 2 / n:.6f} {(y1 + y2) / 2 / n:.6f} {(x2 - x1) / n:.6f} {(y2 - y1) / n:.6f}"


def _coco_annotation(box: Box, ann_id: int, image_id: int) -> dict:
    x1, y1, x2, y2 = box.xyxy
    bbox = [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": box.cls + 1,
        "bbox": bbox,
        "area": box.area,
        "iscrowd": 0,
    }


def _write_split(
    root: Path, split: str, count: int, seed: int, imgsz: int, classes: int, progress: bool, difficulty: str = "hard"
) -> dict:
    """Write one split's images and YOLO labels; return its COCO dict."""
    img_dir, lbl_dir = root / "images" / split, root / "labels" / split
    img_dir.mkdir(parents=True)
    lbl_dir.mkdir(parents=True)
    images, annotations = [], []
    for i in _progress(range(count), count, split, progress):
        jpeg, boxes = render(seed, SPLITS.index(split), i, imgsz, classes, difficulty)
        (img_dir / f"{i:06d}.jpg").write_bytes(jpeg)
        (lbl_dir / f"{i:06d}.txt").write_text("".join(_yolo_line(b, imgsz) + "\n" for b in boxes))
        images.append({"id": i + 1, "file_name": f"{i:06d}.jpg", "width": imgsz, "height": imgsz})
        first = len(annotations) + 1
        annotations += [_coco_annotation(b, first + j, i + 1) for j, b in enumerate(boxes)]
    categories = [{"id": k + 1, "name": CLASS_NAMES[k], "supercategory": "shape"} for k in range(classes)]
    info = {"description": f"yoloprune synthetic shapes, {split}", "version": GENERATOR_VERSION}
    return {"info": info, "images": images, "annotations": annotations, "categories": categories}


def _data_yaml(out: Path, classes: int) -> str:
    names = "".join(f"  {k}: {CLASS_NAMES[k]}\n" for k in range(classes))
    header = f"# yoloprune synthetic shapes (generator v{GENERATOR_VERSION}); see meta.json\n"
    return f"{header}path: {json.dumps(str(out))}\ntrain: images/train\nval: images/val\nnc: {classes}\nnames:\n{names}"


def _meta(params: dict, cocos: dict[str, dict]) -> dict:
    counts = {s: {"images": len(c["images"]), "objects": len(c["annotations"])} for s, c in cocos.items()}
    return {
        "generator": "yoloprune.data.synth",
        "version": GENERATOR_VERSION,
        "params": params,
        "names": {str(k): CLASS_NAMES[k] for k in range(params["classes"])},
        "coco_category_id": "YOLO class k is COCO category_id k + 1",
        "rng": "image i of split s (train 0, val 1) uses numpy.random.default_rng([seed, s, i])",
        "min_visible_fraction": MIN_VISIBLE,
        "counts": counts,
        "libraries": {"numpy": np.__version__, "opencv": cv2.__version__},
    }


def _readme(meta: dict) -> str:
    p, c = meta["params"], meta["counts"]
    names = ", ".join(f"{k}={v}" for k, v in meta["names"].items())
    return (
        f"# yoloprune synthetic shapes dataset\n\nGenerator version {meta['version']}, seed {p['seed']}, "
        f"{p['imgsz']} px, {p['classes']} classes ({names}).\n\n"
        f"- train: {c['train']['images']} images, {c['train']['objects']} objects\n"
        f"- val: {c['val']['images']} images, {c['val']['objects']} objects\n\n"
        "YOLO class k is COCO category_id k + 1. Regenerate with `yoloprune.data.synth.synthesize`; "
        "the same seed and parameters give byte-identical files. See meta.json.\n"
    )


def _prepare_out(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output folder {out} exists and is not empty; choose a new or empty folder")


def synthesize(
    out: str | Path,
    train: int = 800,
    val: int = 200,
    imgsz: int = 320,
    classes: int = 6,
    seed: int = 0,
    progress: bool = False,
    difficulty: str = "hard",
) -> Path:
    """Write a dataset to ``out``; return the path of its ultralytics data yaml.

    The dataset is built in a temporary sibling folder and renamed into place at the end, so an interrupted run never
    leaves a partial dataset at ``out``. ``out`` must not exist or be an empty folder. ``classes`` selects the first
    ``classes`` entries of ``CLASS_NAMES``. ``difficulty`` is ``hard`` (the benchmark) or ``easy`` (see
    ``Difficulty``). Raises ValueError for bad arguments.
    """
    _validate(train, val, imgsz, classes, seed)
    if difficulty not in DIFFICULTIES:
        raise ValueError(f"difficulty must be one of {', '.join(DIFFICULTIES)}, got {difficulty!r}")
    out = Path(out).expanduser().absolute()
    _prepare_out(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    params = {"train": int(train), "val": int(val), "imgsz": int(imgsz), "classes": int(classes), "seed": int(seed)}
    if difficulty != "hard":  # the benchmark's files stay what they were
        params["difficulty"] = difficulty
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        cocos = {}
        for split, count in zip(SPLITS, (train, val)):
            cocos[split] = _write_split(
                tmp, split, count, params["seed"], params["imgsz"], params["classes"], progress, difficulty
            )
        (tmp / "annotations").mkdir()
        for split, coco in cocos.items():
            (tmp / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, separators=(",", ":")))
        meta = _meta(params, cocos)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        (tmp / "README.md").write_text(_readme(meta))
        (tmp / "data.yaml").write_text(_data_yaml(out, params["classes"]))
        _prepare_out(out)  # re-check: something may have appeared meanwhile
        if out.exists():
            out.rmdir()
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        cv2.setNumThreads(threads)
    return out / "data.yaml"
