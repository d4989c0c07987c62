"""vdsr.io.canvas: where an upscaled image goes block by block: an image started over (the engine
halving its tile) starts its stream over."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from vdsr.io.canvas import PngCanvas


def test_a_restarted_image_starts_the_stream_again() -> None:
    """The engine halves its tile on out-of-memory and starts the image over: the canvas starts
    the file over too, and the result is that of the second pass alone."""
    buf = io.BytesIO(b"keep")
    buf.seek(4)
    canvas = PngCanvas(buf, 4, 6, 1, 8, {})
    canvas.write(0, 0, np.full((2, 6, 1), 9, np.uint8))  # the first band of the first pass
    canvas.write(0, 0, np.full((2, 3, 1), 1, np.uint8))  # a new pass, with smaller tiles
    canvas.write(0, 3, np.full((2, 3, 1), 2, np.uint8))
    canvas.write(2, 0, np.full((2, 6, 1), 3, np.uint8))
    canvas.finish()
    assert buf.getvalue()[:4] == b"keep"
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue()[4:])))
    assert back.tolist() == [[1, 1, 1, 2, 2, 2]] * 2 + [[3] * 6] * 2
