"""The guard a recipe that ``auto`` takes runs behind (issue 30): each network input whose pixels
are flat fields of one colour (graphics, UI, paper, screentone pages), where the fast recipes'
rounding shows, runs fp32; the rest runs the fast recipe. :mod:`vdsr.recipes` wraps its choice
in :class:`Guarded`; the check (and docs/recipes.md) measures both sides of the rule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from vdsr.backends import Backend

__all__ = ["GUARD_FLAT", "Guarded", "flat_fraction"]

# the guard: a network input with at least this fraction of flat pixels (their 3x3
# neighbourhood all one value) that are neither black nor white runs fp32. Measured: photos
# (11 check crops, 27 held-out, the 49 tiles of the 1024² speed photo) at most 0.042, drawn and
# real comics, text, UI and flat graphics up to 0.76, most above 0.1 (docs/recipes.md)
GUARD_FLAT = 0.07
GUARD_EQUAL = 1e-4  # "one value": float rounding of the bicubic upscale apart
GUARD_DARK, GUARD_LIGHT = 16 / 255, 239 / 255  # black and white as far as the guard is concerned


def flat_fraction(x: torch.Tensor) -> float:
    """The fraction of ``x``'s pixels (``(N, C, H, W)``, [0, 1]; channels averaged) that are
    flat, their 3x3 neighbourhood all one value (within :data:`GUARD_EQUAL`), and neither black
    nor white (:data:`GUARD_DARK`, :data:`GUARD_LIGHT`): the flat colour fields of graphics, UI,
    paper and screentone pages, where the fast recipes' rounding shows (docs/recipes.md). Smooth
    photos are close to flat but seldom exactly: their 8-bit gradients still step."""
    # NumPy, one thread: torch's pooling beside a busy OpenVINO pool cost 0.1 s a tile (measured)
    y = x.detach().to("cpu", torch.float32).numpy().mean(axis=1)  # (N, H, W)
    if y.size == 0 or y.shape[1] < 3 or y.shape[2] < 3:
        return 0.0
    rows_hi = np.maximum(np.maximum(y[:, :-2], y[:, 1:-1]), y[:, 2:])  # 3 rows' max and min
    rows_lo = np.minimum(np.minimum(y[:, :-2], y[:, 1:-1]), y[:, 2:])
    high = np.maximum(np.maximum(rows_hi[:, :, :-2], rows_hi[:, :, 1:-1]), rows_hi[:, :, 2:])
    low = np.minimum(np.minimum(rows_lo[:, :, :-2], rows_lo[:, :, 1:-1]), rows_lo[:, :, 2:])
    centre = y[:, 1:-1, 1:-1]
    flat = ((high - low) < GUARD_EQUAL) & (centre > GUARD_DARK) & (centre < GUARD_LIGHT)
    return float(flat.mean())


class Guarded:
    """A fast recipe's backend with fp32 for the inputs it is not safe on: each network input
    (each image of a batch) with :func:`flat_fraction` at least ``threshold`` runs on the
    fallback (fp32), the rest on ``fast``. ``fallback`` is a backend, or a function that makes
    one when the first such input comes (a run of photos never builds it).

    Same call as any backend; ``name`` and ``precision`` are ``fast``'s, ``guard`` says the
    rule, ``routed``/``calls`` count the inputs sent to fp32 and all inputs."""

    def __init__(self, fast: Backend, fallback: Backend | Callable[[], Backend],
                 threshold: float = GUARD_FLAT) -> None:
        self.fast, self.threshold = fast, threshold
        self._fallback: Backend | None = None
        self._make: Callable[[], Backend] | None = None
        if callable(fallback) and not hasattr(fallback, "precision"):
            self._make = fallback
        else:
            self._fallback = fallback  # type: ignore[assignment]
        self.name, self.precision, self.device = fast.name, fast.precision, fast.device
        self.guard = f"inputs with >= {threshold:.0%} flat non-black/white pixels run fp32"
        self.routed = self.calls = 0

    @property
    def fallback(self) -> Backend:
        if self._fallback is None:  # made by the factory, once, when first needed
            assert self._make is not None
            self._fallback = self._make()
        return self._fallback

    def risky(self, x: torch.Tensor) -> bool:
        """Whether one network input ``(1, C, H, W)`` goes to the fallback."""
        return flat_fraction(x) >= self.threshold

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        risky = [self.risky(x[i:i + 1]) for i in range(x.shape[0])]
        self.calls += len(risky)
        self.routed += sum(risky)
        if not any(risky):
            return self.fast(x)
        if all(risky):
            return self.fallback(x)
        return torch.cat([(self.fallback if r else self.fast)(x[i:i + 1]).to(x.device)
                          for i, r in enumerate(risky)])
