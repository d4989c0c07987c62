"""The optional parts of vdsr and what each needs: one table, one way to say what is missing.

The core install (``pip install vdsr``) upscales images and folders, evaluates, exports ONNX and
picks the fast CPU recipe. The rest comes with an extra (``pip install "vdsr[serve]"``), and code
that needs one imports its packages through :func:`need`, so a missing one is a
:class:`~vdsr.errors.MissingExtra` naming the ``pip install`` line, never a bare ImportError.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from vdsr.errors import MissingExtra

__all__ = ["EXTRAS", "MissingExtra", "need"]

# extra -> (what it is for, the modules it provides). pyproject.toml's optional-dependencies
# install these (tests/test_extras.py holds the two together).
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("the web app", ("fastapi", "fastapi_offline", "uvicorn", "python_multipart")),
    "train": ("training and HDF5 patch files", ("h5py", "tensorboard", "matplotlib")),
    "matlab": ("importing MATLAB .mat weights (the authors' official model)", ("scipy",)),
    "ray": ("folder runs on a Ray cluster", ("ray",)),
    "openvino": ("the OpenVINO backend", ("openvino",)),
}


def need(module: str, extra: str) -> ModuleType:
    """``import module`` (a dotted name is fine), or :class:`MissingExtra` naming ``extra``."""
    if extra not in EXTRAS:
        raise KeyError(f"unknown extra {extra!r}")
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingExtra(extra, EXTRAS[extra][0], str(exc)) from None


def need_all(extra: str) -> None:
    """Import every module of ``extra`` now (a command that needs them says so before it starts)."""
    for module in EXTRAS[extra][1]:
        need(module, extra)
