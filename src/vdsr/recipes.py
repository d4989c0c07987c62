"""``--precision auto``: the fastest recipe checked for the weights in use on this machine.

Whether a fast recipe is accurate enough depends on the weights (issue 22: all-bf16 costs the
authors' weights 0.13 dB at x4 and the shipped ones nothing), so no fixed rule is right for
every model. :func:`choose` walks this machine's candidates, fastest first
(:func:`candidates`), and takes the first that passes a check for these weights; ``fp32`` is
always the last resort and needs no check.

The check (:func:`check_recipe`) runs the network in fp32 and in the candidate recipe on
bicubic-degraded crops of scikit-image's bundled photos (:data:`CHECK_IMAGES`, not those the int8
graphs are calibrated on) at the model's scales, and compares their mean Y-PSNR against the
originals per scale: the recipe passes when every scale is within :data:`TOLERANCE_DB` of fp32.
It runs once per (weights, machine class, recipe, runtime and its version, check version); the
verdict and the measured differences are cached in ``verdicts.json`` in the cache folder
(:func:`vdsr.backends.ort.cache_dir`). A damaged or stale cache file is rebuilt; an unwritable one
is kept in memory for the process, silently.

The real test sets back the check for the shipped and the official weights: docs/recipes.md
(``python benchmarks/recipe_accuracy.py``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray

from vdsr.backends import Backend, create_backend, openvino_available, pick_runtime, resolve_device
from vdsr.constants import DEFAULT_SCALES
from vdsr.cpu import CpuFeatures, cpu_features
from vdsr.errors import BackendUnavailable, InvalidArgument
from vdsr.nn.model import VDSR, weights_digest

log = logging.getLogger(__name__)

__all__ = ["CHECK_IMAGES", "TOLERANCE_DB", "Choice", "Verdict", "candidates", "check_recipe", "choose"]

CHECK_VERSION = 1  # part of the cache key: bump when the check's images, crops or rule change
TOLERANCE_DB = 0.02  # largest |mean Y-PSNR difference| from fp32 at any scale for a pass
# scikit-image's bundled natural photos, and where in each the CHECK_CROP-pixel crops start, as
# fractions of the free room (the int8 graphs are calibrated on centre crops of astronaut, coffee
# and rocket). Synthetic or nearly noiseless crops (clock, brick, a smooth patch of retina) were
# tried and left out: their 40-55 dB scores swing by tenths of a dB under rounding that moves
# real photos by thousandths, so they would veto recipes for no visible reason.
CHECK_IMAGES: tuple[tuple[str, tuple[tuple[float, float], ...]], ...] = (
    ("chelsea", ((0.3, 0.7),)),
    ("coffee", ((0.3, 0.6), (0.8, 0.2))),
    ("astronaut", ((0.3, 0.6), (0.9, 0.1))),
    ("rocket", ((0.3, 0.6), (0.9, 0.9))),
    ("hubble_deep_field", ((0.3, 0.6), (0.7, 0.2))),
    ("immunohistochemistry", ((0.3, 0.6), (0.8, 0.3))),
)
CHECK_CROP = 144  # divisible by 2, 3 and 4, and smaller than a tile: every crop runs whole
CHECK_AGREEMENT_DB = 40.0  # and the outputs must agree with fp32's: PSNR between them, pooled

# The recipes auto may take on a CPU, fastest first, as measured for the network on a 384² tile
# (AMD EPYC with AVX512_BF16 and VNNI, 2 threads; docs/cpu_backends.md): OpenVINO int8 1,495
# effective GFLOP/s, mixed 1,194, bf16 1,100, bf16-edge 1,056, ONNX Runtime fp32 526 (ONNX
# Runtime int8 1,366, mixed 1,077; PyTorch bf16 479 and bf16-edge 455, slower than fp32 there).
CPU_ORDER = ("int8", "mixed", "bf16", "bf16-edge")
# CUDA: fp16 runs on the same tensor cores as bf16 and keeps 3 more mantissa bits (docs/precision.md).
CUDA_ORDER = ("fp16", "bf16-edge")


@dataclass(frozen=True)
class Verdict:
    """The outcome of :func:`check_recipe`: the mean Y-PSNR difference from fp32 per scale."""

    recipe: str
    runtime: str
    machine: str
    delta_db: dict[str, float]
    passed: bool
    agreement_db: float = 0.0
    tolerance_db: float = TOLERANCE_DB
    images: int = sum(len(places) for _, places in CHECK_IMAGES)
    seconds: float = 0.0
    cached: bool = False

    @property
    def worst_db(self) -> float:
        """The difference furthest from 0 (signed)."""
        return max(self.delta_db.values(), key=abs) if self.delta_db else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "cached"}


@dataclass
class Choice:
    """What :func:`choose` settled on: the backend to run, its recipe's verdict (``None`` for a
    recipe asked for by name, or for fp32), and the candidates it passed over."""

    backend: Backend
    verdict: Verdict | None = None
    rejected: list[Verdict] = field(default_factory=list)

    @property
    def recipe(self) -> str:
        return self.backend.precision


def machine_class(device: torch.device, features: CpuFeatures | None = None) -> str:
    """What a verdict holds for: ``cpu-<feature class>`` or ``cuda-<compute capability>``."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return f"cuda-sm{major}{minor}"
    features = features if features is not None else cpu_features()
    return f"{device.type}-{features.feature_class}"


