"""The ``vdsr`` subcommands: each maps its parsed flags onto library calls and prints the result.
Library modules are imported inside the commands, so parsing needs no torch."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from vdsr import constants as C
from vdsr.cli.words import PROG, describe, err


def _tqdm(**kwargs: Any) -> Any:
    """A progress bar on stderr, shown only on a terminal (logs and pipes stay clean)."""
    from tqdm import tqdm

    kwargs.setdefault("disable", None)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def _library_notes_shown() -> Iterator[None]:
    """Show the library's INFO notes (a recipe being checked, int8 calibrating) as ``vdsr: ...``
    lines while the block runs; the library stays silent for callers of ``main`` afterwards."""
    logger = logging.getLogger("vdsr")
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (tests and tools replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def _expand_inputs(inputs: Sequence[str]) -> list[Path]:
    from vdsr.images import list_images

    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        files.extend(list_images(p) if p.is_dir() else [p])
    return files


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
    return {"device": args.device, "precision": precision, "backend": backend,
            "tile": getattr(args, "tile", C.DEFAULT_TILE), "ensemble": getattr(args, "ensemble", False)}


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
            failures.append(describe(exc))
        bar.update(1)
    bar.close()
    run = f"({upscaler.info.describe()})" if upscaler is not None else ""
    if single_target and not failures:
        print(f"wrote {targets[0]} {run}")
    elif not single_target:
        print(f"wrote {len(files) - len(failures)} of {len(files)} images to {folder} {run}")
    if failures:
        if len(files) == 1:
            err(failures[0])
        else:
            err(f"{len(failures)} of {len(files)} images failed:")
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vdsr.engine import Upscaler
    from vdsr.errors import InvalidArgument
    from vdsr.evaluate import EvalConfig, evaluate_folder, format_table
    from vdsr.fileio import atomic_write_bytes
    from vdsr.images import list_images
    from vdsr.weights import default_weights_path, load_model, record_evaluation

    if args.record and args.bicubic_only:
        raise InvalidArgument("--record stores a model's results; it cannot go with --bicubic-only")
    if args.record and args.ensemble:
        raise InvalidArgument("--record stores the plain model's results; run --ensemble without --record")
    upscaler = None
    if not args.bicubic_only:
        model, _ = load_model(args.weights)
        with _library_notes_shown():
            upscaler = Upscaler(model, **_engine_options(args))
    config = EvalConfig(scales=tuple(args.scales), protocol=args.protocol, max_pixels=args.max_pixels)
    results = []
    with _tqdm(total=sum(len(list_images(d)) for d in args.data) * len(args.scales), desc="evaluating",
               unit="img") as bar:
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


def _refuse_existing(*paths: str | Path | None, overwrite: bool) -> None:
    from vdsr.errors import VDSRError

    for path in paths:
        if path and Path(path).exists() and not overwrite:
            raise VDSRError(f"{path}: already exists (pass --overwrite to replace it)")
        if path and not Path(path).parent.exists():
            raise VDSRError(f"{path}: output folder {Path(path).parent} does not exist")


def cmd_convert(args: argparse.Namespace) -> int:
    from vdsr.importers import convert

    _refuse_existing(args.output, overwrite=args.overwrite)
    meta = convert(args.source, args.output)
    print(f"wrote {args.output}: {meta.config.depth} layers, width {meta.config.width}, "
          f"bias={meta.config.bias}; {meta.source}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vdsr.weights import default_weights_path, describe, read_metadata, weights_summary

    path = Path(args.weights) if args.weights else default_weights_path()
    info = weights_summary(read_metadata(path))
    print(json.dumps(info, indent=2) if args.json else describe(path, info, named=bool(args.weights)))
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vdsr.train.data import collect_files, degraded_images, write_hdf5

    _refuse_existing(args.output, overwrite=args.overwrite)
    files = collect_files(args.data)
    stride = args.stride or args.patch
    with _tqdm(total=len(files), desc="preparing", unit="img") as bar:
        images = degraded_images(files, args.scales, args.channels, args.downscales, args.patch,
                                 on_image=lambda _p: bar.update(1))
        n = write_hdf5(Path(args.output), images, patch=args.patch, stride=stride,
                       rotations=(0,) if args.no_rotate else (0, 1, 2, 3), flips=not args.no_flip)
    print(f"wrote {n:,} patch pairs of {args.patch}x{args.patch} to {args.output}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from vdsr.summary import summary_text

    print(summary_text(args.model, tuple(args.input_shape) if args.input_shape else None, args.body))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from vdsr.errors import InvalidArgument
    from vdsr.export import export_onnx, export_onnx_int8, export_torchscript
    from vdsr.rgb_onnx import export_rgb_onnx, output_paths
    from vdsr.weights import load_model

    if not (args.onnx or args.torchscript or args.onnx_int8 or args.rgb_onnx):
        raise InvalidArgument("nothing to do: pass --onnx OUT.onnx, --onnx-int8 OUT.onnx, "
                              "--rgb-onnx OUT.onnx --scale S and/or --torchscript OUT.pt")
    if not args.rgb_onnx and (args.scale or args.fp16):
        raise InvalidArgument("--scale and --fp16 apply to --rgb-onnx only")
    if args.rgb_onnx and not args.scale:
        raise InvalidArgument("--rgb-onnx needs --scale S (one or more integer factors, e.g. --scale 2 4)")
    rgb_jobs = output_paths(args.rgb_onnx, args.scale) if args.rgb_onnx else []
    _refuse_existing(args.onnx, args.onnx_int8, args.torchscript, *(p for p, _ in rgb_jobs),
                     overwrite=args.overwrite)
    model, meta = load_model(args.weights)
    for path, writer in ((args.onnx, export_onnx), (args.onnx_int8, export_onnx_int8),
                         (args.torchscript, export_torchscript)):
        if path:
            writer(model, path)
            print(f"wrote {path}")
    props = {"weights_source": meta.source, "trained_scales": meta.scales}
    for path, scale in rgb_jobs:
        export_rgb_onnx(model, path, scale, fp16=args.fp16, metadata=props)
        print(f"wrote {path} (x{scale}{', fp16 network' if args.fp16 else ''})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from vdsr.server import Limits, serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: warning: serving on {args.host}: reachable from other machines", file=sys.stderr)
    options = _engine_options(args)
    with _library_notes_shown():
        serve(args.host, args.port, args.weights,
              Limits(max_upload_bytes=args.max_upload_mb * 1024 * 1024, max_pixels=args.max_pixels,
                     max_output_pixels=args.max_output_pixels, max_jobs=args.max_jobs,
                     max_queue=args.max_queue),
              device=options["device"], precision=options["precision"],
              on_ready=lambda url: print(f"serving on {url} (Ctrl-C to stop)", flush=True),
              allow_hosts=tuple(args.allow_host), allow_origins=tuple(args.allow_origin))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vdsr.demo import run_demo

    print(run_demo(Path(args.output), scale=args.scale, weights=args.weights))
    return 0


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (an option left out is None)."""
    from vdsr.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _train_config(args: argparse.Namespace) -> Any:
    from vdsr.train import TrainConfig

    return TrainConfig(**_train_flags(args))


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


