"""Importers for published VDSR weights into our ``.safetensors`` format (:mod:`vdsr.weights`).

Two sources: the authors' MatConvNet ``.mat`` model and pytorch-vdsr's legacy pickled ``.pth``
checkpoints. Importing never executes code from a file: the pickles go through
:class:`RestrictedUnpickler`, which admits a fixed list of globals and builds inert stand-ins
for them.
"""

from __future__ import annotations

import io
import json
import math
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vdsr.constants import DEFAULT_SCALES
from vdsr.errors import WeightsError
from vdsr.extras import need
from vdsr.weights import (
    WeightsMetadata,
    check_file,
    check_shapes,
    load_weights,
    model_config,
    save_weights,
)
from vdsr.weights.mat5 import check_mat5


def _layer_names(depth: int) -> list[str]:
    """The layers of a plain VDSR of ``depth`` layers, named as in its ``state_dict``."""
    return ["input"] + [f"body.{i}" for i in range(depth - 2)] + ["output"]


def import_matconvnet(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """The VDSR authors' MatConvNet model: ``model.weight{i}`` (3x3xCinxCout), ``model.bias{i}``.

    MATLAB stores kernels as (H, W, Cin, Cout) and drops trailing singleton dimensions; PyTorch
    wants (Cout, Cin, H, W). Both MatConvNet and PyTorch compute cross-correlation, so kernels are
    not flipped. Every cell is checked (a real floating-point array of the layer's shape) and the
    model's size against :func:`vdsr.weights.model_config`'s limits before anything is converted.
    """
    scipy_io = need("scipy.io", "matlab")

    path = Path(path)
    check_file(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror})") from None
    if len(data) >= 128 and 0 not in data[:4] and data[126:128] in (b"IM", b"MI") \
            and data[124:126] in (b"\x00\x01", b"\x01\x00"):
        check_mat5(data, path)
    try:
        mat = scipy_io.loadmat(io.BytesIO(data))
        model = mat["model"]
        weights = model["weight"][0, 0].ravel()
        biases = model["bias"][0, 0].ravel()
    except Exception as exc:  # noqa: BLE001 - scipy raises many types on malformed files
        raise WeightsError(f"{path}: not a MatConvNet VDSR model ({exc})") from None
    depth = len(weights)
    if depth < 2 or len(biases) != depth:
        raise WeightsError(f"{path}: expected matching weight/bias cells, got {depth}/{len(biases)}")
    first = _mat_cell(weights[0], "weight{1}", path)
    if not 2 <= first.ndim <= 4:
        raise WeightsError(f"{path}: weight{{1}} has shape {first.shape}, expected 3x3xCinxCout")
    shape = first.shape + (1,) * (4 - first.ndim)  # MATLAB drops trailing singleton dimensions
    config = model_config({"depth": depth, "width": shape[3], "channels": shape[2], "bias": True}, path)
    state: dict[str, torch.Tensor] = {}
    for i, name in enumerate(_layer_names(depth)):
        cin = config.channels if i == 0 else config.width
        cout = config.channels if i == depth - 1 else config.width
        w = _mat_cell(weights[i], f"weight{{{i + 1}}}", path)
        b = _mat_cell(biases[i], f"bias{{{i + 1}}}", path)
        if w.ndim > 4 or w.shape + (1,) * (4 - w.ndim) != (3, 3, cin, cout):
            raise WeightsError(f"{path}: weight{{{i + 1}}} has shape {w.shape}, layer {i + 1} needs "
                               f"{(3, 3, cin, cout)}")
        if b.size != cout or b.ndim > 2:
            raise WeightsError(f"{path}: bias{{{i + 1}}} has shape {b.shape}, layer {i + 1} needs {cout} values")
        w4 = w.astype(np.float32).reshape(3, 3, cin, cout)
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w4.transpose(3, 2, 0, 1)))
        state[f"{name}.bias"] = torch.from_numpy(b.astype(np.float32).reshape(cout))
    meta = WeightsMetadata(
        config=config,
        source=f"official VDSR MatConvNet model (Kim et al., CVPR 2016), imported from {path.name}",
        recipe={"trained_by": "the paper's authors", "data": "291 images", "scales": list(DEFAULT_SCALES)},
    )
    return state, meta


