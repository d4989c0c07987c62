"""The module paths of vdsr before its rooms (issue 32), kept working: ``import vdsr.images``
gives :mod:`vdsr.io.images` itself (one module, not a copy), with a DeprecationWarning naming
the new path. The table is the only place the old paths live."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
import warnings
from types import ModuleType

__all__ = ["MOVED", "install"]

MOVED: dict[str, str] = {
    **{f"vdsr.{name}": f"vdsr.io.{name}" for name in ("images", "png", "fileio", "outputs", "canvas")},
    **{f"vdsr.{name}": f"vdsr.serve.{name}" for name in ("server", "uploads", "access")},
    **{f"vdsr.{name}": f"vdsr.nn.{name}" for name in ("model", "layers", "summary", "inception_example")},
    **{f"vdsr.{name}": f"vdsr.quality.{name}" for name in ("protocol", "metrics")},
    "vdsr.importers": "vdsr.weights.importers",
    "vdsr.batch_ray": "vdsr.batch.ray_jobs",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old path and loads the module at its new one."""

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        new = MOVED[spec.name]
        warnings.warn(f"{spec.name} is now {new}", DeprecationWarning, stacklevel=2)
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported at its own path."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` (once)."""
    if not any(isinstance(f, _Moved) for f in sys.meta_path):
        sys.meta_path.append(_Moved())
