"""Inference backends: one small protocol, one module per runtime.

A backend runs the network on a batch of images that are already bicubic-upscaled:
``(N, C, H, W)`` float32 tensor in [0, 1] -> the same shape, float32, unclamped, on the
backend's device. Tiling, ensembles, colour and file handling live above it, in
:class:`vdsr.engine.Upscaler`; what a backend caches (an ONNX Runtime session, a quantised graph,
a compiled function) lives in the backend, never on the model.

A backend is a *runtime* running a *recipe* (:mod:`vdsr.precision`: how the arithmetic is done):

| runtime         | module          | devices   | recipes                                   |
|-----------------|-----------------|-----------|-------------------------------------------|
| ``torch``       | :mod:`.pytorch` | cpu, cuda | fp32, tf32, fp16, bf16, bf16-edge         |
| ``compile``     | :mod:`.pytorch` | cpu, cuda | the same, through ``torch.compile``       |
| ``onnxruntime`` | :mod:`.ort`     | cpu       | fp32, int8, mixed                         |
| ``openvino``    | :mod:`.openvino`| cpu       | fp32, bf16, bf16-edge (native bf16 CPUs), int8, mixed |

Which recipe ``auto`` takes is :mod:`vdsr.recipes`' job (checked for the weights in use);
which runtime runs a recipe when the backend is ``auto`` is :func:`pick_runtime`'s.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from vdsr.constants import BACKENDS, PRECISIONS
from vdsr.cpu import CpuFeatures, cpu_features
from vdsr.errors import BackendUnavailable, DeviceUnavailable, InvalidArgument
from vdsr.nn.model import VDSR
from vdsr.precision import check_tf32_device

__all__ = ["Backend", "create_backend", "pick_runtime", "resolve_device"]

# What each runtime can run (recipes of vdsr.precision, never "auto").
RUNTIME_RECIPES: dict[str, tuple[str, ...]] = {
    "torch": ("fp32", "tf32", "fp16", "bf16", "bf16-edge"),
    "compile": ("fp32", "tf32", "fp16", "bf16", "bf16-edge"),
    "onnxruntime": ("fp32", "int8", "mixed"),
    "openvino": ("fp32", "bf16", "bf16-edge", "int8", "mixed"),
}


@runtime_checkable
class Backend(Protocol):
    """Runs the network: ``(N, C, H, W)`` float32 in [0, 1] -> same shape, float32, unclamped.

    ``name`` is the runtime (``"torch"``, ``"onnxruntime"``, ...), ``precision`` the recipe.
    """

    name: str
    device: torch.device
    precision: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` (CUDA when there is a usable GPU, else the CPU) or a device name, checked.

    Raises :class:`DeviceUnavailable` for a name torch does not know, or a CUDA device this
    machine does not have, before anything is built on it.
    """
    if isinstance(device, torch.device):
        dev = device
    elif str(device).strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(str(device).strip())
        except (RuntimeError, ValueError):
            raise DeviceUnavailable(str(device), "not a device name (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(str(device), "CUDA is not available on this machine")
        count = torch.cuda.device_count()
        if dev.index is not None and dev.index >= count:
            raise DeviceUnavailable(str(device), f"this machine has {count} CUDA device(s)")
    elif dev.type not in ("cpu", "mps", "xpu"):
        raise DeviceUnavailable(str(device), "not a device this package runs on (use auto, cpu or cuda)")
    return dev


def _available(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def openvino_available() -> bool:
    """Whether the optional ``openvino`` package can be imported."""
    return _available("openvino")


def onnxruntime_available() -> bool:
    return _available("onnxruntime")


def pick_runtime(backend: str, device: torch.device, precision: str, model: VDSR | None = None,
                 features: CpuFeatures | None = None) -> str:
    """The runtime that runs the concrete ``precision`` (a recipe, not ``"auto"``) for ``backend``.

    An explicit backend is checked (device, installed, able to run the recipe). ``auto`` takes,
    on CUDA, PyTorch; on a CPU (measured on an AMD EPYC with AVX512_BF16 and VNNI,
    docs/cpu_backends.md; ``features`` default to :func:`vdsr.cpu.cpu_features`):

    * fp32: ONNX Runtime (0.49 s per 384² tile vs 0.97 s for PyTorch channels_last), else
      OpenVINO, else PyTorch;
    * int8, mixed: OpenVINO where it is installed and the CPU has VNNI (1.1x ONNX Runtime on the
      same graph), else ONNX Runtime;
    * bf16, bf16-edge: OpenVINO where it is installed, the CPU computes bf16 natively and the
      body is the plain one (its graph is built layer by layer), else PyTorch;
    * fp16: PyTorch (emulated on CPUs: slow, but exact enough to study).
    """
    if backend not in BACKENDS:
        raise InvalidArgument(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if precision not in PRECISIONS or precision == "auto":
        raise InvalidArgument(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS[1:])}")
    check_tf32_device(precision, device)
    features = features if features is not None else cpu_features()
    if backend != "auto":
        _check_runtime(backend, device, precision, features)
        return backend
    if device.type != "cpu":
        if precision in ("int8", "mixed"):
            raise BackendUnavailable(precision, f"the int8 recipes run on the CPU only, not {device}")
        return "torch"
    if precision == "fp32":
        for runtime in ("onnxruntime", "openvino"):
            if _available(runtime):
                return runtime
        return "torch"
    if precision in ("int8", "mixed"):
        if features.vnni and openvino_available():
            return "openvino"
        if onnxruntime_available():
            return "onnxruntime"
        raise BackendUnavailable(precision, "it needs onnxruntime or openvino installed")
    if precision in ("bf16", "bf16-edge") and features.bf16 and openvino_available() \
            and (model is None or model.config.body == "plain"):
        return "openvino"
    return "torch"


def _check_runtime(runtime: str, device: torch.device, precision: str, features: CpuFeatures) -> None:
    if runtime in ("onnxruntime", "openvino") and device.type != "cpu":
        raise BackendUnavailable(runtime, f"it runs on the CPU only, not {device}")
    if not _available("openvino" if runtime == "openvino" else "onnxruntime" if runtime == "onnxruntime"
                      else "torch"):
        raise BackendUnavailable(runtime, f"{runtime} is not installed (pip install {runtime})")
    if precision not in RUNTIME_RECIPES[runtime]:
        raise InvalidArgument(f"the {runtime} backend does not run {precision}; it runs "
                              f"{', '.join(RUNTIME_RECIPES[runtime])}")
    if runtime == "openvino" and precision in ("bf16", "bf16-edge") and not features.bf16:
        have = ", ".join(features.names()) or "none of avx2, avx512, vnni, bf16, amx"
        raise InvalidArgument(f"{precision} on the openvino backend needs a CPU with AVX512_BF16 or AMX "
                              f"(this one has {have}); use fp32")


def create_backend(model: VDSR, backend: str = "auto", device: str | torch.device = "cpu",
                   precision: str = "fp32", threads: int | None = None) -> Backend:
    """A new backend running ``model`` (its weights as they are now) with a concrete recipe.

    Args:
        model: the network; the torch backends move it to ``device`` and use it as it is.
        backend: ``"auto"`` (:func:`pick_runtime`) or a runtime of :data:`RUNTIME_RECIPES`.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``... (:func:`resolve_device`).
        precision: a recipe of :data:`vdsr.constants.PRECISIONS` other than ``"auto"`` (for
            ``auto``, see :func:`vdsr.recipes.choose`, which checks the recipe for the weights).
        threads: CPU threads for ONNX Runtime (None: its default, all cores) and OpenVINO
            (None: ``torch.get_num_threads()``).
    """
    dev = resolve_device(device)
    runtime = pick_runtime(backend, dev, precision, model)
    if runtime == "openvino":
        from vdsr.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(model, precision, threads)
    if runtime == "onnxruntime":
        from vdsr.backends.ort import OrtBackend

        return OrtBackend(model, threads=threads, kind=precision)
    from vdsr.backends.pytorch import TorchBackend

    return TorchBackend(model, dev, precision, compile=runtime == "compile")
