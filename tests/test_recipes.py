"""vdsr.recipes, ``--precision auto``: the candidates per CPU class, the check for the weights in
use, its cache, and what ``auto`` picks on CUDA measured on real weights."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vdsr.backends as backends
import vdsr.recipes as recipes
from tests.conftest import DATASETS, needs_shared, tiny_model
from vdsr.cpu import CPU_FEATURES_ENV, CpuFeatures
from vdsr.engine import Upscaler
from vdsr.evaluate import super_resolve_y
from vdsr.io.images import load_image
from vdsr.nn.model import VDSR, VDSRConfig
from vdsr.quality.metrics import psnr
from vdsr.quality.protocol import make_pair
from vdsr.recipes import CUDA_ORDER
from vdsr.weights import load_model

CPU = torch.device("cpu")
AMX = CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True, amx=True)
BF16 = CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True)
VNNI = CpuFeatures(avx2=True, avx512=True, vnni=True)
AVX2 = CpuFeatures(avx2=True)
BASELINE = CpuFeatures()


@pytest.fixture(autouse=True)
def _fresh_verdicts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipes, "_MEMORY", {})


def identity_model() -> VDSR:
    """A zero output layer: every recipe gives the input back exactly, so every check passes."""
    return VDSR(VDSRConfig(depth=4, width=8)).eval()


def fragile_model() -> VDSR:
    """Carries the image as two huge activations (1000x) whose small difference is the residual:
    any rounding of the inner layers (bf16, int8) destroys it, while fp32 keeps it exactly."""
    model = VDSR(VDSRConfig(depth=8, width=2)).eval()
    with torch.no_grad():
        for conv in [model.input, *model.body, model.output]:
            conv.weight.zero_()
            assert conv.bias is not None
            conv.bias.zero_()
        model.input.weight[0, 0, 1, 1] = 1000.0
        model.input.weight[1, 0, 1, 1] = 1000.0 + 0.25
        for conv in model.body:
            conv.weight[0, 0, 1, 1] = conv.weight[1, 1, 1, 1] = 1.0
        model.output.weight[0, 0, 1, 1], model.output.weight[0, 1, 1, 1] = -1.0, 1.0
    return model


def _without_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    real = backends._available
    monkeypatch.setattr(backends, "_available", lambda m: m != "openvino" and real(m))


@pytest.mark.parametrize("openvino", [False, True])
def test_candidates_per_cpu_class(openvino: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    if not openvino:
        _without_openvino(monkeypatch)
    else:
        monkeypatch.setattr(backends, "_available", lambda m: True)
        monkeypatch.setattr(recipes, "openvino_available", lambda: True)
    if not openvino:
        monkeypatch.setattr(recipes, "openvino_available", lambda: False)
    model = tiny_model()
    fast_bf16 = ["bf16", "bf16-edge"]
    assert recipes.candidates(model, CPU, features=AMX) == ["mixed", "int8", *fast_bf16]
    # AVX512_BF16 without AMX: PyTorch's bf16 is slower than fp32 ONNX Runtime there (measured)
    assert recipes.candidates(model, CPU, features=BF16) == ["mixed", "int8", *(fast_bf16 if openvino else [])]
    assert recipes.candidates(model, CPU, features=VNNI) == ["mixed", "int8"]
    assert recipes.candidates(model, CPU, features=AVX2) == ["mixed", "int8"]
    assert recipes.candidates(model, CPU, features=BASELINE) == []
    # only what the chosen runtime runs
    assert recipes.candidates(model, CPU, "torch", features=AMX) == fast_bf16
    assert recipes.candidates(model, CPU, "onnxruntime", features=AMX) == ["mixed", "int8"]


def test_explicit_recipe_needs_no_check(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(recipes, "check_recipe", lambda *a, **k: pytest.fail("checked"))
    choice = recipes.choose(tiny_model(), CPU, "int8", "onnxruntime")
    assert (choice.recipe, choice.verdict) == ("int8", None)
    up = Upscaler(tiny_model(), device="cpu", precision="fp32")
    assert (up.info.precision, up.info.check_db) == ("fp32", None)


def test_auto_takes_the_fastest_recipe_that_passes_and_caches_the_verdict(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")
    _without_openvino(monkeypatch)
    model = identity_model()
    choice = recipes.choose(model, CPU, "auto", "auto")
    assert choice.recipe == "mixed" and choice.backend.name == "onnxruntime"
    assert choice.verdict is not None and choice.verdict.passed and not choice.verdict.cached
    assert set(choice.verdict.delta_db) == {"2", "3", "4"} and choice.verdict.worst_db == 0.0
    stored = json.loads((tmp_path / "verdicts.json").read_text())
    (key,) = stored
    assert "|cpu-avx2|mixed|onnxruntime-" in key and stored[key]["passed"] is True
    # Once checked, never again for these weights on this machine class: from the file.
    monkeypatch.setattr(recipes, "_MEMORY", {})
    monkeypatch.setattr(recipes, "check_recipe", lambda *a, **k: pytest.fail("checked twice"))
    again = recipes.choose(model, CPU, "auto", "auto")
    assert again.recipe == "mixed" and again.verdict is not None and again.verdict.cached
    up = Upscaler(model, device="cpu")
    assert up.info.precision == "mixed" and up.info.check_db == 0.0
    assert "checked for these weights: +0.000 dB" in up.info.describe()


def test_a_fragile_model_fails_every_fast_check_and_runs_fp32(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")
    _without_openvino(monkeypatch)
    model = fragile_model()
    with caplog.at_level(logging.INFO, logger="vdsr.recipes"):
        choice = recipes.choose(model, CPU, "auto", "auto")
    assert choice.recipe == "fp32" and choice.verdict is None
    assert [v.recipe for v in choice.rejected] == ["mixed", "int8"]
    assert all(not v.passed for v in choice.rejected)
    notes = [r.getMessage() for r in caplog.records]
    assert any("not using int8" in n for n in notes) and any("not using mixed" in n for n in notes)
    # and what fp32 gives is the model's own output: the input plus exactly a quarter of it
    x = torch.rand(1, 1, 10, 10)
    assert torch.allclose(choice.backend(x), x * 1.25, atol=1e-3)  # fp32 cancellation: ~1e-4


def _counted_checks(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``recipes.check_recipe`` still checks, and appends ``"check"`` to the returned list each time."""
    calls: list[str] = []
    real = recipes.check_recipe

    def counted(*a: object, **k: object) -> recipes.Verdict:
        calls.append("check")
        return real(*a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(recipes, "check_recipe", counted)
    return calls


def test_a_damaged_verdict_cache_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")
    _without_openvino(monkeypatch)
    model = identity_model()
    cache = tmp_path / "verdicts.json"
    cache.write_bytes(b"\x00{not json")
    assert recipes.choose(model, CPU).recipe == "mixed"
    (key,) = json.loads(cache.read_text())
    # An entry of the wrong shape (a hand edit, another version) is checked again, not trusted.
    cache.write_text(json.dumps({key: {"recipe": "mixed", "passed": "yes"}}))
    monkeypatch.setattr(recipes, "_MEMORY", {})
    calls = _counted_checks(monkeypatch)
    assert recipes.choose(model, CPU).recipe == "mixed" and calls == ["check"]
    assert json.loads(cache.read_text())[key]["passed"] is True
    # Other weights are other keys: checked for themselves.
    with torch.no_grad():
        model.input.weight.add_(0.01)
    recipes.choose(model, CPU)
    assert calls == ["check", "check"] and len(json.loads(cache.read_text())) == 2


def test_a_new_calibration_checks_the_recipes_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verdict holds for the quantised graphs it was made on: when INT8_VERSION changes (other
    graphs, e.g. session 7's calibration), the cached verdict is not reused."""
    import vdsr.backends.ort as ort_backend

    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")
    _without_openvino(monkeypatch)
    model = identity_model()
    assert recipes.choose(model, CPU).recipe == "mixed"
    calls = _counted_checks(monkeypatch)
    monkeypatch.setattr(recipes, "_MEMORY", {})
    recipes.choose(model, CPU)
    assert calls == []  # the same graphs: the cached verdict
    monkeypatch.setattr(ort_backend, "INT8_VERSION", ort_backend.INT8_VERSION + 1)
    recipes.choose(model, CPU)
    assert calls == ["check"] and len(json.loads((tmp_path / "verdicts.json").read_text())) == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through read-only permissions")
def test_an_unwritable_cache_folder_still_works_silently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _unwritable_cache(tmp_path, monkeypatch, capsys)


def test_a_cache_path_that_cannot_be_a_folder_still_works_silently(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The real fault, also as root: the cache folder's place is taken by a file."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    _unwritable_cache(blocker / "vdsr", monkeypatch, capsys)


def _unwritable_cache(folder: Path, monkeypatch: pytest.MonkeyPatch,
                      capsys: pytest.CaptureFixture[str]) -> None:
    if folder.parent.is_dir():
        folder.mkdir()
        folder.chmod(0o500)
    monkeypatch.setenv("VDSR_CACHE_DIR", str(folder))
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")
    _without_openvino(monkeypatch)
    model = identity_model()
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert recipes.choose(model, CPU).recipe == "mixed"
        monkeypatch.setattr(recipes, "check_recipe", lambda *a, **k: pytest.fail("checked twice"))
        assert recipes.choose(model, CPU).verdict is not None  # kept in memory for the process
    out = capsys.readouterr()
    assert out.out == "" and out.err == ""


# -- CUDA: the auto precision on real weights (docs/precision.md) ----------------------------------
# The CUDA ``auto`` precision keeps real weights within 0.02 dB of fp32. Runs the package's own
# fp16/bf16 torch backend on the CPU (oneDNN accumulates both in fp32, as cuDNN does) on a crop
# of Set5's butterfly at x4, the scale where bf16 hurts the official weights most, for the
# shipped and the official weights.

CROP = 40


@needs_shared
@pytest.mark.slow  # CPU fp16 convolutions are ~40x slower than fp32: ~10 s per weights file
@pytest.mark.parametrize("which", ["shipped", "official"])
def test_cuda_auto_precision_stays_within_002_db_and_beats_bf16(which: str, official_weights: Path) -> None:
    model, _ = load_model(official_weights if which == "official" else None)
    model.eval()
    pixels = load_image(DATASETS / "Set5" / "butterfly.png").floats()[0][:CROP, :CROP]
    gt, bicubic = make_pair(pixels, 4, "rgb8")
    auto = CUDA_ORDER[0]  # the first recipe auto checks on CUDA
    torch.set_num_threads(2)
    out = {p: super_resolve_y(Upscaler(model, backend="torch", precision=p, tile=None), bicubic)
           for p in dict.fromkeys(("fp32", auto, "bf16"))}
    score = {p: psnr(gt, y, border=4) for p, y in out.items()}
    assert abs(score[auto] - score["fp32"]) < 0.02
    # fp16 keeps 3 more mantissa bits than bf16: its error is several times smaller
    err = {p: np.abs(y - out["fp32"]).max() for p, y in out.items()}
    assert 0 < err[auto] < err["bf16"] / 3