def candidates(model: VDSR, device: torch.device, backend: str = "auto",
               features: CpuFeatures | None = None) -> list[str]:
    """The fast recipes :func:`choose` tries for ``model`` on ``device``, fastest first.

    On a CPU: int8 and mixed (x86 with AVX2 or better; fast with VNNI), then bf16 and bf16-edge
    where the CPU computes bf16 natively and a fast bf16 runtime is there (OpenVINO, or PyTorch on
    AMX CPUs: PyTorch's bf16 on AVX512_BF16 without AMX ran slower than fp32 ONNX Runtime). On
    CUDA: fp16, then bf16-edge. Only recipes the chosen ``backend`` can run are listed.
    """
    features = features if features is not None else cpu_features()
    if device.type == "cuda":
        order: list[str] = list(CUDA_ORDER)
    elif device.type == "cpu":
        order = []
        if features.avx2:
            order += ["int8", "mixed"]
        if features.bf16 and ((openvino_available() and model.config.body == "plain") or features.amx):
            order += ["bf16", "bf16-edge"]
        order.sort(key=CPU_ORDER.index)
    else:
        order = []
    usable = []
    for recipe in order:
        try:
            runtime = pick_runtime(backend, device, recipe, model, features)
        except (InvalidArgument, BackendUnavailable):
            continue
        if recipe in ("bf16", "bf16-edge") and runtime == "torch" and device.type == "cpu" and not features.amx:
            continue
        usable.append(recipe)
    return usable


# -- the check -------------------------------------------------------------------------------------
Pairs = tuple[tuple[NDArray[np.float64], NDArray[np.float32], int], ...]


@lru_cache(maxsize=4)
def _check_pairs(channels: int, scales: tuple[int, ...]) -> Pairs:
    """``(ground truth 0-255, network input, scale)`` for every check crop and scale: the
    evaluation protocol (``rgb8``) for 1-channel models, the training degradation on RGB else."""
    from vdsr.io.images import bundled_photo
    from vdsr.quality.protocol import make_pair
    from vdsr.resize import degrade

    pairs = []
    for name, places in CHECK_IMAGES:
        image = np.asarray(bundled_photo(name), dtype=np.float64) / 255.0
        image = image[..., :3] if image.ndim == 3 else image
        h, w = image.shape[:2]
        for fy, fx in places:
            top, left = int((h - CHECK_CROP) * fy), int((w - CHECK_CROP) * fx)
            hr = image[top:top + CHECK_CROP, left:left + CHECK_CROP]
            for scale in scales:
                if channels == 1:
                    gt, bicubic = make_pair(hr, scale, protocol="rgb8")
                    x = (bicubic / 255.0)[None]
                else:
                    rgb = hr if hr.ndim == 3 else np.repeat(hr[..., None], 3, axis=2)
                    gt, up = degrade(rgb, scale)
                    gt, x = gt.transpose(2, 0, 1) * 255.0, up.transpose(2, 0, 1)
                pairs.append((gt, np.ascontiguousarray(x[None], dtype=np.float32), scale))
    return tuple(pairs)


