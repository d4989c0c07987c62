"""Weights files: one ``.safetensors`` with a JSON metadata header.

The metadata (safetensors' string-to-string header, key ``"vdsr"``) holds everything needed to
rebuild and use the model without pickling code: the :class:`~vdsr.nn.model.VDSRConfig`, the colour
convention, trained scales, provenance, the training recipe and measured PSNR.

Tensor names in the file are the model's ``state_dict`` keys with a ``vdsr.`` prefix
(``vdsr.input.weight``, ``vdsr.body.0.weight``, ...). Unprefixed, ``body.0.weight`` and
``body.1.weight`` are exactly what spandrel (chaiNNer's loader) takes for Real-ESRGAN's
SRVGGNetCompact; with the prefix no spandrel detector matches and it reports the file as
unsupported. Files written before the prefix (unprefixed keys) still load.

Loading never executes code from a file: safetensors holds raw tensors only and ``.pth`` resume
states go through ``torch.load(weights_only=True)``. Other formats (the authors' MatConvNet model,
pytorch-vdsr's pickled checkpoints) are read by :mod:`vdsr.weights.importers`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vdsr.constants import BODIES, DEFAULT_SCALES, MAX_SCALE
from vdsr.errors import InvalidArgument, NoDefaultModel, NotSafetensors, WeightsError
from vdsr.io.fileio import atomic_path
from vdsr.nn.model import VDSR, VDSRConfig, build_body

T = TypeVar("T")

FORMAT = "vdsr-weights"
FORMAT_VERSION = 1
METADATA_KEY = "vdsr"
DEFAULT_WEIGHTS_NAME = "vdsr_x234.safetensors"
# Prefix of every tensor name in a file (not in the model: attribute names never change).
# spandrel strips only "module." and "netG." and unwraps "model"/"net"/"params"... dicts, so
# "vdsr." survives its canonicalisation and no architecture detector recognises our keys.
KEY_PREFIX = "vdsr."
# The convention every model here follows unless its metadata says otherwise.
Y_CONVENTION = "Y of MATLAB rgb2ycbcr (BT.601, Y in [16,235]/255), input = bicubic-upscaled LR in [0,1]"

# What a file may declare, checked before anything is allocated: a crafted header must not make
# us build a 3.6 PB model (width 10^7) or spend minutes on a depth-10000 one. The limits are far
# beyond any VDSR (the paper: depth 20, width 64) and keep a model's memory bounded by its file.
MAX_DEPTH = 512  # receptive field 1025 pixels
MAX_WIDTH = 1024  # one 1024x1024 3x3 layer is 38 MB
MODEL_CHANNELS = (1, 3)  # Y or RGB: what images have
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit for the JSON header
MAX_NESTING = 32  # of the metadata JSON (ours is 4 deep); deeper is refused, not recursed into
MAX_TRAINED_SCALES = 16
# safetensors dtype names of the floating-point types weights may hold, with their sizes; integer
# and bool tensors would be accepted by torch's copy_ and give an all-black image.
FLOAT_DTYPES: dict[str, int] = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8}
_EVALUATION_FIELDS: dict[str, tuple[type, ...]] = {
    "dataset": (str,), "scale": (int, float), "psnr": (int, float), "ssim": (int, float),
    "bicubic_psnr": (int, float), "bicubic_ssim": (int, float), "images": (int,)}


@dataclass
class WeightsMetadata:
    """What a weights file says about itself. ``extra`` keeps any keys we do not interpret."""

    config: VDSRConfig
    color: str = Y_CONVENTION
    scales: list[int] = field(default_factory=lambda: list(DEFAULT_SCALES))
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
        """Parse and validate the metadata JSON: every known key's type and range is checked
        (a crafted file gets a :class:`WeightsError` naming the key, never a TypeError)."""
        try:
            body = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WeightsError(f"{path}: metadata is not valid JSON ({exc.msg})") from None
        except (RecursionError, ValueError):  # nesting beyond Python's stack; a 5000-digit number
            raise WeightsError(f"{path}: metadata is not valid JSON (nested too deeply or a number "
                               "too long)") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT:
            raise WeightsError(f"{path}: metadata does not describe {FORMAT} weights")
        version = body.get("format_version")
        if not _is_int(version) or version != FORMAT_VERSION:
            raise WeightsError(f"{path}: weights format version {_short(version)} is not supported")
        _check_nesting(body, path)
        if "model" not in body:
            raise WeightsError(f"{path}: metadata has no model config ('model')")
        config = model_config(body["model"], path)
        scales = body.get("scales", list(DEFAULT_SCALES))
        if isinstance(scales, list):  # 2.0 is 2 (a JSON writer's float), 2.5 is not
            scales = [int(s) if isinstance(s, float) and s.is_integer() else s for s in scales]
        if (not isinstance(scales, list) or not 1 <= len(scales) <= MAX_TRAINED_SCALES
                or not all(_is_int(s) and 2 <= s <= MAX_SCALE for s in scales)):
            raise WeightsError(f"{path}: metadata 'scales' must be a list of 1 to {MAX_TRAINED_SCALES} "
                               f"integers from 2 to {MAX_SCALE:g}, got {_short(scales)}")
        fields: dict[str, Any] = {}
        for key, kind, default in (("color", str, Y_CONVENTION), ("source", str, ""),
                                   ("recipe", dict, None), ("metrics", dict, None)):
            value = body.get(key, default)
            if value is None and kind is dict:
                value = {}
            if not isinstance(value, kind):
                raise WeightsError(f"{path}: metadata {key!r} must be a JSON "
                                   f"{'string' if kind is str else 'object'}, got {_json_kind(value)}")
            fields[key] = value
        known = {"format", "format_version", "model", "color", "scales", "source", "recipe", "metrics"}
        extra = {k: v for k, v in body.items() if k not in known}
        if "evaluation" in extra:
            _check_evaluation(extra["evaluation"], path)
        return cls(config=config, scales=list(scales), extra=extra, **fields)


def _is_int(value: object) -> bool:
    """A JSON integer: ``int`` but not ``bool`` (``true`` is not a depth)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _short(value: object, limit: int = 40) -> str:
    """``repr(value)`` cut to ``limit`` characters: crafted values go into one-line messages."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _name(value: object) -> str:
    """A name from a file as it is when it is short and printable, else :func:`_short`'s repr."""
    if isinstance(value, str) and value.isprintable() and len(value) <= 60 and value.strip() == value:
        return value
    return _short(value)


