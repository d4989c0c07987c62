"""The package's errors: typed, with fields, and free of command-line wording.

Library code raises :class:`VDSRError` (or a subclass) for every problem caused by user input:
bad files, bad options, bad weights. Each carries a one-line message for people and, where a
caller must tell cases apart, fields for programs (:class:`TooLarge` has ``pixels`` and
``limit``). The CLI and the server turn them into their own words, exit codes and HTTP statuses;
anything else escaping is a bug.
"""

from __future__ import annotations

from collections.abc import Iterable


def unknown(what: str, value: object, choices: Iterable[str]) -> str:
    """The one wording for a value that is not one of its choices: ``unknown body 'x'; choose
    from plain, residual, dense, inception``."""
    return f"unknown {what} {value!r}; choose from {', '.join(choices)}"


class VDSRError(Exception):
    """A user-facing error: the message is one clear line that names the file and the problem."""


class ImageError(VDSRError):
    """An input image could not be read, is unsuitable, or an output could not be written."""


class TooLarge(ImageError):
    """An image is over a pixel limit, found before any work is done.

    Attributes:
        name: the file or upload name.
        what: ``"input"`` (decoded pixels) or ``"output"`` (input pixels x scale squared).
        width, height: the image's size in pixels (the output size for ``what="output"``).
        limit: the limit in pixels that was exceeded.
    """

    def __init__(self, name: str, what: str, width: int, height: int, limit: int) -> None:
        self.name, self.what, self.width, self.height, self.limit = name, what, width, height, limit
        super().__init__(
            f"{name}: {what} of {width}x{height} = {self.pixels:,} pixels is over the limit "
            f"of {limit:,}"
        )

    @property
    def pixels(self) -> int:
        return self.width * self.height


class WeightsError(VDSRError):
    """A weights file is missing, corrupt, unsafe or for another architecture."""


class DataError(VDSRError):
    """Training data (folders or HDF5 files) is missing or malformed."""


class TrainingError(VDSRError):
    """Training cannot continue (non-finite loss, failed checkpoint, bad resume state)."""


class NonFiniteLoss(TrainingError):
    """The training loss became NaN or inf; nothing was saved after it.

    Attributes:
        value: the first non-finite loss.
        step: the 1-based optimiser step that produced it.
    """

    def __init__(self, value: float, step: int) -> None:
        self.value, self.step = value, step
        super().__init__(f"loss became {value} at step {step}; stopping without saving "
                         "non-finite weights")


class TrainingInterrupted(TrainingError):
    """Training was stopped by a signal after writing a checkpoint; resuming continues it.

    Attributes:
        signal: the signal's name (``"SIGINT"``, ``"SIGTERM"``).
        step: the step the run stopped at, which is the step of the checkpoint just written.
        steps: the run's total steps.
        run_dir: the run folder holding that checkpoint.
    """

    def __init__(self, signal: str, step: int, steps: int, run_dir: str) -> None:
        self.signal, self.step, self.steps, self.run_dir = signal, step, steps, run_dir
        super().__init__(f"stopped by {signal} at step {step} of {steps}; checkpoint of step "
                         f"{step} saved in {run_dir}")


class InvalidArgument(VDSRError, ValueError):
    """A function was called with an argument it cannot work with (shape, range, scale)."""


class PixelScaleError(InvalidArgument):
    """Pixels on the wrong scale for the function given them: raw integers (or 0-255 floats)
    where floats on [0, 1] are expected, or a dtype that is not a pixel type (:mod:`vdsr.pixels`)."""


class BadScale(InvalidArgument):
    """A scale factor that is not a finite number in ``(1, limit]``; ``scale`` holds the value."""

    def __init__(self, scale: object, message: str) -> None:
        self.scale = scale
        super().__init__(message)


class BackendUnavailable(InvalidArgument):
    """The requested inference backend cannot run here (package missing, wrong device)."""

    def __init__(self, backend: str, reason: str) -> None:
        self.backend, self.reason = backend, reason
        super().__init__(f"the {backend} backend is not available: {reason}")


class MissingExtra(VDSRError):
    """An optional part of vdsr is not installed: the message names the ``pip install`` line
    (:mod:`vdsr.extras` holds the table)."""

    def __init__(self, extra: str, purpose: str, reason: str) -> None:
        self.extra, self.purpose, self.reason = extra, purpose, reason
        super().__init__(f"{purpose} needs the '{extra}' extra ({reason}): pip install 'vdsr[{extra}]'")


