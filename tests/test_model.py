"""vdsr.nn.model: the VDSR network: size, parameter count, receptive field, residual, gradients,
and the other bodies (the same receptive field, parameters within 5%)."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import receptive_span
from vdsr.nn.model import BODIES, VDSR, VDSRConfig, count_parameters, flops_per_pixel


def test_default_vdsr_matches_paper() -> None:
    model = VDSR()
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 20
    assert count_parameters(model) == 665_921  # 64*9+64 + 18*(64*64*9+64) + 64*9+1
    assert model.config.receptive_field == 41
    assert count_parameters(VDSR(VDSRConfig(bias=False))) == 665_921 - (19 * 64 + 1)
    assert flops_per_pixel(model) == 2 * 9 * (64 + 18 * 64 * 64 + 64)


def test_receptive_field_is_41() -> None:
    """A perturbation at one pixel changes exactly a 41x41 window of the output."""
    assert receptive_span(VDSR(VDSRConfig())) == (41, 41)
    assert receptive_span(VDSR(VDSRConfig(depth=7, width=8))) == (15, 15)


def test_untrained_model_is_identity_and_output_shape() -> None:
    model = VDSR(VDSRConfig(depth=5, width=8, channels=3)).eval()
    x = torch.rand(2, 3, 13, 17)
    with torch.no_grad():
        assert torch.equal(model(x), x)  # zero output layer: starts exactly at bicubic


def test_every_parameter_gets_a_gradient() -> None:
    model = VDSR(VDSRConfig(depth=6, width=8))
    torch.nn.init.normal_(model.output.weight, std=0.01)
    model(torch.rand(2, 1, 16, 16)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_config_round_trip_and_validation() -> None:
    cfg = VDSRConfig(depth=7, width=16, channels=3, bias=False)
    assert VDSRConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError):
        VDSRConfig(depth=1)
    with pytest.raises(ValueError):
        VDSRConfig.from_dict({"depth": 3, "colour": 1})


@pytest.mark.parametrize("body", BODIES)
def test_bodies_keep_receptive_field_and_parameter_budget(body: str) -> None:
    plain = count_parameters(VDSR(VDSRConfig()))
    model = VDSR(VDSRConfig(body=body))
    assert abs(count_parameters(model) / plain - 1) <= 0.05
    assert receptive_span(model) == (41, 41), body
    model.train()
    model(torch.rand(2, 1, 16, 16)).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
