"""The ``vdsr`` command's flags: each declared once (shared parent parsers), defaults from the
library's constants and config dataclasses (so the help cannot disagree with them)."""

from __future__ import annotations

import argparse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

from vdsr import constants as C  # imports nothing: defaults for --help without torch
from vdsr.cli import commands
from vdsr.cli.words import PROG, train_flag
from vdsr.io.outputs import OUTPUT_FORMATS, OUTPUT_RULE  # imports nothing heavy


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
    """A usage error (exit 2) for what :func:`vdsr.sizes.check_scale` refuses."""
    from vdsr.errors import BadScale
    from vdsr.sizes import check_scale

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the trained-range warning comes once the model is known
            return check_scale(text)
    except BadScale as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _int_scale(text: str) -> int:
    value = _scale(text)
    if value != int(value):
        raise argparse.ArgumentTypeError(f"must be an integer scale (2, 3, 4, ...), got {text}")
    return int(value)


def _version() -> str:
    try:
        from importlib.metadata import version

        return f"{PROG} {version('vdsr')}"
    except Exception:  # noqa: BLE001 - running from a source tree
        return f"{PROG} (source)"


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
  vdsr upscale scan.tif -s 4 -o scan_x4.tif --compare scan_compare.png
  vdsr upscale photos/ -s 2 -o big/ --recursive --workers 2   a tree; again after a stop: the rest
  vdsr upscale photos/ -s 2 -o /shared/big/ --ray 10.0.0.1:6379   on a Ray cluster""",
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


def _parents() -> dict[str, argparse.ArgumentParser]:
    """The flags several commands share, each declared here once."""
    made = {name: argparse.ArgumentParser(add_help=False) for name in
            ("weights", "overwrite", "run", "tiles", "input_limit", "output_limit")}
    made["weights"].add_argument("--weights", metavar="FILE",
                                 help="a .safetensors weights file (default: the shipped model)")
    made["overwrite"].add_argument("--overwrite", action="store_true", help="replace existing output files")
    run = made["run"]
    run.add_argument("--device", default="auto",
                     help="where the network runs: auto (a CUDA GPU when there is one, else the CPU), "
                          "cpu, cuda, cuda:1, ...")
    run.add_argument("--backend", choices=C.BACKENDS + C.LEGACY_BACKENDS, default="auto", metavar="RUNTIME",
                     help="the runtime that runs the recipe: auto (the fastest measured for it: ONNX Runtime "
                          "or OpenVINO on a CPU, PyTorch on CUDA), torch, compile (torch.compile), "
                          "onnxruntime, openvino (if installed)")
    run.add_argument("--precision", choices=C.PRECISIONS, default="auto", metavar="RECIPE",
                     help="the network's arithmetic: auto = the fastest recipe checked for these weights on "
                          "this machine on photos, drawings, text and flat graphics (checked once, cached; flat "
                          "colour areas run fp32), fp32 = exact, or "
                          f"one of {', '.join(C.PRECISIONS[2:])} (docs/recipes.md)")
    tiles = made["tiles"]
    tiles.add_argument("--tile", type=int, default=C.DEFAULT_TILE,
                       help="the largest network input, in pixels a side (0 = whole image); results are "
                            "the same, only memory and speed change")
    tiles.add_argument("--ensemble", action="store_true",
                       help="average the 8 flips/rotations of the image: 8x the compute, a little sharper")
    made["input_limit"].add_argument("--max-pixels", type=_positive_int, default=C.DEFAULT_MAX_PIXELS,
                                     help="refuse images with more pixels (before decoding them)")
    made["output_limit"].add_argument("--max-output-pixels", type=_positive_int,
                                      default=C.DEFAULT_MAX_OUTPUT_PIXELS,
                                      help="refuse results (image pixels x scale²) with more pixels, "
                                           "before any work")
    return made


# `vdsr train`'s options: the TrainConfig field, argparse keywords, help (the default is read from
# TrainConfig itself, so the help cannot disagree with it).
_TRAIN_OPTIONS: tuple[tuple[str, dict[str, Any], str], ...] = (
    ("run_dir", {}, "folder for checkpoints, logs and weights"),
    ("train_dirs", {"nargs": "+", "metavar": "DIR"}, "HR training folders"),
    ("h5", {}, "train from an HDF5 patch file (vdsr prepare) instead of on-the-fly patches"),
    ("val_dir", {}, "validation folder ('none': no validation)"),
    ("scales", {"nargs": "+", "type": _int_scale}, "scales mixed in training"),
    ("downscales", {"nargs": "+", "type": float}, "image shrink factors for augmentation"),
    ("channels", {"type": int, "choices": (1, 3)}, "1: Y only, as the paper; 3: RGB"),
    ("depth", {"type": _positive_int}, "convolution layers"),
    ("width", {"type": _positive_int}, "channels of the hidden layers"),
    ("body", {"choices": C.BODIES}, "architecture between the input and output layers (plain: the paper)"),
    ("patch", {"type": _positive_int}, "training patch side"),
    ("batch_size", {"type": _positive_int}, "patches per step"),
    ("steps", {"type": _positive_int}, "optimiser steps"),
    ("optimizer", {"choices": C.OPTIMIZERS}, "adam, or the paper's sgd"),
    ("learning_rate", {"type": float}, "peak learning rate"),
    ("schedule", {"choices": C.SCHEDULES}, "learning-rate schedule"),
    ("warmup_steps", {"type": int}, "linear warm-up steps"),
    ("decay_steps", {"type": int}, "step/exponential: steps per x0.1 decay (0: half of --steps)"),
    ("clip", {"type": float}, "gradient clip: Adam, by value; SGD, the paper's theta"),
    ("momentum", {"type": float}, "SGD momentum"),
    ("weight_decay", {"type": float}, "L2 weight decay (unset: 0 for Adam, 1e-4 for SGD)"),
    ("seed", {"type": int}, "random seed"),
    ("log_every", {"type": _positive_int}, "log the loss every N steps"),
    ("val_every", {"type": _positive_int}, "validate every N steps"),
    ("checkpoint_every", {"type": _positive_int}, "write checkpoint.pt every N steps"),
    ("skip_nonfinite", {"action": "store_true"}, "skip a step with a NaN/inf loss instead of stopping"),
    ("init_weights", {}, "start from these .safetensors weights (fine-tune)"),
    ("device", {}, "auto (a CUDA GPU when there is one), cpu or cuda"),
    ("threads", {"type": int}, "torch CPU threads (0 = torch's default)"),
    ("precision", {"choices": C.TRAIN_PRECISIONS},
     "arithmetic of the training passes: auto (bf16 autocast on CUDA and on CPUs with AVX512_BF16 or "
     "AMX, fp32 on other CPUs), fp32, tf32 (CUDA), fp16 (autocast + loss scaling), bf16"),
    ("compile", {"action": "store_true"},
     "torch.compile the forward/backward (CUDA graphs on one GPU); the first steps pay the compile time"),
)


def _add_train_options(p: argparse.ArgumentParser) -> None:
    from vdsr.train.config import TrainConfig  # no torch: the config module imports it lazily

    defaults = {name: getattr(TrainConfig(), name) for name in (f.name for f in fields(TrainConfig))}
    p.add_argument("--no-bias", dest="bias", action="store_false", default=None,
                   help="convolutions without biases")
    for name, kwargs, text in _TRAIN_OPTIONS:
        shown = defaults[name]
        if shown not in (None, False, "", []):
            text += f" (default: {' '.join(map(str, shown)) if isinstance(shown, list) else shown})"
        p.add_argument(train_flag(name), default=None, help=text, **kwargs)


def build_parser() -> argparse.ArgumentParser:
    """The ``vdsr`` parser: one sub-command per row of :data:`_COMMANDS`."""
    parser = argparse.ArgumentParser(prog=PROG, description="VDSR super-resolution (Kim et al., CVPR 2016)",
                                     formatter_class=_HelpFormatter, epilog=_EXAMPLES["vdsr"])
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in _COMMANDS.items():
        # Fresh parents per command: argparse shares their actions, and a command's own defaults
        # (set_defaults) must not leak into the others'.
        parents = _parents()
        p = sub.add_parser(name, help=command.help, description=command.description, epilog=_EXAMPLES.get(name),
                           formatter_class=_HelpFormatter, parents=[parents[s] for s in command.shared])
        command.flags(p)
    return parser


@dataclass(frozen=True)
class _Command:
    """A sub-command: its one-line help, its --help description, the shared flag groups it
    takes (:func:`_parents`), and the function that adds its own flags and its handler."""

    help: str
    flags: Callable[[argparse.ArgumentParser], None]
    description: str
    shared: tuple[str, ...] = ()


def _upscale_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files or folders")
    p.add_argument("--scale", "-s", type=_scale, required=True, metavar="S",
                   help=f"upscaling factor, 1 < S <= {C.MAX_SCALE:g}; the model is trained for 2-4, "
                        "other factors work with a warning")
    p.add_argument("-o", "--output", required=True, metavar="OUT", help=f"output file or folder. {OUTPUT_RULE}")
    p.add_argument("--format", choices=tuple(OUTPUT_FORMATS),
                   help="format of the images written into a folder (default png; a file's extension "
                        "sets its own)")
    p.add_argument("--quality", type=_quality, default=95, help="JPEG/WebP/AVIF quality, 1-100")
    p.add_argument("--suffix", help="added to each input's name in an output folder "
                                    "(default _xS, e.g. photo_x2.png; '' keeps the name)")
    p.add_argument("--compare", metavar="FILE",
                   help="also write a bicubic-vs-VDSR comparison (full-resolution crops) to this image "
                        "file, in the format of its extension (one input file only)")
    p.add_argument("--recursive", "-r", action="store_true",
                   help="folders with their sub-folders, mirrored in the output folder (links that "
                        "leave an input folder are not followed)")
    p.add_argument("--workers", type=_positive_int, default=1, metavar="N",
                   help="upscale in N processes on this machine, the CPU threads split between them "
                        "(the same bytes as one); with --ray, the number of Ray actors")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (pip install 'vdsr[ray]'): the one at ADDRESS "
                        "(e.g. 10.0.0.1:6379, or 'auto'), or a local one for this run; OUT must be a "
                        "path that every node sees")
    p.set_defaults(func=commands.cmd_upscale)


def _evaluate_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of HR images")
    p.add_argument("--scales", nargs="+", type=_int_scale, default=list(C.DEFAULT_SCALES), help="scales to score")
    p.add_argument("--json", help="write the results to this JSON file")
    p.add_argument("--protocol", choices=("rgb8", "ydouble"), default="rgb8",
                   help="rgb8: 8-bit RGB LR; ydouble: LR from the double Y channel")
    p.add_argument("--bicubic-only", action="store_true", help="score bicubic alone, no model")
    p.add_argument("--record", action="store_true",
                   help="store the results in the weights file's metadata ('evaluation')")
    p.set_defaults(func=commands.cmd_evaluate, precision="fp32")  # a paper's numbers are reproduced exactly


def _convert_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="MatConvNet .mat (official), checkpoint.pt, pytorch-vdsr .pth, or .safetensors")
    p.add_argument("-o", "--output", required=True, help="destination .safetensors")
    p.set_defaults(func=commands.cmd_convert)


def _info_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", nargs="?", help="weights file (default: the shipped model)")
    p.add_argument("--json", action="store_true", help="print all the metadata as JSON")
    p.set_defaults(func=commands.cmd_info)


def _prepare_flags(p: argparse.ArgumentParser) -> None:
    from vdsr.train.config import TrainConfig

    p.add_argument("--data", nargs="+", required=True, metavar="DIR", help="folders of HR images")
    p.add_argument("-o", "--output", required=True, help="HDF5 file to write")
    p.add_argument("--scales", nargs="+", type=_int_scale, default=list(C.DEFAULT_SCALES), help="scales to cut pairs for")
    p.add_argument("--patch", type=_positive_int, default=TrainConfig.patch, help="patch side in pixels")
    p.add_argument("--stride", type=_positive_int, help="step between patches in pixels (default: the patch side)")
    p.add_argument("--channels", type=int, choices=(1, 3), default=1, help="1: Y only; 3: RGB")
    p.add_argument("--downscales", nargs="+", type=float, default=TrainConfig().downscales,
                   help="also use each image shrunk by these factors")
    p.add_argument("--no-rotate", action="store_true", help="skip the 90/180/270 rotations")
    p.add_argument("--no-flip", action="store_true", help="skip the flipped copies")
    p.set_defaults(func=commands.cmd_prepare)


def _train_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR")
    _add_train_options(p)
    next(a for a in p._actions if a.dest == "overwrite").help = (
        "start afresh in a folder that holds a run (or other files): the run's own files there are "
        "replaced, nothing else")
    p.set_defaults(func=commands.cmd_train)


def _export_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("weights", nargs="?", help="weights file (default: the shipped model)")
    p.add_argument("--onnx", help="ONNX file to write")
    p.add_argument("--onnx-int8", help="int8-quantised ONNX file to write (the int8 recipe's model)")
    p.add_argument("--torchscript", help="TorchScript file to write")
    p.add_argument("--rgb-onnx", metavar="OUT.onnx",
                   help="self-contained RGB-in/RGB-out ONNX model (YCbCr, MATLAB bicubic, network "
                        "and merge in the graph) for chaiNNer, TensorRT, ...; needs --scale")
    p.add_argument("--scale", type=float, nargs="+", metavar="S",
                   help="integer scale(s) of --rgb-onnx; several write OUT_x{S}.onnx each")
    p.add_argument("--fp16", action="store_true",
                   help="--rgb-onnx with the network in fp16 (input and output stay float32)")
    p.set_defaults(func=commands.cmd_export)


def _summary_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="vdsr, inception (the Inception example) or a weights file")
    p.add_argument("--input-shape", nargs=3, type=int, metavar=("H", "W", "C"), help="input size to trace")
    p.add_argument("--body", choices=C.BODIES, default="plain", help="VDSR body (with MODEL=vdsr)")
    p.set_defaults(func=commands.cmd_summary)


def _serve_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port")
    p.add_argument("--max-upload-mb", type=_positive_int, default=C.SERVER_MAX_UPLOAD_MB,
                   help="refuse larger uploads")
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
    p.set_defaults(func=commands.cmd_serve, max_pixels=C.SERVER_MAX_PIXELS, max_output_pixels=C.SERVER_MAX_OUTPUT_PIXELS)


def _demo_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", default="vdsr-demo", help="output folder")
    p.add_argument("--scale", type=_int_scale, default=3, help="scale factor")
    p.set_defaults(func=commands.cmd_demo)


_COMMANDS: dict[str, _Command] = {
    "upscale": _Command("super-resolve images", _upscale_flags,
                      "Super-resolve image files or folders of images by any factor: bicubic upscaling, then "
                      "VDSR restores the detail. Colour images keep their colours (the network sharpens the "
                      "luminance); alpha, EXIF, ICC profile and DPI are kept.",
                      ("weights", "run", "tiles", "input_limit", "output_limit", "overwrite")),
    "evaluate": _Command("Y-PSNR/SSIM on benchmark folders, beside the paper", _evaluate_flags,
                      "Downscale each high-resolution image, upscale it again with bicubic and with the model, "
                      "and score both against the original (Y-PSNR/SSIM, MATLAB-compatible), beside the "
                      "paper's numbers for Set5, Set14, B100 and Urban100. Exact fp32 unless --precision says "
                      "otherwise.",
                      ("weights", "run", "tiles", "input_limit")),
    "convert": _Command("import weights into .safetensors", _convert_flags,
                      "Import published weights (the authors' MatConvNet .mat, a pytorch-vdsr .pth), a "
                      "`vdsr train` checkpoint.pt, or re-check a .safetensors file; write .safetensors.",
                      ("overwrite",)),
    "info": _Command("summarise a weights file: model, scales, training, results", _info_flags,
                      "Summarise a weights file: architecture, trained scales, where it came from, how it was "
                      "trained and its recorded results.",
                      ()),
    "prepare": _Command("write an HDF5 file of training patches", _prepare_flags,
                      "Cut (low-resolution, high-resolution) patch pairs from folders of HR images, with the "
                      "paper's augmentation (rotations, flips, downscaling), into one chunked HDF5 file for "
                      "`vdsr train --h5`. Optional: `vdsr train` cuts patches on the fly by default.",
                      ("overwrite",)),
    "train": _Command("train a VDSR model (resumable)", _train_flags,
                      "Train VDSR on folders of HR images (patches cut on the fly) or an HDF5 file from "
                      "`vdsr prepare`. The run folder gets checkpoint.pt (every --checkpoint-every steps), "
                      "best.safetensors, last.safetensors, metrics.csv and curve.png; Ctrl-C stops at a step "
                      "boundary with a checkpoint, and --resume continues it exactly.",
                      ("overwrite",)),
    "export": _Command("export weights to ONNX (dynamic H/W) or TorchScript", _export_flags,
                      "Export a weights file to ONNX (any height and width), its int8-quantised ONNX, or TorchScript.",
                      ("overwrite",)),
    "summary": _Command("Keras-style model summary", _summary_flags,
                      "Print a Keras-style summary (layers, output shapes, parameters, connections) of VDSR, "
                      "of the Inception example (a 224x224x3 input into one Inception block of 64 filters), "
                      "or of a weights file's model.",
                      ()),
    "serve": _Command("local web app: drop images, compare before/after, download", _serve_flags,
                      "Serve a web page (and a JSON/PNG API, documented at /api/docs) for upscaling images "
                      "in the browser. Only this machine can reach it unless --host says otherwise.",
                      ("weights", "run", "input_limit", "output_limit")),
    "demo": _Command("upscale a bundled sample and write a comparison PNG", _demo_flags,
                      "Shrink a bundled photo, upscale it with bicubic and with the model, and write the images, "
                      "a comparison PNG and their Y-PSNR against the original.",
                      ("weights", "overwrite")),
}
