"""Turn ``benchmarks/gpu.sh``'s JSON into the Markdown tables of BENCHMARKS.md's GPU section.

    python benchmarks/gpu_report.py gpu-out/gpu.json [--out FILE.md]

Missing steps or values (a step cut short by its timeout, an absent data set) show as "—" and the
step's end ("timed out after N s", "skipped") is listed under the tables, so a partial run still
gives an honest report. Goals are issue 16's.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

GOAL_INFER = 400.0  # MP/s, batch of 8 x 512²
GOAL_E2E = 300.0  # MP/s, one 1024² RGB photo through upscale_pixels
GOAL_TRAIN = {64: 25_000.0, 256: 40_000.0}  # patches/s
GOAL_DB = 0.02  # dB of fp32 on Set5

DASH = "—"


def _num(value: Any, fmt: str = "{:.1f}") -> str:
    return DASH if value is None else fmt.format(value)


def _ratio(value: Any, base: Any) -> str:
    return DASH if value is None or not base else f"{value / base:.2f}"


def inference_table(steps: dict[str, Any]) -> list[str]:
    infer, comp = steps.get("infer", {}), steps.get("infer_compile", {})
    base = infer.get("baseline_fp32_nchw_mp_per_s")
    batch = infer.get("batch", [8, 1, 512, 512])
    rows = [
        ("baseline: eager fp32 NCHW, cuDNN heuristics, TF32 off", infer.get("baseline_fp32_nchw_mp_per_s"), ""),
        ("torch backend fp32 (channels_last, cuDNN autotuning, TF32 off)", infer.get("fp32_mp_per_s"), ""),
        ("torch backend tf32", infer.get("tf32_mp_per_s"), ""),
        ("torch backend fp16 (body in fp16)", infer.get("fp16_mp_per_s"), ""),
        ("torch backend bf16 (body in bf16)", infer.get("bf16_mp_per_s"), ""),
        ("`compile` backend fp16 (dynamic shapes, max-autotune, no CUDA graphs)",
         comp.get("compile_fp16_mp_per_s"),
         f"compile {_num(comp.get('compile_fp16_compile_s'))} s, "
         f"max diff {_num(comp.get('compile_fp16_max_abs_diff_vs_eager_fp16'), '{:.1e}')}"),
        ("static-shape compile fp16 + CUDA graphs (max-autotune)",
         comp.get("static_cudagraphs_fp16_mp_per_s"),
         f"compile {_num(comp.get('static_cudagraphs_fp16_compile_s'))} s, "
         f"max diff {_num(comp.get('static_cudagraphs_fp16_max_abs_diff_vs_eager_fp16'), '{:.1e}')}"),
    ]
    out = [f"| inference, batch of {batch[0]} × {batch[2]}² Y images | MP/s | × baseline | notes |",
           "|---|---|---|---|"]
    out += [f"| {name} | {_num(v)} | {_ratio(v, base)} | {note} |" for name, v, note in rows]
    e2e = steps.get("e2e", {})
    photo = e2e.get("photo", {"side": 1024, "scale": 2})
    out += ["", f"| one {photo['side']}² RGB photo, x{photo['scale']}, `upscale_pixels` (host copies included) "
            "| output MP/s | seconds | first call s |", "|---|---|---|---|"]
    for backend in ("torch", "compile"):
        out.append(f"| {backend} backend fp16 | {_num(e2e.get(f'{backend}_fp16_output_mp_per_s'))} | "
                   f"{_num(e2e.get(f'{backend}_fp16_seconds'), '{:.3f}')} | "
                   f"{_num(e2e.get(f'{backend}_fp16_first_call_s'))} |")
    return out


def training_table(steps: dict[str, Any]) -> list[str]:
    train, comp = steps.get("train", {}), steps.get("train_compile", {})
    base_key = next((k for k in train if k.startswith("baseline_fp32_b")), None)
    base = train.get(base_key) if base_key else None
    out = ["| training, 41×41 patches, Adam + value clipping | patches/s | ms per step | × baseline |",
           "|---|---|---|---|"]
    if base_key:
        b = base_key.removeprefix("baseline_fp32_b").removesuffix("_patches_per_s")
        out.append(f"| baseline: eager fp32 loop, batch {b}, `loss.item()` every step | {_num(base, '{:,.0f}')} "
                   f"| {DASH} | 1.00 |")
    batches = sorted({int(k.split("_")[1][1:]) for k in [*train, *comp]
                      if k.startswith(("eager_b", "compile_b")) and k.endswith("_patches_per_s")})
    for batch in batches:
        for tag, src, what in (("eager", train, "`vdsr train`'s step"),
                               ("compile", comp, "`vdsr train --compile`'s step")):
            rate = src.get(f"{tag}_b{batch}_patches_per_s")
            if rate is None and f"{tag}_b{batch}_precision" not in src:
                continue
            prec = src.get(f"{tag}_b{batch}_precision", "?")
            out.append(f"| {what}, batch {batch}, {prec} | {_num(rate, '{:,.0f}')} | "
                       f"{_num(src.get(f'{tag}_b{batch}_ms_per_step'))} | {_ratio(rate, base)} |")
    return out


def accuracy_table(steps: dict[str, Any]) -> list[str]:
    entries = {**steps.get("accuracy", {}), **steps.get("accuracy_compile", {})}
    runs = {k: v for k, v in entries.items() if isinstance(v, dict) and "psnr" in v}
    if not runs:
        return [f"Set5 accuracy: not measured ({entries.get('skipped', 'no results')})."]
    scales = sorted({s for v in runs.values() for s in v["psnr"]})
    out = ["| Set5 Y-PSNR (rgb8, whole images) | " + " | ".join(scales) + " | Δ vs fp32 (dB) |",
           "|---|" + "---|" * len(scales) + "---|"]
    for key, v in runs.items():
        weights = key.split("_")[0]
        ref = runs.get(f"{weights}_torch_fp32", {}).get("psnr")
        delta = DASH if ref is None or key == f"{weights}_torch_fp32" else " / ".join(
            f"{v['psnr'][s] - ref[s]:+.3f}" for s in scales if s in ref)
        out.append(f"| {key.replace('_', ' ')} | " + " | ".join(f"{v['psnr'].get(s, float('nan')):.3f}"
                                                                 for s in scales) + f" | {delta} |")
    for note in ("official_skipped", "skipped"):
        if note in entries:
            out += ["", f"{note.replace('_', ' ')}: {entries[note]}"]
    return out


def goals(steps: dict[str, Any]) -> list[str]:
    infer, comp = steps.get("infer", {}), steps.get("infer_compile", {})
    best_infer = max((v for k, v in {**infer, **comp}.items()
                      if k.endswith("_mp_per_s") and not k.startswith("baseline")), default=None)
    e2e = steps.get("e2e", {})
    best_e2e = max((v for k, v in e2e.items() if k.endswith("output_mp_per_s")), default=None)
    train = {**steps.get("train", {}), **steps.get("train_compile", {})}

    def best_train(b: int) -> float | None:
        vals = [train.get(f"{t}_b{b}_patches_per_s") for t in ("eager", "compile")]
        return max((v for v in vals if v is not None), default=None)

    def met(value: float | None, goal: float) -> str:
        return DASH if value is None else ("yes" if value >= goal else f"**no** ({value / goal:.2f} of it)")

    out = ["| goal (issue 16) | best measured | met? |", "|---|---|---|",
           f"| inference ≥ {GOAL_INFER:.0f} MP/s, batch 8 × 512² | {_num(best_infer)} | {met(best_infer, GOAL_INFER)} |",
           f"| end to end ≥ {GOAL_E2E:.0f} MP/s, one 1024² photo | {_num(best_e2e)} | {met(best_e2e, GOAL_E2E)} |"]
    for b, goal in GOAL_TRAIN.items():
        value = best_train(b)
        out.append(f"| training ≥ {goal:,.0f} patches/s at batch {b} | {_num(value, '{:,.0f}')} | {met(value, goal)} |")
    acc = {**steps.get("accuracy", {}), **steps.get("accuracy_compile", {})}
    for weights in ("shipped", "official"):
        ref = acc.get(f"{weights}_torch_fp32", {}).get("psnr")
        if not ref:
            continue
        for run in ("torch_fp16", "torch_bf16", "compile_fp16"):
            got = acc.get(f"{weights}_{run}", {}).get("psnr")
            if got:
                worst = max((got[s] - ref[s] for s in ref), key=abs)  # "within": either sign
                out.append(f"| {weights} weights, {run.replace('_', ' ')} within {GOAL_DB} dB of fp32 "
                           f"on Set5 | worst {worst:+.3f} dB | {'yes' if abs(worst) <= GOAL_DB else '**no**'} |")
    return out


def report(doc: dict[str, Any]) -> str:
    steps = doc.get("steps", {})
    info = steps.get("info", {})
    head = (f"Card: **{info.get('card', '?')}** ({info.get('memory_mib', '?')} MiB; nvidia-smi: "
            f"{info.get('nvidia_smi', '?')}); torch {info.get('torch', '?')}, CUDA {info.get('cuda', '?')}, "
            f"cuDNN {info.get('cudnn', '?')}.")
    if any(s.get("smoke") for s in steps.values() if isinstance(s, dict)):
        head += " **Smoke run (tiny sizes, one repeat): not a measurement.**"
    parts = [head, "", *inference_table(steps), "", *training_table(steps), "", *accuracy_table(steps),
             "", *goals(steps)]
    status = steps.get("_status", {})
    ended = [f"- `{name}`: " + ("skipped (no time left)" if s["rc"] == -1 else
                                f"timed out after {s['seconds']:.0f} s" if s["timed_out"] else
                                f"exit status {s['rc']}")
             for name, s in status.items() if s["rc"] != 0]
    if ended:
        parts += ["", "Steps that did not finish (their numbers above are partial or missing):", *ended]
    return "\n".join(parts) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", type=Path)
    ap.add_argument("--out", type=Path, help="write the Markdown here (default: print it)")
    args = ap.parse_args()
    text = report(json.loads(args.json.read_text()))
    if args.out:
        args.out.write_text(text)
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
