"""vdsr.nn.summary: the Keras-style model summary: the notes' Inception example gives Keras's
totals, and ``vdsr summary`` prints them."""

from __future__ import annotations

import pytest

from vdsr.cli import main
from vdsr.nn.inception_example import inception_example_model
from vdsr.nn.summary import summarize


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
