"""CPU feature detection, the OpenVINO backend, the CPU backend choice, and the graph cache."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import random_rgb, run, tiny_model, write_png
from vdsr import cpu
from vdsr.backends import create_backend, pick_runtime
from vdsr.cpu import CPU_FEATURES_ENV, CpuFeatures, cpu_features
from vdsr.engine import Upscaler
from vdsr.errors import BackendUnavailable, InvalidArgument

CPU = torch.device("cpu")

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False

needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="openvino is not installed (pip install 'vdsr[openvino]')")


# -- feature detection -------------------------------------------------------------------------

def test_override_forces_a_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(CPU_FEATURES_ENV, "none")
    assert cpu_features() == CpuFeatures(source="env")
    assert cpu_features().names() == []
    monkeypatch.setenv(CPU_FEATURES_ENV, " AVX2, vnni ")
    got = cpu_features()
    assert (got.avx2, got.vnni, got.avx512, got.bf16, got.amx) == (True, True, False, False, False)
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2,sse9")
    with pytest.raises(InvalidArgument, match="sse9"):
        cpu_features()


def test_detection_reads_kernel_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    info = tmp_path / "cpuinfo"
    monkeypatch.setattr(cpu, "_CPUINFO", info)
    # The AMD EPYC of issue 17 (abridged): AVX-512 with BF16 and VNNI, no AMX.
    info.write_text("processor\t: 0\nmodel name\t: AMD EPYC 9R14\n"
                    "flags\t\t: fpu sse2 avx avx2 fma avx512f avx512bw avx512_vnni avx512_bf16\n\n"
                    "processor\t: 1\nflags\t\t: fpu\n")
    assert cpu._detect() == CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True, source="cpuinfo")
    assert cpu.cpu_name() == "AMD EPYC 9R14"
    # A Sapphire Rapids-like core: AMX; an Alder Lake-like one: AVX-VNNI without AVX-512.
    info.write_text("flags : avx2 avx512f avx512_vnni amx_bf16 amx_tile amx_int8\n")
    assert cpu._detect() == CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True, amx=True,
                                        source="cpuinfo")
    info.write_text("flags : avx2 avx_vnni\n")
    assert cpu._detect() == CpuFeatures(avx2=True, vnni=True, source="cpuinfo")
    # No flags line (ARM kernels write "Features"): the fallback, never an error.
    info.write_text("processor : 0\nFeatures : fp asimd\n")
    assert cpu._detect().source in ("torch", "none")
    assert not cpu._detect().bf16
    # No file at all (macOS, Windows).
    monkeypatch.setattr(cpu, "_CPUINFO", tmp_path / "missing")
    assert isinstance(cpu._detect(), CpuFeatures)
    assert cpu.cpu_name()


# -- which runtime runs a recipe ------------------------------------------------------------------

AMX = CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True, amx=True)
BF16 = CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True)
VNNI = CpuFeatures(avx2=True, avx512=True, vnni=True)
AVX2 = CpuFeatures(avx2=True)


def test_runtime_for_each_recipe_and_cpu_class(monkeypatch: pytest.MonkeyPatch) -> None:
    import vdsr.backends as backends

    for have_openvino in (False, True):
        real = backends._available
        monkeypatch.setattr(backends, "_available",
                            lambda m, h=have_openvino, r=real: (m != "openvino" or h) and (m == "openvino" or r(m)))
        ov = "openvino" if have_openvino else None
        assert pick_runtime("auto", CPU, "fp32", features=BF16) == "onnxruntime"  # exact: ORT everywhere
        assert pick_runtime("auto", CPU, "int8", features=VNNI) == (ov or "onnxruntime")
        assert pick_runtime("auto", CPU, "mixed", features=AVX2) == "onnxruntime"  # no VNNI: ORT
        assert pick_runtime("auto", CPU, "bf16", features=BF16) == (ov or "torch")
        assert pick_runtime("auto", CPU, "bf16-edge", features=AMX) == (ov or "torch")
        assert pick_runtime("auto", CPU, "bf16", features=VNNI) == "torch"  # never OpenVINO's emulation
        monkeypatch.setattr(backends, "_available", real)


def test_openvino_missing_is_backend_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openvino", None)  # makes `import openvino` raise ImportError
    with pytest.raises(BackendUnavailable, match="openvino is not installed"):
        pick_runtime("openvino", CPU, "fp32")
    from vdsr.backends.openvino import OpenVinoBackend

    with pytest.raises(BackendUnavailable):
        OpenVinoBackend(tiny_model())
    assert pick_runtime("auto", CPU, "bf16", features=BF16) == "torch"  # the fallback that works everywhere


def test_openvino_refuses_gpu_and_recipes_it_cannot_run() -> None:
    if HAVE_OPENVINO:
        with pytest.raises(InvalidArgument, match="CPU only"):
            pick_runtime("openvino", torch.device("cuda"), "fp32")
        with pytest.raises(InvalidArgument, match="does not run fp16"):
            pick_runtime("openvino", CPU, "fp16", features=BF16)
        with pytest.raises(InvalidArgument, match="AVX512_BF16"):
            pick_runtime("openvino", CPU, "bf16", features=VNNI)


# -- the OpenVINO backend ----------------------------------------------------------------------

@needs_openvino
def test_openvino_fp32_equals_torch_any_size_and_tiled(monkeypatch: pytest.MonkeyPatch) -> None:
    model = tiny_model(depth=6, width=8)
    backend = create_backend(model, "openvino", threads=1)
    assert (backend.name, backend.precision, backend.device) == ("openvino", "fp32", CPU)
    for h, w in ((23, 31), (40, 17)):  # dynamic height and width, one compiled model
        x = torch.rand(1, 1, h, w)
        with torch.no_grad():
            ref = model(x)
        out = backend(x)
        assert out.dtype == torch.float32 and out.shape == x.shape
        assert (out - ref).abs().max() < 1e-5
        first = out.clone()
        backend(torch.zeros_like(x))  # the output buffer is reused by the runtime: ours is a copy
        assert torch.equal(out, first)
    up = Upscaler(model, backend="openvino", precision="fp32", tile=16)
    x = torch.rand(1, 1, 37, 29)
    with torch.no_grad():
        assert (up.network(x) - model(x)).abs().max() < 1e-5
    assert up.info.backend == "openvino"


@needs_openvino
@pytest.mark.parametrize("recipe", ["bf16", "bf16-edge"])
def test_openvino_bf16_graph_is_close_not_exact(recipe: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # OpenVINO emulates bf16 where the CPU lacks it, so this runs anywhere (slowly, on a tiny model).
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2,avx512,vnni,bf16")
    model = tiny_model(depth=6, width=8)
    backend = create_backend(model, "openvino", precision=recipe, threads=1)
    assert (backend.name, backend.precision) == ("openvino", recipe)
    x = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        err = (backend(x) - model(x)).abs().max().item()
    assert 0 < err < 0.02
    # The input and the residual addition stay fp32: a zero residual gives the input back exactly.
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    assert torch.equal(create_backend(model, "openvino", precision=recipe, threads=1)(x), x)
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2,vnni")
    with pytest.raises(InvalidArgument, match="bf16"):
        create_backend(model, "openvino", precision=recipe)


# -- the cached graphs -------------------------------------------------------------------------

def _cached(cache: Path, kind: str) -> list[Path]:
    return sorted(cache.glob(f"{kind}-*.onnx"))


@pytest.mark.parametrize("backend", [
    "onnxruntime", pytest.param("openvino", marks=needs_openvino)])
def test_damaged_or_stale_cached_graph_is_rebuilt(
    backend: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vdsr.backends import ort
    from vdsr.export import onnx_bytes

    cache = tmp_path / "cache"
    monkeypatch.setenv("VDSR_CACHE_DIR", str(cache))
    model = tiny_model(depth=5, width=8)
    x = torch.rand(1, 1, 20, 24)
    with torch.no_grad():
        ref = model(x)
    assert (create_backend(model, backend)(x) - ref).abs().max() < 1e-5
    (path,) = _cached(cache, "fp32")
    good = path.read_bytes()
    # Damaged: rebuilt, replaced, never handed to the runtime.
    path.write_bytes(good[: len(good) // 2])
    assert (create_backend(tiny_model(depth=5, width=8), backend)(x) - ref).abs().max() < 1e-5
    assert path.read_bytes() == good
    # Stale: a valid graph of other weights under this name (a copied cache, a key collision,
    # an older recipe) is not trusted either.
    other = tiny_model(depth=5, width=8, seed=1)
    path.write_bytes(onnx_bytes(other))
    assert not ort._valid_onnx(path.read_bytes(), path.stem)
    out = create_backend(tiny_model(depth=5, width=8), backend)(x)
    assert (out - ref).abs().max() < 1e-5
    assert path.read_bytes() == good
    assert len(_cached(cache, "fp32")) == 1


def test_int8_split_is_a_parameter() -> None:
    import onnx

    from vdsr.export import _int8_excluded, onnx_bytes

    graph = onnx.load_from_string(onnx_bytes(tiny_model(depth=8, width=8))).graph
    convs = [n.name for n in graph.node if n.op_type == "Conv"]
    last = graph.node[-1].name
    assert set(_int8_excluded(graph)) == {*convs[:3], convs[-1], last}  # the package's recipe
    assert set(_int8_excluded(graph, 5, 2)) == {*convs[:5], *convs[-2:], last}
    assert set(_int8_excluded(graph, 0, 0)) == {last}


# -- which runtime runs the int8 graph ---------------------------------------------------------

def test_int8_runtime_follows_the_features(monkeypatch: pytest.MonkeyPatch) -> None:
    import vdsr.export as export

    model = tiny_model(depth=8, width=16)
    x = torch.from_numpy(next(export.calibration_inputs(1))[:, :, :40, :44])
    with torch.no_grad():
        ref = model(x)
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")  # no VNNI: ONNX Runtime, the fallback
    ort_int8 = create_backend(model, "auto", precision="int8")
    assert (ort_int8.name, ort_int8.precision) == ("onnxruntime", "int8")
    ort_out = ort_int8(x)
    assert 0 < (ort_out - ref).abs().max() < 0.02
    if not HAVE_OPENVINO:
        return
    monkeypatch.setenv(CPU_FEATURES_ENV, "avx512,vnni")
    ov_int8 = create_backend(model, "auto", precision="int8")  # the same cached graph, no recalibration
    monkeypatch.setattr(export, "onnx_int8_bytes", lambda *a, **k: pytest.fail("recalibrated"))
    assert (ov_int8.name, ov_int8.precision) == ("openvino", "int8")
    ov_out = ov_int8(x)
    assert 0 < (ov_out - ref).abs().max() < 0.02
    assert (ov_out - ort_out).abs().max() < 0.01  # one graph, two runtimes' int8 kernels


def test_mixed_keeps_the_last_three_convolutions_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx

    from vdsr.backends import ort

    monkeypatch.setenv(CPU_FEATURES_ENV, "avx2")  # ONNX Runtime runs it
    model = tiny_model(depth=8, width=16)
    backend = create_backend(model, "auto", precision="mixed")
    assert (backend.name, backend.precision) == ("onnxruntime", "mixed")
    import vdsr.export as export

    x = torch.from_numpy(next(export.calibration_inputs(1))[:, :, :30, :26])  # a natural image
    with torch.no_grad():
        assert (backend(x) - model(x)).abs().max() < 0.02
    graph = onnx.load_from_string(ort.cached_graph_bytes(model, "mixed")).graph
    dequantised = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    quantised = [n.input[1] in dequantised for n in graph.node if n.op_type == "Conv"]
    assert quantised == [False] * 3 + [True] * 2 + [False] * 3  # 8 convs: 3 fp32, 2 int8, 3 fp32


def test_int8_first_use_says_it_is_calibrating(tmp_path: Path, tiny_weights: Path,
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Rough edge: the int8 backend's first-use calibration took seconds without a word."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    src = write_png(tmp_path / "a.png", random_rgb(12, 12))
    argv = ["upscale", str(src), "-s", "2", "-o", str(tmp_path / "o.png"), "--backend", "int8",
            "--weights", str(tiny_weights), "--overwrite"]
    code, _, err = run(argv, capsys)
    assert code == 0 and "vdsr: calibrating the int8 model once for these weights" in err
    code, _, err = run(argv, capsys)
    assert code == 0 and "calibrating" not in err  # cached: nothing to say
