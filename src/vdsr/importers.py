"""Importers for published VDSR weights into our ``.safetensors`` format (:mod:`vdsr.weights`).

Two sources: the authors' MatConvNet ``.mat`` model and pytorch-vdsr's legacy pickled ``.pth``
checkpoints. Importing never executes code from a file: the pickles go through
:class:`RestrictedUnpickler`, which admits a fixed list of globals and builds inert stand-ins
for them.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vdsr.constants import DEFAULT_SCALES
from vdsr.errors import WeightsError
from vdsr.model import VDSRConfig
from vdsr.weights import WeightsMetadata, check_file, load_weights, save_weights


def import_matconvnet(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """The VDSR authors' MatConvNet model: ``model.weight{i}`` (3x3xCinxCout), ``model.bias{i}``.

    MATLAB stores kernels as (H, W, Cin, Cout) and drops trailing singleton dimensions; PyTorch
    wants (Cout, Cin, H, W). Both MatConvNet and PyTorch compute cross-correlation, so kernels are
    not flipped.
    """
    import scipy.io

    path = Path(path)
    check_file(path)
    try:
        mat = scipy.io.loadmat(str(path))
        model = mat["model"]
        weights = model["weight"][0, 0].ravel()
        biases = model["bias"][0, 0].ravel()
    except Exception as exc:  # noqa: BLE001 - scipy raises many types on malformed files
        raise WeightsError(f"{path}: not a MatConvNet VDSR model ({exc})") from None
    depth = len(weights)
    if depth < 2 or len(biases) != depth:
        raise WeightsError(f"{path}: expected matching weight/bias cells, got {depth}/{len(biases)}")
    first = np.asarray(weights[0])
    width = first.shape[3] if first.ndim == 4 else 1
    channels = first.shape[2] if first.ndim >= 3 else 1
    config = VDSRConfig(depth=depth, width=width, channels=channels, bias=True)
    names = ["input"] + [f"body.{i}" for i in range(depth - 2)] + ["output"]
    state: dict[str, torch.Tensor] = {}
    for i, name in enumerate(names):
        cin = channels if i == 0 else width
        cout = channels if i == depth - 1 else width
        w = np.asarray(weights[i], dtype=np.float32).reshape(3, 3, cin, cout)
        b = np.asarray(biases[i], dtype=np.float32).reshape(cout)
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        state[f"{name}.bias"] = torch.from_numpy(b.copy())
    meta = WeightsMetadata(
        config=config,
        source=f"official VDSR MatConvNet model (Kim et al., CVPR 2016), imported from {path.name}",
        recipe={"trained_by": "the paper's authors", "data": "291 images", "scales": list(DEFAULT_SCALES)},
    )
    return state, meta


class _Stub:
    """Inert stand-in for an allowed class: records the pickled state, runs nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.args = args

    def __setstate__(self, state: Any) -> None:
        self.state = state


class _StorageType:
    def __init__(self, name: str, dtype: np.dtype) -> None:
        self.name = name
        self.dtype = dtype


