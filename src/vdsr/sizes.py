"""The size rules of an upscale, each written once: which scale factors are accepted, how large
the result is, and the output-pixel limit.

Imports nothing heavy (no NumPy, no torch), so the CLI can check a scale while it parses flags.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

from vdsr.constants import DEFAULT_SCALES, MAX_SCALE
from vdsr.errors import BadScale, InvalidArgument, TooLarge

__all__ = ["check_output_pixels", "check_scale", "require_positive_scale", "upscaled_size"]


def check_scale(scale: object, trained: Sequence[int] | None = None) -> float:
    """``scale`` as a float in ``(1, MAX_SCALE]``, else :class:`BadScale`; warns outside the
    model's ``trained`` scales (default: the paper's 2-4), where quality may suffer."""
    if isinstance(scale, bool):
        raise BadScale(scale, f"scale must be a number, got {scale!r}")
    try:
        value = float(scale)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise BadScale(scale, f"scale must be a number, got {scale!r}") from None
    if not math.isfinite(value) or value <= 1.0:
        raise BadScale(value, f"scale must be a finite number greater than 1, got {scale}")
    if value > MAX_SCALE:
        raise BadScale(value, f"scale {scale} is too large (at most {MAX_SCALE:g})")
    lo, hi = (min(trained), max(trained)) if trained else (min(DEFAULT_SCALES), max(DEFAULT_SCALES))
    if not lo <= value <= hi:
        warnings.warn(f"scale {value:g} is outside the model's trained range {lo}-{hi}; "
                      "quality may suffer", stacklevel=2)
    return value


def require_positive_scale(scale: float) -> float:
    """``scale`` when it is finite and positive (a resize factor, which may shrink: no upscale
    rule applies), else :class:`InvalidArgument`."""
    if not (math.isfinite(scale) and scale > 0):
        raise InvalidArgument(f"scale must be finite and positive, got {scale}")
    return scale


def upscaled_size(height: int, width: int, scale: float) -> tuple[int, int]:
    """The size an upscale by ``scale`` produces: ``round(scale * (height, width))``, at least 1."""
    return max(1, round(height * scale)), max(1, round(width * scale))


def check_output_pixels(name: str, height: int, width: int, scale: float,
                        limit: int | None) -> tuple[int, int]:
    """:func:`upscaled_size`, refused with :class:`TooLarge` (``what="output"``) when it is over
    ``limit`` pixels (``None``: no limit), so that callers refuse before any work is spent."""
    out_h, out_w = upscaled_size(height, width, scale)
    if limit is not None and out_h * out_w > limit:
        raise TooLarge(name, "output", out_w, out_h, limit)
    return out_h, out_w
