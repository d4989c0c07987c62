"""Collections benchmark (issue 25): many images, one process vs `--workers 2` vs Ray (local).

    python benchmarks/collections_speed.py [--quick] [--repeats 1] [--out benchmarks/results_collections.json]
    python benchmarks/collections_speed.py --report benchmarks/results_collections.json   # the BENCHMARKS.md table

Workloads (RGB PNGs, upscaled x2 with the shipped model and ``--precision auto``):

* ``small``: 200 images of 128x128 (crops of scikit-image's bundled photos);
* ``large``: 8 images of 1024x1024 (the photos resized, flipped and turned).

Each run is a fresh process (``--child``) that does what ``vdsr upscale IN -o OUT [--workers 2 |
--ray]`` does, through :mod:`vdsr.batch`, and reports its times: ``process_s`` (the whole
process, as the parent measures it: Python, imports, weights, the job), ``job_s`` (the job:
for workers and Ray that includes starting the processes or actors and their loading the model),
and for Ray ``ray_start_s`` (``ray.init`` of the local one-node cluster, kept out of ``job_s``).
``images_per_s`` is images / ``job_s``. The outputs of every mode are compared byte for byte with
the one-process run's. A run on one image before the measured ones fills the recipe check's cache.

``--quick`` (a test of this script, not a measurement): 12 small images and 2 of 384x384.

(Not ``collections.py``: a script of that name in this folder would stand in for Python's own
``collections`` module for every script run from here.)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MODES = ("one", "workers2", "ray")


def make_workload(folder: Path, count: int, side: int) -> None:
    """``count`` distinct RGB PNGs of ``side`` x ``side`` in ``folder``."""
    import numpy as np
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True)
    photos = [Image.fromarray(np.asarray(img)).convert("RGB")
              for img in (data.astronaut(), data.chelsea(), data.coffee(), data.rocket())]
    for i in range(count):
        photo = photos[i % len(photos)]
        if side >= min(photo.size):  # large: the whole photo, resized, in one of 8 orientations
            img = photo.resize((side, side), Image.Resampling.LANCZOS)
            if i // len(photos) % 2:
                img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            img = img.rotate(90 * (i // (2 * len(photos)) % 4))
        else:  # small: a crop at a place of its own
            w, h = photo.size
            step = max(1, (w - side) * (h - side) // max(1, count))
            offset = (i * 7919 * step) % max(1, (w - side) * (h - side))
            x, y = offset % (w - side), offset // (w - side)
            img = photo.crop((x, y, x + side, y + side))
        img.save(folder / f"{i:04d}.png")


def child(mode: str, src: str, out: str) -> dict[str, Any]:
    """One measured run in this process; returns its times."""
    from vdsr import batch
    from vdsr.io.outputs import NamingRule
    from vdsr.weights import load_model

    plan = batch.plan([src], out, NamingRule(2))
    batch.check(plan, overwrite=True)
    model, _ = load_model()
    settings = batch.Settings(scale=2)
    result: dict[str, Any] = {}
    if mode == "ray":
        import logging

        import ray

        start = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level=logging.ERROR,
                 log_to_driver=False)
        result["ray_start_s"] = time.perf_counter() - start
    remote = None
    if mode == "ray":
        from vdsr.batch.ray_jobs import OnRay

        remote = OnRay()  # the cluster this process started
    start = time.perf_counter()
    summary = batch.run(plan, settings, overwrite=True, model=model,
                        workers=2 if mode == "workers2" else 1, remote=remote)
    result["job_s"] = time.perf_counter() - start
    if mode == "ray":
        import ray

        ray.shutdown()
    result.update(done=summary.done, failed=summary.failed,
                  run=summary.run.describe() if summary.run is not None else None)
    return result


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.png")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def measure(mode: str, src: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "token")}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--child", mode, str(src), str(out)], capture_output=True,
                          text=True, env=env, timeout=7200)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{mode} on {src.name} failed:\n{done.stderr[-3000:]}")
    row: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_s"] = wall
    return row


def machine() -> dict[str, Any]:
    name = platform.processor() or "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in ("torch", "onnxruntime", "ray"):
        try:
            from importlib.metadata import version

            versions[package] = version(package)
        except Exception:  # noqa: BLE001 - not installed
            versions[package] = None
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return {"cpu": name, "cores": os.cpu_count(), "load_1min_at_start": load, **versions}


def benchmark(quick: bool, repeats: int, modes: tuple[str, ...]) -> dict[str, Any]:
    workloads = {"small": (12, 128), "large": (2, 384)} if quick else {"small": (200, 128), "large": (8, 1024)}
    rows = []
    with tempfile.TemporaryDirectory(prefix="vdsr-collections-") as tmp:
        base = Path(tmp)
        for name, (count, side) in workloads.items():
            src = base / name
            make_workload(src, count, side)
            warm = base / f"{name}-warm"
            warm.mkdir()
            first = sorted(src.glob("*.png"))[0]
            (warm / first.name).write_bytes(first.read_bytes())
            measure("one", warm, base / f"{name}-warm-out")  # fills the recipe check's cache; not counted
            reference = None
            for mode in modes:
                runs = [measure(mode, src, base / f"{name}-{mode}-{r}") for r in range(repeats)]
                same = digest(base / f"{name}-{mode}-0")
                reference = reference or (same if mode == "one" else None)
                job = statistics.median(r["job_s"] for r in runs)
                row = {"workload": name, "images": count, "side": side, "mode": mode, "repeats": repeats,
                       "job_s": job, "process_s": statistics.median(r["process_s"] for r in runs),
                       "ray_start_s": (statistics.median(r["ray_start_s"] for r in runs) if mode == "ray" else None),
                       "images_per_s": count / job, "done": runs[0]["done"], "failed": runs[0]["failed"],
                       "run": runs[0]["run"], "same_bytes_as_one": None if reference is None else same == reference}
                rows.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
    return {"benchmark": "collections", "quick": quick, "scale": 2, "machine": machine(), "rows": rows}


def report(path: Path) -> str:
    """The results as the Markdown table of BENCHMARKS.md."""
    body = json.loads(path.read_text())
    m = body["machine"]
    lines = [f"{m['cpu']}, {m['cores']} cores (load {m['load_1min_at_start']}), torch {m['torch']}, "
             f"onnxruntime {m['onnxruntime']}, ray {m['ray']}; x{body['scale']}, the shipped model, "
             f"--precision auto ({body['rows'][0]['run']}){'; QUICK (not a measurement)' if body['quick'] else ''}",
             "",
             "| workload | mode | images/s | job s | whole process s | Ray start s | same bytes as one process |",
             "|---|---|---|---|---|---|---|"]
    for r in body["rows"]:
        ray_start = f"{r['ray_start_s']:.1f}" if r["ray_start_s"] is not None else ""
        same = {True: "yes", False: "**no**", None: "(reference)"}[r["same_bytes_as_one"]]
        lines.append(f"| {r['images']} x {r['side']}² | {r['mode']} | {r['images_per_s']:.2f} | {r['job_s']:.1f} | "
                     f"{r['process_s']:.1f} | {ray_start} | {same} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few images: checks the script, measures nothing")
    parser.add_argument("--repeats", type=int, default=1, help="measured runs per mode (the median is kept)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results_collections.json")
    parser.add_argument("--report", type=Path, metavar="JSON", help="print the table of a results file")
    parser.add_argument("--child", nargs=3, metavar=("MODE", "IN", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(*args.child)))
        return
    if args.report:
        print(report(args.report))
        return
    results = benchmark(args.quick, args.repeats, tuple(args.modes))
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(report(args.out))


if __name__ == "__main__":
    main()
