"""Weights files: one ``.safetensors`` with a JSON metadata header, and importers.

The metadata (safetensors' string-to-string header, key ``"vdsr"``) holds everything needed to
rebuild and use the model without pickling code: the :class:`~vdsr.model.VDSRConfig`, the colour
convention, trained scales, provenance, the training recipe and measured PSNR.

Loading never executes code from a file: safetensors holds raw tensors only, ``.pth`` resume
states go through ``torch.load(weights_only=True)``, and the legacy pickled pytorch-vdsr checkpoints
go through :class:`RestrictedUnpickler`, which admits a fixed list of globals and builds inert
stand-ins for them.
"""

from __future__ import annotations

import io
import json
import pickle
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vdsr.errors import WeightsError
from vdsr.fileio import atomic_path
from vdsr.model import VDSR, VDSRConfig

FORMAT = "vdsr-weights"
FORMAT_VERSION = 1
METADATA_KEY = "vdsr"
DEFAULT_WEIGHTS_NAME = "vdsr_x234.safetensors"
# The convention every model here follows unless its metadata says otherwise.
Y_CONVENTION = "Y of MATLAB rgb2ycbcr (BT.601, Y in [16,235]/255), input = bicubic-upscaled LR in [0,1]"


@dataclass
class WeightsMetadata:
    """What a weights file says about itself. ``extra`` keeps any keys we do not interpret."""

    config: VDSRConfig
    color: str = Y_CONVENTION
    scales: list[int] = field(default_factory=lambda: [2, 3, 4])
    source: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        body: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model": self.config.to_dict(),
            "color": self.color,
            "scales": list(self.scales),
            "source": self.source,
            "recipe": self.recipe,
            "metrics": self.metrics,
        }
        body.update(self.extra)
        return json.dumps(body, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, path: str | Path = "") -> WeightsMetadata:
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{path}: metadata is not valid JSON ({exc.msg})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise WeightsError(f"{path}: metadata does not describe {FORMAT} weights")
        if body.get("format_version") != FORMAT_VERSION:
            raise WeightsError(
                f"{path}: weights format version {body.get('format_version')!r} is not supported"
            )
        try:
            config = VDSRConfig.from_dict(dict(body["model"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise WeightsError(f"{path}: bad model config in metadata ({exc})") from None
        known = {"format", "format_version", "model", "color", "scales", "source", "recipe", "metrics"}
        scales = body.get("scales", [2, 3, 4])
        if not isinstance(scales, list):
            raise WeightsError(f"{path}: metadata 'scales' must be a list")
        return cls(
            config=config,
            color=str(body.get("color", Y_CONVENTION)),
            scales=[int(s) for s in scales],
            source=str(body.get("source", "")),
            recipe=dict(body.get("recipe") or {}),
            metrics=dict(body.get("metrics") or {}),
            extra={k: v for k, v in body.items() if k not in known},
        )


def default_weights_path() -> Path:
    """Path of the model shipped inside the package (it may not exist in a source tree)."""
    return Path(str(resources.files("vdsr") / "weights" / DEFAULT_WEIGHTS_NAME))


def check_state_dict(state: dict[str, torch.Tensor], config: VDSRConfig, path: str | Path) -> None:
    """Raise :class:`WeightsError` unless ``state`` fits a model of ``config`` and is finite."""
    expected = VDSR(config).state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:4]}{'...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected tensors {extra[:4]}{'...' if len(extra) > 4 else ''}")
        raise WeightsError(f"{path}: weights do not match the architecture: {'; '.join(parts)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise WeightsError(
                f"{path}: tensor {name} has shape {tuple(tensor.shape)}, "
                f"the architecture needs {tuple(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise WeightsError(f"{path}: tensor {name} contains NaN or inf values")


def save_weights(
    path: str | Path, state: dict[str, torch.Tensor], metadata: WeightsMetadata
) -> None:
    """Validate and write ``state`` with ``metadata`` to ``path`` atomically."""
    check_state_dict(state, metadata.config, path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: metadata.to_json()})


def record_evaluation(path: str | Path, protocol: str, results: list[dict[str, Any]]) -> None:
    """Store measured test-set results in the weights file's own metadata, atomically.

    They go under ``evaluation[protocol]``, one entry per (dataset, scale): a new measurement of
    a pair replaces the old one, others are kept. The tensors are rewritten unchanged.
    """
    state, metadata = load_weights(path)
    evaluation = metadata.extra.setdefault("evaluation", {})
    if not isinstance(evaluation, dict):
        raise WeightsError(f"{path}: metadata 'evaluation' is not a mapping")
    merged = {(r["dataset"], r["scale"]): r for r in evaluation.get(protocol, [])}
    merged.update({(r["dataset"], r["scale"]): dict(r) for r in results})
    evaluation[protocol] = sorted(merged.values(), key=lambda r: (r["dataset"], r["scale"]))
    save_weights(path, state, metadata)


def read_metadata(path: str | Path) -> WeightsMetadata:
    """Read only the JSON header of a weights file."""
    path = Path(path)
    _check_file(path)
    try:
        with open(path, "rb") as fh:
            raw = fh.read(8)
            if len(raw) < 8:
                raise WeightsError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > 100_000_000:
                raise WeightsError(f"{path}: not a safetensors file (bad header length)")
            header_bytes = fh.read(n)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror})") from None
    if len(header_bytes) < n:
        raise WeightsError(f"{path}: file is truncated")
    try:
        header = json.loads(header_bytes)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise WeightsError(f"{path}: not a safetensors file (unreadable header)") from None
    meta = header.get("__metadata__") or {} if isinstance(header, dict) else {}
    if METADATA_KEY not in meta:
        raise WeightsError(f"{path}: no '{METADATA_KEY}' metadata; convert it with `vdsr convert`")
    return WeightsMetadata.from_json(meta[METADATA_KEY], path)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, not a weights file")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """Load a ``.safetensors`` weights file and its metadata, validated against the architecture."""
    path = Path(path)
    if path.suffix.lower() in (".pth", ".pt", ".pkl", ".mat"):
        raise WeightsError(
            f"{path}: only .safetensors weights are loaded; convert it first with "
            f"`vdsr convert {path} -o {path.with_suffix('.safetensors').name}`"
        )
    metadata = read_metadata(path)
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: corrupt safetensors file ({exc})") from None
    check_state_dict(state, metadata.config, path)
    return state, metadata


def load_model(
    weights: str | Path | None = None, device: str | torch.device = "cpu"
) -> tuple[VDSR, WeightsMetadata]:
    """Build a :class:`VDSR` in eval mode from a weights file (default: the shipped model)."""
    if weights is None:
        weights = default_weights_path()
        if not weights.exists():
            raise WeightsError("no default model is installed; pass a weights file (--weights FILE)")
    state, metadata = load_weights(weights)
    model = VDSR(metadata.config)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, metadata


# ---------------------------------------------------------------------------------------------
# Importers
# ---------------------------------------------------------------------------------------------


def import_matconvnet(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """The VDSR authors' MatConvNet model: ``model.weight{i}`` (3x3xCinxCout), ``model.bias{i}``.

    MATLAB stores kernels as (H, W, Cin, Cout) and drops trailing singleton dimensions; PyTorch
    wants (Cout, Cin, H, W). Both MatConvNet and PyTorch compute cross-correlation, so kernels are
    not flipped.
    """
    import scipy.io

    path = Path(path)
    _check_file(path)
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
        recipe={"trained_by": "the paper's authors", "data": "291 images", "scales": [2, 3, 4]},
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
    def __init__(self, storage: _StorageRef, offset: int, size: tuple, stride: tuple) -> None:
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
    _check_file(path)
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
    path = Path(path)
    try:
        checkpoint = load_resume_state(path)
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
        config=config, scales=list(train.get("scales") or [2, 3, 4]),
        source=f"`vdsr train` checkpoint {path.name} (step {step})",
        recipe={k: v for k, v in train.items() if k not in ("run_dir", "device", "threads", "log_every")}
        | {"trained_steps": step},
    )
    return state, meta


def convert(src: str | Path, dst: str | Path) -> WeightsMetadata:
    """Import ``src``: MatConvNet ``.mat``, a ``vdsr train`` ``checkpoint.pt``, a pytorch-vdsr
    ``.pth`` or our own ``.safetensors``."""
    src = Path(src)
    _check_file(src)
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


def load_resume_state(path: str | Path) -> dict[str, Any]:
    """Load a training resume state written by ``torch.save`` of plain containers, safely."""
    path = Path(path)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsError(f"{path}: no such checkpoint") from None
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"{path}: unreadable or unsafe checkpoint ({first})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: checkpoint is not a dict")
    return state


def weights_summary(metadata: WeightsMetadata) -> dict[str, Any]:
    """Metadata as a JSON-able dict (what ``vdsr info`` prints)."""
    out: dict[str, Any] = json.loads(metadata.to_json())
    model = VDSR(metadata.config)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["receptive_field"] = metadata.config.receptive_field
    return out
