"""End to end, the shipped default model (``src/vdsr/weights/vdsr_x234.safetensors``): the Set5
numbers recorded in its metadata are the ones ``vdsr.evaluate`` measures today, and they meet the
training issue's first bar."""

from __future__ import annotations

import pytest

from tests.conftest import DATASETS, needs_shared
from vdsr.engine import Upscaler
from vdsr.evaluate import evaluate_folder
from vdsr.weights import default_weights_path, load_model, read_metadata

FIRST_BAR = {2: 36.5, 3: 32.7, 4: 30.4}  # the training issue's first bar, Set5 Y-PSNR


@needs_shared
@pytest.mark.slow
def test_default_model_matches_its_recorded_set5_results() -> None:
    recorded = {r["scale"]: r for r in read_metadata(default_weights_path()).extra["evaluation"]["rgb8"]
                if r["dataset"] == "Set5"}
    assert sorted(recorded) == [2, 3, 4]
    model, _ = load_model()
    measured = {r.scale: r for r in evaluate_folder(Upscaler(model, precision="fp32"), DATASETS / "Set5")}
    for scale, r in measured.items():
        assert r.psnr == pytest.approx(recorded[scale]["psnr"], abs=1e-3)
        assert r.ssim == pytest.approx(recorded[scale]["ssim"], abs=1e-5)
        assert r.psnr > r.bicubic_psnr + 2.0  # well above bicubic at every scale
    # The first bar is met at every scale.
    assert all(measured[s].psnr >= FIRST_BAR[s] for s in (2, 3, 4))
