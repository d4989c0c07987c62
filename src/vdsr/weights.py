"""Weights files: one ``.safetensors`` with a JSON metadata header.

The metadata (safetensors' string-to-string header, key ``"vdsr"``) holds everything needed to
rebuild and use the model without pickling code: the :class:`~vdsr.model.VDSRConfig`, the colour
convention, trained scales, provenance, the training recipe and measured PSNR.

Tensor names in the file are the model's ``state_dict`` keys with a ``vdsr.`` prefix
(``vdsr.input.weight``, ``vdsr.body.0.weight``, ...). Unprefixed, ``body.0.weight`` and
``body.1.weight`` are exactly what spandrel (chaiNNer's loader) takes for Real-ESRGAN's
SRVGGNetCompact; with the prefix no spandrel detector matches and it reports the file as
unsupported. Files written before the prefix (unprefixed keys) still load.

Loading never executes code from a file: safetensors holds raw tensors only and ``.pth`` resume
states go through ``torch.load(weights_only=True)``. Other formats (the authors' MatConvNet model,
pytorch-vdsr's pickled checkpoints) are read by :mod:`vdsr.importers`.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vdsr.constants import DEFAULT_SCALES
from vdsr.errors import WeightsError
from vdsr.fileio import atomic_path
from vdsr.model import VDSR, VDSRConfig

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
        scales = body.get("scales", list(DEFAULT_SCALES))
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


def to_file_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's ``state_dict`` named as in a file: every key gets :data:`KEY_PREFIX`."""
    return {KEY_PREFIX + k: v for k, v in state.items()}


def from_file_keys(tensors: dict[str, torch.Tensor], path: str | Path = "") -> dict[str, torch.Tensor]:
    """A file's tensors named as the model's ``state_dict``: strips :data:`KEY_PREFIX`.

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
    """Read only the JSON header of a weights file."""
    path = Path(path)
    check_file(path)
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


def check_file(path: Path) -> None:
    """Raise :class:`WeightsError` unless ``path`` is an existing file."""
    if not path.exists():
        raise WeightsError(f"{path}: no such weights file")
    if path.is_dir():
        raise WeightsError(f"{path}: is a directory, not a weights file")


def load_weights(path: str | Path) -> tuple[dict[str, torch.Tensor], WeightsMetadata]:
    """Load a ``.safetensors`` weights file and its metadata, validated against the architecture.

    The returned state is named as the model's ``state_dict`` (either key layout on disk).
    """
    path = Path(path)
    if path.suffix.lower() in (".pth", ".pt", ".pkl", ".mat"):
        raise WeightsError(
            f"{path}: only .safetensors weights are loaded; convert it first with "
            f"`vdsr convert {path} -o {path.with_suffix('.safetensors').name}`"
        )
    metadata = read_metadata(path)
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
            raise WeightsError("no default model is installed; pass a weights file (--weights FILE)")
    state, metadata = load_weights(weights)
    model = VDSR(metadata.config)
    model.load_state_dict(state)
    model.to(device).eval()
    return model, metadata


def weights_summary(metadata: WeightsMetadata) -> dict[str, Any]:
    """Metadata as a JSON-able dict (what ``vdsr info`` prints)."""
    out: dict[str, Any] = json.loads(metadata.to_json())
    model = VDSR(metadata.config)
    out["parameters"] = sum(p.numel() for p in model.parameters())
    out["receptive_field"] = metadata.config.receptive_field
    return out
