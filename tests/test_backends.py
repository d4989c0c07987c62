"""vdsr.backends: one protocol for every runtime; which runtime runs each recipe on each CPU class;
ONNX Runtime (fp32, int8, mixed) and OpenVINO (fp32, bf16; skipped where it is not installed)
against PyTorch; the cached graphs; signals in a process that made and freed OpenVINO backends."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import (
    DATASETS,
    ROOT,
    _input,
    needs_shared,
    random_rgb,
    run,
    tiny_model,
    write_png,
)
from vdsr.api import run_network
from vdsr.backends import create_backend, pick_runtime
from vdsr.cli import main
from vdsr.cpu import CPU_FEATURES_ENV, CpuFeatures, usable_cpus
from vdsr.engine import Upscaler
from vdsr.errors import BackendUnavailable, InvalidArgument, VDSRError
from vdsr.weights import load_model

CPU = torch.device("cpu")

try:
    import openvino  # noqa: F401

    HAVE_OPENVINO = True
except ImportError:
    HAVE_OPENVINO = False

needs_openvino = pytest.mark.skipif(
    not HAVE_OPENVINO, reason="openvino is not installed (pip install 'vdsr[openvino]')")


# -- one protocol, every runtime -------------------------------------------------------------------

def test_backends_share_one_protocol() -> None:
    model = tiny_model()
    x = _input()
    ref = create_backend(model, "torch")(x)
    for name, precision in (("onnxruntime", "fp32"), ("onnxruntime", "int8")):
        backend = create_backend(model, name, precision=precision)
        assert (backend.name, backend.precision, backend.device.type) == (name, precision, "cpu")
        assert backend(x).shape == ref.shape


def test_ort_backend_equals_torch(tmp_path: Path) -> None:
    model = tiny_model(depth=8, width=16)
    x = np.random.default_rng(0).random((1, 57, 83)).astype(np.float32)
    ref = run_network(model, x, tile=None, backend="torch")
    fast = run_network(model, x, tile=None, backend="onnxruntime")
    assert np.abs(ref - fast).max() < 1e-4
    assert np.abs(ref - run_network(model, x, tile=20, backend="onnxruntime")).max() < 1e-4
    # The cached session follows weight changes.
    with torch.no_grad():
        model.output.weight.mul_(2)
    assert np.abs(run_network(model, x, tile=None, backend="onnxruntime")
                  - run_network(model, x, tile=None, backend="torch")).max() < 1e-4


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


def test_runtime_rule_for_each_recipe() -> None:
    """Which runtime runs a recipe; features handed in, so no machine's CPU or optional packages
    decide the answer (openvino is hidden here as if it were not installed)."""
    import vdsr.backends as backends

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    plain = backends.CpuFeatures(avx2=True, avx512=True, vnni=True, bf16=True)
    real = backends._available
    try:
        backends._available = lambda module: module != "openvino" and real(module)  # type: ignore[assignment]
        assert pick_runtime("auto", cpu, "fp32", features=plain) == "onnxruntime"
        assert pick_runtime("auto", cpu, "int8", features=plain) == "onnxruntime"
        assert pick_runtime("auto", cpu, "bf16", features=plain) == "torch"
        assert pick_runtime("auto", cuda, "fp16", features=plain) == "torch"
        with pytest.raises(InvalidArgument, match="CUDA"):
            pick_runtime("auto", cpu, "tf32", features=plain)
        with pytest.raises(InvalidArgument, match="does not run fp16"):
            pick_runtime("onnxruntime", cpu, "fp16", features=plain)
        with pytest.raises(InvalidArgument, match="unknown precision"):
            pick_runtime("auto", cpu, "fp8", features=plain)
        with pytest.raises(BackendUnavailable, match="CPU only"):
            pick_runtime("auto", cuda, "int8", features=plain)
        with pytest.raises(BackendUnavailable, match="CPU only"):
            pick_runtime("onnxruntime", cuda, "fp32", features=plain)
    finally:
        backends._available = real  # type: ignore[assignment]


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
@pytest.mark.skipif(usable_cpus() < 2, reason="needs 2 CPUs: one thread is then a share")
def test_openvino_with_a_share_of_the_cpus_does_not_pin_its_threads() -> None:
    """--workers 2 with OpenVINO used 1.08 cores of 2 and ran 1.6x slower than one process
    (measured: 20.3 s against 12.8 s): OpenVINO pins its threads to the first CPUs, so every
    one-thread worker ran on the same core. A backend with fewer threads than CPUs is unpinned
    (one with all of them keeps OpenVINO's default)."""
    model = tiny_model(depth=6, width=8)
    shared = create_backend(model, "openvino", threads=1)
    assert shared.compiled.get_property("ENABLE_CPU_PINNING") is False


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


@needs_openvino
@pytest.mark.subprocess
def test_signals_still_work_after_openvino_backends_are_freed_in_creation_order() -> None:
    """Each ``openvino.Core`` loads a CPU plugin that swaps the thread's signal stack and puts
    the previous one back when freed; two freed first-made-first (a backend rebuilt at each
    validation, a test's locals) left the thread on an unmapped signal stack, and the next
    SIGINT/SIGTERM killed the process with SIGSEGV and no traceback (issue 24; openvino
    2026.4.1, docs/openvino_signal_stack.md). A real signal, in a child process: the failure
    kills the process that receives it."""
    script = textwrap.dedent("""
        import gc, os, signal
        import torch
        from vdsr.backends import create_backend
        from vdsr.nn.model import VDSR, VDSRConfig
        x = torch.rand(1, 1, 9, 9)
        first = create_backend(VDSR(VDSRConfig(depth=3, width=4)), "openvino", threads=1)
        second = create_backend(VDSR(VDSRConfig(depth=3, width=4)), "openvino", threads=1)
        first(x), second(x)
        del first
        gc.collect()
        del second
        gc.collect()
        heard = []
        signal.signal(signal.SIGINT, lambda signum, frame: heard.append(signum))
        os.kill(os.getpid(), signal.SIGINT)
        print("heard", heard)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, (proc.returncode, proc.stderr)
    assert proc.stdout.strip() == "heard [2]", proc.stdout


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


def test_int8_unwritable_cache_still_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("VDSR_CACHE_DIR", str(blocker / "cache"))
    model = tiny_model(depth=6, width=8)
    x = np.random.default_rng(1).random((1, 30, 30)).astype(np.float32)
    out = run_network(model, x, tile=None, precision="int8")
    exact = run_network(model, x, tile=None, precision="fp32")
    # the int8 network ran (not a silent fp32 fallback, not garbage): close to fp32, not equal
    assert out.shape == x.shape and 0 < np.abs(out - exact).max() < 0.05
    assert not blocker.with_name("cache").exists() and blocker.read_text() == "not a folder"


# -- int8 and mixed: which runtime, the calibration, its cache, accuracy ---------------------------

@pytest.mark.parametrize("body", ["plain", "residual", "dense", "inception"])
def test_activation_ranges_are_onnx_runtimes_minmax_calibration(tmp_path: Path, body: str) -> None:
    """The int8 graphs' activation ranges are computed layer by layer (ORT's calibration session
    held every activation of a crop at once: 330 MB more at the first run's peak). They must be
    what ONNX Runtime's own MinMax calibration measures, for every tensor it calibrates."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, create_calibrator

    import vdsr.export as export
    from vdsr.nn.model import VDSR, VDSRConfig

    model = VDSR(VDSRConfig(depth=8, width=16, body=body))
    torch.nn.init.normal_(model.output.weight, std=0.05)  # not the zero layer of a fresh model
    graph = onnx.load_from_string(export.onnx_bytes(model))
    export._inline_shared_initializers(graph.graph)
    onnx.save(graph, str(tmp_path / "m.onnx"))
    inputs = [x[:, :, :48, :40] for x in export.calibration_inputs(1)][:6]

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {"input": x}

    calibrator = create_calibrator(tmp_path / "m.onnx", augmented_model_path=str(tmp_path / "aug.onnx"),
                                   calibrate_method=CalibrationMethod.MinMax)
    calibrator.collect_data(Reader())
    theirs = calibrator.compute_data()
    ours = export.activation_ranges(graph.graph, inputs)
    assert set(theirs) == set(ours) and len(ours) == len(graph.graph.node) + 1
    for name in theirs:
        for got, want in zip(ours[name], theirs[name].range_value, strict=True):
            assert got.dtype == np.float32 and got.shape == (1,)
            assert abs(float(got[0]) - float(want[0])) <= 1e-5 * max(1.0, abs(float(want[0]))), name
    import onnxruntime as ort  # and the quantised graph built from them runs, close to fp32

    session = ort.InferenceSession(export.onnx_int8_bytes(model), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        want = model(torch.from_numpy(inputs[0])).numpy()
    assert 0 < np.abs(session.run(None, {"input": inputs[0]})[0] - want).max() < 0.05


def test_activation_ranges_take_a_tensor_used_twice_by_one_node() -> None:
    from onnx import TensorProto, helper

    import vdsr.export as export

    graph = helper.make_graph([helper.make_node("Add", ["input", "input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 4, 4])])
    x = np.linspace(-1, 2, 16, dtype=np.float32).reshape(1, 1, 4, 4)
    ranges = export.activation_ranges(graph, [x])
    assert float(ranges["output"][0][0]) == -2.0 and float(ranges["output"][1][0]) == 4.0


def test_activation_ranges_refuse_an_operator_they_do_not_know() -> None:
    from onnx import TensorProto, helper

    import vdsr.export as export

    graph = helper.make_graph([helper.make_node("Sigmoid", ["input"], ["output"])], "g",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, 4, 4])])
    with pytest.raises(VDSRError, match="Sigmoid"):
        export.activation_ranges(graph, [np.zeros((1, 1, 4, 4), np.float32)])


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


def test_int8_backend_close_to_fp32_cached_and_silent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vdsr.export as export

    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    model = tiny_model(depth=8, width=16)
    x = next(export.calibration_inputs(1))[0, :, :60, :72]  # a natural (bicubic-degraded) image
    ref = run_network(model, x, tile=None, backend="torch")
    out = run_network(model, x, tile=None, precision="int8")
    assert out.shape == ref.shape
    err = np.abs(out - ref)
    assert 0 < err.max() < 0.02 and err.mean() < 2e-3  # quantised: close, not equal
    graph = __import__("onnx").load(next((tmp_path / "cache").glob("int8-*.onnx"))).graph
    assert sum(n.op_type == "DequantizeLinear" for n in graph.node) > 8  # the body is quantised
    captured = capsys.readouterr()  # onnxruntime's calibration chatter is kept off the terminal
    assert captured.out == "" and captured.err == ""
    cached = list((tmp_path / "cache").glob("int8-*.onnx"))
    assert len(cached) == 1
    # A second model object with the same weights reuses the cache instead of recalibrating.
    monkeypatch.setattr(export, "onnx_int8_bytes", lambda m: pytest.fail("recalibrated"))
    again = tiny_model(depth=8, width=16)
    assert np.array_equal(run_network(again, x, tile=None, precision="int8"), out)
    # A damaged cache file is recalibrated and replaced, not fed to onnxruntime.
    cached[0].write_bytes(b"\x00garbage")
    monkeypatch.undo()
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    fresh = tiny_model(depth=8, width=16)
    assert np.array_equal(run_network(fresh, x, tile=None, precision="int8"), out)
    assert cached[0].stat().st_size > 1000
    # New weights get their own entry.
    monkeypatch.undo()
    monkeypatch.setenv("VDSR_CACHE_DIR", str(tmp_path / "cache"))
    with torch.no_grad():
        again.output.weight.mul_(2)
    run_network(again, x, tile=None, precision="int8")
    assert len(list((tmp_path / "cache").glob("int8-*.onnx"))) == 2


def test_int8_refuses_gpu_device() -> None:
    from vdsr.errors import InvalidArgument

    # "cannot be used" on machines without CUDA (the device is checked first), "CPU only" on others
    with pytest.raises(InvalidArgument, match="CPU only|cannot be used"):
        run_network(tiny_model(), np.zeros((1, 8, 8), np.float32), device="cuda", precision="int8")


def test_upscale_cli_int8_backend(tmp_path: Path) -> None:
    from tests.conftest import random_rgb, write_png
    from vdsr.io.images import load_image
    from vdsr.weights import WeightsMetadata, save_weights

    weights = tmp_path / "tiny8.safetensors"
    tiny = tiny_model(depth=8, width=16)
    save_weights(weights, tiny.state_dict(), WeightsMetadata(config=tiny.config, source="test"))
    src = write_png(tmp_path / "in.png", random_rgb(24, 30))
    out = tmp_path / "out.png"
    assert main(["upscale", str(src), "-s", "2", "-o", str(out), "--weights", str(weights),
                 "--backend", "int8"]) == 0
    assert load_image(out).raw.shape == (48, 60, 3)


@needs_shared
@pytest.mark.parametrize("which", ["default", "official"])
@pytest.mark.slow
def test_int8_psnr_within_005_db_of_fp32_on_set5(which: str, official_weights: Path) -> None:
    from vdsr.engine import Upscaler
    from vdsr.evaluate import EvalConfig, evaluate_folder

    model, _ = load_model(None if which == "default" else official_weights)
    fp32 = evaluate_folder(Upscaler(model, precision="fp32"), DATASETS / "Set5", EvalConfig(ssim=False))
    int8 = evaluate_folder(Upscaler(model, precision="int8"), DATASETS / "Set5", EvalConfig(ssim=False))
    for a, b in zip(fp32, int8, strict=True):
        assert abs(a.psnr - b.psnr) < 0.05, (a.scale, a.psnr, b.psnr)
