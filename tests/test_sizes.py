"""vdsr.sizes: the size rules of an upscale, each written once: the scale factors accepted."""

from __future__ import annotations

import pytest

from vdsr.errors import VDSRError
from vdsr.sizes import check_scale


@pytest.mark.parametrize("bad", [1.0, 0.5, -2, float("nan"), float("inf"), 1000])
def test_bad_scales_are_refused(bad: float) -> None:
    with pytest.raises(VDSRError, match="scale"):
        check_scale(bad)
