"""The module paths from before the package had its rooms (issue 32) still import: the same
module object as the new path (not a copy, so patching one patches the other), with a
DeprecationWarning that names the new path."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from vdsr.moved import MOVED


def test_every_old_path_names_a_module_that_exists() -> None:
    for old, new in MOVED.items():
        assert importlib.util.find_spec(new) is not None, (old, new)
        assert importlib.util.find_spec(old) is not None, old


def test_an_old_path_is_the_new_module_with_a_warning() -> None:
    """In a fresh interpreter: ``import vdsr.images`` and ``from vdsr.model import VDSR``."""
    code = ("import warnings, sys\n"
            "warnings.simplefilter('error', DeprecationWarning)\n"
            "try:\n"
            "    import vdsr.images\n"
            "except DeprecationWarning as w:\n"
            "    print(w)\n"
            "warnings.simplefilter('ignore', DeprecationWarning)\n"
            "import vdsr.images, vdsr.io.images\n"
            "from vdsr.model import VDSR\n"
            "from vdsr.nn.model import VDSR as Same\n"
            "print(vdsr.images is vdsr.io.images, VDSR is Same)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["vdsr.images is now vdsr.io.images", "True True"]


def test_a_path_that_never_was_is_still_an_import_error() -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("vdsr.no_such_module")
