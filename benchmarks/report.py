"""Format a benchmark's JSON results as the Markdown tables of BENCHMARKS.md.

    python benchmarks/report.py benchmarks/results_cli.json          # cli_speed.py: the whole process
    python benchmarks/report.py benchmarks/results_first_run.json    # first_run.py: the empty cache
    python benchmarks/report.py benchmarks/results_recipe_speed.json # recipe_speed.py: the network alone
    python benchmarks/report.py [benchmarks/results.json]            # run.py (docs/benchmark_history.md)

tests/test_docs.py checks that BENCHMARKS.md holds what this prints for the first three.
"""

from __future__ import annotations

import json
import sys


def _method_name(method: str) -> str:
    """A row of cli_speed.py / first_run.py (a key of cli_speed.ROWS, or the baseline) as the tables name it."""
    return {"baseline": "eager fp32 baseline", "default": "defaults",
            "auto, onnxruntime": "`--backend onnxruntime` (defaults without OpenVINO)",
            "torch fp32": "`--precision fp32 --backend torch`"}.get(method, f"`--precision {method}`")


def _what_it_ran(said: str) -> str:
    """The recipe, runtime and device from the last line `vdsr upscale` printed (in its brackets)."""
    return said[said.find("(") + 1:said.rfind(")")] if "(" in said else "-"


