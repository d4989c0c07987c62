"""The ``vdsr`` command line: parsing, progress display and error reporting only.

Every subcommand maps its flags onto library calls. Errors from the library
(:class:`vdsr.errors.VDSRError`) become one line on stderr and exit code 1; bad flags exit 2.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import math
import os
import shlex
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from vdsr import constants as C  # imports nothing: defaults for --help without torch
from vdsr.constants import BACKENDS as _BACKENDS
from vdsr.constants import DEFAULT_SCALES, PRECISIONS

PROG = "vdsr"


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _describe(exc: Exception) -> str:
    """The library's message, with the flag that changes the limit where one does."""
    from vdsr.errors import (
        AddressUnavailable,
        InvalidTrainConfig,
        NoDefaultModel,
        NonFiniteLoss,
        NotSafetensors,
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
    if isinstance(exc, TooLarge):
        flag = "--max-pixels" if exc.what == "input" else "--max-output-pixels"
        return f"{exc} (raise it with {flag})"
    if isinstance(exc, NonFiniteLoss):
        return f"{exc} (lower --learning-rate, or pass --skip-nonfinite)"
    if isinstance(exc, AddressUnavailable):
        return f"{exc} (choose another with --port or --host)"
    if isinstance(exc, ResumeOverrideRefused):
        return (f"{', '.join(_train_flag(f) for f in exc.fields)} cannot change when resuming a run "
                f"(only {', '.join(_train_flag(f) for f in exc.allowed)} may); to train on with "
                "another recipe, start a new run with --init-weights RUN/last.safetensors")
    if isinstance(exc, InvalidTrainConfig) and exc.source is None:  # from the options
        return "; ".join(f"{_train_flag(f)}: {problem}" for f, problem in exc.problems.items())
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


def _show_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                  line: Any = None) -> None:
    print(f"{PROG}: warning: {message}", file=sys.stderr)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _quality(text: str) -> int:
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"must be 1-100, got {value}")
    return value


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 1:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 1, got {text}")
    if value > C.MAX_SCALE:  # a usage error like the others (exit 2), not a run-time one
        raise argparse.ArgumentTypeError(f"must be at most {C.MAX_SCALE:g}, got {text}")
    return value


