"""vdsr.batch.ray_jobs: folder jobs on Ray Data, on a local cluster of 2 CPUs that this module starts
(issue 25, items 4 and 5): the same bytes as one process, a bad file is a failed row, an actor
killed mid-job is retried, a rerun after the run is killed does only the rest.

The cluster runs in a helper process (``ray.init(num_cpus=2)``), so that pytest's own process
never hosts Ray; ``vdsr upscale --ray ADDRESS`` connects to it as it would to a real cluster.
Skipped, with the reason, where Ray Data is not installed (``pip install 'vdsr[ray]'``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import TEST_CPU_FEATURES, a_folder, images, random_rgb, temp_files, write_png
from vdsr import batch
from vdsr.cli import main
from vdsr.cpu import CPU_FEATURES_ENV

pytest.importorskip("ray.data", reason="Ray Data is not installed (pip install 'vdsr[ray]')")

pytestmark = [pytest.mark.slow, pytest.mark.subprocess]

_CLUSTER = """
import logging, sys
import ray
context = ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
print(context.address_info["gcs_address"], flush=True)
sys.stdin.read()  # until the test closes it
ray.shutdown()
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, int, dict[str, str]]]:
    """``(address, pid of the process that holds the cluster, environment for its clients)``.
    Token authentication stays on: the clients find the token in ~/.ray and are told to use it."""
    # The CPU class the tests see (conftest's autouse fixture sets it per test, after this
    # module-scoped fixture has run): without it the actors saw this machine's own features and
    # took another runtime for int8 (OpenVINO with VNNI) than the one-process run beside them.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "OMP_NUM_THREADS": "1", CPU_FEATURES_ENV: TEST_CPU_FEATURES}
    holder = subprocess.Popen([sys.executable, "-c", _CLUSTER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              env=env, text=True)
    assert holder.stdout is not None and holder.stdin is not None
    address = holder.stdout.readline().strip()
    if not address:
        holder.kill()
        pytest.skip("a local Ray cluster could not be started here")
    try:
        yield address, holder.pid, env
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            holder.kill()


def _descendants(pid: int) -> dict[int, str]:
    """``pid -> command line`` of the processes below ``pid`` (read from /proc): the cluster's
    own workers, and nothing else on the machine."""
    parents: dict[int, int] = {}
    commands: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            commands[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
    below: dict[int, str] = {}
    frontier = [pid]
    while frontier:
        parent = frontier.pop()
        for child, p in parents.items():
            if p == parent and child not in below:
                below[child] = commands.get(child, "")
                frontier.append(child)
    return below


def _actors(cluster_pid: int) -> list[int]:
    return [p for p, command in _descendants(cluster_pid).items() if "UpscaleActor" in command]


def _vdsr(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "vdsr", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=env, text=True)


def _wait(predicate: object, proc: subprocess.Popen[str], what: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{what} never came")
        time.sleep(0.02)


def test_ray_writes_what_one_process_writes_and_reports_a_bad_file(
        tmp_path: Path, tiny_weights: Path, cluster: tuple[str, int, dict[str, str]],
        capsys: pytest.CaptureFixture[str]) -> None:
    """Issue 25, item 5: outputs byte-equal to the single-process run, sub-folders and names
    kept; a bad file in the middle is a failed row of the manifest and does not stop the job."""
    address, _, env = cluster
    src = a_folder(tmp_path / "in", 5, size=40)
    (src / "02b.png").write_bytes(b"not an image")
    a_folder(src / "sub", 2, size=30)
    w = ["--weights", str(tiny_weights), "-r"]
    assert main(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "one"), *w]) == 1  # the bad file
    capsys.readouterr()
    proc = _vdsr(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "ray"), "--ray", address, *w], env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr
    assert stdout.startswith("done 7, skipped 0, failed 1, in ") and "02b.png: not an image" in stderr
    assert images(tmp_path / "ray") == images(tmp_path / "one") and len(images(tmp_path / "one")) == 7
    rows = batch.read_manifest(tmp_path / "ray" / batch.MANIFEST)
    assert [r["status"] for r in rows if r["input"].endswith("02b.png")] == ["failed"]
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done", "failed"}
    assert all(r["backend"] and r["recipe"] for r in rows if r["status"] == "done")
    # A rerun (here on a one-node cluster of its own: no address) keeps everything and redoes nothing.
    proc = _vdsr(["upscale", str(src), "-s", "2", "-o", str(tmp_path / "ray"), "--ray", *w], env)
    stdout, stderr = proc.communicate(timeout=300)
    assert stdout.startswith("done 0, skipped 7, failed 1, in "), stderr


