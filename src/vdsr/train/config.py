"""The recipe of a training run: :class:`TrainConfig` and the learning-rate schedule it defines.

Kept apart from the loop (:mod:`vdsr.train.loop`) so the run folder (:mod:`vdsr.train.runfolder`)
can read and write configs without importing the trainer.
"""

from __future__ import annotations

import functools
import math
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vdsr.constants import BODIES, DEFAULT_SCALES, OPTIMIZERS, SCHEDULES, TRAIN_PRECISIONS
from vdsr.errors import InvalidTrainConfig, unknown

if TYPE_CHECKING:  # the CLI reads the defaults from here while it builds --help: no torch
    from vdsr.nn.model import VDSRConfig

__all__ = ["TrainConfig", "learning_rate_factor"]


@dataclass
class TrainConfig:
    """Everything that defines a training run; JSON-able and stored in the run folder.

    Learning-rate semantics: ``learning_rate`` is per optimiser step of ``batch_size`` patches
    (the global batch in distributed runs). ``clip`` is the gradient value bound for Adam (the
    notes' ``clip_by_value(0.1)``) and theta of the paper's adjustable clipping for SGD, where
    each gradient is clipped to ``[-clip / lr, clip / lr]``.

    ``precision`` is the arithmetic of the forward and backward passes (:mod:`vdsr.precision`,
    :func:`~vdsr.train.process.resolve_train_precision`); the trainer replaces ``"auto"`` by what it
    resolved to, so ``config.json`` and the exported weights' recipe name the precision used.
    ``compile`` runs the step's forward, loss and backward through ``torch.compile`` (CUDA graphs
    on a GPU); it changes speed, not the recipe, so a resumed run may switch it.
    """

    run_dir: str = "runs/vdsr"
    train_dirs: list[str] = field(default_factory=lambda: ["../shared/datasets/T91", "../shared/datasets/BSD200"])
    h5: str | None = None
    val_dir: str | None = "../shared/datasets/Set5"
    scales: list[int] = field(default_factory=lambda: list(DEFAULT_SCALES))
    downscales: list[float] = field(default_factory=lambda: [1.0, 0.7, 0.5])
    channels: int = 1
    depth: int = 20
    width: int = 64
    bias: bool = True
    body: str = "plain"
    patch: int = 41
    batch_size: int = 64
    steps: int = 10000
    optimizer: str = "adam"
    learning_rate: float = 1e-4
    schedule: str = "exponential"
    warmup_steps: int = 0
    decay_steps: int = 0  # step/exponential: the period of one x0.1 decay; 0 = half of `steps`
    clip: float = 0.1
    momentum: float = 0.9
    weight_decay: float | None = None  # None: 0 for Adam, the paper's 1e-4 for SGD
    seed: int = 0
    log_every: int = 10
    val_every: int = 500
    checkpoint_every: int = 500
    skip_nonfinite: bool = False
    init_weights: str | None = None
    device: str = "auto"
    threads: int = 0
    precision: str = "auto"
    compile: bool = False

    def __post_init__(self) -> None:
        # Types first: the ranges cannot be checked on values of the wrong type.
        problems = self._check_types()
        if not problems:
            if self.val_dir is not None and self.val_dir.strip().lower() in ("", "none"):
                self.val_dir = None
            problems = self._check_values()
        if problems:
            order = list(self.__dataclass_fields__)
            raise InvalidTrainConfig(dict(sorted(problems.items(), key=lambda kv: order.index(kv[0]))))

    def _check_types(self) -> dict[str, str]:
        """Each field's value against its annotation (JSON brings strings where numbers belong);
        numbers are made floats where floats belong, tuples lists."""
        problems: dict[str, str] = {}
        for name, hint in _field_types().items():
            ok, value = _conform(getattr(self, name), hint)
            if ok:
                setattr(self, name, value)
            else:
                problems[name] = f"{name} must be {_describe(hint)}, got {getattr(self, name)!r}"
        return problems

    def _check_values(self) -> dict[str, str]:
        """The ranges and choices (every field has its type: :meth:`_check_types`)."""
        p: dict[str, str] = {}

        def need(name: str, ok: Any, problem: str) -> None:
            if name not in p and not ok:
                p[name] = problem

        for name, choices in (("optimizer", OPTIMIZERS), ("precision", TRAIN_PRECISIONS), ("schedule", SCHEDULES)):
            value = getattr(self, name)
            need(name, value in choices, f"unknown {name} {value!r}; choose from {', '.join(choices)}")
        for name in ("batch_size", "steps", "patch", "log_every", "val_every", "checkpoint_every", "width"):
            need(name, getattr(self, name) >= 1, f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "decay_steps", "threads", "seed"):
            need(name, getattr(self, name) >= 0, f"{name} must be 0 or more, got {getattr(self, name)}")
        need("depth", self.depth >= 2, f"depth must be at least 2, got {self.depth}")
        need("channels", self.channels in (1, 3), f"channels must be 1 or 3, got {self.channels}")
        need("body", self.body in BODIES, unknown("body", self.body, BODIES))
        need("learning_rate", self.learning_rate > 0 and math.isfinite(self.learning_rate),
             f"learning rate must be positive, got {self.learning_rate}")
        for name in ("clip", "momentum"):
            need(name, math.isfinite(getattr(self, name)), f"{name} must be finite, got {getattr(self, name)}")
        need("weight_decay", self.weight_decay is None or 0 <= self.weight_decay < math.inf,
             f"weight_decay must be 0 or more, got {self.weight_decay}")
        need("scales", self.scales, "scales must name at least one scale")
        need("scales", all(s >= 2 for s in self.scales), f"training scales must be integers >= 2, got {self.scales}")
        need("downscales", self.downscales, "downscales must name at least one factor (1.0: the image as it is)")
        need("downscales", all(0 < f < math.inf for f in self.downscales),
             f"downscales must be positive factors, got {self.downscales}")
        need("train_dirs", self.train_dirs or self.h5, "train_dirs must name a folder (or h5 a patch file)")
        if "scales" not in p and "patch" not in p:
            need("patch", self.patch >= 2 * max(self.scales),
                 f"patch size {self.patch} is too small for scale {max(self.scales)}")
        return p

    def model_config(self) -> VDSRConfig:
        from vdsr.nn.model import VDSRConfig

        return VDSRConfig(depth=self.depth, width=self.width, channels=self.channels,
                          bias=self.bias, body=self.body)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> TrainConfig:
        """A config from its JSON form (``config.json``); fields it lacks take their defaults
        (files of earlier versions lack the later fields). Unknown settings, wrong types and
        values out of range are refused together, naming ``source``."""
        known = cls.__dataclass_fields__
        problems = {k: f"unknown setting {k!r}" for k in data if k not in known}
        try:
            config = cls(**{k: v for k, v in data.items() if k in known})
        except InvalidTrainConfig as exc:
            problems = exc.problems | problems
        if problems:
            raise InvalidTrainConfig(problems, source)
        return config


