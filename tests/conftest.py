"""Shared fixtures. Data from ``../shared`` (relative to the repo root) is used where present;
tests that need it are skipped, with the reason, only when it is absent (CI has it)."""

from __future__ import annotations

import importlib.util
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vdsr.cpu import CPU_FEATURES_ENV, cpu_features, parse_features
from vdsr.errors import InvalidArgument
from vdsr.model import VDSR, VDSRConfig
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
    from vdsr.importers import convert

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
