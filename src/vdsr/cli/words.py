"""The words of the ``vdsr`` command: errors as one line, with the flag that changes a limit where
one does (the library's typed errors carry the fields; only the CLI speaks in flags)."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

PROG = "vdsr"


def train_flag(field: str) -> str:
    """The `vdsr train` option that sets a TrainConfig field."""
    return "--no-bias" if field == "bias" else "--" + field.replace("_", "-")


def one_line(text: str) -> str:
    """``text`` with its control characters escaped (a newline as ``\\n``): a file name that holds
    one cannot start a line of its own, nor forge a second ``vdsr: error:``."""
    return text if text.isprintable() else "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def err(msg: str) -> None:
    print(f"{PROG}: error: {one_line(msg)}", file=sys.stderr)


def hint(kind: str, fields: dict[str, Any]) -> str:
    """The flag that changes what an error of class ``kind`` (with ``fields``) complains of, in
    the words appended to its message; also for a manifest row's ``error_type``/``error_fields``."""
    if kind == "TooLarge":
        return f" (raise it with {'--max-pixels' if fields.get('what') == 'input' else '--max-output-pixels'})"
    if kind == "OutputExists":
        return " (pass --overwrite to replace it)"
    return ""


def describe_row(row: dict[str, Any]) -> str:
    """A failed manifest row (:mod:`vdsr.batch`) in the CLI's words, on one line."""
    return one_line(str(row.get("error")) + hint(str(row.get("error_type")), row.get("error_fields") or {}))


def describe(exc: Exception) -> str:
    """The library's message, with the flag that changes the limit where one does."""
    from vdsr.errors import (
        AddressUnavailable,
        InvalidTrainConfig,
        NoDefaultModel,
        NonFiniteLoss,
        NotSafetensors,
        OutputExists,
        OutputNameRefused,
        ResumeOverrideRefused,
        RunFolderRefused,
        RunWriteError,
        TooLarge,
        TrainingInputError,
    )

    if isinstance(exc, NotSafetensors):
        target = shlex.quote(Path(exc.path).with_suffix(".safetensors").name)
        return (f"{exc.path}: only .safetensors weights are loaded; convert it first with "
                f"`vdsr convert {shlex.quote(exc.path)} -o {target}`")
    if isinstance(exc, NoDefaultModel):
        return f"{exc} (--weights FILE)"
    if isinstance(exc, (TooLarge, OutputExists)):
        return f"{exc}{hint(type(exc).__name__, vars(exc))}"
    if isinstance(exc, OutputNameRefused) and exc.reason == "format_mismatch":
        return f"{exc.path}: --format {exc.fmt} does not match the file's extension {exc.suffix}"
    if isinstance(exc, OutputNameRefused) and exc.reason == "suffix_separator":
        return f"--suffix {exc.suffix!r}: must not contain a path separator"
    if isinstance(exc, NonFiniteLoss):
        return f"{exc} (lower --learning-rate, or pass --skip-nonfinite)"
    if isinstance(exc, AddressUnavailable):
        return f"{exc} (choose another with --port or --host)"
    if isinstance(exc, ResumeOverrideRefused):
        return (f"{', '.join(train_flag(f) for f in exc.fields)} cannot change when resuming a run "
                f"(only {', '.join(train_flag(f) for f in exc.allowed)} may); to train on with "
                "another recipe, start a new run with --init-weights RUN/last.safetensors")
    if isinstance(exc, InvalidTrainConfig) and exc.source is None:  # from the options
        return "; ".join(f"{train_flag(f)}: {problem}" for f, problem in exc.problems.items())
    if isinstance(exc, TrainingInputError):
        default = " (the default, relative to the current folder)" if exc.is_default else ""
        return f"{exc}{default}: {_INPUT_HINTS[exc.field]}"
    if isinstance(exc, RunWriteError) and exc.checkpoint_step is not None:
        return f"{exc}: once it can be written, continue with --resume {exc.run_dir}"
    if isinstance(exc, RunFolderRefused):
        return f"{exc}{_RUN_FOLDER_HINTS.get(exc.reason, '').format(path=exc.path)}"
    return str(exc)


# How to point `vdsr train` at an input it could not find (TrainingInputError.field).
_INPUT_HINTS = {
    "train_dirs": "choose the training images with --train-dirs DIR [DIR ...] (or patches with --h5)",
    "val_dir": "choose the validation images with --val-dir DIR, or train without: --val-dir none",
    "h5": "choose the patch file with --h5 (written by vdsr prepare)",
}

# What `vdsr train` can do about a run folder it may not use (RunFolderRefused.reason).
_RUN_FOLDER_HINTS = {
    "holds_run": ": continue it with --resume {path}, or pass --overwrite to start afresh there",
    "holds_weights": ": choose another --run-dir, or pass --overwrite to replace them",
    "not_empty": ": choose a new or empty --run-dir, or pass --overwrite to write the run's "
                 "files (config.json, checkpoint.pt, metrics.csv, ...) into it",
    "unwritable": ": choose another --run-dir",
}


def show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    print(f"{PROG}: warning: {one_line(str(message))}", file=sys.stderr)