class AddressUnavailable(VDSRError):
    """The web app cannot listen on ``host``:``port`` (in use, not an address here, no permission)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        self.host, self.port, self.reason = host, port, reason
        super().__init__(f"cannot listen on {host}:{port}: {reason}")


class DeviceUnavailable(InvalidArgument):
    """A device that does not exist on this machine (``cuda`` without a GPU, ``cuda:3``, ``foo``)."""

    def __init__(self, device: str, reason: str) -> None:
        super().__init__(f"device {device!r} cannot be used: {reason}")
        self.device, self.reason = device, reason


class NotSafetensors(WeightsError):
    """A weights file that only :func:`vdsr.weights.importers.convert` reads (``.pth``, ``.pt``, ``.mat``).

    Attributes:
        path: the file.
        suffix: its extension, lower case (``".pth"``).
    """

    def __init__(self, path: str, suffix: str) -> None:
        self.path, self.suffix = path, suffix
        super().__init__(f"{path}: only .safetensors weights are loaded; {suffix} files are "
                         "imported first (vdsr.weights.importers.convert)")


class NoDefaultModel(WeightsError):
    """No weights file was given and the package has no shipped model at ``expected``."""

    def __init__(self, expected: str) -> None:
        self.expected = expected
        super().__init__(f"no default model is installed (looked for {expected}); pass a weights file")


class Cancelled(VDSRError):
    """A job was stopped on request between two of its steps (tiles, planes): its caller went
    away or is shutting down. Raised from a ``progress`` callback, it ends the engine's loop.

    Attributes:
        done: the steps finished before it stopped.
        total: the job's steps.
    """

    def __init__(self, done: int, total: int) -> None:
        self.done, self.total = done, total
        super().__init__(f"cancelled after {done} of {total} steps")


class RunFolderRefused(TrainingError):
    """A training run may not write into this folder; nothing was written or deleted.

    Attributes:
        path: the run folder asked for.
        reason: what is in the way:

            * ``"file"``: ``path`` is a file (or a link to nowhere), not a folder;
            * ``"under_file"``: ``path`` would be created under ``blocker``, which is a file;
            * ``"unwritable"``: ``blocker`` (the folder, or the folder it would be created in)
              cannot be written (``detail``: ``"read-only file system"``, ``"permission denied"``);
            * ``"holds_run"``: the folder holds a training run with a checkpoint to continue;
            * ``"holds_weights"``: it holds a run's weights (``files``) but no checkpoint;
            * ``"not_empty"``: it holds files that are not a training run's (``files``: the
              first few names).
        blocker: the path that is in the way (``path`` itself unless it is an ancestor).
        files: names found in the folder (``"holds_weights"``, ``"not_empty"``).
        detail: the operating system's reason for ``"unwritable"``.
    """

    def __init__(self, path: str, reason: str, blocker: str | None = None,
                 files: tuple[str, ...] = (), detail: str = "") -> None:
        self.path, self.reason, self.files, self.detail = path, reason, files, detail
        self.blocker = blocker if blocker is not None else path
        names = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
        problem = {
            "file": "is a file, not a folder",
            "under_file": f"cannot be created: {self.blocker} is a file, not a folder",
            "unwritable": (f"is not writable ({detail})" if self.blocker == path
                           else f"cannot be created: {self.blocker} is not writable ({detail})"),
            "holds_run": "already holds a training run, with a checkpoint to continue from",
            "holds_weights": f"already holds a training run's weights ({names}) and no checkpoint",
            "not_empty": f"is not empty and is not a training run folder (it holds {names})",
        }[reason]
        super().__init__(f"{path}: {problem}")


class RunWriteError(TrainingError):
    """A file of a training run could not be written (disk full, read-only, no permission).

    The file is as it was before (writes are atomic or undone), nothing half-written is left,
    and the run stopped.

    Attributes:
        path: the file that could not be written.
        step: the training step it was recording.
        reason: the operating system's words (``"No space left on device"``).
        run_dir: the run folder.
        checkpoint_step: the step of the checkpoint on disk, which a resumed run continues
            from; ``None`` if there is none yet.
    """

    def __init__(self, path: str, step: int, reason: str, run_dir: str,
                 checkpoint_step: int | None) -> None:
        self.path, self.step, self.reason = path, step, reason
        self.run_dir, self.checkpoint_step = run_dir, checkpoint_step
        if checkpoint_step is None:
            kept = "no checkpoint was saved yet"
        elif checkpoint_step == step:
            kept = f"the checkpoint of step {step} is saved"
        else:
            kept = f"the previous checkpoint is kept (step {checkpoint_step})"
        super().__init__(f"{path}: could not write it at step {step} ({reason}); {kept}")


class InvalidTrainConfig(InvalidArgument):
    """A training config has values of the wrong type or out of range, or unknown settings.

    Attributes:
        problems: field name -> what is wrong with it (a phrase that names the field), in the
            order of the config's fields; every problem found, not only the first.
        source: the file the config was read from (a run's ``config.json``), or ``None``
            when it was built from arguments.
    """

    def __init__(self, problems: dict[str, str], source: str | None = None) -> None:
        self.problems, self.source = dict(problems), source
        where = f"{source}: " if source else ""
        super().__init__(where + "; ".join(self.problems.values()))


class ResumeOverrideRefused(InvalidArgument):
    """A resumed run was asked to change settings that only a new run can set (its recipe).

    Attributes:
        fields: the settings asked for that cannot change.
        allowed: the settings a resumed run may change.
    """

    def __init__(self, fields: tuple[str, ...], allowed: tuple[str, ...]) -> None:
        self.fields, self.allowed = tuple(fields), tuple(allowed)
        super().__init__(f"a resumed run cannot change {', '.join(self.fields)}; "
                         f"only {', '.join(self.allowed)}")


class RecipeChanged(TrainingError):
    """A run's ``config.json`` no longer describes the recipe its checkpoint was trained with
    (it was edited): resuming would ignore the edit (the optimiser's learning rate comes from
    the checkpoint) and record it as used.

    Attributes:
        path: the ``config.json``.
        checkpoint: the ``checkpoint.pt``.
        changes: field -> ``(value in the checkpoint, value in config.json)``.
        allowed: the settings a resumed run may change.
    """

    def __init__(self, path: str, checkpoint: str, changes: dict[str, tuple[object, object]],
                 allowed: tuple[str, ...]) -> None:
        self.path, self.checkpoint, self.changes, self.allowed = path, checkpoint, dict(changes), allowed
        said = ", ".join(f"{k} {new!r}" for k, (_, new) in self.changes.items())
        trained = ", ".join(f"{k} {old!r}" for k, (old, _) in self.changes.items())
        super().__init__(f"{path}: says {said}, but {checkpoint} was trained with {trained}; a "
                         f"resumed run keeps its recipe (only {', '.join(allowed)} may change)")


class TrainingInputError(DataError):
    """A training input (the training folders, the validation folder, the HDF5 patch file) is
    missing or holds no images; found before any data is loaded.

    Attributes:
        field: the setting that names it: ``"train_dirs"``, ``"val_dir"`` or ``"h5"``.
        path: the folder or file.
        is_default: whether ``path`` is the recipe's default (a relative path: it depends on
            the current folder) rather than one asked for.
    """

    def __init__(self, field: str, path: str, message: str, is_default: bool = False) -> None:
        self.field, self.path, self.is_default = field, path, is_default
        super().__init__(message)


class OutputRefused(ImageError):
    """An output may not, or cannot, be written where it was asked for; found before any work
    (or, for one file of a batch, before that file's work), and nothing was written.

    Attributes:
        path: the output asked for.
    """

    def __init__(self, path: str, message: str) -> None:
        self.path = path
        super().__init__(message)


class OutputExists(OutputRefused):
    """The output is already there (a file, a folder, or a link, also one to nowhere), and
    replacing it was not asked for.

    Attributes:
        path: the output.
        link_to: where it points when it is a symbolic link to nothing (``None`` otherwise):
            such a link is not replaced either, since writing through it would create a file
            the user did not name.
    """

    def __init__(self, path: str, link_to: str | None = None) -> None:
        self.link_to = link_to
        what = "already exists" if link_to is None else f"already exists, as a link to {link_to} (which does not exist)"
        super().__init__(path, f"{path}: {what}")


class OutputIsInput(OutputRefused):
    """The output would replace an input of the same run (refused even when replacing is asked).

    Attributes:
        path: the output.
        source: the input it would replace (the same file, or a link to it).
    """

    def __init__(self, path: str, source: str) -> None:
        self.source = source
        what = "output would overwrite its own input" if path == source else f"would overwrite the input {source}"
        super().__init__(path, f"{path}: {what}")


class OutputCollision(OutputRefused):
    """Two things of one run would be written to the same path.

    Attributes:
        path: the shared output.
        first, second: what would write it: two inputs (``kind="inputs"``), or two outputs of
            one input (``kind="outputs"``: e.g. ``"the upscaled image"``, ``"the comparison"``).
        kind: ``"inputs"`` or ``"outputs"``.
    """

    def __init__(self, path: str, first: str, second: str, kind: str = "inputs") -> None:
        self.first, self.second, self.kind = first, second, kind
        if kind == "inputs":
            message = f"two inputs, {first} and {second}, would both write {path}"
        else:
            message = f"{path}: {first} and {second} would both be written to it"
        super().__init__(path, message)


class OutputUnwritable(OutputRefused):
    """The output's folder is missing, not a folder, or cannot be written.

    Attributes:
        path: the output (a file, or a folder to write into).
        reason: ``"missing_folder"`` (its folder does not exist and is not to be created),
            ``"is_folder"`` (a file was asked for and a folder is there), ``"not_a_folder"``
            (``blocker``, its folder, is a file), ``"uncreatable"`` (the folder cannot be
            created: ``blocker`` is a file in the way, or the system refused: ``detail``),
            ``"unwritable"`` (``blocker`` cannot be written: ``detail``).
        blocker: the path that is in the way.
        detail: the operating system's words (``"Read-only file system"``), where it gave some.
    """

    def __init__(self, path: str, reason: str, blocker: str | None = None, detail: str = "") -> None:
        self.reason, self.detail = reason, detail
        self.blocker = blocker if blocker is not None else path
        why = detail or f"{self.blocker} is a file, not a folder"
        problem = {
            "missing_folder": f"output folder {self.blocker} does not exist",
            "is_folder": "is a folder, not a file",
            "not_a_folder": (f"{self.blocker} is a file, not a folder" if self.blocker != path
                             else "is a file, not a folder"),
            "uncreatable": f"cannot create the output folder ({why})",
            "unwritable": (f"output folder {self.blocker} is not writable ({detail})" if detail
                           else f"output folder {self.blocker} is not writable"),
        }[reason]
        super().__init__(path, f"{path}: {problem}")


class OutputNameRefused(OutputRefused, InvalidArgument):
    """An output name that does not say what to write (``vdsr.io.outputs.OUTPUT_RULE``).

    Attributes:
        path: the output as given.
        reason: ``"several_inputs"`` (a file name for several inputs), ``"bad_extension"``
            (an extension that is no image format we write), ``"no_extension"`` (one input and a
            name with no extension), ``"format_mismatch"`` (a format asked for that is not the
            file's extension's: ``fmt``), ``"suffix_separator"`` (a name suffix with a path
            separator: ``suffix``).
        suffix: the extension, or the name suffix for ``"suffix_separator"``.
        fmt: the format asked for (``"format_mismatch"``).
    """

    def __init__(self, path: str, reason: str, suffix: str = "", fmt: str = "") -> None:
        self.reason, self.suffix, self.fmt = reason, suffix, fmt
        message = {
            "several_inputs": f"{path}: several inputs need an output folder, not a {suffix} file "
                              f"(for a folder of that name, write {path}/)",
            "bad_extension": f"{path}: cannot write '{suffix}' images (use .png, .jpg, .webp, .avif, "
                             f".tif or .bmp; for a folder, write {path}/)",
            "no_extension": f"{path}: no file extension; name a file ({path}.png) or a folder ({path}/)",
            "format_mismatch": f"{path}: the format {fmt} does not match the file's extension {suffix}",
            "suffix_separator": f"name suffix {suffix!r} must not contain a path separator",
        }[reason]
        super().__init__(path, message)


class OutputBusy(OutputRefused):
    """Another run is writing into the same output folder (it holds the folder's manifest).

    Attributes:
        path: the output folder.
        manifest: the manifest file the other run holds.
    """

    def __init__(self, path: str, manifest: str) -> None:
        self.manifest = manifest
        super().__init__(path, f"{path}: another vdsr run is writing into this folder "
                               f"(it holds {manifest})")


class StopRequested(BaseException):
    """A signal (SIGTERM) asked the process to stop: raised where the program is, like
    ``KeyboardInterrupt`` for SIGINT, so that work in progress is undone on the way out (a
    temp file removed) and the caller can say what was finished.

    A ``BaseException``, not a :class:`VDSRError`: handlers of a batch's per-file errors must not
    take it for one file's failure and go on.

    Attributes:
        signal: the signal's name (``"SIGTERM"``).
    """

    def __init__(self, signal: str) -> None:
        self.signal = signal
        super().__init__(f"stopped by {signal}")
