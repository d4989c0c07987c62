"""Shared fixtures and helpers (test files import the helpers from here). Data from
``../shared`` (relative to the repo root) is used where present; tests that need it are skipped,
with the reason, only when it is absent (CI has it)."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from PIL import Image, ImageCms
from safetensors.torch import load_file

from vdsr.cli import main
from vdsr.cpu import CPU_FEATURES_ENV, cpu_features, parse_features
from vdsr.errors import InvalidArgument
from vdsr.nn.model import VDSR, VDSRConfig
from vdsr.weights import WeightsMetadata, save_weights

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATASETS = SHARED / "datasets"
REFERENCE = SHARED / "reference"

needs_shared = pytest.mark.skipif(
    not (DATASETS / "Set5").is_dir() or not REFERENCE.is_dir(),
    reason=f"reference data not found at {SHARED}",
)


# The CPU every test sees, whatever the machine: what `auto` picks (backend, precision, int8
# runtime) follows the CPU's features (vdsr.cpu), and a test's expectation must not change with
# the machine that runs it. A plain AVX2 x86-64 core: no VNNI, no native bf16, so `auto` never
# takes a path that exists only on some CPUs or only with the optional openvino installed.
# VDSR_TEST_CPU_FEATURES runs the whole suite as another class (CI's matrix: none, avx2,
# "avx2,avx512,vnni", "avx2,avx512,vnni,bf16,amx"); tests that force a class themselves
# (monkeypatch.setenv(CPU_FEATURES_ENV, ...)) still do, and @pytest.mark.host_cpu opts a test out:
# it sees this machine's own features (and the user's VDSR_CPU_FEATURES, if set).
TEST_CPU_FEATURES = os.environ.get("VDSR_TEST_CPU_FEATURES", "avx2")


def pytest_configure(config: pytest.Config) -> None:
    try:  # a misspelt class stops the run before any test
        parse_features(TEST_CPU_FEATURES)
    except InvalidArgument as e:
        raise pytest.UsageError(f"VDSR_TEST_CPU_FEATURES={TEST_CPU_FEATURES!r}: {e}") from None


def pytest_report_header(config: pytest.Config) -> list[str]:
    host = ",".join(cpu_features().names()) or "none"
    openvino = "installed" if importlib.util.find_spec("openvino") else "not installed"
    return [f"vdsr: tests see CPU features {TEST_CPU_FEATURES!r} (VDSR_TEST_CPU_FEATURES); "
            f"this machine has {host!r}; openvino {openvino}"]


@pytest.fixture(autouse=True)
def _pinned_cpu(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("host_cpu") is None:
        monkeypatch.setenv(CPU_FEATURES_ENV, TEST_CPU_FEATURES)


@pytest.fixture(autouse=True)
def _python_sigint() -> Iterator[None]:
    """Every test starts with Python's own SIGINT handler, however pytest was started: `pytest &`
    in a script starts it with SIGINT ignored, and the processes a test starts inherit that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _cache_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Derived-model caches (the int8 backend) go to a per-session temp folder, not ~/.cache."""
    path = tmp_path_factory.getbasetemp() / "vdsr-cache"
    monkeypatch.setenv("VDSR_CACHE_DIR", str(path))
    return path


def tiny_model(depth: int = 4, width: int = 8, channels: int = 1, bias: bool = True,
               seed: int = 0) -> VDSR:
    """A small VDSR with a non-zero output layer (so it is not the identity)."""
    torch.manual_seed(seed)
    model = VDSR(VDSRConfig(depth=depth, width=width, channels=channels, bias=bias))
    torch.nn.init.normal_(model.output.weight, std=0.05)
    return model.eval()


@pytest.fixture
def tiny_weights(tmp_path: Path) -> Path:
    model = tiny_model()
    path = tmp_path / "tiny.safetensors"
    save_weights(path, model.state_dict(), WeightsMetadata(config=model.config, source="test"))
    return path


@pytest.fixture(scope="session")
def official_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vdsr.weights.importers import convert

    if not (REFERENCE / "vdsr_official_matconvnet.mat").exists():
        pytest.skip(f"official weights not found in {REFERENCE}")
    out = tmp_path_factory.mktemp("w") / "official.safetensors"
    convert(REFERENCE / "vdsr_official_matconvnet.mat", out)
    return out


def write_png(path: Path, array: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(np.ascontiguousarray(array)).save(path)
    return path


def random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth-ish random RGB uint8 image (noise alone makes no sense for SR)."""
    rng = np.random.default_rng(seed)
    base = rng.random((max(2, h // 4), max(2, w // 4), 3))
    from vdsr.resize import imresize

    img = imresize(base, size=(h, w))
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def receptive_span(model: VDSR) -> tuple[int, int]:
    """Rows and columns of the output that change when one input pixel does (random weights)."""
    torch.nn.init.normal_(model.output.weight, std=0.01)
    model.eval()
    x = torch.rand(1, 1, 61, 61)
    x2 = x.clone()
    x2[0, 0, 30, 30] += 1.0
    with torch.no_grad():
        diff = (model(x2) - model(x) - (x2 - x)).abs()[0, 0] > 0
    rows, cols = diff.any(1).nonzero(), diff.any(0).nonzero()
    return int(rows.max() - rows.min()) + 1, int(cols.max() - cols.min()) + 1


# -- the command line, in-process: its exit code, stdout and one error line ------------------------

def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def check_one_line_error(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    lines = [line for line in err.strip().splitlines() if not line.startswith("vdsr: warning")]
    assert len(lines) >= 1 and lines[0].startswith("vdsr: error: "), err
    assert "Traceback" not in err
    for n in needles:
        assert n in err, (n, err)
    return err


# -- image files -----------------------------------------------------------------------------------

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def photo_with_metadata(path: Path) -> Path:
    """A JPEG as a camera writes it: EXIF (make, pixel size, orientation 6), ICC profile, 300 dpi."""
    exif = Image.Exif()
    exif[0x010F] = "TestCam"
    exif[0x0112] = 6  # rotate 90° clockwise to display
    ifd = exif.get_ifd(0x8769)
    ifd[0xA002], ifd[0xA003] = 20, 12
    Image.fromarray(random_rgb(12, 20)).save(path, "JPEG", exif=exif.tobytes(), icc_profile=SRGB,
                                             dpi=(300, 300), quality=95)
    return path


# -- tensors ---------------------------------------------------------------------------------------

def _input(h: int = 45, w: int = 61, seed: int = 0) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).random((1, 1, h, w)).astype(np.float32))


# -- folder jobs (vdsr.batch, vdsr.batch.ray_jobs) ------------------------------------------------------

def temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def images(folder: Path) -> dict[str, bytes]:
    """The outputs under ``folder`` by relative path, each checked to decode completely."""
    found = {}
    for p in sorted(folder.rglob("*.png")):
        with Image.open(p) as im:
            im.load()
        found[str(p.relative_to(folder))] = p.read_bytes()
    return found


def a_folder(root: Path, n: int, size: int = 24) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write_png(root / f"{i:02d}.png", random_rgb(size, size + i, seed=i))
    return root


# -- training runs (vdsr.train) --------------------------------------------------------------------

@pytest.fixture
def train_dir(tmp_path: Path) -> Path:
    d = tmp_path / "hr"
    d.mkdir()
    for i in range(3):
        write_png(d / f"{i}.png", random_rgb(60 + 7 * i, 64, seed=i))
    return d


def tiny_args(train_dir: Path, run: Path, steps: int, every: int = 5) -> list[str]:
    return ["train", "--run-dir", str(run), "--train-dirs", str(train_dir), "--val-dir", "none",
            "--depth", "4", "--width", "8", "--batch-size", "8", "--steps", str(steps),
            "--patch", "21", "--downscales", "1.0", "--learning-rate", "1e-3",
            "--checkpoint-every", str(every), "--log-every", str(every), "--threads", "1",
            "--seed", "3"]


def _weights_equal(a: Path, b: Path) -> float:
    sa, sb = load_file(str(a)), load_file(str(b))
    assert sa.keys() == sb.keys()
    return max(float((sa[k] - sb[k]).abs().max()) for k in sa)


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys: pytest.CaptureFixture[str], code: int, *needles: str) -> str:
    """Exit code 1 and exactly one line on stderr, ``vdsr: error: ...``, holding every needle."""
    out, err = capsys.readouterr()
    assert code == 1, (out, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("vdsr: error: "), err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


@contextlib.contextmanager
def tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real tmpfs mounted at ``path`` (``options``: e.g. ``size=64k`` or ``ro``); skips the test
    where mounting is not permitted (not root, no CAP_SYS_ADMIN, no tmpfs)."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or 'mount failed'})")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


# -- property tests (hypothesis) -------------------------------------------------------------------

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _mutated(data: bytes, edits: list[tuple[int, int]], cut: int | None) -> bytes:
    out = bytearray(data)
    for pos, value in edits:
        out[pos % len(out)] = value
    return bytes(out if cut is None else out[: cut % len(out)])


_FUZZ = settings(max_examples=int(os.environ.get("VDSR_FUZZ_EXAMPLES", "60")), deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
_EDITS = st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), min_size=1, max_size=12)
