"""Every fast recipe against fp32 on the real test sets, for the shipped and the official weights.

    python benchmarks/recipe_accuracy.py run [--sets Set5 Set14 B100 Urban100] [--weights shipped official]
    python benchmarks/recipe_accuracy.py report     # benchmarks/results_recipes.json + docs/recipes.md

``run`` scores every image of each set at x2/x3/x4 (the ``rgb8`` protocol of ``vdsr evaluate``:
Y-PSNR against the original, ``scale`` pixels shaved) with fp32 and with each recipe/runtime
pair of :data:`RECIPES`, and appends one JSON line per (weights, set, image, scale, recipe) to
``benchmarks/recipe_accuracy.jsonl``; a rerun skips what is there, so it can be stopped and
continued. It also records the check :func:`vdsr.recipes.check_recipe` gives each pair, so the
report shows the check's verdict beside the real sets' differences.

``report`` turns the lines into mean Y-PSNR differences from fp32 per weights, set, scale and
recipe (JSON) and the table of docs/recipes.md, with the machine it ran on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vdsr.backends import create_backend  # noqa: E402
from vdsr.cpu import cpu_features, cpu_name  # noqa: E402
from vdsr.engine import Upscaler  # noqa: E402
from vdsr.evaluate import super_resolve_y  # noqa: E402
from vdsr.io.images import list_images, load_image  # noqa: E402
from vdsr.quality.metrics import psnr  # noqa: E402
from vdsr.quality.protocol import make_pair  # noqa: E402
from vdsr.recipes import TOLERANCE_DB, check_recipe, machine_class  # noqa: E402
from vdsr.weights import load_model  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"
OFFICIAL_MAT = ROOT.parent / "shared" / "reference" / "vdsr_official_matconvnet.mat"
LINES = ROOT / "benchmarks" / "recipe_accuracy.jsonl"
SUMMARY = ROOT / "benchmarks" / "results_recipes.json"
DOC = ROOT / "docs" / "recipes.md"
# docs/recipes.md from this line on is benchmarks/content_accuracy.py's, kept when this report rewrites the rest
MARKER = "<!-- content_accuracy.py: the section below is generated from benchmarks/results_content.json -->"
SCALES = (2, 3, 4)
RECIPES = [("int8", "openvino"), ("mixed", "openvino"), ("bf16", "openvino"), ("bf16-edge", "openvino"),
           ("int8", "onnxruntime"), ("mixed", "onnxruntime"), ("bf16", "torch"), ("bf16-edge", "torch")]


def _weights(name: str, tmp: Path) -> Any:
    if name == "shipped":
        return load_model()[0]
    from vdsr.weights.importers import convert

    path = tmp / "official.safetensors"
    if not path.exists():
        convert(OFFICIAL_MAT, path)
    return load_model(path)[0]


def done_keys(lines: Path, fields: tuple[str, ...]) -> set[tuple[str, ...]]:
    """The ``fields`` (as strings) of every row already in the JSON-lines file ``lines``: what a
    resumed run skips."""
    seen: set[tuple[str, ...]] = set()
    if lines.exists():
        for line in lines.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                seen.add(tuple(str(r[f]) for f in fields))
    return seen


def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    tmp = ROOT / ".cache-recipes"
    tmp.mkdir(exist_ok=True)
    done = done_keys(LINES, ("weights", "set", "image", "scale", "recipe", "runtime"))
    machine = machine_class(torch.device("cpu"))
    with LINES.open("a") as out:
        for wname in args.weights:
            model = _weights(wname, tmp)
            chosen = [tuple(r.split("/")) for r in args.recipes] if args.recipes else RECIPES
            pairs = [("fp32", "onnxruntime")] + chosen
            ups = {p: Upscaler(model, backend_instance=create_backend(model, p[1], "cpu", p[0], args.threads),
                               tile=384) for p in pairs}
            for recipe, runtime in chosen:  # the check's verdict on this machine, beside the sets
                key = (wname, "check", "-", "-", recipe, runtime)
                if key not in done:
                    v = check_recipe(model, ups[(recipe, runtime)].runner, ups[("fp32", "onnxruntime")].runner, machine)
                    out.write(json.dumps({"weights": wname, "set": "check", "image": "-", "scale": "-",
                                          "recipe": recipe, "runtime": runtime, "verdict": v.to_dict()}) + "\n")
                    out.flush()
            for dataset in args.sets:
                for path in list_images(DATASETS / dataset):
                    hr = load_image(path).floats()[0]
                    for scale in SCALES:
                        todo = [p for p in pairs if (wname, dataset, path.name, str(scale), *p) not in done]
                        if not todo:
                            continue
                        gt, bic = make_pair(hr, scale, "rgb8")
                        for recipe, runtime in todo:
                            score = psnr(gt, super_resolve_y(ups[(recipe, runtime)], bic), border=scale)
                            out.write(json.dumps({"weights": wname, "set": dataset, "image": path.name,
                                                  "scale": scale, "recipe": recipe, "runtime": runtime,
                                                  "psnr": score}) + "\n")
                        out.flush()
                    print(f"{wname} {dataset} {path.name}", flush=True)


def report(_: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in LINES.read_text().splitlines() if line.strip()]
    scores: dict[tuple[str, str, int, str, str], dict[str, float]] = {}
    checks: dict[tuple[str, str, str], dict[str, Any]] = {}
    for r in rows:
        if r["set"] == "check":
            checks[(r["weights"], r["recipe"], r["runtime"])] = r["verdict"]
            continue
        scores.setdefault((r["weights"], r["set"], int(r["scale"]), r["recipe"], r["runtime"]), {})[r["image"]] = r["psnr"]
    summary: list[dict[str, Any]] = []
    sizes = {d: len(list_images(DATASETS / d)) for d in {k[1] for k in scores}}
    for (wname, dataset, scale, recipe, runtime), per in sorted(scores.items()):
        if recipe == "fp32":
            continue
        ref = scores.get((wname, dataset, scale, "fp32", "onnxruntime"), {})
        common = sorted(set(per) & set(ref))
        if len(common) < sizes[dataset]:  # a stopped run's partial set is not a result
            continue
        delta = float(np.mean([per[i] for i in common]) - np.mean([ref[i] for i in common]))
        summary.append({"weights": wname, "set": dataset, "scale": scale, "recipe": recipe, "runtime": runtime,
                        "images": len(common), "fp32_psnr": float(np.mean([ref[i] for i in common])),
                        "delta_db": delta})
    features = cpu_features()
    body = {"machine": {"cpu": cpu_name(), "features": features.names(), "class": features.feature_class,
                        "torch": torch.__version__, "python": platform.python_version()},
            "command": "python benchmarks/recipe_accuracy.py run && python benchmarks/recipe_accuracy.py report",
            "tolerance_db": TOLERANCE_DB, "results": summary,
            "checks": [{"weights": w, "recipe": r, "runtime": rt, **v} for (w, r, rt), v in sorted(checks.items())]}
    SUMMARY.write_text(json.dumps(body, indent=1) + "\n")
    kept = DOC.read_text().partition(MARKER) if DOC.exists() else ("", "", "")
    DOC.write_text(_markdown(body) + (f"\n{MARKER}{kept[2]}" if kept[1] else ""))
    print(f"wrote {SUMMARY} and {DOC}")


def _markdown(body: dict[str, Any]) -> str:
    m = body["machine"]
    lines = ["# Recipes against fp32: the check and the real test sets", "",
             "Generated by `python benchmarks/recipe_accuracy.py report` from "
             "`benchmarks/results_recipes.json` (do not edit by hand).", "",
             f"Machine: {m['cpu']} ({', '.join(m['features'])}; class `{m['class']}`), torch {m['torch']}.", "",
             "`vdsr upscale --precision auto` takes the fastest recipe that passes the check for the weights "
             "in use (`vdsr.recipes`). These tables were measured with the first check (CHECK_VERSION 1): "
             "every scale's mean Y-PSNR on the check crops (scikit-image photos) "
             f"within {body['tolerance_db']:.2f} dB of fp32's and outputs agreeing with fp32's at 40 dB or more; "
             "the check since issue 30 judges each kind of content and the worst image (last section). "
             "The tables give the check's verdict and the mean Y-PSNR difference from fp32 on the real sets "
             "(rgb8 protocol, as `vdsr evaluate`), ×2 / ×3 / ×4; **bold** marks a cell outside "
             f"±{body['tolerance_db']:.2f} dB; · not measured: the 2-core machine ran the large sets "
             "(B100 for the official weights, Urban100 for both) only for the recipes `auto` takes on it "
             "(int8 for the shipped weights, mixed for the official ones; the int8 quantised graph also for "
             "the official weights), on ONNX Runtime, which runs the same quantised graphs as OpenVINO.", ""]
    results = body["results"]
    checks = {(c["weights"], c["recipe"], c["runtime"]): c for c in body["checks"]}
    sets = [s for s in ("Set5", "Set14", "B100", "Urban100") if any(r["set"] == s for r in results)]
    for wname in ("shipped", "official"):
        pairs = sorted({(r["recipe"], r["runtime"]) for r in results if r["weights"] == wname},
                       key=lambda p: RECIPES.index(p) if p in RECIPES else 99)
        if not pairs:
            continue
        lines += [f"## {'Shipped weights' if wname == 'shipped' else 'Official weights (Kim et al.)'}", "",
                  "| recipe | runtime | check | " + " | ".join(sets) + " |",
                  "|---|---|---|" + "---|" * len(sets)]
        for recipe, runtime in pairs:
            c = checks.get((wname, recipe, runtime))
            verdict = "—" if c is None else ("pass" if c["passed"] else "fail") + " (" + " / ".join(
                f"{c['delta_db'][str(s)]:+.3f}" for s in SCALES) + f"; {c['agreement_db']:.1f} dB)"
            cells = []
            for dataset in sets:
                vals = []
                for scale in SCALES:
                    hit = [r for r in results if (r["weights"], r["set"], r["scale"], r["recipe"], r["runtime"])
                           == (wname, dataset, scale, recipe, runtime)]
                    if not hit:
                        vals.append("·")
                        continue
                    d = hit[0]["delta_db"]
                    vals.append(f"**{d:+.3f}**" if abs(d) > body["tolerance_db"] else f"{d:+.3f}")
                cells.append(" / ".join(vals))
            lines.append(f"| {recipe} | {runtime} | {verdict} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run")
    p.add_argument("--sets", nargs="+", default=["Set5", "Set14", "B100", "Urban100"])
    p.add_argument("--weights", nargs="+", default=["shipped", "official"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--recipes", nargs="+", metavar="RECIPE/RUNTIME",
                   help="only these pairs (default: all of RECIPES), e.g. int8/onnxruntime")
    p.set_defaults(func=run)
    sub.add_parser("report").set_defaults(func=report)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