@functools.cache
def _field_types() -> dict[str, Any]:
    """TrainConfig's fields and their annotations, resolved."""
    hints = typing.get_type_hints(TrainConfig)
    return {name: hints[name] for name in TrainConfig.__dataclass_fields__}


def _conform(value: Any, hint: Any) -> tuple[bool, Any]:
    """``(True, value as the field keeps it)`` when ``value`` fits ``hint``, else ``(False, None)``.

    ``bool`` is not taken for a number (``True`` is an ``int`` in Python); an integer is taken
    for a float (JSON writes 1e-4 as 0.0001 but 1.0 as 1.0, people write 1).
    """
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return True, None
        return _conform(value, next(a for a in args if a is not type(None)))
    if typing.get_origin(hint) is list:
        if not isinstance(value, list | tuple):
            return False, None
        items = [_conform(v, args[0]) for v in value]
        return all(ok for ok, _ in items), [v for _, v in items]
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return ok, float(value) if ok else None
    return isinstance(value, hint), value


def _describe(hint: Any) -> str:
    """``list[int]`` -> ``"a list of integers"``, ``str | None`` -> ``"a string or null"``."""
    names = {int: ("an integer", "integers"), float: ("a number", "numbers"), bool: ("true or false", "booleans"),
             str: ("a string", "strings")}
    args = typing.get_args(hint)
    if type(None) in args:
        return _describe(next(a for a in args if a is not type(None))) + " or null"
    if typing.get_origin(hint) is list:
        return f"a list of {names[args[0]][1]}"
    return names[hint][0]


def learning_rate_factor(config: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based), warm-up included."""
    if config.warmup_steps and step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    t = step - config.warmup_steps
    span = max(1, config.steps - config.warmup_steps)
    period = config.decay_steps or max(1, span // 2)
    if config.schedule == "constant":
        return 1.0
    if config.schedule == "step":
        return 0.1 ** (t // period)
    if config.schedule == "exponential":
        return 0.1 ** (t / period)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t / span)))
