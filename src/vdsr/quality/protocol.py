"""The benchmark protocol behind the published VDSR numbers: how a test image becomes the
network's input and the ground truth it is scored against (:func:`make_pair`).

For each HR image and scale ``s`` (protocol ``"rgb8"``, the default, as benchmark suites do):
``hr = modcrop(hr, s)``; ``lr = uint8(imresize(hr, 1/s))`` (MATLAB bicubic with antialiasing,
rounded to 8 bits); the Y of ``lr`` (MATLAB ``rgb2ycbcr``, double) bicubic-upscaled by ``s`` is the
network's input. Protocol ``"ydouble"`` is the authors' MATLAB test code: the LR image is made from
the HR Y channel in double precision. Greyscale images use their grey value as Y.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from vdsr.color import rgb2y, rgb2ycbcr
from vdsr.errors import InvalidArgument, unknown
from vdsr.pixels import require_unit
from vdsr.resize import downscale_8bit, imresize, modcrop

__all__ = ["PROTOCOLS", "check_protocol", "make_pair"]

PROTOCOLS = ("rgb8", "ydouble")


def check_protocol(protocol: str) -> None:
    """:class:`InvalidArgument` unless ``protocol`` is one of :data:`PROTOCOLS`."""
    if protocol not in PROTOCOLS:
        raise InvalidArgument(unknown("protocol", protocol, PROTOCOLS))


def make_pair(
    hr: NDArray[np.float64], scale: int, protocol: str = "rgb8"
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Ground-truth Y and bicubic Y (both ``(H, W)``, 0-255 float) for an HR image in [0, 1].

    ``hr`` is ``(H, W, 3)`` RGB or ``(H, W)`` grey, floats on [0, 1] (8-bit values divided by
    255: ``LoadedImage.floats()``); raw integers raise :class:`~vdsr.errors.PixelScaleError`.
    """
    check_protocol(protocol)
    hr = require_unit(hr, "make_pair")
    hr = modcrop(hr, scale)
    gray = hr.ndim == 2
    gt_y = (hr if gray else rgb2y(hr)) * 255.0
    if protocol == "ydouble":
        lr_y = imresize(gt_y, 1.0 / scale)
    else:
        lr_image = downscale_8bit(hr, scale)
        lr_y = lr_image if gray else rgb2ycbcr(lr_image / 255.0)[..., 0] * 255.0
    bicubic_y = imresize(lr_y, scale)
    return gt_y, bicubic_y
