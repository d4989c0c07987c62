"""vdsr: VDSR single-image super-resolution (Kim, Lee & Lee, CVPR 2016).

Public API::

    import vdsr
    model, meta = vdsr.load_model()            # the shipped default (or a .safetensors path)
    sr = vdsr.upscale(image, 3, model=model)   # uint8/uint16/float image -> same dtype
"""

from vdsr.constants import __version__
from vdsr.errors import VDSRError
from vdsr.inference import upscale
from vdsr.model import VDSR, VDSRConfig
from vdsr.weights import load_model

__all__ = ["VDSR", "VDSRConfig", "VDSRError", "load_model", "upscale", "__version__"]