class _StorageRef:
    def __init__(self, key: str, dtype: np.dtype, numel: int) -> None:
        self.key, self.dtype, self.numel = key, dtype, numel
        self.data: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __setstate__(self, state: Any) -> None:
        """Old tensors pickle (requires_grad, hooks) state after the data; nothing to keep."""

    def resolve(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError("tensor refers to storage that the file does not contain")
        need = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=True)) + 1
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        if need > data.size or self.offset < 0 or any(st < 0 for st in self.stride):
            raise WeightsError("tensor view exceeds its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[st * item for st in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _parameter(data: Any = None, requires_grad: Any = True, *rest: Any) -> Any:
    return data


class _Sentinel:
    """Stands for a function that old checkpoints reference but never call."""


_STORAGE_DTYPES: dict[str, np.dtype] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler for pytorch-vdsr checkpoints that admits only known, inert globals.

    Every admitted global maps to a harmless stand-in defined here (the real ``vdsr.Net`` is
    never imported). Anything else, ``os.system``, ``builtins.eval``, ``subprocess.Popen`` or any
    other callable a malicious ``__reduce__`` would name, is refused before it can run.
    """

    ALLOWED: dict[tuple[str, str], Any] = {
        ("vdsr", "Net"): type("Net", (_Stub,), {}),
        ("vdsr", "Conv_ReLU_Block"): type("Conv_ReLU_Block", (_Stub,), {}),
        ("torch.nn.modules.conv", "Conv2d"): type("Conv2d", (_Stub,), {}),
        ("torch.nn.modules.container", "Sequential"): type("Sequential", (_Stub,), {}),
        ("torch.nn.modules.activation", "ReLU"): type("ReLU", (_Stub,), {}),
        ("torch.nn.parameter", "Parameter"): _parameter,
        ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _parameter,
        ("collections", "OrderedDict"): dict,
        ("torch.nn.backends.thnn", "_get_thnn_function_backend"): _Sentinel,
    }

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file, encoding="utf-8", errors="replace")
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name, _STORAGE_DTYPES[name])
        try:
            return self.ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refused global {module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid:
            raise pickle.UnpicklingError("unexpected persistent id")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            return pid[1]
        if kind == "storage":
            storage_type, key, _location, numel, view = pid[1:6]
            if not isinstance(storage_type, _StorageType) or view is not None:
                raise pickle.UnpicklingError("unsupported storage in checkpoint")
            key = str(key)
            if key not in self.storages:
                self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
            return self.storages[key]
        raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")


def _legacy_torch_load(path: Path) -> Any:
    """Read PyTorch's legacy (pre-zip, pre-1.6) serialization with :class:`RestrictedUnpickler`."""
    data = path.read_bytes()
    f = io.BytesIO(data)
    if data[:2] == b"PK":
        raise WeightsError(
            f"{path}: a zip-format PyTorch file; only legacy pytorch-vdsr checkpoints are imported"
        )
    header = RestrictedUnpickler(f)
    magic = header.load()
    if magic != 0x1950A86A20F9469CFC6C:
        raise WeightsError(f"{path}: not a PyTorch legacy checkpoint (bad magic number)")
    header.load()  # protocol version
    header.load()  # sys info
    unpickler = RestrictedUnpickler(f)
    result = unpickler.load()
    keys = RestrictedUnpickler(f).load()
    for key in keys:
        ref = unpickler.storages.get(str(key))
        if ref is None:
            raise WeightsError(f"{path}: storage {key} listed but never used")
        raw = f.read(8)
        if len(raw) < 8:
            raise WeightsError(f"{path}: file is truncated")
        (numel,) = struct.unpack("<q", raw)
        nbytes = numel * ref.dtype.itemsize
        buf = f.read(nbytes)
        if numel != ref.numel or len(buf) < nbytes:
            raise WeightsError(f"{path}: file is truncated or its storage sizes disagree")
        ref.data = np.frombuffer(buf, dtype=ref.dtype)
    return result


def _modules(obj: Any) -> dict[str, Any]:
    state = getattr(obj, "state", None)
    if not isinstance(state, dict):
        raise WeightsError("checkpoint model has no module state")
    mods = state.get("_modules", {})
    return mods if isinstance(mods, dict) else {}


def _conv(obj: Any, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    state = getattr(obj, "state", None)
    params = state.get("_parameters", {}) if isinstance(state, dict) else {}
    w, b = params.get("weight"), params.get("bias")
    if not isinstance(w, _TensorRef):
        raise WeightsError(f"checkpoint: {where} has no convolution weight")
    return w.resolve(), (b.resolve() if isinstance(b, _TensorRef) else None)


def import_pytorch_vdsr(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """A pytorch-vdsr checkpoint (``{"epoch", "model"}`` with a pickled whole ``Net``), safely."""
    path = Path(path)
    check_file(path)
    try:
        checkpoint = _legacy_torch_load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, struct.error) as exc:
        raise WeightsError(f"{path}: refused or unreadable pickle ({exc})") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise WeightsError(f"{path}: not a pytorch-vdsr checkpoint (no 'model' entry)")
    mods = _modules(checkpoint["model"])
    try:
        convs = [_conv(mods["input"], "input")]
        blocks = _modules(mods["residual_layer"])
        for i in sorted(blocks, key=int):
            convs.append(_conv(_modules(blocks[i])["conv"], f"residual_layer.{i}"))
        convs.append(_conv(mods["output"], "output"))
    except KeyError as exc:
        raise WeightsError(f"{path}: checkpoint lacks module {exc}") from None
    has_bias = all(b is not None for _, b in convs)
    channels, width = convs[0][0].shape[1], convs[0][0].shape[0]
    config = VDSRConfig(depth=len(convs), width=width, channels=channels, bias=has_bias)
    names = ["input"] + [f"body.{i}" for i in range(len(convs) - 2)] + ["output"]
    state: dict[str, torch.Tensor] = {}
    for name, (w, b) in zip(names, convs, strict=True):
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))
        if has_bias and b is not None:
            state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    epoch = checkpoint.get("epoch")
    meta = WeightsMetadata(
        config=config,
        source=f"pytorch-vdsr checkpoint {path.name} (epoch {epoch}), imported with a restricted unpickler",
        recipe={"trained_by": "pytorch-vdsr (twtygqyy)", "epoch": epoch if isinstance(epoch, int) else None},
    )
    return state, meta


