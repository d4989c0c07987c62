"""The ``vdsr`` command line: parsing, progress display and error reporting only.

Every subcommand maps its flags onto library calls. Errors from the library
(:class:`vdsr.errors.VDSRError`) become one line on stderr and exit code 1; bad flags exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vdsr.constants import BACKENDS as _BACKENDS
from vdsr.constants import PRECISIONS

PROG = "vdsr"


def _err(msg: str) -> None:
    print(f"{PROG}: error: {msg}", file=sys.stderr)


def _describe(exc: Exception) -> str:
    """The library's message, with the flag that changes the limit where one does."""
    from vdsr.errors import NonFiniteLoss, TooLarge

    if isinstance(exc, TooLarge):
        flag = "--max-pixels" if exc.what == "input" else "--max-output-pixels"
        return f"{exc} (raise it with {flag})"
    if isinstance(exc, NonFiniteLoss):
        return f"{exc} (lower --learning-rate, or pass --skip-nonfinite)"
    return str(exc)


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


def _scale(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 1:
        raise argparse.ArgumentTypeError(f"must be a finite number greater than 1, got {text}")
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


def _output_paths(files: list[Path], out: Path, scale: float, single_target: bool) -> list[Path]:
    from vdsr.errors import VDSRError

    if single_target:
        return [out]
    if out.exists() and not out.is_dir():
        raise VDSRError(f"{out}: several inputs need an output folder, and this is a file")
    out.mkdir(parents=True, exist_ok=True)
    names = [out / f"{f.stem}_x{scale:g}.png" for f in files]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise VDSRError(f"two inputs would both write {sorted(dupes)[0]}")
    return names


def cmd_upscale(args: argparse.Namespace) -> int:
    from vdsr.engine import Upscaler
    from vdsr.errors import VDSRError
    from vdsr.images import IMAGE_SUFFIXES, load_image, save_image
    from vdsr.inference import check_scale, upscale_image
    from vdsr.weights import load_model

    files = _expand_inputs(args.inputs)
    out = Path(args.output)
    single_target = (len(files) == 1 and not Path(args.inputs[0]).is_dir()
                     and not out.is_dir() and out.suffix.lower() in IMAGE_SUFFIXES)
    if single_target and not out.parent.exists():
        raise VDSRError(f"{out}: output folder {out.parent} does not exist")
    model, meta = load_model(args.weights, device=args.device)
    check_scale(args.scale, meta.scales)
    upscaler = Upscaler(model, device=args.device, precision=args.precision, backend=args.backend,
                        tile=args.tile, ensemble=args.ensemble)
    targets = _output_paths(files, out, args.scale, single_target)
    folder = targets[0].parent
    if not os.access(folder, os.W_OK):
        raise VDSRError(f"{folder}: output folder is not writable")
    failures: list[str] = []
    bar = _tqdm(total=len(files), desc="upscaling", unit="img", disable=True if len(files) < 2 else None)
    for src, dst in zip(files, targets, strict=True):
        try:
            if dst.exists() and src.exists() and dst.resolve() == src.resolve():
                raise VDSRError(f"{dst}: output would overwrite its own input")
            if dst.exists() and not args.overwrite:
                raise VDSRError(f"{dst}: already exists (pass --overwrite to replace it)")
            img = load_image(src, max_pixels=args.max_pixels)
            out_pixels, alpha = upscale_image(upscaler, img, args.scale)
            save_image(dst, out_pixels, alpha, img.bit_depth)
            if args.compare and len(files) == 1:
                import numpy as np

                from vdsr.inference import bicubic_upscale
                from vdsr.plots import comparison

                comparison([("bicubic", bicubic_upscale(img.pixels, args.scale)),
                            ("VDSR", out_pixels / float(np.iinfo(out_pixels.dtype).max))],
                           args.compare)
        except VDSRError as exc:  # keep going; every failure is listed at the end
            failures.append(_describe(exc))
        bar.update(1)
    bar.close()
    if failures:
        if len(files) == 1:
            _err(failures[0])
        else:
            _err(f"{len(failures)} of {len(files)} images failed:")
            for f in failures:
                print(f"  {f}", file=sys.stderr)
        return 1
    info = upscaler.info
    print(f"wrote {targets[0] if len(targets) == 1 else f'{len(targets)} images to {folder}'} "
          f"({info.backend}, {info.precision}, {info.device}{', ensemble' if info.ensemble else ''})")
    return 0


# ----------------------------------------------------------------------------------------------
# evaluate
# ----------------------------------------------------------------------------------------------


def cmd_evaluate(args: argparse.Namespace) -> int:
    from vdsr.errors import VDSRError
    from vdsr.evaluate import evaluate_folder, format_table
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
        model, _ = load_model(args.weights, device=args.device)
        upscaler = Upscaler(model, device=args.device, precision=args.precision,
                            backend=args.backend, tile=args.tile, ensemble=args.ensemble)
    total = sum(len(list_images(d)) for d in args.data) * len(args.scales)
    results = []
    with _tqdm(total=total, desc="evaluating", unit="img") as bar:
        for folder in args.data:
            results += evaluate_folder(upscaler, folder, args.scales, protocol=args.protocol,
                                       progress=lambda _d: bar.update(1),
                                       max_pixels=args.max_pixels)
    run = upscaler.info.to_dict() if upscaler is not None else {}
    if run:
        print(f"model run: {run['backend']}, {run['precision']}, {run['device']}"
              f"{', self-ensemble (x8)' if run['ensemble'] else ''}")
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


def cmd_info(args: argparse.Namespace) -> int:
    from vdsr.weights import default_weights_path, read_metadata, weights_summary

    path = Path(args.weights) if args.weights else default_weights_path()
    print(json.dumps(weights_summary(read_metadata(path)), indent=2))
    return 0


# ----------------------------------------------------------------------------------------------
# prepare / train
# ----------------------------------------------------------------------------------------------


def cmd_prepare(args: argparse.Namespace) -> int:
    from vdsr.data import collect_files, degraded_images, write_hdf5
    from vdsr.errors import VDSRError

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


def _train_config(args: argparse.Namespace) -> Any:
    from vdsr.train import TrainConfig

    fields = TrainConfig.__dataclass_fields__
    values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    return TrainConfig(**values)


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

    from vdsr.constants import RESUME_OVERRIDES
    from vdsr.distributed import distributed_context
    from vdsr.errors import VDSRError
    from vdsr.runfolder import RunFolder
    from vdsr.train import Trainer

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with distributed_context() as dist:
        state = None
        if args.resume:
            overrides = {k: getattr(args, k) for k in RESUME_OVERRIDES if getattr(args, k, None) is not None}
            config, state = RunFolder(args.resume).resume(overrides)  # checked; writes nothing
        else:
            config = _train_config(args)
            if RunFolder(config.run_dir).has_checkpoint() and not args.overwrite:
                raise VDSRError(f"{config.run_dir}: already holds a run; use --resume "
                                f"{config.run_dir} or --overwrite")
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
            trainer = Trainer(config, progress=progress, dist=dist,
                              on_stop_requested=_stop_acknowledged(bar))
            if state is not None:
                trainer.load_state_dict(state)
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
        summary = summarize(model, shape)  # type: ignore[arg-type]
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
                 max_jobs=args.max_jobs), device=args.device, precision=args.precision)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from vdsr.demo import run_demo

    report = run_demo(Path(args.output), scale=args.scale, weights=args.weights)
    print(report)
    return 0