def _outputs(backend: Backend, pairs: Pairs) -> list[NDArray[np.float64]]:
    """The backend's outputs on the check inputs, 0-255, clipped (non-finite values kept)."""
    outs = []
    for _, x, _ in pairs:
        out = backend(torch.from_numpy(x))[0].cpu().numpy().astype(np.float64) * 255.0
        outs.append(np.where(np.isfinite(out), np.clip(out, 0.0, 255.0), out).squeeze())
    return outs


def _mean_psnr(pairs: Pairs, outs: list[NDArray[np.float64]]) -> dict[int, float]:
    from vdsr.quality.metrics import psnr

    scores: dict[int, list[float]] = {}
    for (gt, _, scale), sr in zip(pairs, outs, strict=True):
        good = bool(np.isfinite(sr).all())
        scores.setdefault(scale, []).append(psnr(gt.squeeze(), sr, border=scale) if good else float("-inf"))
    return {s: float(np.mean(v)) for s, v in scores.items()}


def _agreement_db(a: list[NDArray[np.float64]], b: list[NDArray[np.float64]]) -> float:
    """PSNR (peak 255) between two sets of outputs, their squared differences pooled."""
    diff = np.concatenate([(x - y).ravel() for x, y in zip(a, b, strict=True)])
    mse = float(np.mean(diff**2)) if np.isfinite(diff).all() else float("inf")
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@dataclass
class _Reference:
    """The fp32 run on the check images, computed once per :func:`choose`."""

    backend: Backend
    outputs: list[NDArray[np.float64]] | None = None


def check_recipe(model: VDSR, candidate: Backend, reference: Backend | _Reference, machine: str,
                 scales: tuple[int, ...] = DEFAULT_SCALES) -> Verdict:
    """Compare ``candidate`` with ``reference`` (fp32) on the check crops: the mean Y-PSNR
    against the originals per scale, and how closely their outputs agree."""
    start = time.perf_counter()
    ref = reference if isinstance(reference, _Reference) else _Reference(reference)
    pairs = _check_pairs(model.config.channels, scales)
    if ref.outputs is None:
        ref.outputs = _outputs(ref.backend, pairs)
    outs = _outputs(candidate, pairs)
    base, got = _mean_psnr(pairs, ref.outputs), _mean_psnr(pairs, outs)
    delta = {str(s): round(got[s] - base[s], 6) if np.isfinite(got[s]) else float("-inf") for s in base}
    agreement = _agreement_db(outs, ref.outputs)
    passed = all(np.isfinite(d) and abs(d) <= TOLERANCE_DB for d in delta.values()) \
        and agreement >= CHECK_AGREEMENT_DB
    return Verdict(candidate.precision, candidate.name, machine, delta, passed,
                   agreement_db=round(agreement, 3) if np.isfinite(agreement) else 999.0,
                   seconds=round(time.perf_counter() - start, 3))


# -- the verdict cache -----------------------------------------------------------------------------
_MEMORY: dict[str, dict[str, Any]] = {}


def _cache_file() -> Path:
    from vdsr.backends.ort import cache_dir

    return cache_dir() / "verdicts.json"


def _runtime_version(runtime: str) -> str:
    module = {"onnxruntime": "onnxruntime", "openvino": "openvino"}.get(runtime, "torch")
    try:
        return str(__import__(module).__version__)
    except (ImportError, AttributeError):
        return "?"


