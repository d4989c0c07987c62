"""Drawn images of the kinds people upscale besides photos, made from a seed (issue 30).

``--precision auto`` must be right for comics, text and flat graphics too, not only for photos
on average. The recipe check (:mod:`vdsr.recipes`) and the int8 calibration
(:func:`vdsr.export.calibration_inputs`) therefore take, beside scikit-image's photos, images
drawn here with Pillow and NumPy, the same for a seed on every run:

* ``drawing``: comic panels with screentone (halftone dots at an angle, a tone that changes
  across the panel) and ink lines; line art (strokes of several widths on paper);
* ``text``: documents in several fonts and sizes, and screenshots of a user interface (title
  bar, buttons, fields, text on coloured panels);
* ``flat``: flat-colour graphics (shapes with hard edges, bar charts, logos on a plain ground).

Seeds from :data:`HELD_OUT_SEED` up are held out: neither the check nor the calibration uses
them (:data:`CHECK_SEEDS`, :data:`CALIBRATION_SEEDS`), so ``benchmarks/content_accuracy.py``
can test the claim on images they never saw.

Fonts: Pillow's own (``ImageFont.load_default``, always there) and the DejaVu faces where the
system has them; an image's font comes from its seed among those found.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["CALIBRATION_SEEDS", "CHECK_SEEDS", "DRAWN_KINDS", "HELD_OUT_SEED", "KINDS", "draw", "drawn_set"]

KINDS = ("photo", "drawing", "text", "flat")  # every kind of content the check judges
DRAWN_KINDS = KINDS[1:]
HELD_OUT_SEED = 1000  # seeds >= this are never used by the check or the calibration
CALIBRATION_SEEDS = (0, 1)  # per drawn kind
CHECK_SEEDS = (100, 101, 102)  # per drawn kind

_FONT_DIRS = (Path("/usr/share/fonts"), Path("/usr/local/share/fonts"), Path("/Library/Fonts"),
              Path("C:/Windows/Fonts"))
_FONT_NAMES = ("DejaVuSans.ttf", "DejaVuSerif.ttf", "DejaVuSansMono.ttf", "DejaVuSans-Bold.ttf",
               "DejaVuSerif-Italic.ttf", "DejaVuSansCondensed.ttf")
_WORDS = ("the of and to in is for on that with as by at from this are be or an it which image "
          "upscale pixel super resolution network layer scale VDSR kernel sample 2016 photo page "
          "OK Cancel File Edit View Help Save Open settings quality 42 x2 x3 x4 PSNR dB").split()
SUPERSAMPLE = 4  # drawn at this many times the size, then reduced: anti-aliased as a scan or a render


@lru_cache(maxsize=1)
def font_files() -> tuple[Path, ...]:
    """The DejaVu font files found on this system (may be none), in a fixed order."""
    found: dict[str, Path] = {}
    for folder in _FONT_DIRS:
        if not folder.is_dir():
            continue
        for name in _FONT_NAMES:
            if name not in found:
                hits = sorted(folder.rglob(name))
                if hits:
                    found[name] = hits[0]
    return tuple(found[n] for n in _FONT_NAMES if n in found)


def _font(rng: np.random.Generator, size: int) -> Any:
    from PIL import ImageFont

    files = font_files()
    pick = int(rng.integers(0, len(files) + 1))
    if pick == len(files):
        return ImageFont.load_default(size)
    return ImageFont.truetype(str(files[pick]), size)


def _rng(kind: str, seed: int) -> np.random.Generator:
    return np.random.default_rng([DRAWN_KINDS.index(kind), seed])


def draw(kind: str, seed: int, size: int = 144) -> NDArray[np.float64]:
    """A ``(size, size, 3)`` RGB image in [0, 1] of ``kind`` (one of :data:`DRAWN_KINDS`),
    the same for the same ``seed`` and ``size``."""
    if kind not in DRAWN_KINDS:
        raise ValueError(f"unknown kind {kind!r}; one of {', '.join(DRAWN_KINDS)}")
    rng = _rng(kind, seed)
    painters = {"drawing": (_comic, _comic, _line_art), "text": (_document, _screenshot),
                "flat": (_shapes, _chart)}[kind]
    painter = painters[int(rng.integers(0, len(painters)))]
    big = painter(rng, size * SUPERSAMPLE)
    from PIL import Image

    small = big.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small.convert("RGB"), dtype=np.float64) / 255.0


def drawn_set(seeds: tuple[int, ...], size: int = 144,
              kinds: tuple[str, ...] = DRAWN_KINDS) -> Iterator[tuple[str, int, NDArray[np.float64]]]:
    """``(kind, seed, image)`` for every kind and seed."""
    for kind in kinds:
        for seed in seeds:
            yield kind, seed, draw(kind, seed, size)


# -- painters: each draws on a canvas of side n (SUPERSAMPLE times the final size) -----------------
def _colour(rng: np.random.Generator, saturated: bool = True) -> tuple[int, int, int]:
    if saturated:
        c = rng.integers(0, 256, 3)
        c[int(rng.integers(0, 3))] = int(rng.choice([0, 255]))
        return int(c[0]), int(c[1]), int(c[2])
    g = int(rng.integers(200, 256))
    return g, g, g


def _stroke(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """A smooth random curve across the canvas."""
    x, y = rng.uniform(0, n, 2)
    angle = rng.uniform(0, 2 * math.pi)
    points = []
    for _ in range(int(rng.integers(8, 30))):
        angle += rng.normal(0, 0.35)
        step = n / 30
        x, y = x + step * math.cos(angle), y + step * math.sin(angle)
        points.append((float(x), float(y)))
    return points


def _screentone(n: int, period: float, angle: float, tone: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Black dots on a rotated grid of ``period`` pixels; ``tone`` (n x n, 0-1) the ink coverage."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float64)
    c, s = math.cos(angle), math.sin(angle)
    u, v = (xx * c + yy * s) / period, (-xx * s + yy * c) / period
    du, dv = u - np.round(u), v - np.round(v)
    radius = np.sqrt(np.clip(tone, 0, 1) / math.pi)  # dot area = tone of the cell
    return np.asarray(du**2 + dv**2 < radius**2)


def _comic(rng: np.random.Generator, n: int) -> Any:
    from PIL import Image, ImageDraw

    paper = int(rng.integers(235, 256))
    canvas = np.full((n, n), paper, dtype=np.uint8)
    # a tone that changes across the panel (a gradient) and a flat one in a second region
    yy, xx = np.mgrid[0:n, 0:n] / n
    a = rng.uniform(0, 2 * math.pi)
    tone = rng.uniform(0.1, 0.3) + rng.uniform(0.2, 0.5) * (xx * math.cos(a) + yy * math.sin(a))
    period = rng.uniform(4.0, 8.0) * SUPERSAMPLE / 1.5
    dots = _screentone(n, period, math.radians(float(rng.choice([45.0, 30.0, 15.0]))), tone)
    region = np.zeros((n, n), dtype=bool)
    x0, y0 = rng.integers(0, n // 2, 2)
    region[y0:y0 + int(rng.integers(n // 3, n)), x0:x0 + int(rng.integers(n // 3, n))] = True
    canvas[dots & region] = 0
    flat = _screentone(n, period * 0.8, math.radians(45.0), np.full((n, n), rng.uniform(0.3, 0.6)))
    region2 = (xx - rng.uniform(0.2, 0.8)) ** 2 + (yy - rng.uniform(0.2, 0.8)) ** 2 < rng.uniform(0.02, 0.08)
    canvas[region2] = np.where(flat[region2], 0, paper)
    image = Image.fromarray(canvas, "L")
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):  # ink lines
        pen.line(_stroke(rng, n), fill=0, width=int(rng.integers(1, 4)) * SUPERSAMPLE, joint="curve")
    if rng.random() < 0.7:  # a panel border
        m = int(rng.integers(n // 12, n // 5))
        pen.rectangle((m, m, n - m, n - m), outline=0, width=int(rng.integers(2, 5)) * SUPERSAMPLE)
    if rng.random() < 0.5:  # a speech balloon with a word
        cx, cy, r = rng.uniform(0.25, 0.75) * n, rng.uniform(0.25, 0.75) * n, rng.uniform(0.12, 0.2) * n
        pen.ellipse((cx - r * 1.4, cy - r, cx + r * 1.4, cy + r), fill=255, outline=0, width=2 * SUPERSAMPLE)
        pen.text((cx - r, cy - r / 3), str(rng.choice(_WORDS)).upper(), fill=0,
                 font=_font(rng, int(r * 0.6)))
    return image


def _line_art(rng: np.random.Generator, n: int) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("L", (n, n), int(rng.integers(230, 256)))
    pen = ImageDraw.Draw(image)
    ink = int(rng.choice([0, 0, 40, 90]))  # ink, or pencil grey
    for _ in range(int(rng.integers(8, 25))):
        pen.line(_stroke(rng, n), fill=ink, width=int(rng.integers(1, 5)) * SUPERSAMPLE // 2, joint="curve")
    for _ in range(int(rng.integers(0, 4))):  # hatching
        x, y, w = rng.uniform(0, n, 2).tolist() + [rng.uniform(n / 8, n / 3)]
        for k in range(int(rng.integers(4, 12))):
            off = k * rng.uniform(1.5, 3) * SUPERSAMPLE
            pen.line((x + off, y, x + off + w / 2, y + w), fill=ink, width=SUPERSAMPLE)
    return image


def _text_lines(pen: Any, rng: np.random.Generator, box: tuple[int, int, int, int], colour: Any,
                size: int) -> None:
    x0, y0, x1, y1 = box
    font = _font(rng, size)
    y = y0
    while y + size < y1:
        words = " ".join(str(w) for w in rng.choice(_WORDS, int(rng.integers(3, 12))))
        pen.text((x0, y), words, fill=colour, font=font)
        y += int(size * rng.uniform(1.15, 1.6))


def _document(rng: np.random.Generator, n: int) -> Any:
    from PIL import Image, ImageDraw

    paper = _colour(rng, saturated=False)
    image = Image.new("RGB", (n, n), paper)
    pen = ImageDraw.Draw(image)
    size = int(rng.choice([7, 9, 11, 13, 16, 20, 26]) * SUPERSAMPLE)  # final pixels per em
    ink = (0, 0, 0) if rng.random() < 0.7 else _colour(rng)
    _text_lines(pen, rng, (int(rng.integers(0, n // 8)), int(rng.integers(0, n // 8)), n, n), ink, size)
    return image


def _screenshot(rng: np.random.Generator, n: int) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (n, n), _colour(rng, saturated=False))
    pen = ImageDraw.Draw(image)
    s = SUPERSAMPLE
    bar = int(rng.integers(14, 24)) * s  # a title bar with its text
    accent = _colour(rng)
    pen.rectangle((0, 0, n, bar), fill=accent)
    pen.text((4 * s, bar // 4), " ".join(rng.choice(_WORDS, 3)), fill=(255, 255, 255), font=_font(rng, bar // 2))
    y = bar + 6 * s
    while y < n - 20 * s:
        h = int(rng.integers(12, 22)) * s
        if rng.random() < 0.5:  # a button
            w = int(rng.integers(40, 90)) * s
            x = int(rng.integers(4, 40)) * s
            pen.rounded_rectangle((x, y, x + w, y + h), radius=3 * s, fill=_colour(rng), outline=(60, 60, 60),
                                  width=s)
            pen.text((x + 4 * s, y + h // 5), str(rng.choice(_WORDS)), fill=(255, 255, 255) if rng.random() < 0.5
                     else (0, 0, 0), font=_font(rng, int(h * 0.55)))
        else:  # a field of text on a panel
            panel = _colour(rng, saturated=bool(rng.random() < 0.3))
            pen.rectangle((2 * s, y, n - 2 * s, y + 2 * h), fill=panel, outline=(120, 120, 120), width=s)
            _text_lines(pen, rng, (5 * s, y + 2 * s, n, y + 2 * h - 2 * s), (20, 20, 20), int(h * 0.5))
            h *= 2
        y += h + int(rng.integers(4, 10)) * s
    return image


def _shapes(rng: np.random.Generator, n: int) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (n, n), _colour(rng, saturated=bool(rng.random() < 0.5)))
    pen = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(6, 16))):
        c = _colour(rng)
        x0, y0 = rng.uniform(-0.2, 1.0, 2) * n
        w, h = rng.uniform(0.1, 0.6, 2) * n
        shape = int(rng.integers(0, 3))
        if shape == 0:
            pen.rectangle((x0, y0, x0 + w, y0 + h), fill=c)
        elif shape == 1:
            pen.ellipse((x0, y0, x0 + w, y0 + h), fill=c)
        else:
            pen.polygon([tuple(p) for p in rng.uniform(0, n, (int(rng.integers(3, 6)), 2)).tolist()], fill=c)
    if rng.random() < 0.5:  # a logo's letters
        pen.text((n * 0.1, n * 0.55), str(rng.choice(_WORDS)).upper(), fill=_colour(rng),
                 font=_font(rng, int(n * 0.25)))
    return image


def _chart(rng: np.random.Generator, n: int) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (n, n), (255, 255, 255) if rng.random() < 0.7 else _colour(rng, saturated=False))
    pen = ImageDraw.Draw(image)
    s = SUPERSAMPLE
    left, base = 16 * s, n - 14 * s
    pen.line((left, 4 * s, left, base, n - 4 * s, base), fill=(0, 0, 0), width=s)
    bars = int(rng.integers(3, 9))
    width = (n - left - 8 * s) / bars
    for i in range(bars):
        top = base - rng.uniform(0.1, 0.85) * (base - 8 * s)
        pen.rectangle((left + i * width + width * 0.15, top, left + (i + 1) * width - width * 0.15, base),
                      fill=_colour(rng))
    for k in range(1, 5):  # grid lines and their labels
        y = base - k * (base - 8 * s) / 5
        pen.line((left, y, n - 4 * s, y), fill=(200, 200, 200), width=s)
        pen.text((1 * s, y - 4 * s), str(k * 20), fill=(0, 0, 0), font=_font(rng, 8 * s))
    return image