# ----------------------------------------------------------------------------------------------
# parser
# ----------------------------------------------------------------------------------------------


def _precision_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="arithmetic of the network: auto = fp32 on CPU, fp16 on CUDA (within "
                        "0.02 dB of fp32); fp32 is always available (default auto)")
    p.add_argument("--ensemble", action="store_true",
                   help="average the 8 flips/rotations of the image: 8x the compute, a little sharper")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="VDSR super-resolution (Kim et al., CVPR 2016)")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common_device(p: argparse.ArgumentParser) -> None:
        p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")

    p = sub.add_parser("upscale", help="super-resolve images")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--scale", "-s", type=_scale, required=True, help="upscaling factor > 1")
    p.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    p.add_argument("--weights", help="a .safetensors weights file (default: the shipped model)")
    p.add_argument("--tile", type=int, default=512, help="tile side in pixels, 0 = whole image (default 512)")
    p.add_argument("--backend", choices=_BACKENDS, default="auto",
                   help="auto: ONNX Runtime on CPU when installed, else PyTorch; "
                        "int8: quantised ONNX Runtime, ~1.7x faster, not exact")
    _precision_flags(p)
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--max-pixels", type=_positive_int, default=64_000_000, help="refuse larger inputs")
    p.add_argument("--compare", help="also write a bicubic-vs-VDSR side-by-side PNG (one input)")
    common_device(p)
    p.set_defaults(func=cmd_upscale)

    p = sub.add_parser("evaluate", help="Y-PSNR/SSIM on benchmark folders, beside the paper")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of HR images")
    p.add_argument("--scales", nargs="+", type=_int_scale, default=[2, 3, 4])
    p.add_argument("--weights", help="weights file (default: the shipped model)")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--protocol", choices=("rgb8", "ydouble"), default="rgb8",
                   help="rgb8: 8-bit RGB LR (default); ydouble: LR from the double Y channel")
    p.add_argument("--bicubic-only", action="store_true", help="score bicubic alone, no model")
    p.add_argument("--record", action="store_true",
                   help="store the results in the weights file's metadata ('evaluation')")
    p.add_argument("--tile", type=int, default=0, help="tile side, 0 = whole image (default)")
    p.add_argument("--backend", choices=_BACKENDS, default="auto")
    _precision_flags(p)
    p.add_argument("--max-pixels", type=_positive_int, default=64_000_000)
    common_device(p)
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("convert", help="import published weights into .safetensors")
    p.add_argument("source", help="MatConvNet .mat (official), pytorch-vdsr .pth, or .safetensors")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("info", help="print a weights file's metadata")
    p.add_argument("weights", nargs="?", help="weights file (default: the shipped model)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("prepare", help="write an HDF5 cache of training patches")
    p.add_argument("--data", nargs="+", required=True, metavar="DIR")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    p.add_argument("--scales", nargs="+", type=_int_scale, default=[2, 3, 4])
    p.add_argument("--patch", type=_positive_int, default=41)
    p.add_argument("--stride", type=_positive_int, default=41)
    p.add_argument("--channels", type=int, choices=(1, 3), default=1)
    p.add_argument("--downscales", nargs="+", type=float, default=[1.0, 0.7, 0.5])
    p.add_argument("--no-rotate", action="store_true", help="skip the 90/180/270 rotations")
    p.add_argument("--no-flip", action="store_true", help="skip the flipped copies")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_prepare)

    from vdsr.constants import OPTIMIZERS, SCHEDULES

    p = sub.add_parser("train", help="train a VDSR model (resumable)")
    p.add_argument("--run-dir", help="folder for checkpoints, logs and weights (default runs/vdsr)")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    p.add_argument("--train-dirs", nargs="+", metavar="DIR", help="HR training folders (default: T91 + BSD200)")
    p.add_argument("--h5", help="train from an HDF5 patch file instead of on-the-fly patches")
    p.add_argument("--val-dir", help="validation folder (default ../shared/datasets/Set5)")
    p.add_argument("--scales", nargs="+", type=_int_scale)
    p.add_argument("--downscales", nargs="+", type=float)
    p.add_argument("--channels", type=int, choices=(1, 3))
    p.add_argument("--depth", type=_positive_int)
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--no-bias", dest="bias", action="store_false", default=None)
    p.add_argument("--body", choices=("plain", "residual", "dense", "inception"))
    p.add_argument("--patch", type=_positive_int)
    p.add_argument("--batch-size", type=_positive_int)
    p.add_argument("--steps", type=_positive_int)
    p.add_argument("--optimizer", choices=OPTIMIZERS)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--schedule", choices=SCHEDULES)
    p.add_argument("--warmup-steps", type=int)
    p.add_argument("--decay-steps", type=int)
    p.add_argument("--clip", type=float, help="gradient clip (Adam: value; SGD: theta)")
    p.add_argument("--momentum", type=float)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--log-every", type=_positive_int)
    p.add_argument("--val-every", type=_positive_int)
    p.add_argument("--checkpoint-every", type=_positive_int)
    p.add_argument("--skip-nonfinite", action="store_true", default=None)
    p.add_argument("--init-weights", help="start from these .safetensors weights (fine-tune)")
    p.add_argument("--device", help="auto (default), cpu or cuda")
    p.add_argument("--threads", type=int, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--precision", choices=PRECISIONS,
                   help="arithmetic of the training passes: auto (default: bf16 autocast on CUDA, "
                        "fp32 on CPU), fp32, tf32 (CUDA), fp16 (autocast + loss scaling), bf16")
    p.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the forward/backward (CUDA graphs on one GPU); "
                        "the first steps pay the compile time")
    p.add_argument("--overwrite", action="store_true", help="start afresh in an existing run folder")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="export weights to ONNX (dynamic H/W) or TorchScript")
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
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("summary", help="Keras-style model summary")
    p.add_argument("model", help="vdsr, inception (the notes' model) or a weights file")
    p.add_argument("--input-shape", nargs=3, type=int, metavar=("H", "W", "C"))
    p.add_argument("--body", choices=("plain", "residual", "dense", "inception"), default="plain",
                   help="VDSR body (with MODEL=vdsr)")
    p.set_defaults(func=cmd_summary)

    p = sub.add_parser("serve", help="local web app: drop images, compare before/after, download")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--weights", help="weights file (default: the shipped model)")
    p.add_argument("--max-upload-mb", type=_positive_int, default=20)
    p.add_argument("--max-pixels", type=_positive_int, default=16_000_000)
    p.add_argument("--max-jobs", type=_positive_int, default=1, help="images upscaled at once")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="network arithmetic: auto = fp32 on CPU, fp16 on CUDA (default auto)")
    common_device(p)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("demo", help="upscale a bundled sample and write a comparison PNG")
    p.add_argument("-o", "--output", default="vdsr-demo", help="output folder (default vdsr-demo)")
    p.add_argument("--scale", type=_int_scale, default=3)
    p.add_argument("--weights", help="weights file (default: the shipped model)")
    p.set_defaults(func=cmd_demo)
    return parser


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"{PROG} {version('vdsr')}"
    except Exception:  # noqa: BLE001 - running from a source tree
        return f"{PROG} (source)"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: returns the exit code (0 ok, 1 error, 2 bad usage, 130 interrupted)."""
    from vdsr.errors import TrainingInterrupted, VDSRError

    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.showwarning = _show_warning
    try:
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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
