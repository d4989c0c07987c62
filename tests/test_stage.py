"""scripts/gpu_stage.sh (a script, not a module of src/vdsr) on a tiny CPU run: it trains into
$OUT, stops at its budget with a checkpoint, resumes on the next run instead of starting over,
and refuses bad state without writing anything (issue 14)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, random_rgb, write_png

STAGE = ROOT / "scripts" / "gpu_stage.sh"


@pytest.fixture
def data(tmp_path: Path) -> tuple[Path, Path]:
    hr, val = tmp_path / "hr", tmp_path / "val"
    hr.mkdir()
    val.mkdir()
    for i in range(3):
        write_png(hr / f"{i}.png", random_rgb(60 + 7 * i, 64, seed=i))
    write_png(val / "v.png", random_rgb(40, 44, seed=9))
    return hr, val


def run_stage(out: Path, data: tuple[Path, Path], **env: str) -> subprocess.CompletedProcess[str]:
    settings = {"OUT": str(out), "DEVICE": "cpu", "INIT": "none", "BATCH": "8", "LR": "1e-3",
                "WARMUP": "0", "TOTAL": "300", "TRAIN_DIRS": str(data[0]), "VAL_DIR": str(data[1]),
                "EXTRA": "--depth 4 --width 8 --patch 21 --scales 2 --downscales 1.0 --threads 1",
                "PYTHON": sys.executable}
    return subprocess.run(["bash", str(STAGE)], cwd=ROOT, env=os.environ | settings | env,
                          capture_output=True, text=True, timeout=300)


def tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
@pytest.mark.subprocess
def test_stage_stops_at_its_budget_and_resumes_on_the_next_run(tmp_path: Path, data: tuple[Path, Path]) -> None:
    out = tmp_path / "out"
    run = out / "run"
    # The budget running out, made deterministic: SIGTERM to `vdsr train` once it has saved.
    budget_cut = tmp_path / "budget_cut.sh"
    budget_cut.write_text(f"""#!/bin/sh
"{sys.executable}" -m vdsr "$@" &
pid=$!
while [ ! -e "{run}/checkpoint.pt" ] && kill -0 $pid 2>/dev/null; do sleep 0.05; done
kill -TERM $pid
wait $pid
""")
    first = run_stage(out, data, STEPS="60", VDSR=f"sh {budget_cut}")
    assert first.returncode == 0, first.stderr
    summary = json.loads((out / "stage.json").read_text())
    assert summary["status"] == "stopped" and not summary["resumed"], summary
    stopped_at = summary["step"]
    assert 6 <= stopped_at < 60 and summary["steps"] == 60
    assert not (run / "last.safetensors").exists()
    rows_before = (run / "metrics.csv").read_text().splitlines()

    second = run_stage(out, data)  # no STEPS: the run folder's own config decides
    assert second.returncode == 0, second.stderr
    summary = json.loads((out / "stage.json").read_text())
    assert summary["status"] == "finished" and summary["resumed"], summary
    assert summary["step"] == 60 and summary["last"]["val_psnr_x2"] > 20
    assert (run / "last.safetensors").exists() and (run / "best.safetensors").exists()
    rows = (run / "metrics.csv").read_text().splitlines()
    kept = [r for r in rows_before[1:] if int(r.split(",")[0]) <= stopped_at]
    assert kept and rows[1 : len(kept) + 1] == kept  # run 1's log kept, run 2's appended
    steps = [int(r.split(",")[0]) for r in rows[1:]]
    assert steps == sorted(set(steps)) and steps[-1] == 60
    log = (out / "log.txt").read_text()
    assert "training: 60 steps" in log and f"training: resuming {run}" in log


@pytest.mark.slow
@pytest.mark.subprocess
def test_stage_with_bad_state_stops_with_one_line_and_writes_nothing(
        tmp_path: Path, data: tuple[Path, Path]) -> None:
    out = tmp_path / "out"
    run = out / "run"
    done = run_stage(out, data, STEPS="6")
    assert done.returncode == 0, done.stderr
    good = (run / "checkpoint.pt").read_bytes()
    config = json.loads((run / "config.json").read_text())

    def spoil_config(p: Path) -> None:
        (run / "config.json").write_text(json.dumps(config | {"width": 16}))

    cases = [
        ("no checkpoint.pt to resume from", lambda p: p.unlink()),
        ("unreadable checkpoint", lambda p: p.write_bytes(good[:100])),
        ("holds a model with width 8, but config.json describes width 16", spoil_config),
    ]
    for needle, spoil in cases:
        spoil(run / "checkpoint.pt")
        before = tree(out)
        bad = run_stage(out, data, STEPS="12")
        assert bad.returncode == 1, bad.stdout
        assert bad.stdout == "" and bad.stderr.startswith("vdsr: error: "), bad.stderr
        assert len(bad.stderr.splitlines()) == 1 and needle in bad.stderr, bad.stderr
        assert tree(out) == before, needle
        (run / "checkpoint.pt").write_bytes(good)
        (run / "config.json").write_text(json.dumps(config))
    # Continuing a run folder from elsewhere (FROM) checks it before copying anything.
    (run / "checkpoint.pt").write_bytes(b"junk")
    other = tmp_path / "other"
    bad = run_stage(other, data, FROM=str(run))
    assert bad.returncode == 1 and "unreadable checkpoint" in bad.stderr and not other.exists()
    # A fresh CPU stage needs a step count: the benchmark that sizes it runs on CUDA only.
    bad = run_stage(other, data)
    assert bad.returncode == 1 and "set STEPS" in bad.stderr and not other.exists()
    assert bad.stdout == ""
