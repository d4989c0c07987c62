"""Evidence for the CUDA ``auto`` precision rule: Y-PSNR in fp32, fp16 and bf16 for several weights.

    python benchmarks/precision.py --weights shipped --weights official=/tmp/official.safetensors \\
        --data ../shared/datasets/Set5 --data ../shared/datasets/Set14:coastguard,comic,face,foreman \\
        --threads 2 --out benchmarks/results_precision.json

Each (weights, folder, precision) is scored with
``evaluate_folder(Upscaler(model, backend="torch", precision=p, tile=None), folder, scales,
with_ssim=False)``, whole images, rgb8 protocol, and the JSON is rewritten after each one (a run
cut short keeps what it measured).

``--mode``:

* ``emulate`` (default): the network runs in fp32 arithmetic on values rounded to fp16/bf16
  where a CUDA run stores them: the body's input, every weight and bias, and every convolution's
  output (before the ReLU, which is exact in any format). The input and the global residual
  addition stay fp32, as in :class:`vdsr.backends.pytorch.TorchBackend`. This models cuDNN's
  fp16/bf16 convolutions, which accumulate in fp32 and round once on output. It is what a CPU can
  afford: PyTorch 2.13's CPU fp16 convolution took 60 s for one 128² tile here (44x fp32).
* ``native``: the package's own torch backend in fp16/bf16 on this device (on CUDA: the real
  thing; on CPU: oneDNN bf16, which also accumulates in fp32, and a very slow fp16).

``--check-crop N`` compares emulated and native outputs on an N² crop first (recorded as
``emulation_check``) so the emulation's faithfulness is measured, not assumed.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vdsr.engine import Upscaler  # noqa: E402
from vdsr.evaluate import evaluate_folder  # noqa: E402
from vdsr.io.fileio import atomic_path  # noqa: E402
from vdsr.nn.model import VDSR  # noqa: E402
from vdsr.precision import torch_dtype  # noqa: E402
from vdsr.weights import load_model  # noqa: E402

PRECISIONS = ("fp32", "fp16", "bf16")


class EmulatedBackend:
    """``model`` in fp32 arithmetic on values rounded to ``precision`` (see the module docstring).

    ``(N, C, H, W)`` float32 -> same, float32, unclamped; the :class:`vdsr.backends.Backend` protocol.
    """

    def __init__(self, model: VDSR, precision: str) -> None:
        self.name = "torch-emulated"
        self.device = torch.device("cpu")
        self.precision = precision
        self.dtype = torch_dtype(precision)
        self.model = copy.deepcopy(model).cpu().eval()
        if self.dtype != torch.float32:
            with torch.no_grad():
                for p in self.model.parameters():
                    p.copy_(self._round(p))
            for m in self.model.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.register_forward_hook(lambda _m, _i, out: self._round(out))

    def _round(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.dtype).float()

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float().contiguous(memory_format=torch.channels_last)
        if self.dtype == torch.float32:
            out: torch.Tensor = self.model(x)
            return out.contiguous()
        return (x + self.model.predict_residual(self._round(x))).contiguous()


def upscaler(model: VDSR, precision: str, mode: str, device: str) -> Upscaler:
    if mode == "emulate":
        return Upscaler(model, tile=None, backend_instance=EmulatedBackend(model, precision))
    return Upscaler(model, device=device, backend="torch", precision=precision, tile=None)


def emulation_check(model: VDSR, crop: int, folder: Path) -> dict[str, Any]:
    """max |emulated - native| on a ``crop``² piece of the folder's first image (bicubic Y, x2)."""
    from vdsr.io.images import list_images, load_image
    from vdsr.quality.protocol import make_pair

    img = load_image(list_images(folder)[0])
    _, bic = make_pair(img.floats()[0], 2, "rgb8")
    x = torch.from_numpy(bic[:crop, :crop].astype("float32") / 255)[None, None]
    out: dict[str, Any] = {"crop": crop, "image": img.path.name}
    ref = EmulatedBackend(model, "fp32")(x)
    for p in ("fp16", "bf16"):
        t = time.perf_counter()
        native = Upscaler(model, backend="torch", precision=p, tile=None).network(x)
        seconds = time.perf_counter() - t
        emulated = EmulatedBackend(model, p)(x)
        out[p] = {"max_abs_emulated_vs_native": float((emulated - native).abs().max()),
                  "max_abs_native_vs_fp32": float((native - ref).abs().max()),
                  "max_abs_emulated_vs_fp32": float((emulated - ref).abs().max()),
                  "native_seconds": round(seconds, 2)}
    return out


def data_folder(spec: str, tmp: Path) -> tuple[str, Path, list[str] | None]:
    """``DIR`` or ``DIR:name1,name2`` (a subset, by file stem) -> (label, folder, names)."""
    path, _, names = spec.partition(":")
    folder = Path(path)
    if not names:
        return folder.name, folder, None
    chosen = names.split(",")
    sub = tmp / str(len(list(tmp.iterdir()))) / folder.name  # one folder per subset
    sub.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.stem in chosen:
            os.symlink(f.resolve(), sub / f.name)
    found = sorted(p.stem for p in sub.iterdir())
    if found != sorted(chosen):
        raise SystemExit(f"{spec}: found only {found}")
    return f"{folder.name}:{','.join(chosen)}", sub, chosen