def test_an_actor_killed_mid_job_is_retried(tmp_path: Path, tiny_weights: Path,
                                           cluster: tuple[str, int, dict[str, str]]) -> None:
    """Issue 25, item 5: a Ray worker process killed (SIGKILL) in the middle of the job: Ray
    restarts the actor and retries its image; the manifest ends complete, nothing half-written."""
    address, cluster_pid, env = cluster
    src = a_folder(tmp_path / "in", 12, size=160)
    out = tmp_path / "out"
    proc = _vdsr(["upscale", str(src), "-s", "3", "-o", str(out), "--ray", address, "--weights",
                  str(tiny_weights), "--precision", "fp32"], env)
    _wait(lambda: len(list(out.glob("*.png"))) >= 1 and _actors(cluster_pid), proc, "the first output")
    victim = _actors(cluster_pid)[0]
    os.kill(victim, signal.SIGKILL)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.startswith("done 12, skipped 0, failed 0, in ")
    rows = batch.read_manifest(out / batch.MANIFEST)
    assert sorted(Path(r["input"]).name for r in rows) == sorted(p.name for p in src.iterdir())
    assert temp_files(out) == [] and len(images(out)) == 12
    assert victim not in _actors(cluster_pid)


def test_a_rerun_after_the_run_is_killed_does_only_the_rest(tmp_path: Path, tiny_weights: Path,
                                                           cluster: tuple[str, int, dict[str, str]]) -> None:
    """Issue 25, item 5: `vdsr upscale --ray` killed by SIGKILL part way: what it finished is
    complete (and kept), what it was writing is cleaned up by the rerun, which does only the
    remaining files."""
    address, cluster_pid, env = cluster
    src = a_folder(tmp_path / "in", 12, size=160)
    write_png(src / "z_last.png", random_rgb(40, 40))
    out = tmp_path / "out"
    argv = ["upscale", str(src), "-s", "3", "-o", str(out), "--ray", address, "--weights", str(tiny_weights),
            "--precision", "fp32"]
    proc = _vdsr(argv, env)
    _wait(lambda: len(batch.read_manifest(out / batch.MANIFEST)) >= 3, proc, "three finished images")
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 60
    while _actors(cluster_pid) and time.monotonic() < deadline:  # Ray ends the dead driver's actors
        time.sleep(0.2)
    finished = images(out)  # every output there is complete
    assert 3 <= len(finished) < 13
    proc = _vdsr(argv, env)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.startswith(f"done {13 - len(finished)}, skipped {len(finished)}, failed 0, in "), stdout
    assert all(images(out)[k] == v for k, v in finished.items()) and len(images(out)) == 13
    assert temp_files(out) == []


def test_actors_get_a_gpu_each_where_the_cluster_has_them() -> None:
    """The pool's shape from the cluster's resources (no cluster needed): one GPU an actor on a GPU
    cluster (the device then CUDA), the CPUs shared out as threads elsewhere or with --device cpu.
    (Running the actors on real GPUs was not possible here: no GPU machine has Ray.)"""
    from vdsr.batch import Settings
    from vdsr.batch.ray_jobs import pool_for

    settings = Settings(scale=2.0, device="auto")
    size, options, actor = pool_for({"CPU": 16.0, "GPU": 2.0}, settings, 1)
    assert (size, options, actor.device, actor.threads) == (2, {"num_gpus": 1, "num_cpus": 1}, "cuda", None)
    assert pool_for({"CPU": 16.0, "GPU": 2.0}, settings, 4)[0] == 4
    size, options, actor = pool_for({"CPU": 16.0, "GPU": 2.0}, Settings(scale=2.0, device="cpu"), 1)
    assert (size, options, actor.threads) == (16, {"num_cpus": 1}, 1)
    size, options, actor = pool_for({"CPU": 8.0}, settings, 2)
    assert (size, options, actor.threads) == (2, {"num_cpus": 4}, 4)


_CONTEXT_CHECK = """
import json, logging, sys
from pathlib import Path
import ray.data
from vdsr import batch
from vdsr.batch.ray_jobs import run_on_ray
address, source, target, weights = sys.argv[1:]
context, logger = ray.data.DataContext.get_current(), logging.getLogger("ray.data")
before = [context.enable_progress_bars, context.max_errored_blocks, logger.level]
stdout, rows = sys.stdout, []
settings = batch.Settings(scale=2, weights=weights, precision="fp32", backend="torch", device="cpu")
run_on_ray([batch.Job(Path(source), Path(target), "0.png")], settings, address, 1, rows.append)
after = [context.enable_progress_bars, context.max_errored_blocks, logger.level]
print(json.dumps({"before": before, "after": after, "stdout_kept": sys.stdout is stdout,
                  "status": [r["status"] for r in rows]}))
"""


def test_a_run_on_ray_puts_ray_datas_context_and_logger_back(
        tmp_path: Path, tiny_weights: Path, cluster: tuple[str, int, dict[str, str]]) -> None:
    """Issue 32: a run sets Ray Data's process-wide context (no progress bars, errored blocks),
    its logger's level and sys.stdout (Ray's messages go to stderr) for itself, and puts them
    back when it ends (the context and the logger were left changed)."""
    import json

    address, _, env = cluster
    src = a_folder(tmp_path / "in", 1, size=24)
    done = subprocess.run([sys.executable, "-c", _CONTEXT_CHECK, address, str(next(src.iterdir())),
                           str(tmp_path / "out.png"), str(tiny_weights)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    said = json.loads(done.stdout.strip().splitlines()[-1])
    assert said["status"] == ["done"] and (tmp_path / "out.png").is_file()
    assert said["after"] == said["before"] and said["stdout_kept"], said