def _json_kind(value: object) -> str:
    for kind, name in ((bool, "a boolean"), (str, "a string"), (dict, "an object"), (list, "an array"),
                       (int, "a number"), (float, "a number")):
        if isinstance(value, kind):
            return name
    return "null" if value is None else type(value).__name__


def _check_nesting(body: object, path: str | Path) -> None:
    """Refuse JSON nested deeper than :data:`MAX_NESTING` (walked without recursion)."""
    stack: list[tuple[object, int]] = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_NESTING:
            raise WeightsError(f"{path}: metadata is nested more than {MAX_NESTING} levels deep")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children)


def _check_evaluation(evaluation: object, path: str | Path) -> None:
    """``evaluation`` as :func:`record_evaluation` writes it: protocol -> list of result objects."""
    if not isinstance(evaluation, dict):
        raise WeightsError(f"{path}: metadata 'evaluation' must be a JSON object, got "
                           f"{_json_kind(evaluation)}")
    for protocol, results in evaluation.items():
        if not isinstance(results, list):
            raise WeightsError(f"{path}: metadata evaluation[{protocol!r}] must be a list of results")
        for r in results:
            if not isinstance(r, dict) or not all(
                    isinstance(r.get(k), kinds) and not isinstance(r.get(k), bool)
                    for k, kinds in _EVALUATION_FIELDS.items()):
                raise WeightsError(f"{path}: metadata evaluation[{protocol!r}] has a result without "
                                   f"{', '.join(_EVALUATION_FIELDS)}: {_short(r)}")