def _mat_cell(cell: object, what: str, path: Path) -> np.ndarray:
    """One cell of the ``.mat`` model: a real floating-point array (not text, a nested cell, a
    struct, integers or complex numbers, which numpy would silently truncate)."""
    if not isinstance(cell, np.ndarray) or cell.dtype.kind not in "fc":
        kind = type(cell).__name__ if not isinstance(cell, np.ndarray) else {
            "U": "text", "S": "text", "O": "a cell array", "V": "a struct"}.get(
            cell.dtype.kind, f"{cell.dtype} numbers")
        raise WeightsError(f"{path}: {what} is {kind}, not an array of floating-point numbers")
    if cell.dtype.kind == "c":
        raise WeightsError(f"{path}: {what} holds complex numbers; weights must be real")
    return cell


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
    """A tensor as the pickle declares it: a view (offset, size, stride) of a storage. Nothing is
    materialised until :meth:`resolve`, after its size has been checked against the model."""

    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]) -> None:
        self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

    def __setstate__(self, state: Any) -> None:
        """Old tensors pickle (requires_grad, hooks) state after the data; nothing to keep."""

    @property
    def numel(self) -> int:
        return math.prod(self.size)

    def resolve(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise WeightsError("tensor refers to storage that the file does not contain")
        if any(s == 0 for s in self.size):
            return np.zeros(self.size, dtype=data.dtype)
        # A view may not hold more elements than its storage: a stride-0 view of one element as a
        # huge tensor would otherwise be materialised here at full size (an overlapping view).
        if self.numel > self.storage.numel:
            raise WeightsError(f"a tensor of shape {self.size} is a view larger than its storage of "
                               f"{self.storage.numel} values")
        need = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=True)) + 1
        if need > data.size:
            raise WeightsError("tensor view exceeds its storage")
        item = data.itemsize
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], shape=self.size, strides=[st * item for st in self.stride]
        )
        return np.array(view)


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *rest: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise pickle.UnpicklingError("tensor without a storage")
    if not (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride) <= 8
            and all(_is_count(v) for v in (offset, *size, *stride))):
        raise pickle.UnpicklingError("a tensor with a bad shape, stride or offset")
    return _TensorRef(storage, offset, size, stride)


