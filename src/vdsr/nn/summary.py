"""A Keras-style model summary for PyTorch modules: layer (type), output shape, param #,
connected to, and the totals Keras prints (BatchNorm running statistics are non-trainable params,
as Keras counts its moving mean and variance).

It traces one forward pass with hooks on the leaf layers. ReLUs are folded into the layer before
them (Keras's ``Conv2D(activation='relu')``), and names follow Keras's ``conv2d_1``,
``batch_normalization_1``... numbering in execution order. Shapes are shown channels-last,
``(None, H, W, C)``, as in the notes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from vdsr.nn.inception_example import inception_example_model
from vdsr.nn.layers import Add, Concat

if TYPE_CHECKING:
    from vdsr.nn.model import VDSRConfig

KERAS_NAMES: dict[type, tuple[str, str]] = {
    nn.Conv2d: ("conv2d", "Conv2D"),
    nn.BatchNorm2d: ("batch_normalization", "BatchNormalization"),
    nn.MaxPool2d: ("max_pooling2d", "MaxPooling2D"),
    Concat: ("concatenate", "Concatenate"),
    Add: ("add", "Add"),
}


@dataclass
class Layer:
    name: str
    kind: str
    shape: tuple[int | None, ...]
    params: int
    inputs: list[str] = field(default_factory=list)


@dataclass
class Summary:
    layers: list[Layer]
    total: int
    trainable: int
    non_trainable: int

    def format(self, title: str = "") -> str:
        w = (32, 21, 12)
        rule = "_" * 98
        lines = [f'Model: "{title}"'] if title else []
        lines += [rule, f"{'Layer (type)':<{w[0]}}{'Output Shape':<{w[1]}}{'Param #':<{w[2]}}Connected to",
                  "=" * 98]
        for i, layer in enumerate(self.layers):
            head = f"{layer.name} ({layer.kind})"
            shape = "(" + ", ".join("None" if s is None else str(s) for s in layer.shape) + ")"
            first = layer.inputs[0] + "[0][0]" if layer.inputs else ""
            # Keras cuts each column one character short of its width.
            lines.append(f"{head[: w[0] - 1]:<{w[0]}}{shape[: w[1] - 1]:<{w[1]}}"
                         f"{layer.params:<{w[2]}}{first}".rstrip())
            for more in layer.inputs[1:]:
                lines.append(" " * sum(w) + more + "[0][0]")
            lines.append("=" * 98 if i == len(self.layers) - 1 else rule)
        lines += [f"Total params: {self.total:,}", f"Trainable params: {self.trainable:,}",
                  f"Non-trainable params: {self.non_trainable:,}", rule]
        return "\n".join(lines)


def _own_params(module: nn.Module) -> tuple[int, int]:
    trainable = sum(p.numel() for p in module.parameters(recurse=False) if p.requires_grad)
    frozen = sum(p.numel() for p in module.parameters(recurse=False) if not p.requires_grad)
    frozen += sum(b.numel() for n, b in module.named_buffers(recurse=False) if n != "num_batches_tracked")
    return trainable, frozen


def summarize(model: nn.Module, input_shape: tuple[int, int, int]) -> Summary:
    """Trace ``model`` on one ``(H, W, C)`` input and return its Keras-style :class:`Summary`."""
    h, w, c = input_shape
    x = torch.zeros(1, c, h, w)
    producer: dict[int, str] = {id(x): "input_1"}
    layers = [Layer("input_1", "InputLayer", (None, h, w, c), 0)]
    counters: dict[str, int] = {}
    keep_alive: list[torch.Tensor] = [x]

    def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        sources = [producer.get(id(t), "?") for t in inputs if isinstance(t, torch.Tensor)]
        keep_alive.append(output)
        if isinstance(module, nn.ReLU):  # folded into the previous layer, as Keras's activation=
            producer[id(output)] = sources[0] if sources else "?"
            return
        base, kind = KERAS_NAMES.get(type(module), (type(module).__name__.lower(), type(module).__name__))
        counters[base] = counters.get(base, 0) + 1
        name = f"{base}_{counters[base]}"
        trainable, frozen = _own_params(module)
        n, ch, oh, ow = output.shape
        layers.append(Layer(name, kind, (None, oh, ow, ch), trainable + frozen, sources))
        producer[id(output)] = name

    leaves = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.ReLU, Concat, Add)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, leaves)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    frozen += sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
    return Summary(layers, trainable + frozen, trainable, frozen)


__all__ = ["Layer", "Summary", "summarize", "summary_text"]


def summary_text(spec: str, input_shape: tuple[int, int, int] | None = None, body: str = "plain", *,
                 config: VDSRConfig | None = None) -> str:
    """``vdsr summary``: the Keras-style summary of ``spec`` (``"vdsr"``, ``"inception"`` (the notes'
    example) or a weights file, whose ``config`` the caller has read:
    ``vdsr.weights.read_metadata(path).config``), for ``input_shape`` ``(H, W, C)``, with VDSR's
    receptive field."""
    from pathlib import Path

    from vdsr.errors import InvalidArgument
    from vdsr.nn.model import VDSR, VDSRConfig, count_parameters, flops_per_pixel

    model: nn.Module
    if spec == "inception":
        model, shape, title = inception_example_model(), (224, 224, 3), "inception"
    elif spec == "vdsr":
        model, shape, title = VDSR(VDSRConfig(body=body)), (41, 41, 1), f"vdsr ({body})"
    elif config is not None:
        model, title, shape = VDSR(config), Path(spec).name, (41, 41, config.channels)
    else:
        raise InvalidArgument(f"{spec}: a weights file's summary needs its config (read_metadata(path).config)")
    if input_shape:
        shape = input_shape
        if min(shape) < 1:
            raise InvalidArgument(f"the input shape must be positive, got {shape}")
    try:
        text = summarize(model, shape).format(title)
    except RuntimeError as exc:
        raise InvalidArgument(f"model does not accept input shape {shape}: {str(exc).splitlines()[0]}") from None
    if isinstance(model, VDSR):
        rf = model.config.receptive_field
        text += (f"\nReceptive field: {rf}x{rf}; parameters: {count_parameters(model):,}; "
                 f"{flops_per_pixel(model) / 1e6:.3f} MFLOP per output pixel")
    return text