def model_config(data: object, path: str | Path = "") -> VDSRConfig:
    """A :class:`VDSRConfig` from the mapping a file declares, checked before anything is built.

    Types are exact (``20.5``, ``"20"`` or ``true`` is not a depth) and sizes are bounded
    (:data:`MAX_DEPTH`, :data:`MAX_WIDTH`, :data:`MODEL_CHANNELS`), so a crafted file cannot make
    us allocate a huge model. Raises :class:`WeightsError` naming ``path`` and the key.
    """
    if not isinstance(data, dict):
        raise WeightsError(f"{path}: the model config must be a mapping, got {_json_kind(data)}")
    unknown = sorted(set(data) - set(VDSRConfig.__dataclass_fields__))
    if unknown:
        raise WeightsError(f"{path}: unknown model config keys {_short(unknown, 80)}")
    for key, lo, hi in (("depth", 2, MAX_DEPTH), ("width", 1, MAX_WIDTH)):
        if key in data and not (_is_int(data[key]) and lo <= data[key] <= hi):
            raise WeightsError(f"{path}: model {key} must be an integer from {lo} to {hi}, "
                               f"got {_short(data[key])}")
    if "channels" in data and not (_is_int(data["channels"]) and data["channels"] in MODEL_CHANNELS):
        raise WeightsError(f"{path}: model channels must be 1 (Y) or 3 (RGB), got {_short(data['channels'])}")
    if "bias" in data and not isinstance(data["bias"], bool):
        raise WeightsError(f"{path}: model bias must be true or false, got {_short(data['bias'])}")
    if "body" in data and data["body"] not in BODIES:
        raise WeightsError(f"{path}: model body must be one of {', '.join(BODIES)}, got {_short(data['body'])}")
    try:
        config = VDSRConfig(**data)
        expected_shapes(config)  # the body's own rules (a residual body needs an even depth)
    except InvalidArgument as exc:
        raise WeightsError(f"{path}: bad model config ({exc})") from None
    return config


@functools.lru_cache(maxsize=16)
def expected_shapes(config: VDSRConfig) -> Mapping[str, tuple[int, ...]]:
    """The ``state_dict`` key -> shape of a model of ``config``, built on torch's meta device
    (no memory). Read-only: it is cached.

    The layers come from :func:`~vdsr.nn.model.build_body` under :class:`VDSR`'s attribute names
    (``tests/test_weights.py`` checks they equal the model's own): ``VDSR()`` on the meta device
    would initialise them through torch's reference ops, whose first use imports torch._dynamo
    (0.8 s).
    """
    with torch.device("meta"):
        layers = torch.nn.ModuleDict(dict(zip(("input", "body", "output"), build_body(config), strict=True)))
    return {k: tuple(v.shape) for k, v in layers.state_dict().items()}


def default_weights_path() -> Path:
    """Path of the model shipped inside the package (it may not exist in a source tree)."""
    return Path(str(resources.files("vdsr") / "weights" / DEFAULT_WEIGHTS_NAME))


def check_shapes(shapes: Mapping[str, tuple[int, ...]], config: VDSRConfig, path: str | Path) -> None:
    """Raise :class:`WeightsError` unless tensors of these names and shapes fit a model of ``config``.

    Needs only the shapes, so a file's header is checked before its tensors are read.
    """
    expected = expected_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    extra = sorted(set(shapes) - set(expected))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:4]}{'...' if len(missing) > 4 else ''}")
        if extra:
            parts.append(f"unexpected tensors {_short(extra[:4], 120)}{'...' if len(extra) > 4 else ''}")
        raise WeightsError(f"{path}: weights do not match the architecture: {'; '.join(parts)}")
    for name, shape in shapes.items():
        if tuple(shape) != expected[name]:
            raise WeightsError(
                f"{path}: tensor {name} has shape {_short(tuple(shape), 60)}, "
                f"the architecture needs {expected[name]}"
            )


def check_state_dict(state: dict[str, torch.Tensor], config: VDSRConfig, path: str | Path) -> None:
    """Raise :class:`WeightsError` unless ``state`` fits a model of ``config``, is floating point
    and is finite."""
    check_shapes({k: tuple(v.shape) for k, v in state.items()}, config, path)
    for name, tensor in state.items():
        if not tensor.is_floating_point():
            raise WeightsError(f"{path}: tensor {name} holds {str(tensor.dtype).removeprefix('torch.')} "
                               "values; weights must be floating point")
        if not torch.isfinite(tensor).all():
            raise WeightsError(f"{path}: tensor {name} contains NaN or inf values")