def cli_table(r: dict) -> None:
    """The whole-process table of benchmarks/cli_speed.py."""
    m, peaks = r["machine"], r.get("peaks", {})
    print(f"Machine: {m['cpu']}, {m['cores']} cores, CPU class `{m.get('class', '?')}` "
          f"(features: {', '.join(m['features']) or 'none'}); torch {m['torch']}, onnxruntime "
          f"{m['onnxruntime']}, openvino {m.get('openvino') or 'not installed'}, Python {m['python']}.\n")
    if peaks:
        print(f"Matmul rates in the same run: fp32 {peaks['fp32_matmul_gflops']:.0f} GFLOP/s, "
              f"bf16 {peaks['bf16_matmul_gflops']:.0f} GFLOP/s (PyTorch, 4096²), int8 "
              f"{peaks['int8_matmul_gops']:.0f} GOP/s (ONNX Runtime MatMulInteger, 2048²).\n")
    tile = f" (default tile {r['default_tile']})" if "default_tile" in r else ""
    print(f"Command: `{r['command']}`{tile}\n")
    print("| weights | workload | `vdsr upscale` | what it ran | median s (runs) | × baseline | effective GFLOP/s "
          "| peak RSS MB (bound) | Y-PSNR dB | dB vs baseline |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, row in r["rows"].items():
        parts = key.split("/")
        if len(parts) != 3:
            continue
        wname, workload, method = parts
        name = _method_name(method)
        ran = _what_it_ran(row.get("said", ""))
        speed = f"{row['x_baseline']:.2f}" if "x_baseline" in row else "-"
        psnr = f"{row['y_psnr']:.3f}" if "y_psnr" in row else "-"
        delta = f"{row['db_vs_baseline']:+.3f}" if "db_vs_baseline" in row else "-"
        bound = row.get("memory_bound_mb")
        rss = f"{row['peak_rss_mb']:.0f}" + (f" ({bound:.0f})" if bound and method != "baseline" else "")
        print(f"| {wname} | {workload} | {name} | {ran} | {row['seconds']:.2f} ({len(row['times'])}) | {speed} | "
              f"{row.get('effective_gflops', 0):.0f} | {rss} | {psnr} | {delta} |")
    for key, row in r["rows"].items():
        if key.endswith("/first_run"):
            print(f"\n- {key.split('/')[0]} weights, first run on a new machine (Set5 baby, recipe check "
                  f"included): {row['seconds']:.1f} s")


def recipe_speed_table(r: dict) -> None:
    """The per-recipe network table of benchmarks/recipe_speed.py."""
    m = r["machine"]
    print(f"Machine: {m['cpu']}, CPU class `{m['class']}` (features: {', '.join(m['features']) or 'none'}), "
          f"torch {m['torch']}, {m['threads']} threads. Command: `{r['command']}`.\n")
    print(f"| recipe | runtime | seconds per {r['tile']}² tile | effective GFLOP/s |")
    print("|---|---|---|---|")
    for key, row in sorted(r["rows"].items(), key=lambda kv: kv[1]["seconds"]):
        recipe, runtime = key.split("/")
        print(f"| {recipe} | {runtime} | {row['seconds']:.3f} | {row['gflops']:.0f} |")
    for key, why in r.get("skipped", {}).items():
        print(f"| {key.split('/')[0]} | {key.split('/')[1]} | not run: {why} | |")


def first_run_table(r: dict) -> None:
    """The empty-cache table of benchmarks/first_run.py."""
    m = r["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, CPU class `{m['class']}` (features: "
          f"{', '.join(m['features']) or 'none'}); torch {m['torch']}, onnxruntime {m['onnxruntime']}, "
          f"openvino {m.get('openvino') or 'not installed'}. Command: `{r['command']}`.\n")
    print("| weights | `vdsr upscale` 1024² → 2048² | what it ran | first run s | first run peak RSS MB "
          "| cached s | cached peak RSS MB | bound MB |")
    print("|---|---|---|---|---|---|---|---|")
    for key, row in r["rows"].items():
        wname, method = key.split("/")
        name, ran = _method_name(method), _what_it_ran(row["first"]["said"])
        f, w = row["first"], row["warm"]
        print(f"| {wname} | {name} | {ran} | {f['seconds']:.2f} ({len(f['times'])}) | {f['peak_rss_mb']:.0f} | "
              f"{w['seconds']:.2f} | {w['peak_rss_mb']:.0f} | {row['memory_bound_mb']:.0f} |")


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json"
    r = json.load(open(path))
    if r.get("kind") == "first_run":
        first_run_table(r)
        return
    if "tile" in r and "rows" in r:
        recipe_speed_table(r)
        return
    if "rows" in r:
        cli_table(r)
        return
    m = r["machine"]
    peak = r["matmul"]["gflops"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['threads']} threads), "
          f"onnxruntime {m['onnxruntime']}, Python {m['python']}.\n")
    print(f"fp32 matmul peak (4096², same run): **{peak:.1f} GFLOP/s**.\n")
    print("| workload | path | median s | MP/s | effective GFLOP/s | × matmul peak | × baseline | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for wl in ("set5", "1024"):
        base = r.get(f"inference/baseline/{wl}")
        if not base:
            continue
        for method in ("baseline", "ours:torch", "ours:onnxruntime", "ours:int8"):
            if f"inference/{method}/{wl}" not in r:
                continue
            x = r[f"inference/{method}/{wl}"]
            runs = len(x["times"])
            print(f"| {wl} | {method} | {x['seconds']:.2f} ({runs} run{'s' if runs > 1 else ''}) | "
                  f"{x['megapixels_per_s']:.3f} | {x['gflops']:.1f} | {x['gflops'] / peak:.2f} | "
                  f"{base['seconds'] / x['seconds']:.2f} | {x['peak_rss_mb']:.0f} |")
    print()
    for wl in ("set5", "1024"):
        if f"equal/{wl}" in r:
            print(f"- {wl}: max |ours − eager whole-image| = {r[f'equal/{wl}']['max_abs_diff']:.2e} (0–1 scale)")
    q = r.get("int8_psnr", {})
    if "x2" in q:
        print("- int8 vs fp32, Set5 Y-PSNR (dB): " + ", ".join(
            f"×{k[1:]} {v['fp32']:.3f} → {v['int8']:.3f} ({v['delta']:+.3f})" for k, v in q.items() if k.startswith("x")))
    if "train/baseline" not in r:
        return
    tb, to = r["train/baseline"], r["train/ours"]
    print(f"\n| training step, batch 64 | patches/s | × baseline |\n|---|---|---|\n"
          f"| baseline (pytorch-vdsr loop) | {tb['patches_per_s']:.1f} | 1.00 |\n"
          f"| `vdsr train` step | {to['patches_per_s']:.1f} | {to['patches_per_s'] / tb['patches_per_s']:.2f} |")


if __name__ == "__main__":
    main()
