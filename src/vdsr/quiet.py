"""Warnings caught without one thread undoing another's filters.

``warnings.catch_warnings`` saves the process's filter list on entry and puts it back on exit
(before Python 3.14 there is only that one list). Two threads inside it at once undo each other:
the one that leaves last puts back the list it saved, with the other's filter in it, for good.
The web app decodes in worker threads, and decoding catches Pillow's warnings, so every such
block in vdsr goes through :func:`catch_warnings`, which holds one lock for the block. The
blocks are short (a header, an EXIF block, a scale check) or a decode that the web app runs one
at a time anyway.
"""

from __future__ import annotations

import contextlib
import threading
import warnings
from collections.abc import Iterator
from typing import Any

__all__ = ["catch_warnings"]

_LOCK = threading.RLock()  # re-entrant: a decode's block holds it around the EXIF block's


@contextlib.contextmanager
def catch_warnings(*, record: bool = False) -> Iterator[Any]:
    """:func:`warnings.catch_warnings` under the process's one lock for it (see the module)."""
    with _LOCK, warnings.catch_warnings(record=record) as caught:
        yield caught