def to_file_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` named as in a file: every key gets :data:`KEY_PREFIX`."""
    return {KEY_PREFIX + k: v for k, v in state.items()}


def from_file_keys(tensors: Mapping[str, T], path: str | Path = "") -> dict[str, T]:
    """A file's tensors (or their shapes) named as the model's ``state_dict``: strips :data:`KEY_PREFIX`.

    Files written before the prefix existed have no prefixed key and pass unchanged; a file
    that mixes both layouts is refused.
    """
    prefixed = [k.startswith(KEY_PREFIX) for k in tensors]
    if all(prefixed):
        return {k[len(KEY_PREFIX):]: v for k, v in tensors.items()}
    if any(prefixed):
        raise WeightsError(f"{path}: tensor names mix the '{KEY_PREFIX}' layout and the old one")
    return dict(tensors)


def save_weights(
    path: str | Path, state: dict[str, torch.Tensor], metadata: WeightsMetadata
) -> None:
    """Validate and write ``state`` (a model ``state_dict``) with ``metadata`` to ``path`` atomically.

    Tensors are stored as float32 under the names of :func:`to_file_keys`.
    """
    check_state_dict(state, metadata.config, path)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous()
               for k, v in to_file_keys(state).items()}
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
    """Read and validate a weights file's header: its metadata, and the names, shapes and dtypes
    of its tensors against the model the metadata describes. No tensor data is read."""
    return _read_header(Path(path))[0]


def _read_header(path: Path) -> tuple[WeightsMetadata, dict[str, tuple[int, ...]]]:
    """``(metadata, state_dict key -> shape)`` from a safetensors header, read by us with a size
    limit (8-byte little-endian length, then that much JSON) and checked entry by entry.
    Raises :class:`~vdsr.errors.NotSafetensors` for the formats :mod:`vdsr.weights.importers` reads."""
    check_file(path)
    if path.suffix.lower() in (".pth", ".pt", ".pkl", ".mat"):
        raise NotSafetensors(str(path), path.suffix.lower())
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            raw = fh.read(8)
            if len(raw) < 8:
                raise WeightsError(f"{path}: not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", raw)
            if n > MAX_HEADER_BYTES:
                raise WeightsError(f"{path}: not a safetensors file (bad header length)")
            header_bytes = fh.read(n)
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read ({exc.strerror})") from None
    if len(header_bytes) < n:
        raise WeightsError(f"{path}: file is truncated")
    try:
        header = json.loads(header_bytes)
    except RecursionError:
        raise WeightsError(f"{path}: not a safetensors file (header nested too deeply)") from None
    except ValueError:  # bad JSON or UTF-8, a number of thousands of digits
        raise WeightsError(f"{path}: not a safetensors file (unreadable header)") from None
    if not isinstance(header, dict):
        raise WeightsError(f"{path}: not a safetensors file (the header is not a JSON object)")
    meta = header.get("__metadata__", {})
    if not isinstance(meta, dict):
        raise WeightsError(f"{path}: not a safetensors file ('__metadata__' is {_json_kind(meta)}, "
                           "not an object of strings)")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise WeightsError(f"{path}: not a safetensors file ('__metadata__' entry {_short(key)} is "
                               f"{_json_kind(value)}, not a string)")
    if METADATA_KEY not in meta:
        raise WeightsError(f"{path}: no '{METADATA_KEY}' metadata: not a vdsr weights file")
    metadata = WeightsMetadata.from_json(meta[METADATA_KEY], path)
    shapes = _tensor_shapes(header, size - 8 - n, path)
    check_shapes(from_file_keys(shapes, path), metadata.config, path)
    return metadata, shapes


def _tensor_shapes(header: dict[str, Any], data_size: int, path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a safetensors header declares, each entry checked: a
    floating-point dtype, a shape of non-negative integers, data inside the file and of the
    shape's size."""
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise WeightsError(f"{path}: not a safetensors file (bad entry for tensor {_name(name)})")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in FLOAT_DTYPES:
            raise WeightsError(f"{path}: tensor {_name(name)} holds {_name(dtype)} values; weights must "
                               f"be floating point ({', '.join(FLOAT_DTYPES)})")
        if not (isinstance(shape, list) and len(shape) <= 8 and all(_is_int(d) and d >= 0 for d in shape)):
            raise WeightsError(f"{path}: tensor {_name(name)} has a bad shape {_short(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)
                and 0 <= offsets[0] <= offsets[1]):
            raise WeightsError(f"{path}: tensor {_name(name)} has bad data offsets {_short(offsets)}")
        if offsets[1] > data_size:
            raise WeightsError(f"{path}: file is truncated (tensor {_name(name)} ends past its end)")
        if offsets[1] - offsets[0] != math.prod(shape) * FLOAT_DTYPES[dtype]:
            raise WeightsError(f"{path}: tensor {_name(name)}'s data size does not match its shape")
        shapes[name] = tuple(shape)
    return shapes


def check_file(path: Path) -> None:
    """Raise :class:`WeightsError` unless ``path`` is an existing file."""
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, not a weights file")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """Load a ``.safetensors`` weights file and its metadata, validated against the architecture.

    The header (metadata, tensor names, shapes, dtypes) is validated before any tensor is read.
    The returned state is named as the model's ``state_dict`` (either key layout on disk).
    Raises :class:`~vdsr.errors.NotSafetensors` for the formats :mod:`vdsr.weights.importers` reads.
    """
    metadata, _ = _read_header(Path(path))
    try:
        state = from_file_keys(load_file(str(path)), path)
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
            raise NoDefaultModel(str(weights))
    state, metadata = load_weights(weights)
    model = VDSR(metadata.config)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, metadata


def weights_summary(metadata: WeightsMetadata) -> dict[str, Any]:
    """Metadata as a JSON-able dict (what ``vdsr info`` prints)."""
    out: dict[str, Any] = json.loads(metadata.to_json())
    out["parameters"] = sum(math.prod(shape) for shape in expected_shapes(metadata.config).values())
    out["receptive_field"] = metadata.config.receptive_field
    return out


def describe(path: Path, info: dict[str, Any]) -> str:
    """A weights file's metadata (:func:`weights_summary`) as a short readable summary.

    Free-form recipe values of unexpected types are shown as they are, never formatted as numbers.
    """
    model, recipe = info.get("model", {}), info.get("recipe") or {}
    channels = model.get("channels", 1)
    lines = [f"{path.name} ({info.get('format', '?')} v{info.get('format_version', '?')})"]

    def row(label: str, text: str) -> None:
        lines.append(f"  {label:<11} {text}")

    def count(value: Any) -> str:
        return f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value)

    row("model", f"{model.get('body', 'plain')} VDSR, {model.get('depth')} layers of width {model.get('width')}, "
                 f"{'with' if model.get('bias') else 'no'} biases, {channels} channel"
                 f"{' (Y)' if channels == 1 else 's (RGB)'}; {count(info.get('parameters', 0))} parameters, "
                 f"receptive field {info.get('receptive_field')}x{info.get('receptive_field')}")
    row("scales", "trained for " + ", ".join(f"x{s}" for s in info.get("scales", [])))
    row("source", str(info.get("source", "")))
    if recipe.get("optimizer"):
        dirs = recipe.get("train_dirs")
        data = (", ".join(Path(d).name for d in dirs if isinstance(d, str)) if isinstance(dirs, list) else "") \
            or recipe.get("h5") or "?"
        steps = recipe.get("trained_steps") or recipe.get("steps") or 0
        row("training", f"{recipe['optimizer']}, learning rate {recipe.get('learning_rate')} "
                        f"({recipe.get('schedule')}), batch {recipe.get('batch_size')}, patch "
                        f"{recipe.get('patch')}, {count(steps)} steps on {data}")
    metrics = info.get("metrics") or {}
    per_scale = [(k.removeprefix("val_psnr_"), v) for k, v in metrics.items()
                 if k.startswith("val_psnr_x") and isinstance(v, float)]
    if per_scale:
        row("validation", f"{metrics.get('validation') or '?'} Y-PSNR " + ", ".join(f"{s} {v:.2f}" for s, v in per_scale)
            + " dB")
    for protocol, results in (info.get("evaluation") or {}).items():
        lines.append(f"  evaluation ({protocol}): Y-PSNR/SSIM, model (bicubic)")
        for r in results:
            lines.append(f"    {r['dataset']:<8} x{r['scale']}  {r['psnr']:.2f}/{r['ssim']:.4f}  "
                         f"({r['bicubic_psnr']:.2f}/{r['bicubic_ssim']:.4f})  {r['images']} images")
    row("colour", str(info.get("color", "")))
    return "\n".join(lines)
