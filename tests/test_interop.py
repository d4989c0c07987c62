"""Interchange with other tools: spandrel (chaiNNer's model loader) and the RGB ONNX export."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.conftest import tiny_model
from vdsr.weights import WeightsMetadata, default_weights_path, load_model, save_weights


def _spandrel_loads_correctly_or_refuses(path: Path) -> str:
    """``"unsupported"`` if spandrel refuses ``path``, ``"loaded"`` if it builds a network that
    computes what ours does; any other outcome (a wrong architecture, a state_dict error) fails."""
    spandrel = pytest.importorskip("spandrel")
    try:
        descriptor = spandrel.ModelLoader().load_from_file(str(path))
    except spandrel.UnsupportedModelError:
        return "unsupported"
    ours, _ = load_model(path)
    x = torch.rand(1, ours.config.channels, 24, 24)
    with torch.no_grad():
        theirs = descriptor.model.eval()(x)
        assert torch.allclose(theirs, ours(x), atol=1e-5), descriptor.architecture.name
    return "loaded"


def test_spandrel_refuses_our_files(tmp_path: Path, tiny_weights: Path) -> None:
    """chaiNNer must not mistake our weights for Real-ESRGAN's SRVGGNetCompact (its detector
    matches ``body.0.weight`` and ``body.1.weight``), as it did before the ``vdsr.`` prefix."""
    assert _spandrel_loads_correctly_or_refuses(default_weights_path()) == "unsupported"
    assert _spandrel_loads_correctly_or_refuses(tiny_weights) == "unsupported"
    # Without biases the old layout crashed spandrel's SRVGGNetCompact loader with a KeyError.
    model = tiny_model(channels=3, bias=False)
    path = tmp_path / "rgb_nobias.safetensors"
    save_weights(path, model.state_dict(), WeightsMetadata(config=model.config))
    assert _spandrel_loads_correctly_or_refuses(path) == "unsupported"


def test_spandrel_mistook_the_old_key_layout(tmp_path: Path, tiny_weights: Path) -> None:
    """The bug the prefix fixes: the unprefixed layout is taken for another architecture."""
    spandrel = pytest.importorskip("spandrel")
    old = {k.removeprefix("vdsr."): v for k, v in load_file(str(tiny_weights)).items()}
    path = tmp_path / "old.safetensors"
    save_file(old, str(path))
    with pytest.raises(RuntimeError, match="SRVGGNetCompact"):
        spandrel.ModelLoader().load_from_file(str(path))
