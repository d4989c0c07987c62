"""vdsr: VDSR single-image super-resolution (Kim, Lee & Lee, CVPR 2016).

Public API::

    import vdsr
    model, meta = vdsr.load_model()            # the shipped default (or a .safetensors path)
    sr = vdsr.upscale(image, 3, model=model)   # uint8/uint16/float image -> same dtype

    up = vdsr.Upscaler(model, device="cuda", precision="fp16")   # the tensor engine
    sr = up.upscale(batch, 3)                  # (N, 3, H, W) float in [0, 1] -> on the device

Names are imported on first use, so ``import vdsr`` (and ``vdsr --help``) does not load torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from vdsr import moved
from vdsr.constants import __version__
from vdsr.errors import VDSRError

moved.install()  # the module paths from before the package's rooms still import (vdsr.moved)

if TYPE_CHECKING:
    from vdsr.api import upscale
    from vdsr.engine import Upscaler
    from vdsr.nn.model import VDSR, VDSRConfig
    from vdsr.weights import load_model

_LAZY = {"Upscaler": "vdsr.engine", "upscale": "vdsr.api", "VDSR": "vdsr.nn.model",
         "VDSRConfig": "vdsr.nn.model", "load_model": "vdsr.weights"}

__all__ = ["VDSR", "Upscaler", "VDSRConfig", "VDSRError", "load_model", "upscale", "__version__"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vdsr' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
