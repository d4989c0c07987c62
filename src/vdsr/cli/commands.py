"""The ``vdsr`` subcommands: each maps its parsed flags onto library calls and prints the result.
Library modules are imported inside the commands, so parsing needs no torch."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import sys
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from vdsr import constants as C
from vdsr.cli.console import (
    ImageProgress,
    ending,
    library_notes_shown,
    progress_bar,
    sigterm_stops,
    stop_acknowledged,
)
from vdsr.cli.words import PROG, describe_row, err, one_line


def cmd_upscale(args: argparse.Namespace) -> int:
    with library_notes_shown(), sigterm_stops():
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
    from vdsr import batch
    from vdsr.errors import StopRequested
    from vdsr.io.outputs import NamingRule
    from vdsr.sizes import check_scale
    from vdsr.weights import load_model

    if args.compare and (len(args.inputs) > 1 or Path(args.inputs[0]).is_dir()):
        err("--compare writes one comparison: it takes one input file, not several or a folder")
        return 2
    plan = batch.plan(args.inputs, args.output, NamingRule(args.scale, args.suffix, args.format),
                      recursive=args.recursive)
    batch.check(plan, overwrite=args.overwrite)  # before anything is loaded
    if args.compare:
        _check_compare(args, plan.jobs[0])
    if args.ray is not None:
        _check_ray()
    if plan.skipped:
        print(f"{PROG}: skipped {sum(map(len, plan.skipped.values()))} entries of the input folders: "
              f"{one_line(batch.describe_skipped(plan.skipped))}", file=sys.stderr)
    model, meta = load_model(args.weights)
    check_scale(args.scale, meta.scales)
    options = _engine_options(args)
    settings = batch.Settings(scale=args.scale, weights=args.weights, device=options["device"],
                              precision=options["precision"], backend=options["backend"],
                              tile=options["tile"], ensemble=options["ensemble"], max_pixels=args.max_pixels,
                              max_output_pixels=args.max_output_pixels, quality=args.quality)
    progress = ImageProgress(len(plan.jobs), args.scale)
    try:
        summary = batch.run(plan, settings, overwrite=args.overwrite, workers=args.workers,
                            remote=_ray(args), model=model,
                            events=progress)
    except (KeyboardInterrupt, StopRequested) as exc:
        ending()
        progress.bar.close()
        name = exc.signal if isinstance(exc, StopRequested) else "SIGINT"
        err(f"stopped by {name} after {progress.finished_rows} of {len(plan.jobs)} images; nothing is "
            "half-written, and the same command again does the rest")
        return 128 + 15 if name == "SIGTERM" else 130
    progress.bar.close()
    run = f" ({summary.run.describe()})" if summary.run is not None else ""
    failures = [describe_row(r) for r in summary.failures]
    if plan.single_file:
        if failures:
            err(failures[0])
            return 1
        if args.compare:
            _write_compare(args, plan.jobs[0].source, plan.jobs[0].target)
        print(f"wrote {plan.out}{run}")
        return 0
    print(f"done {summary.done}, skipped {summary.skipped}, failed {summary.failed}, in "
          f"{summary.seconds:.1f} s: {plan.out}{run}")
    if failures:
        err(f"{len(failures)} of {len(plan.jobs)} images failed:")
        for line in failures:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0


def _check_compare(args: argparse.Namespace, job: Any) -> None:
    """``--compare`` obeys the rules of ``-o``: never the input, never the output, never an
    existing file without --overwrite; the format follows its extension."""
    from vdsr.io.outputs import check_target, check_unique, format_of

    format_of(args.compare)
    check_unique([("the upscaled image", job.target), ("the comparison", args.compare)], kind="outputs")
    check_target(args.compare, overwrite=args.overwrite, inputs=[job.source])


def _ray(args: argparse.Namespace) -> Any:
    """``--ray [ADDRESS]``: the Ray runner (None without the flag)."""
    if args.ray is None:
        return None
    from vdsr.batch.ray_jobs import OnRay

    return OnRay(args.ray or None, args.workers)


def _check_ray() -> None:
    from vdsr.extras import need

    need("ray.data", "ray")


def _write_compare(args: argparse.Namespace, src: Path, dst: Path) -> None:
    from vdsr.plots import compare_files

    compare_files(src, dst, args.scale, args.compare)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vdsr.engine import Upscaler
    from vdsr.errors import InvalidArgument
    from vdsr.evaluate import EvalConfig, evaluate_folder, format_table
    from vdsr.io.fileio import atomic_write_bytes
    from vdsr.io.images import list_images
    from vdsr.weights import default_weights_path, load_model, record_evaluation

    if args.record and args.bicubic_only:
        raise InvalidArgument("--record stores a model's results; it cannot go with --bicubic-only")
    if args.record and args.ensemble:
        raise InvalidArgument("--record stores the plain model's results; run --ensemble without --record")
    if args.json:  # before any score is computed: a folder that cannot take it fails now
        from vdsr.io.outputs import check_target

        check_target(args.json, overwrite=True)
    upscaler = None
    if not args.bicubic_only:
        model, _ = load_model(args.weights)
        with library_notes_shown():
            upscaler = Upscaler(model, **_engine_options(args))
    config = EvalConfig(scales=tuple(args.scales), protocol=args.protocol, max_pixels=args.max_pixels)
    results = []
    with progress_bar(total=sum(len(list_images(d)) for d in args.data) * len(args.scales), desc="evaluating",
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


def _refuse_existing(*paths: str | Path | None, overwrite: bool, inputs: Sequence[str | Path | None] = ()) -> None:
    """Each of ``paths`` may be written (:func:`vdsr.io.outputs.check_target`), and no two are
    the same; checked before any work."""
    from vdsr.io.outputs import check_target, check_unique

    given = [p for p in paths if p]
    check_unique(((f"the {i + 1}. output", p) for i, p in enumerate(given)), kind="outputs")
    for path in given:
        check_target(path, overwrite=overwrite, inputs=[i for i in inputs if i])


def cmd_convert(args: argparse.Namespace) -> int:
    from vdsr.weights.importers import convert

    _refuse_existing(args.output, overwrite=args.overwrite, inputs=[args.source])
    meta = convert(args.source, args.output)
    print(f"wrote {args.output}: {meta.config.depth} layers, width {meta.config.width}, "
          f"bias={meta.config.bias}; {meta.source}")
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from vdsr.weights import default_weights_path, describe, read_metadata, weights_summary

    path = Path(args.weights) if args.weights else default_weights_path()
    info = weights_summary(read_metadata(path))
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        named = shlex.quote(str(path)) + " " if args.weights else ""
        print(describe(path, info) + f"\n(everything, as JSON: {PROG} info {named}--json)")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from vdsr.extras import need
    from vdsr.train.data import collect_files, degraded_images, write_hdf5

    need("h5py", "train")

    _refuse_existing(args.output, overwrite=args.overwrite)
    files = collect_files(args.data)
    stride = args.stride or args.patch
    with progress_bar(total=len(files), desc="preparing", unit="img") as bar:
        images = degraded_images(files, args.scales, args.channels, args.downscales, args.patch,
                                 on_image=lambda _p: bar.update(1))
        n = write_hdf5(Path(args.output), images, patch=args.patch, stride=stride,
                       rotations=(0,) if args.no_rotate else (0, 1, 2, 3), flips=not args.no_flip)
    print(f"wrote {n:,} patch pairs of {args.patch}x{args.patch} to {args.output}")
    return 0


def cmd_summary(args: argparse.Namespace) -> int:
    from vdsr.nn.summary import summary_text

    config = None
    if args.model not in ("vdsr", "inception"):  # a weights file
        from vdsr.weights import read_metadata

        config = read_metadata(args.model).config
    print(summary_text(args.model, tuple(args.input_shape) if args.input_shape else None, args.body,
                       config=config))
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
                     overwrite=args.overwrite, inputs=[args.weights])
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
    from vdsr.extras import need_all

    need_all("serve")
    from vdsr.serve.jobs import Limits
    from vdsr.serve.listen import serve

    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"{PROG}: warning: serving on {args.host}: reachable from other machines", file=sys.stderr)
    options = _engine_options(args)
    with library_notes_shown():
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

    print(run_demo(Path(args.output), scale=args.scale, weights=args.weights, overwrite=args.overwrite))
    return 0


def _train_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields given on the command line (an option left out is None)."""
    from vdsr.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)}
    return {k: v for k, v in vars(args).items() if k in names and v is not None}


def _train_config(args: argparse.Namespace) -> Any:
    from vdsr.train import TrainConfig

    return TrainConfig(**_train_flags(args))


def cmd_train(args: argparse.Namespace) -> int:
    from vdsr.errors import InvalidArgument
    from vdsr.extras import need_all

    need_all("train")
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
        bar = progress_bar(total=config.steps, desc="training", unit="step",
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
                              dist=dist, on_stop_requested=stop_acknowledged(bar))
            bar.n = trainer.step
            best = trainer.fit()  # writes config.json, then trains
        finally:
            bar.close()  # also when stopped, so the error line starts on a fresh line
    if dist.is_main:
        print(f"done: {config.run_dir} (best validation {json.dumps(best)})")
    return 0