def write(path: Path, doc: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(doc, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", action="append", default=[],
                    help="NAME=FILE.safetensors, or 'shipped' (repeatable; default: shipped)")
    ap.add_argument("--data", action="append", default=[],
                    help="DIR or DIR:stem1,stem2 (repeatable; each is measured for all weights in turn)")
    ap.add_argument("--scales", type=int, nargs="+", default=[2, 3, 4])
    ap.add_argument("--mode", choices=("emulate", "native"), default="emulate")
    ap.add_argument("--device", default="cpu", help="for --mode native")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--check-crop", type=int, default=48, help="0: skip the emulation check")
    ap.add_argument("--reuse", type=Path, help="an earlier run's JSON: keep its rows, measure the rest")
    ap.add_argument("--table", type=Path, help="print the Markdown table of this results JSON and exit")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_precision.json")
    args = ap.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return
    torch.set_num_threads(args.threads)
    weights = args.weights or ["shipped"]
    datas = args.data or [str(ROOT.parent / "shared" / "datasets" / "Set5")]
    if args.device.startswith("cuda"):
        device_name = torch.cuda.get_device_name(torch.device(args.device))
    else:
        device_name = platform.processor() or platform.machine()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    device_name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
    doc: dict[str, Any] = {
        "device": args.device, "device_name": device_name, "torch": torch.__version__,
        "threads": args.threads, "mode": args.mode, "protocol": "rgb8, Y-PSNR, whole images",
        "scales": args.scales, "emulation_check": {}, "results": [],
    }
    if args.reuse:
        old = json.loads(args.reuse.read_text())
        doc["emulation_check"], doc["results"] = old["emulation_check"], old["results"]
    done = {(r["weights"], r["data"], r["precision"]) for r in doc["results"]}
    models = {}
    for spec in weights:
        name, _, file = spec.partition("=")
        models[name] = (file, load_model(file or None)[0].eval())
    with tempfile.TemporaryDirectory() as tmpdir:
        folders = [data_folder(spec, Path(tmpdir)) for spec in datas]
        for name, (_file, model) in models.items():
            if args.mode == "emulate" and args.check_crop and name not in doc["emulation_check"]:
                doc["emulation_check"][name] = emulation_check(model, args.check_crop, folders[0][1])
                write(args.out, doc)
                print(name, "emulation check", doc["emulation_check"][name], flush=True)
        # every weights file on the first folder before the next folder: a cut run compares them
        for label, folder, _names in folders:
            for name, (file, model) in models.items():
                for precision in PRECISIONS:
                    if (name, label, precision) in done:
                        continue
                    t = time.perf_counter()
                    results = evaluate_folder(upscaler(model, precision, args.mode, args.device), folder,
                                              args.scales, with_ssim=False)
                    row = {"weights": name, "weights_file": file or "shipped", "data": label,
                           "precision": precision, "seconds": round(time.perf_counter() - t, 1),
                           "psnr": {f"x{r.scale}": r.psnr for r in results},
                           "images": results[0].images}
                    doc["results"].append(row)
                    write(args.out, doc)
                    print(json.dumps(row), flush=True)
    doc["merged"] = combined(doc["results"])
    write(args.out, doc)
    print(table(doc))


def combined(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of a folder measured in several subsets (``Set14:a,b`` and ``Set14:c,...``) merged into
    one row per (weights, precision) over all their images: the image-weighted mean PSNR."""
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for r in results:
        folder = r["data"].split(":")[0]
        if ":" in r["data"]:
            groups.setdefault((r["weights"], folder, r["precision"]), []).append(r)
    out = []
    for (weights, folder, precision), rows in groups.items():
        if len(rows) < 2:
            continue
        images = sum(r["images"] for r in rows)
        psnr = {s: sum(r["psnr"][s] * r["images"] for r in rows) / images for s in rows[0]["psnr"]}
        out.append({"weights": weights, "data": f"{folder} ({images} images, merged)",
                    "precision": precision, "psnr": psnr, "images": images})
    return out


def table(doc: dict[str, Any]) -> str:
    """Markdown: one row per (weights, data, precision), PSNR and the difference to fp32."""
    scales = [f"x{s}" for s in doc["scales"]]
    lines = ["| weights | data | precision | " + " | ".join(scales) + " | Δ vs fp32 (dB) |",
             "|---|---|---|" + "---|" * len(scales) + "---|"]
    rows = doc["results"] + combined(doc["results"])
    base = {(r["weights"], r["data"]): r["psnr"] for r in rows if r["precision"] == "fp32"}
    for r in rows:
        ref = base.get((r["weights"], r["data"]))
        delta = ("" if ref is None or r["precision"] == "fp32" else
                 " / ".join(f"{r['psnr'][s] - ref[s]:+.3f}" for s in scales))
        lines.append(f"| {r['weights']} | {r['data']} | {r['precision']} | "
                     + " | ".join(f"{r['psnr'][s]:.3f}" for s in scales) + f" | {delta} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