def import_training_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata] | None:
    """The model in a ``vdsr train`` ``checkpoint.pt``, or ``None`` if ``path`` is not one.

    Our checkpoints are plain containers (loaded with ``weights_only=True``) holding the model's
    ``state_dict`` under ``"model"`` and the training config as JSON under ``"config"``.
    """
    import json

    from vdsr.train.runfolder import load_checkpoint

    path = Path(path)
    try:
        checkpoint = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - torch's safe unpickler fails in many ways on other pickles
        return None  # not ours: the pytorch-vdsr importer reports what the file is
    if not (isinstance(checkpoint.get("model"), dict) and isinstance(checkpoint.get("config"), str)):
        return None
    try:
        train = json.loads(checkpoint["config"])
        config = VDSRConfig(**{k: train[k] for k in ("depth", "width", "channels", "bias", "body") if k in train})
    except (ValueError, TypeError) as exc:
        raise WeightsError(f"{path}: training checkpoint with an unreadable config ({exc})") from None
    state = {k: v.float().contiguous() for k, v in checkpoint["model"].items()}
    step = checkpoint.get("step")
    meta = WeightsMetadata(
        config=config, scales=list(train.get("scales") or DEFAULT_SCALES),
        source=f"`vdsr train` checkpoint {path.name} (step {step})",
        recipe={k: v for k, v in train.items() if k not in ("run_dir", "device", "threads", "log_every")}
        | {"trained_steps": step},
    )
    return state, meta


def convert(src: str | Path, dst: str | Path) -> WeightsMetadata:
    """Import ``src``: MatConvNet ``.mat``, a ``vdsr train`` ``checkpoint.pt``, a pytorch-vdsr
    ``.pth`` or our own ``.safetensors``."""
    src = Path(src)
    check_file(src)
    suffix = src.suffix.lower()
    if suffix == ".mat":
        state, meta = import_matconvnet(src)
    elif suffix in (".pth", ".pt", ".pkl"):
        state, meta = import_training_checkpoint(src) or import_pytorch_vdsr(src)
    elif suffix == ".safetensors":
        state, meta = load_weights(src)
    else:
        raise WeightsError(f"{src}: unknown weights format '{suffix}' (expected .mat, .pth or .safetensors)")
    if not str(dst).endswith(".safetensors"):
        raise WeightsError(f"{dst}: the output must be a .safetensors file")
    save_weights(dst, state, meta)
    return meta