def _int_scale(text: str) -> int:
    value = _scale(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be an integer scale (2, 3, 4, ...), got {text}")
    return int(value)


def _tqdm(**kwargs: Any) -> Any:
    """A progress bar on stderr, shown only on a terminal (logs and pipes stay clean)."""
    from tqdm import tqdm

    kwargs.setdefault("disable", None)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


# ----------------------------------------------------------------------------------------------
# upscale
# ----------------------------------------------------------------------------------------------


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    from vdsr.images import list_images

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        files.extend(list_images(p) if p.is_dir() else [p])
    return files


OUTPUT_RULE = ("OUT is a file when there is one input file and OUT ends in an image extension "
               "(.png .jpg .jpeg .webp .tif .tiff .bmp); a folder when it is one already, ends in '/', "
               "or there are several inputs (or a folder) and it has no extension. Anything else is refused "
               "as ambiguous.")


def _output_is_file(output: str, one_file: bool) -> bool:
    """Apply :data:`OUTPUT_RULE` to ``-o OUTPUT``: True for a file, False for a folder."""
    from vdsr.errors import VDSRError
    from vdsr.images import OUTPUT_SUFFIXES

    out = Path(output)
    if output.endswith(("/", os.sep)) or out.is_dir():
        return False
    suffix = out.suffix.lower()
    if suffix in OUTPUT_SUFFIXES:
        if one_file:
            return True
        raise VDSRError(f"{out}: several inputs need an output folder, not a {suffix} file "
                        f"(for a folder of that name, write {output}/)")
    if suffix:
        raise VDSRError(f"{out}: cannot write '{suffix}' images (use .png, .jpg, .webp, .tif or .bmp; "
                        f"for a folder, write {output}/)")
    if one_file:
        raise VDSRError(f"{out}: no file extension; name a file ({output}.png) or a folder ({output}/)")
    return False


def _output_paths(files: list[Path], out: Path, args: argparse.Namespace, single_target: bool) -> list[Path]:
    from vdsr.errors import VDSRError
    from vdsr.images import OUTPUT_FORMATS, output_format

    if single_target:
        if args.format and OUTPUT_FORMATS[args.format] != output_format(out):
            raise VDSRError(f"{out}: --format {args.format} does not match the file's extension")
        return [out]
    suffix = f"_x{args.scale:g}" if args.suffix is None else args.suffix
    if "/" in suffix or os.sep in suffix:
        raise VDSRError(f"--suffix {suffix!r}: must not contain a path separator")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # read-only place, a file in the way, no permission
        raise VDSRError(f"{out}: cannot create the output folder ({exc.strerror or exc})") from None
    names = [out / f"{f.stem}{suffix}.{args.format or 'png'}" for f in files]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise VDSRError(f"two inputs would both write {sorted(dupes)[0]}")
    return names


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is at the time (tests and tools replace it)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


@contextlib.contextmanager
def _library_notes_shown() -> Iterator[None]:
    """Show the library's INFO notes (e.g. int8 calibrating on first use) as ``vdsr: ...`` lines
    while the block runs; the library stays silent for callers of ``main`` afterwards."""
    logger = logging.getLogger("vdsr")
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def cmd_upscale(args: argparse.Namespace) -> int:
    with _library_notes_shown():
        return _upscale(args)


def _engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine's keyword arguments from the shared flags; ``--backend int8``/``mixed`` of earlier
    releases are recipes now (``--precision``), accepted with a warning."""
    backend, precision = args.backend, args.precision
    if backend in C.LEGACY_BACKENDS:
        warnings.warn(f"--backend {backend} is now --precision {backend} (the backend is the runtime "
                      "that runs it)", stacklevel=2)
        backend, precision = "auto", backend
    return {"device": args.device, "precision": precision, "backend": backend, "tile": args.tile,
            "ensemble": args.ensemble}


def _upscale(args: argparse.Namespace) -> int:
    from vdsr.engine import Upscaler
    from vdsr.errors import VDSRError
    from vdsr.images import load_image
    from vdsr.inference import write_upscaled
    from vdsr.sizes import check_scale, upscaled_size
    from vdsr.weights import load_model

    files = _expand_inputs(args.inputs)
    out = Path(args.output)
    single_target = _output_is_file(args.output, len(args.inputs) == 1 and not Path(args.inputs[0]).is_dir())
    if single_target and not out.parent.exists():
        raise VDSRError(f"{out}: output folder {out.parent} does not exist")
    model, meta = load_model(args.weights)
    check_scale(args.scale, meta.scales)
    options = _engine_options(args)
    upscaler: Upscaler | None = None  # built for the first image that can be read (the recipe check)
    targets = _output_paths(files, out, args, single_target)
    folder = targets[0].parent
    if not os.access(folder, os.W_OK):
        raise VDSRError(f"{folder}: output folder is not writable")
    failures: list[str] = []
    # A bar on a terminal only (logs and pipes get the final line alone), also for one image, with
    # the image in hand, its sizes and, for large images, the tile in progress.
    bar = _tqdm(total=len(files), desc="upscaling", unit="img")
    for src, dst in zip(files, targets, strict=True):
        bar.set_postfix_str(src.name, refresh=True)
        try:
            if dst.exists() and src.exists() and dst.resolve() == src.resolve():
                raise VDSRError(f"{dst}: output would overwrite its own input")
            if dst.exists() and not args.overwrite:
                raise VDSRError(f"{dst}: already exists (pass --overwrite to replace it)")
            image = load_image(src, args.max_pixels, args.scale, args.max_output_pixels)  # limits before decoding
            out_h, out_w = upscaled_size(image.height, image.width, args.scale)
            label = f"{src.name} {image.width}x{image.height} -> {out_w}x{out_h}"
            bar.set_postfix_str(label, refresh=True)

            def tiles(done: int, total: int, label: str = label) -> None:
                if total > 1:
                    bar.set_postfix_str(f"{label}, tile {done}/{total}", refresh=True)

            upscaler = upscaler or Upscaler(model, **options)
            write_upscaled(upscaler, image, dst, args.scale, max_output_pixels=args.max_output_pixels,
                           quality=args.quality, progress=tiles)
            if args.compare and len(files) == 1:
                _write_compare(args, src, dst)
        except VDSRError as exc:  # keep going; every failure is listed at the end
            failures.append(_describe(exc))
        bar.update(1)
    bar.close()
    run = f"({upscaler.info.describe()})" if upscaler is not None else ""
    if single_target and not failures:
        print(f"wrote {targets[0]} {run}")
    elif not single_target:
        print(f"wrote {len(files) - len(failures)} of {len(files)} images to {folder} {run}")
    if failures:
        if len(files) == 1:
            _err(failures[0])
        else:
            _err(f"{len(failures)} of {len(files)} images failed:")
            for f in failures:
                print(f"  {f}", file=sys.stderr)
        return 1
    return 0


def _write_compare(args: argparse.Namespace, src: Path, dst: Path) -> None:
    import numpy as np

    from vdsr.images import load_image
    from vdsr.inference import bicubic_upscale
    from vdsr.plots import comparison

    image, result = load_image(src).floats()[0], load_image(dst)
    sr = result.floats()[0]
    big = min(sr.shape[0], sr.shape[1]) > 256
    comparison([(f"bicubic x{args.scale:g}", bicubic_upscale(image, args.scale)),
                (f"VDSR x{args.scale:g}", np.asarray(sr))], args.compare,
               title=f"{src.name}: the {'region where they differ most' if big else 'whole image'}, "
                     "at full resolution")


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vdsr.errors import VDSRError
    from vdsr.evaluate import EvalConfig, evaluate_folder, format_table
    from vdsr.fileio import atomic_write_bytes
    from vdsr.images import list_images
    from vdsr.weights import default_weights_path, load_model, record_evaluation

    if args.record and args.bicubic_only:
        raise VDSRError("--record stores a model's results; it cannot go with --bicubic-only")
    if args.record and args.ensemble:
        raise VDSRError("--record stores the plain model's results; run --ensemble without --record")
    from vdsr.engine import Upscaler

    upscaler = None
    if not args.bicubic_only:
        model, _ = load_model(args.weights)
        upscaler = Upscaler(model, **_engine_options(args))
    total = sum(len(list_images(d)) for d in args.data) * len(args.scales)
    results = []
    config = EvalConfig(scales=tuple(args.scales), protocol=args.protocol, max_pixels=args.max_pixels)
    with _tqdm(total=total, desc="evaluating", unit="img") as bar:
        for folder in args.data:
            results += evaluate_folder(upscaler, folder, config, progress=lambda _d: bar.update(1))
    run = upscaler.info.to_dict() if upscaler is not None else {}
    if upscaler is not None:
        print(f"model run: {upscaler.info.describe()}")
    print(format_table(results))
    rows = [r.to_dict() for r in results]
    if args.json:
        body = {"protocol": args.protocol, "weights": str(args.weights or "default"), "run": run,
                "results": rows}
        atomic_write_bytes(args.json, (json.dumps(body, indent=2) + "\n").encode())
    if args.record:
        target = args.weights or default_weights_path()
        record_evaluation(target, args.protocol, [{**row, **run} for row in rows])
        print(f"recorded {len(results)} results in {target}'s metadata")
    return 0


# ----------------------------------------------------------------------------------------------
# convert / info
# ----------------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    from vdsr.errors import VDSRError
    from vdsr.importers import convert

    dst = Path(args.output)
    if dst.exists() and not args.overwrite:
        raise VDSRError(f"{dst}: already exists (pass --overwrite to replace it)")
    if not dst.parent.exists():
        raise VDSRError(f"{dst}: output folder {dst.parent} does not exist")
    meta = convert(args.source, dst)
    print(f"wrote {dst}: {meta.config.depth} layers, width {meta.config.width}, "
          f"bias={meta.config.bias}; {meta.source}")
    return 0


def _format_info(path: Path, info: dict[str, Any], named: bool = True) -> str:
    """A weights file's metadata (:func:`vdsr.weights.weights_summary`) as a short readable summary.

    ``named``: the file was given on the command line (the JSON hint repeats it). Free-form
    recipe values of unexpected types are shown as they are, never formatted as numbers.
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
    lines.append(f"(everything, as JSON: vdsr info {shlex.quote(str(path)) + ' ' if named else ''}--json)")
    return "\n".join(lines)


def cmd_info(args: argparse.Namespace) -> int:
    from vdsr.weights import default_weights_path, read_metadata, weights_summary

    path = Path(args.weights) if args.weights else default_weights_path()
    info = weights_summary(read_metadata(path))
    print(json.dumps(info, indent=2) if args.json else _format_info(path, info, named=bool(args.weights)))
    return 0


# ----------------------------------------------------------------------------------------------
# prepare / train
# ----------------------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from vdsr.errors import VDSRError
    from vdsr.train.data import collect_files, degraded_images, write_hdf5

    out = Path(args.output)
    if out.exists() and not args.overwrite:
        raise VDSRError(f"{out}: already exists (pass --overwrite to replace it)")
    if not out.parent.exists():
        raise VDSRError(f"{out}: output folder {out.parent} does not exist")
    files = collect_files(args.data)
    bar = _tqdm(total=len(files), desc="preparing", unit="img")
    images = degraded_images(files, args.scales, args.channels, args.downscales, args.patch,
                             on_image=lambda _p: bar.update(1))
    n = write_hdf5(out, images, patch=args.patch, stride=args.stride,
                   rotations=(0,) if args.no_rotate else (0, 1, 2, 3), flips=not args.no_flip)
    bar.close()
    print(f"wrote {n:,} patch pairs of {args.patch}x{args.patch} to {out}")
    return 0


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (an option left out is None)."""
    from vdsr.train import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    return {k: v for k, v in vars(args).items() if k in fields and v is not None}


def _train_config(args: argparse.Namespace) -> Any:
    from vdsr.train import TrainConfig

    return TrainConfig(**_train_flags(args))


def _train_flag(field: str) -> str:
    """The `vdsr train` option that sets a TrainConfig field."""
    return "--no-bias" if field == "bias" else "--" + field.replace("_", "-")


def _stop_acknowledged(bar: Any) -> Callable[[str], None]:
    """Trainer's ``on_stop_requested``: say at once that the signal was heard.

    It runs inside the signal handler, which may have interrupted a write to stderr, so it
    writes to the file descriptor directly rather than through the (locked) text stream.
    """

    def acknowledge(signal_name: str) -> None:
        what = ("(Ctrl-C again to stop at once)" if signal_name == "SIGINT"
                else f"({signal_name}; Ctrl-C to stop at once)")
        text = f"{PROG}: stopping at the end of this step... {what}\n"
        if not bar.disable:
            text = "\n" + text  # below the progress bar's line
        try:
            os.write(sys.stderr.fileno(), text.encode())
        except (OSError, ValueError, AttributeError):  # stderr replaced by one without a descriptor
            sys.stderr.write(text)

    return acknowledge


def cmd_train(args: argparse.Namespace) -> int:
    import logging

    from vdsr.errors import InvalidArgument
    from vdsr.train import Trainer, configure_process
    from vdsr.train.distributed import distributed_context
    from vdsr.train.runfolder import RunFolder

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with distributed_context() as dist:
        state = None
        if args.resume:
            if args.overwrite:
                raise InvalidArgument("--overwrite starts a new run; it cannot be combined with --resume")
            # every option given is passed on: those a resumed run cannot change are refused
            config, state = RunFolder(args.resume).resume(_train_flags(args))  # checked; writes nothing
        else:
            config = _train_config(args)
        configure_process(config, state)
        bar = _tqdm(total=config.steps, desc="training", unit="step",
                    disable=True if not dist.is_main else None)

        def progress(step: int, row: dict[str, float]) -> None:
            bar.n = step
            bar.refresh()
            if "train_loss" in row:
                bar.set_postfix(loss=f"{row['train_loss']:.2e}", lr=f"{row['learning_rate']:.1e}",
                                pps=f"{row['patches_per_s']:.0f}")
            if not dist.is_main:
                return
            parts = [f"step {step}"]
            for key, value in row.items():
                if key != "step":
                    parts.append(f"{key}={value:.4g}")
            if bar.disable or "val_psnr_mean" in row:
                bar.write(" ".join(parts), file=sys.stderr)

        try:
            trainer = Trainer(config, state=state, overwrite=args.overwrite, progress=progress,
                              dist=dist, on_stop_requested=_stop_acknowledged(bar))
            bar.n = trainer.step
            best = trainer.fit()  # writes config.json, then trains
        finally:
            bar.close()  # also when stopped, so the error line starts on a fresh line
    if dist.is_main:
        print(f"done: {config.run_dir} (best validation {json.dumps(best)})")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from vdsr.errors import VDSRError
    from vdsr.model import VDSR, VDSRConfig, count_parameters, flops_per_pixel
    from vdsr.summary import notes_inception_model, summarize

    if args.model == "inception":
        model, shape, title = notes_inception_model(), (224, 224, 3), "inception"
    elif args.model == "vdsr":
        model, shape, title = VDSR(VDSRConfig(body=args.body)), (41, 41, 1), f"vdsr ({args.body})"
    else:
        from vdsr.weights import read_metadata

        meta = read_metadata(args.model)
        model, title = VDSR(meta.config), Path(args.model).name
        shape = (41, 41, meta.config.channels)
    if args.input_shape:
        shape = tuple(args.input_shape)
        if shape[0] < 1 or shape[1] < 1 or shape[2] < 1:
            raise VDSRError(f"--input-shape must be positive, got {shape}")
    try:
        summary = summarize(model, shape)
    except RuntimeError as exc:
        raise VDSRError(f"model does not accept input shape {shape}: {str(exc).splitlines()[0]}") from None
    print(summary.format(title))
    if isinstance(model, VDSR):
        rf = model.config.receptive_field
        print(f"Receptive field: {rf}x{rf}; parameters: {count_parameters(model):,}; "
              f"{flops_per_pixel(model) / 1e6:.3f} MFLOP per output pixel")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vdsr.errors import VDSRError
    from vdsr.export import export_onnx, export_onnx_int8, export_torchscript
    from vdsr.weights import load_model

    if not args.onnx and not args.torchscript and not args.onnx_int8 and not args.rgb_onnx:
        raise VDSRError("nothing to do: pass --onnx OUT.onnx, --onnx-int8 OUT.onnx, "
                        "--rgb-onnx OUT.onnx --scale S and/or --torchscript OUT.pt")
    rgb_jobs = _rgb_onnx_paths(args)
    model, meta = load_model(args.weights)
    for path, writer in ((args.onnx, export_onnx), (args.onnx_int8, export_onnx_int8),
                         (args.torchscript, export_torchscript)):
        if path:
            if Path(path).exists() and not args.overwrite:
                raise VDSRError(f"{path}: already exists (pass --overwrite to replace it)")
            writer(model, path)
            print(f"wrote {path}")
    if rgb_jobs:
        from vdsr.rgb_onnx import export_rgb_onnx

        props = {"weights_source": meta.source, "trained_scales": meta.scales}
        for path, scale in rgb_jobs:
            if Path(path).exists() and not args.overwrite:
                raise VDSRError(f"{path}: already exists (pass --overwrite to replace it)")
            export_rgb_onnx(model, path, scale, fp16=args.fp16, metadata=props)
            print(f"wrote {path} (x{scale}{', fp16 network' if args.fp16 else ''})")
    return 0


def _rgb_onnx_paths(args: argparse.Namespace) -> list[tuple[str, int]]:
    """``(path, scale)`` per ``--scale`` of ``--rgb-onnx``: the name itself for one scale,
    ``NAME_x{S}.onnx`` for several. Checked before anything is loaded or written."""
    from vdsr.errors import VDSRError
    from vdsr.rgb_onnx import check_integer_scale

    if not args.rgb_onnx:
        if args.scale or args.fp16:
            raise VDSRError("--scale and --fp16 apply to --rgb-onnx only")
        return []
    if not args.scale:
        raise VDSRError("--rgb-onnx needs --scale S (one or more integer factors, e.g. --scale 2 4)")
    scales = list(dict.fromkeys(check_integer_scale(s) for s in args.scale))
    out = Path(args.rgb_onnx)
    if len(scales) == 1:
        return [(str(out), scales[0])]
    return [(str(out.with_name(f"{out.stem}_x{s}{out.suffix}")), s) for s in scales]


def cmd_serve(args: argparse.Namespace) -> int:
    from vdsr.server import Limits, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: warning: serving on {args.host}: reachable from other machines", file=sys.stderr)
    serve(args.host, args.port, args.weights,
          Limits(max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels,
                 max_output_pixels=args.max_output_pixels, max_jobs=args.max_jobs, max_queue=args.max_queue),
          device=args.device, precision=args.precision,
          on_ready=lambda url: print(f"serving on {url} (Ctrl-C to stop)", flush=True),
          allow_hosts=tuple(args.allow_host), allow_origins=tuple(args.allow_origin))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vdsr.demo import run_demo

    report = run_demo(Path(args.output), scale=args.scale, weights=args.weights)
    print(report)
    return 0


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------


class _HelpFormatter(argparse.HelpFormatter):
    """Examples kept as written (descriptions wrapped); every option with a real default shows it."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if text.startswith("examples:"):
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (action.default not in (None, False, argparse.SUPPRESS) and "default" not in text
                and action.option_strings):
            text += " (default: %(default)s)"
        return text


_EXAMPLES = {
    "vdsr": """examples:
  vdsr upscale photo.jpg -s 2 -o photo_x2.png      one image
  vdsr upscale shots/ -s 3 -o big/ --format jpg    a folder
  vdsr serve                                        the web app on http://127.0.0.1:8000
  vdsr demo                                         try it on a bundled photo
run 'vdsr COMMAND --help' for a command's options""",
    "upscale": """examples:
  vdsr upscale photo.jpg -s 2 -o photo_x2.png
  vdsr upscale photo.jpg -s 2.5 -o photo.webp --quality 90
  vdsr upscale shots/ more.png -s 3 -o big/ --format jpg --suffix=-hd
  vdsr upscale scan.tif -s 4 -o out/ --compare scan_compare.png""",
    "evaluate": """examples:
  vdsr evaluate --data ../shared/datasets/Set5 ../shared/datasets/Set14 --scales 2 3 4
  vdsr evaluate --data ../shared/datasets/Set5 --bicubic-only""",
    "prepare": """examples:
  vdsr prepare --data ../shared/datasets/T91 -o train.h5
  vdsr prepare --data hr/ -o train_x2.h5 --scales 2 --no-flip""",
    "train": """examples:
  vdsr train --run-dir runs/mine --steps 20000
  vdsr train --resume runs/mine                    continue after Ctrl-C or a crash
  vdsr train --init-weights base.safetensors --learning-rate 2e-5 --steps 5000""",
    "convert": """examples:
  vdsr convert VDSR_Official.mat -o official.safetensors
  vdsr convert runs/mine/checkpoint.pt -o mine.safetensors""",
    "serve": """examples:
  vdsr serve
  vdsr serve --port 8080 --max-jobs 2""",
}

def _precision_flags(p: argparse.ArgumentParser, default: str = "auto") -> None:
    p.add_argument("--precision", choices=PRECISIONS, default=default, metavar="RECIPE",
                   help="the network's arithmetic: auto = the fastest recipe checked for these weights "
                        "on this machine (within 0.02 dB of fp32; checked once, cached), fp32 = exact, or "
                        f"one of {', '.join(PRECISIONS[2:])} (docs/recipes.md)")
    p.add_argument("--ensemble", action="store_true",
                   help="average the 8 flips/rotations of the image: 8x the compute, a little sharper")


def _backend_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=_BACKENDS + C.LEGACY_BACKENDS, default="auto", metavar="RUNTIME",
                   help="the runtime that runs the recipe: auto (the fastest measured for it: ONNX Runtime or "
                        "OpenVINO on a CPU, PyTorch on CUDA), torch, compile (torch.compile), onnxruntime, "
                        "openvino (if installed)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="VDSR super-resolution (Kim et al., CVPR 2016)",
                                     formatter_class=_HelpFormatter, epilog=_EXAMPLES["vdsr"])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str) -> argparse.ArgumentParser:  # noqa: A002
        return sub.add_parser(name, help=help, description=description, epilog=_EXAMPLES.get(name),
                              formatter_class=_HelpFormatter)

    def common_device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="auto",
                       help="where the network runs: auto (a CUDA GPU when there is one, else the CPU), "
                            "cpu, cuda, cuda:1, ...")

    p = add("upscale", "super-resolve images",
            "Super-resolve image files or folders of images by any factor: bicubic upscaling, then "
            "VDSR restores the detail. Colour images keep their colours (the network sharpens the "
            "luminance); alpha, EXIF, ICC profile and DPI are kept.")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--scale", "-s", type=_scale, required=True, metavar="S",
                   help=f"upscaling factor, 1 < S <= {C.MAX_SCALE:g}; the model is trained for 2-4, "
                        "other factors work with a warning")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=f"output file or folder. {OUTPUT_RULE}")
    p.add_argument("--format", choices=("png", "jpg", "webp", "tiff", "bmp"),
                   help="format of the images written into a folder (default png; a file's extension "
                        "sets its own)")
    p.add_argument("--quality", type=_quality, default=95,
                   help="JPEG/WebP quality, 1-100")
    p.add_argument("--suffix", help="added to each input's name in an output folder "
                                    "(default _xS, e.g. photo_x2.png; '' keeps the name)")
    p.add_argument("--weights", help="a .safetensors weights file (default: the shipped model)")
    p.add_argument("--tile", type=int, default=C.DEFAULT_TILE,
                   help="process in tiles of this side, 0 = whole image at once; the result is the same, "
                        "only memory use changes")
    _backend_flag(p)
    _precision_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--max-pixels", type=_positive_int, default=C.DEFAULT_MAX_PIXELS,
                   help="refuse inputs with more pixels")
    p.add_argument("--max-output-pixels", type=_positive_int, default=C.DEFAULT_MAX_OUTPUT_PIXELS,
                   help="refuse outputs (input pixels x scale²) with more pixels")
    p.add_argument("--compare", metavar="PNG",
                   help="also write a bicubic-vs-VDSR comparison (full-resolution crops) to this PNG "
                        "(one input)")
    common_device(p)
    p.set_defaults(func=cmd_upscale)

    p = add("evaluate", "Y-PSNR/SSIM on benchmark folders, beside the paper",
            "Downscale each high-resolution image, upscale it again with bicubic and with the model, "
            "and score both against the original (Y-PSNR/SSIM, MATLAB-compatible), beside the "
            "paper's numbers for Set5, Set14, B100 and Urban100.")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of HR images")
    p.add_argument("--scales", nargs="+", type=_int_scale, default=list(DEFAULT_SCALES), help="scales to score")
    p.add_argument("--weights", help="weights file (default: the shipped model)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--protocol", choices=("rgb8", "ydouble"), default="rgb8",
                   help="rgb8: 8-bit RGB LR (default); ydouble: LR from the double Y channel")
    p.add_argument("--bicubic-only", action="store_true", help="score bicubic alone, no model")
    p.add_argument("--record", action="store_true",
                   help="store the results in the weights file's metadata ('evaluation')")
    p.add_argument("--tile", type=int, default=C.DEFAULT_TILE,
                   help="process in tiles of this side, 0 = whole image; scores do not change")
    _backend_flag(p)
    _precision_flags(p, default="fp32")
    p.add_argument("--max-pixels", type=_positive_int, default=C.DEFAULT_MAX_PIXELS,
                   help="refuse larger images")
    common_device(p)
    p.set_defaults(func=cmd_evaluate)

    p = add("convert", "import weights into .safetensors",
            "Import published weights (the authors' MatConvNet .mat, a pytorch-vdsr .pth), a "
            "`vdsr train` checkpoint.pt, or re-check a .safetensors file; write .safetensors.")
    p.add_argument("source", help="MatConvNet .mat (official), checkpoint.pt, pytorch-vdsr .pth, or .safetensors")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_convert)

    p = add("info", "summarise a weights file: model, scales, training, results",
            "Summarise a weights file: architecture, trained scales, where it came from, how it was "
            "trained and its recorded results.")
    p.add_argument("weights", nargs="?", help="weights file (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print all the metadata as JSON")
    p.set_defaults(func=cmd_info)

    p = add("prepare", "write an HDF5 file of training patches",
            "Cut (low-resolution, high-resolution) patch pairs from folders of HR images, with the "
            "paper's augmentation (rotations, flips, downscaling), into one chunked HDF5 file for "
            "`vdsr train --h5`. Optional: `vdsr train` cuts patches on the fly by default.")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of HR images")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    p.add_argument("--scales", nargs="+", type=_int_scale, default=list(DEFAULT_SCALES), help="scales to cut pairs for")
    p.add_argument("--patch", type=_positive_int, default=41, help="patch side in pixels")
    p.add_argument("--stride", type=_positive_int, default=41, help="step between patches in pixels")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1: Y only; 3: RGB")
    p.add_argument("--downscales", nargs="+", type=float, default=[1.0, 0.7, 0.5],
                   help="also use each image shrunk by these factors")
    p.add_argument("--no-rotate", action="store_true", help="skip the 90/180/270 rotations")
    p.add_argument("--no-flip", action="store_true", help="skip the flipped copies")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.set_defaults(func=cmd_prepare)

    from vdsr.constants import OPTIMIZERS, SCHEDULES

    p = add("train", "train a VDSR model (resumable)",
            "Train VDSR on folders of HR images (patches cut on the fly) or an HDF5 file from "
            "`vdsr prepare`. The run folder gets checkpoint.pt (every --checkpoint-every steps), "
            "best.safetensors, last.safetensors, metrics.csv and curve.png; Ctrl-C stops at a step "
            "boundary with a checkpoint, and --resume continues it exactly. Options left out take "
            "the recipe's defaults (README, 'Training').")
    p.add_argument("--run-dir", help="folder for checkpoints, logs and weights (default runs/vdsr)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--train-dirs", nargs="+", metavar="DIR", help="HR training folders (default: T91 + BSD200)")
    p.add_argument("--h5", help="train from an HDF5 patch file instead of on-the-fly patches")
    p.add_argument("--val-dir", help="validation folder (default ../shared/datasets/Set5)")
    p.add_argument("--scales", nargs="+", type=_int_scale, help="scales mixed in training (2 3 4)")
    p.add_argument("--downscales", nargs="+", type=float, help="image shrink factors for augmentation (1.0 0.7 0.5)")
    p.add_argument("--channels", type=int, choices=(1, 3), help="1: Y only, as the paper (1); 3: RGB")
    p.add_argument("--depth", type=_positive_int, help="convolution layers (20)")
    p.add_argument("--width", type=_positive_int, help="channels of the hidden layers (64)")
    p.add_argument("--no-bias", dest="bias", action="store_false", default=None, help="convolutions without biases")
    p.add_argument("--body", choices=C.BODIES,
                   help="architecture between the input and output layers (plain: the paper)")
    p.add_argument("--patch", type=_positive_int, help="training patch side (41)")
    p.add_argument("--batch-size", type=_positive_int, help="patches per step (64)")
    p.add_argument("--steps", type=_positive_int, help="optimiser steps (10000)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, help="adam (default) or the paper's sgd")
    p.add_argument("--learning-rate", type=float, help="peak learning rate (1e-4)")
    p.add_argument("--schedule", choices=SCHEDULES,
                   help="learning-rate schedule (exponential)")
    p.add_argument("--warmup-steps", type=int, help="linear warm-up steps (0)")
    p.add_argument("--decay-steps", type=int, help="step/exponential: steps per x0.1 decay (0: half of --steps)")
    p.add_argument("--clip", type=float, help="gradient clip: Adam, by value; SGD, the paper's theta (0.1)")
    p.add_argument("--momentum", type=float, help="SGD momentum (0.9)")
    p.add_argument("--weight-decay", type=float, help="L2 weight decay (Adam 0, SGD 1e-4)")
    p.add_argument("--seed", type=int, help="random seed (0)")
    p.add_argument("--log-every", type=_positive_int, help="log the loss every N steps")
    p.add_argument("--val-every", type=_positive_int, help="validate every N steps")
    p.add_argument("--checkpoint-every", type=_positive_int, help="write checkpoint.pt every N steps (500)")
    p.add_argument("--skip-nonfinite", action="store_true", default=None,
                   help="skip a step with a NaN/inf loss instead of stopping")
    p.add_argument("--init-weights", help="start from these .safetensors weights (fine-tune)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--precision", choices=C.TRAIN_PRECISIONS,
                   help="arithmetic of the training passes: auto (default: bf16 autocast on CUDA and "
                        "on CPUs with AVX512_BF16 or AMX, fp32 on other CPUs), fp32, tf32 (CUDA), "
                        "fp16 (autocast + loss scaling), bf16")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the forward/backward (CUDA graphs on one GPU); "
                        "the first steps pay the compile time")
    p.add_argument("--overwrite", action="store_true",
                   help="start afresh in a folder that holds a run (or other files): the run's own "
                        "files there are replaced, nothing else")
    p.set_defaults(func=cmd_train)

    p = add("export", "export weights to ONNX (dynamic H/W) or TorchScript",
            "Export a weights file to ONNX (any height and width), its int8-quantised ONNX, or TorchScript.")
    p.add_argument("weights", nargs="?", help="weights file (default: the shipped model)")
    p.add_argument("--onnx", help="ONNX file to write")
    p.add_argument("--onnx-int8", help="int8-quantised ONNX file to write (the int8 backend's model)")
    p.add_argument("--torchscript", help="TorchScript file to write")
    p.add_argument("--rgb-onnx", metavar="OUT.onnx",
                   help="self-contained RGB-in/RGB-out ONNX model (YCbCr, MATLAB bicubic, network "
                        "and merge in the graph) for chaiNNer, TensorRT, ...; needs --scale")
    p.add_argument("--scale", type=float, nargs="+", metavar="S",
                   help="integer scale(s) of --rgb-onnx; several write OUT_x{S}.onnx each")
    p.add_argument("--fp16", action="store_true",
                   help="--rgb-onnx with the network in fp16 (input and output stay float32)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.set_defaults(func=cmd_export)

    p = add("summary", "Keras-style model summary",
            "Print a Keras-style summary (layers, output shapes, parameters, connections) of VDSR, "
            "of the Inception example (a 224x224x3 input into one Inception block of 64 filters), "
            "or of a weights file's model.")
    p.add_argument("model", help="vdsr, inception (the Inception example) or a weights file")
    p.add_argument("--input-shape", nargs=3, type=int, metavar=("H", "W", "C"), help="input size to trace")
    p.add_argument("--body", choices=C.BODIES, default="plain",
                   help="VDSR body (with MODEL=vdsr)")
    p.set_defaults(func=cmd_summary)

    p = add("serve", "local web app: drop images, compare before/after, download",
            "Serve a web page (and a JSON/PNG API, documented at /api/docs) for upscaling images "
            "in the browser. Only this machine can reach it unless --host says otherwise.")
    p.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--weights", help="weights file (default: the shipped model)")
    p.add_argument("--max-upload-mb", type=_positive_int, default=C.SERVER_MAX_UPLOAD_MB,
                   help="refuse larger uploads")
    p.add_argument("--max-pixels", type=_positive_int, default=C.SERVER_MAX_PIXELS,
                   help="refuse images with more pixels")
    p.add_argument("--max-output-pixels", type=_positive_int, default=C.SERVER_MAX_OUTPUT_PIXELS,
                   help="refuse results (image pixels x scale²) with more pixels")
    p.add_argument("--max-jobs", type=_positive_int, default=1,
                   help="images upscaled at once; others wait in a queue")
    p.add_argument("--max-queue", type=_positive_int, default=C.SERVER_MAX_QUEUE,
                   help="images that may wait; more get '503 busy'")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="also answer to this host name (the server refuses other names than its "
                        "address and localhost); repeat for several")
    p.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                   help="let pages of this origin (https://photos.example) use the API; other "
                        "sites' pages are refused; repeat for several")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network arithmetic: auto = fp32 on CPU, fp16 on CUDA")
    common_device(p)
    p.set_defaults(func=cmd_serve)

    p = add("demo", "upscale a bundled sample and write a comparison PNG",
            "Shrink a bundled photo, upscale it with bicubic and with the model, and write the images, "
            "a comparison PNG and their Y-PSNR against the original.")
    p.add_argument("-o", "--output", default="vdsr-demo", help="output folder")
    p.add_argument("--scale", type=_int_scale, default=3, help="scale factor")
    p.add_argument("--weights", help="weights file (default: the shipped model)")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"{PROG} {version('vdsr')}"
    except Exception:  # noqa: BLE001 - running from a source tree
        return f"{PROG} (source)"


def _return_freed_memory() -> None:
    """Ask glibc to serve allocations of 1 MB and more by mmap, so that freed image buffers and
    network activations go back to the system instead of staying in the heap: the peak RSS of a
    1024² upscale drops by ~110 MB (measured). A no-op where libc is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code (0 ok, 1 error, 2 bad usage, 130 interrupted, 141 when
    the reader of stdout has gone, as for a tool that SIGPIPE ends)."""
    from vdsr.errors import TrainingInterrupted, VDSRError

    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            _return_freed_memory()
            warnings.showwarning = _show_warning
            return int(args.func(args))
        except TrainingInterrupted as exc:
            _err(f"{exc}: continue with --resume {exc.run_dir}")
            return 130
        except VDSRError as exc:
            _err(_describe(exc))
            return 1
        except KeyboardInterrupt:
            _err("interrupted")
            return 130
        except MemoryError:
            _err("out of memory (try a smaller --tile or --batch-size)")
            return 1
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback when Python exits
    except BrokenPipeError:  # `vdsr info --json | head -c 100`: stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError, AttributeError):
            # Python flushes stdout again at exit: let that write go nowhere instead of failing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
