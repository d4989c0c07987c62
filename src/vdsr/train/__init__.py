"""Training VDSR: the notes' pipeline (41x41 bicubic patches, 20 layers, Adam + clipping,
checkpoints every N steps) made real, resumable bit-for-bit, and logged.

::

    config.py       TrainConfig (the recipe, JSON-able) and the learning-rate schedules
    data.py         HR folders -> patch pairs: PatchSource, PatchSampler (on the fly), HDF5
    runfolder.py    RunFolder: where a run may write, and everything it leaves on disk
    loop.py         Trainer: one optimiser step, validation, the loop
    process.py      configure_process: the process-wide torch settings of a run; the device
    distributed.py  torchrun / DDP context

A new run, and a resumed one::

    from vdsr.train import RunFolder, TrainConfig, Trainer, configure_process

    config = TrainConfig(run_dir="runs/mine", steps=20000)
    configure_process(config)            # threads, seeds, TF32: once, by the process's owner
    Trainer(config).fit()

    config, state = RunFolder("runs/mine").resume({"steps": 30000})   # checked, writes nothing
    configure_process(config, state)
    Trainer(config, state=state).fit()

Names are imported on first use, so ``import vdsr.train`` (and ``vdsr --help``) loads no torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from vdsr.train.config import TrainConfig
    from vdsr.train.loop import Trainer
    from vdsr.train.process import configure_process
    from vdsr.train.runfolder import RunFolder

_LAZY = {"TrainConfig": "vdsr.train.config", "Trainer": "vdsr.train.loop",
         "RunFolder": "vdsr.train.runfolder", "configure_process": "vdsr.train.process"}

__all__ = ["RunFolder", "TrainConfig", "Trainer", "configure_process"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vdsr.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
