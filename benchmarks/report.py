"""Format benchmarks/results.json (from run.py) as the Markdown tables of BENCHMARKS.md.

    python benchmarks/report.py [benchmarks/results.json]
"""

from __future__ import annotations

import json
import sys


def cli_table(r: dict) -> None:
    """The whole-process table of benchmarks/cli_speed.py."""
    m = r["machine"]
    print(f"Machine: {m['cpu']}, {m['cores']} cores, CPU features: {', '.join(m['features']) or 'none'}; "
          f"torch {m['torch']}, onnxruntime {m['onnxruntime']}, Python {m['python']}.\n")
    print(f"Command: `{r['command']}`\n")
    print("| workload | `vdsr upscale --backend` | median s (runs) | × baseline | peak RSS MB | Y-PSNR dB | dB vs baseline |")
    print("|---|---|---|---|---|---|---|")
    rows = r["rows"]
    for key, row in rows.items():
        workload, method = key.split("/")
        base = rows.get(f"{workload}/baseline")
        speed = f"{base['seconds'] / row['seconds']:.2f}" if base else "-"
        name = "eager fp32 baseline" if method == "baseline" else method
        psnr = f"{row['y_psnr']:.3f}" if "y_psnr" in row else "-"
        delta = f"{row['db_vs_baseline']:+.3f}" if "db_vs_baseline" in row else "-"
        print(f"| {workload} | {name} | {row['seconds']:.2f} ({len(row['times'])}) | {speed} | "
              f"{row['peak_rss_mb']:.0f} | {psnr} | {delta} |")


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results.json"
    r = json.load(open(path))
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