def _key(digest: str, machine: str, recipe: str, runtime: str) -> str:
    """A verdict's cache key: it holds for these weights, machine class and runtime version, and
    for the quantised graphs of this :data:`~vdsr.backends.ort.INT8_VERSION` (a new calibration
    makes other graphs, which are checked again)."""
    from vdsr.backends.ort import INT8_VERSION

    return (f"v{CHECK_VERSION}.{INT8_VERSION}|{digest}|{machine}|{recipe}|"
            f"{runtime}-{_runtime_version(runtime)}")


def _read_cache() -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(_cache_file().read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    if not isinstance(data, dict):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)}


def _cached(key: str) -> Verdict | None:
    entry = _MEMORY.get(key) or _read_cache().get(key)
    if entry is None:
        return None
    try:
        verdict = Verdict(**entry)
    except TypeError:  # a damaged or foreign entry: check again
        return None
    valid = (isinstance(verdict.passed, bool) and isinstance(verdict.delta_db, dict)
             and all(isinstance(v, (int, float)) for v in verdict.delta_db.values()))
    if not valid:
        return None
    return Verdict(**{**entry, "cached": True})


def _store(key: str, verdict: Verdict) -> None:
    from vdsr.io.fileio import atomic_path

    _MEMORY[key] = verdict.to_dict()
    data = _read_cache()
    data[key] = verdict.to_dict()
    path = _cache_file()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    except OSError:
        pass  # unwritable: the verdict lives in memory for this process


# -- choosing --------------------------------------------------------------------------------------
def choose(model: VDSR, device: str | torch.device = "auto", precision: str = "auto",
           backend: str = "auto", threads: int | None = None, scales: tuple[int, ...] | None = None,
           features: CpuFeatures | None = None) -> Choice:
    """The backend that runs ``model``: ``precision`` as asked, or for ``"auto"`` the fastest
    candidate recipe that passes :func:`check_recipe` for these weights (else fp32).

    Notes on what is checked and why a candidate is passed over are logged (INFO) on the
    ``vdsr.recipes`` logger; the CLI shows them.
    """
    dev = resolve_device(device)
    if precision != "auto":
        return Choice(create_backend(model, backend, dev, precision, threads))
    features = features if features is not None else cpu_features()
    scales = tuple(scales or DEFAULT_SCALES)
    machine = machine_class(dev, features)
    digest = weights_digest(model)
    rejected: list[Verdict] = []
    reference: _Reference | None = None
    for recipe in candidates(model, dev, backend, features):
        runtime = pick_runtime(backend, dev, recipe, model, features)
        key = _key(digest, machine, recipe, runtime)
        verdict = _cached(key)
        built: Backend | None = None
        if verdict is None:
            log.info("checking the %s recipe (%s) for these weights on this machine; once, the "
                     "verdict is cached", recipe, runtime)
            built = create_backend(model, backend, dev, recipe, threads)
            if reference is None:
                reference = _Reference(create_backend(model, backend if backend != "compile" else "torch",
                                                      dev, "fp32", threads))
            verdict = check_recipe(model, built, reference, machine, scales)
            _store(key, verdict)
        if verdict.passed:
            return Choice(built or create_backend(model, backend, dev, recipe, threads), verdict, rejected)
        if not verdict.cached:
            log.info("not using %s for these weights: %+.3f dB from fp32 on the check images "
                     "(allowed: %.2f)", recipe, verdict.worst_db, TOLERANCE_DB)
        rejected.append(verdict)
    fp32 = reference.backend if reference is not None else create_backend(model, backend, dev, "fp32", threads)
    return Choice(fp32, None, rejected)


def iter_cached_verdicts() -> Iterator[tuple[str, Verdict]]:
    """Every verdict in the cache file (for ``vdsr info`` and the tests)."""
    for key, entry in _read_cache().items():
        try:
            yield key, Verdict(**entry)
        except TypeError:
            continue
