"""The notes' building blocks and the Keras-exact summary."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import receptive_span
from vdsr.cli import main
from vdsr.errors import InvalidArgument
from vdsr.inception_example import ConvBN, InceptionExample, inception_example_model
from vdsr.layers import Add, Concat, Inception, Projection, conv1x1
from vdsr.model import BODIES, VDSR, VDSRConfig, count_parameters
from vdsr.summary import summarize


def test_notes_inception_summary_matches_keras() -> None:
    s = summarize(inception_example_model(), (224, 224, 3))
    assert (s.total, s.trainable, s.non_trainable) == (141_952, 141_184, 768)
    convs = [layer.params for layer in s.layers if layer.kind == "Conv2D"]
    assert convs == [256, 256, 36_928, 256, 102_464, 256]
    assert [layer.params for layer in s.layers if layer.kind == "BatchNormalization"] == [256] * 6
    assert s.layers[-1].kind == "Concatenate" and s.layers[-1].shape == (None, 224, 224, 256)
    assert len(s.layers[-1].inputs) == 4
    pool = next(layer for layer in s.layers if layer.kind == "MaxPooling2D")
    assert pool.shape == (None, 224, 224, 3) and pool.params == 0


def test_summary_cli_prints_the_notes_totals(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["summary", "inception"]) == 0
    out = capsys.readouterr().out
    for line in ("Total params: 141,952", "Trainable params: 141,184", "Non-trainable params: 768",
                 "batch_normalization_2 (BatchNor (None, 224, 224, 64) 256         conv2d_2[0][0]",
                 "concatenate_1 (Concatenate)     (None, 224, 224, 256 0"):
        assert line in out, line
    assert main(["summary", "vdsr"]) == 0
    out = capsys.readouterr().out
    assert "Total params: 665,921" in out and "Receptive field: 41x41" in out
    assert out.count("(Conv2D)") == 20
    assert main(["summary", "vdsr", "--input-shape", "32", "48", "1"]) == 0
    assert "(None, 32, 48, 1)" in capsys.readouterr().out


def test_conv_bn_order_and_projection() -> None:
    block = ConvBN(3, 8, 3)
    assert [type(m).__name__ for m in block.children()] == ["Conv2d", "ReLU", "BatchNorm2d"]
    assert block.conv.bias is not None
    x = torch.rand(2, 3, 9, 9)
    assert block(x).shape == (2, 8, 9, 9)
    assert conv1x1(16, 4)(torch.rand(1, 16, 5, 5)).shape == (1, 4, 5, 5)  # shrink
    assert Projection(4, 32)(torch.rand(1, 4, 5, 5)).shape == (1, 32, 5, 5)  # grow


def test_general_inception_widths() -> None:
    block = Inception(32, ch1x1=8, ch3x3red=4, ch3x3=16, ch5x5red=4, ch5x5=8, pool_proj=8)
    assert block(torch.rand(1, 32, 10, 10)).shape == (1, 40, 10, 10)
    fused = Inception(32, 8, 4, 16, 4, 8, 8, fuse_to=32)
    assert fused(torch.rand(1, 32, 10, 10)).shape == (1, 32, 10, 10)
    assert InceptionExample(3, 16)(torch.rand(2, 3, 12, 12)).shape == (2, 64, 12, 12)


def test_merges() -> None:
    a, b = torch.rand(1, 8, 4, 4), torch.rand(1, 8, 4, 4)
    assert torch.equal(Add()(a, b), a + b)
    with pytest.raises(InvalidArgument, match="equal channels"):
        Add()(a, torch.rand(1, 4, 4, 4))
    assert Concat()(a, b).shape == (1, 16, 4, 4)
    assert Concat(16, fuse_to=8)(a, b).shape == (1, 8, 4, 4)


@pytest.mark.parametrize("body", BODIES)
def test_bodies_keep_receptive_field_and_parameter_budget(body: str) -> None:
    plain = count_parameters(VDSR(VDSRConfig()))
    model = VDSR(VDSRConfig(body=body))
    assert abs(count_parameters(model) / plain - 1) <= 0.05
    assert receptive_span(model) == (41, 41), body
    model.train()
    model(torch.rand(2, 1, 16, 16)).square().mean().backward()
    assert all(p.grad is not None for p in model.parameters())
