"""Training checkpoints (``checkpoint.pt``), read safely: the one loader that training's resume
and the weights importer (a checkpoint as weights) share. :class:`vdsr.train.runfolder.RunFolder`
writes them."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch

from vdsr.errors import TrainingError
from vdsr.quiet import catch_warnings

__all__ = ["CHECKPOINT_KEYS", "load_checkpoint"]

# The keys of a checkpoint written by Trainer.state_dict; a file without them is not one.
CHECKPOINT_KEYS = ("step", "model", "optimizer", "scheduler", "sampler", "torch_rng",
                   "python_rng", "best_psnr", "best_metrics", "config")


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :meth:`RunFolder.save_checkpoint`, safely.

    ``torch.load(weights_only=True)`` refuses any pickled object other than tensors and plain
    containers, so a crafted file cannot run code. Raises :class:`TrainingError` naming the file
    when it is missing, unreadable (truncated, foreign), unsafe, or lacks a checkpoint's keys.
    """
    path = Path(path)
    try:
        with catch_warnings():
            # torch warns before refusing a pickle of another protocol; the refusal says enough.
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise TrainingError(f"{path}: no such checkpoint") from None
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - arbitrary bytes fail in many ways (KeyError, EOFError, ...)
        raise TrainingError(f"{path}: {_load_failure(exc)}") from None
    if not isinstance(state, dict):
        raise TrainingError(f"{path}: not a training checkpoint (holds a {type(state).__name__})")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    if missing:
        raise TrainingError(f"{path}: not a training checkpoint (missing {', '.join(missing)})")
    return state


def _load_failure(exc: Exception) -> str:
    """Why ``torch.load`` failed, on one line."""
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError) and lines and lines[0].startswith("Weights only load failed"):
        # torch's first line advises loading with weights_only=False, which is what we refuse
        # to do; the reason is on the lines between it and the pointers to issues and docs.
        reason = [line.removeprefix("WeightsUnpickler error:").strip() for line in lines[1:]
                  if not line.startswith(("Please file an issue", "Check the documentation"))]
        return ("unsafe checkpoint refused by the safe loader ("
                + (" ".join(r for r in reason if r) or "unsupported content") + ")")
    # Truncated or foreign bytes fail deep in the zip or pickle reader with messages such as
    # "97" (a KeyError) that say nothing to a user.
    return "unreadable checkpoint (truncated, or not written by training)"