def _is_count(value: object) -> bool:
    """A non-negative ``int`` (not ``bool``): what sizes, strides and offsets must be."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


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
            if not _is_count(numel):
                raise pickle.UnpicklingError("a storage with a bad size")
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
        if numel < 0:
            raise WeightsError(f"{path}: storage {key} has a negative size")
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


def _conv(obj: Any, where: str) -> tuple[_TensorRef, _TensorRef | None]:
    state = getattr(obj, "state", None)
    params = state.get("_parameters", {}) if isinstance(state, dict) else {}
    w, b = params.get("weight"), params.get("bias")
    if not isinstance(w, _TensorRef):
        raise WeightsError(f"checkpoint: {where} has no convolution weight")
    return w, (b if isinstance(b, _TensorRef) else None)


def import_pytorch_vdsr(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """A pytorch-vdsr checkpoint (``{"epoch", "model"}`` with a pickled whole ``Net``), safely.

    The model's size (from the first convolution's declared shape) is checked against
    :func:`vdsr.weights.model_config`'s limits and every declared tensor shape against that
    model before any tensor is materialised.
    """
    path = Path(path)
    check_file(path)
    try:
        checkpoint = _legacy_torch_load(path)
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, KeyError, IndexError,
            struct.error, RecursionError) as exc:
        raise WeightsError(f"{path}: refused or unreadable pickle ({exc})") from None
    except (MemoryError, OverflowError):  # a crafted length (BINBYTES8 of 2^60 bytes) in a small file
        raise WeightsError(f"{path}: unreadable pickle (it declares an object larger than memory)") from None
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise WeightsError(f"{path}: not a pytorch-vdsr checkpoint (no 'model' entry)")
    mods = _modules(checkpoint["model"])
    try:
        refs = [_conv(mods["input"], "input")]
        blocks = _modules(mods["residual_layer"])
        for i in sorted(blocks, key=int):
            refs.append(_conv(_modules(blocks[i])["conv"], f"residual_layer.{i}"))
        refs.append(_conv(mods["output"], "output"))
    except KeyError as exc:
        raise WeightsError(f"{path}: checkpoint lacks module {exc}") from None
    except (ValueError, TypeError):
        raise WeightsError(f"{path}: checkpoint's residual_layer has non-numeric block names") from None
    has_bias = all(b is not None for _, b in refs)
    first = refs[0][0].size
    if len(first) != 4:
        raise WeightsError(f"{path}: the input convolution has shape {first}, expected 4 dimensions")
    config = model_config({"depth": len(refs), "width": first[0], "channels": first[1], "bias": has_bias},
                          path)
    names = _layer_names(len(refs))
    declared = {f"{name}.weight": w.size for name, (w, _) in zip(names, refs, strict=True)}
    if has_bias:
        declared |= {f"{name}.bias": b.size for name, (_, b) in zip(names, refs, strict=True) if b is not None}
    check_shapes(declared, config, path)
    state: dict[str, torch.Tensor] = {}
    try:
        for name, (w, b) in zip(names, refs, strict=True):
            state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w.resolve(), dtype=np.float32))
            if has_bias and b is not None:
                state[f"{name}.bias"] = torch.from_numpy(np.ascontiguousarray(b.resolve(), dtype=np.float32))
    except WeightsError as exc:
        raise WeightsError(f"{path}: {exc}") from None
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

    from vdsr.weights.checkpoints import load_checkpoint

    path = Path(path)
    try:
        checkpoint = load_checkpoint(path)
    except Exception:  # noqa: BLE001 - torch's safe unpickler fails in many ways on other pickles
        return None  # not ours: the pytorch-vdsr importer reports what the file is
    if not (isinstance(checkpoint.get("model"), dict) and isinstance(checkpoint.get("config"), str)):
        return None
    try:
        train = json.loads(checkpoint["config"])
    except (ValueError, RecursionError) as exc:
        raise WeightsError(f"{path}: training checkpoint with an unreadable config ({exc})") from None
    if not isinstance(train, dict):
        raise WeightsError(f"{path}: training checkpoint with an unreadable config (not a JSON object)")
    config = model_config({k: train[k] for k in ("depth", "width", "channels", "bias", "body") if k in train},
                          path)
    tensors = checkpoint["model"]
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in tensors.items()):
        raise WeightsError(f"{path}: training checkpoint whose model is not a mapping of tensors")
    # Shapes and dtypes before .contiguous(), which would materialise a stride-0 view at full size.
    check_shapes({k: tuple(v.shape) for k, v in tensors.items()}, config, path)
    for name, tensor in tensors.items():
        if not tensor.is_floating_point():
            raise WeightsError(f"{path}: tensor {name} holds {str(tensor.dtype).removeprefix('torch.')} "
                               "values; weights must be floating point")
    state = {k: v.float().contiguous() for k, v in tensors.items()}
    step = checkpoint.get("step")
    scales = train.get("scales") or list(DEFAULT_SCALES)
    meta = WeightsMetadata(
        config=config, scales=scales if isinstance(scales, list) else [scales],
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
    meta = WeightsMetadata.from_json(meta.to_json(), src)  # what load_weights will check, checked now
    if not str(dst).endswith(".safetensors"):
        raise WeightsError(f"{dst}: the output must be a .safetensors file")
    save_weights(dst, state, meta)
    return meta
