"""vdsr.extras and pyproject.toml: the core install upscales, evaluates and runs the demo with no
extra installed, and a command that needs one says, in one line, which ``pip install`` adds it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vdsr.extras import EXTRAS

ROOT = Path(__file__).resolve().parents[1]

# The core (`pip install vdsr`), each for what the core does with it.
CORE = {
    "torch",  # the network (and the fp32 reference every recipe is checked against)
    "numpy",  # pixels, the MATLAB resize, PSNR and SSIM
    "pillow",  # reading and writing images, the bundled photos, the comparison PNG
    "safetensors",  # the weights format, the shipped model
    "tifffile",  # 16-bit colour TIFF in and out (Pillow has 8 bits a channel there)
    "tqdm",  # progress bars of upscale, evaluate and folder runs
    "onnx",  # export, and the graphs the CPU recipes run
    "onnxruntime",  # the default CPU runtime: fp32, mixed and int8 recipes
}

# Modules of every extra and what the core must not need: none importable in the subprocess.
BLOCKED = ("fastapi", "fastapi_offline", "uvicorn", "python_multipart", "multipart", "h5py",
           "tensorboard", "matplotlib", "scipy", "skimage", "imageio", "ray", "openvino")


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as fh:
        return tomllib.load(fh)["project"]


def _name(requirement: str) -> str:
    """'fastapi-offline>=1.7' -> 'fastapi_offline', 'ray[data]>=2.40' -> 'ray'."""
    return re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0].lower().replace("-", "_")


def test_pyproject_extras_are_the_extras_table_and_the_core_is_eight() -> None:
    project = _pyproject()
    assert {_name(r) for r in project["dependencies"]} == CORE
    assert len(project["dependencies"]) == 8
    optional = {extra: {_name(r) for r in reqs}
                for extra, reqs in project["optional-dependencies"].items() if extra != "dev"}
    assert optional == {extra: set(modules) for extra, (_, modules) in EXTRAS.items()}
    # dev installs every extra's modules (the tests use them) and scikit-image (the oracles)
    dev = {_name(r) for r in project["optional-dependencies"]["dev"]}
    assert "scikit_image" in dev and not (CORE & dev)
    assert not {"scikit_image", "scipy"} & CORE


# Each command in the subprocess runs through vdsr.cli.main with the extras' modules unimportable
# (sys.modules[name] = None: `import name` raises ImportError); it prints one JSON line.
_DRIVER = """
import contextlib, io, json, sys
for name in {blocked!r}:
    sys.modules[name] = None
from vdsr.cli import main
results = []
for argv in {commands!r}:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    results.append((argv[0], code, err.getvalue()))
results.append(("loaded", 0, " ".join(sorted({{m.split('.')[0] for m in sys.modules
                                             if sys.modules[m] is not None}} & set({blocked!r})))))
print(json.dumps(results))
"""


@pytest.mark.subprocess
def test_the_core_works_without_any_extra_and_each_extra_command_names_its_install(
        tmp_path: Path, tiny_weights: Path) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "set"
    folder.mkdir()
    for name in ("a", "b"):
        Image.fromarray((rng.random((36, 30, 3)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    out = tmp_path / "out"
    commands = [
        ["upscale", str(folder / "a.png"), "-s", "2", "-o", str(tmp_path / "a2.png"), "--precision", "fp32"],
        # the default precision: the recipe check on the bundled photos (tiny weights: quick)
        ["upscale", str(folder / "b.png"), "-s", "3", "-o", str(tmp_path / "b3.png"),
         "--weights", str(tiny_weights)],
        ["evaluate", "--data", str(folder), "--scales", "2", "--json", str(tmp_path / "eval.json"),
         "--weights", str(tiny_weights)],
        ["demo", "-o", str(out), "--weights", str(tiny_weights)],
        ["serve", "--port", "0"],
        ["train", "--run-dir", str(tmp_path / "run")],
        ["prepare", "--data", str(folder), "-o", str(tmp_path / "p.h5")],
    ]
    code = _DRIVER.format(blocked=BLOCKED, commands=commands)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ran = json.loads(proc.stdout.strip().splitlines()[-1])
    for name, rc, err in ran[:4]:
        assert rc == 0, (name, err)
    results = {name: (rc, err) for name, rc, err in ran[4:]}
    assert Image.open(tmp_path / "a2.png").size == (60, 72)
    assert Image.open(tmp_path / "b3.png").size == (90, 108)
    rows = json.loads((tmp_path / "eval.json").read_text())
    assert "ssim" in json.dumps(rows).lower()
    assert (out / "compare.png").is_file()
    for command, extra in (("serve", "serve"), ("train", "train"), ("prepare", "train")):
        rc, err = results[command]
        lines = err.strip().splitlines()
        assert rc != 0 and len(lines) == 1 and f"pip install 'vdsr[{extra}]'" in lines[0], (command, err)
    assert results["loaded"][1] == "", results["loaded"]
