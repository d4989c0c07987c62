"""Where results go and what may be written there: one policy for every command that writes a
file (``vdsr upscale`` and its folder jobs, ``--compare``, ``convert``, ``export``, ``demo``,
``evaluate --json``) and for the names the server gives its downloads.

* **Names** (:data:`OUTPUT_RULE`, :func:`output_is_file`, :class:`NamingRule`): ``OUT`` is a file
  or a folder; in a folder each input ``NAME.ext`` becomes ``NAME_xS.png`` (or another suffix
  and format).
* **Replacing** (:func:`check_target`): a path that exists (a file, a folder, a link, also a
  link to nowhere) is replaced only when asked; an input never, even when asked; two outputs
  of one run never share a path (:func:`check_unique`).
* **Destinations** (:func:`check_folder`, :func:`make_folders`): checked before any work, with a
  real probe file (root ignores permission bits; a read-only mount does not), and folders are
  created only once every check has passed, so a refused run leaves nothing behind.
* **Leftovers** (:func:`remove_leftovers`): the hidden temp files of :mod:`vdsr.io.fileio`'s atomic
  writes (``.NAME.XXXXXXXX.tmp``) that a killed run left beside its outputs.

Imports nothing heavy (no NumPy, no torch). Errors are :class:`vdsr.errors.OutputRefused`
subclasses, with fields and without command-line wording.
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vdsr.errors import (
    OutputCollision,
    OutputExists,
    OutputIsInput,
    OutputNameRefused,
    OutputUnwritable,
)

__all__ = ["IMAGE_EXTENSIONS", "OUTPUT_FORMATS", "OUTPUT_RULE", "NamingRule", "check_folder", "check_format",
           "check_target", "check_unique", "display", "format_of", "leftover_temp_files",
           "make_folders", "output_is_file", "output_name", "remove_leftovers"]

# The one table of output formats: each by name (``--format``, and the extension of the files it
# writes into a folder) and Pillow's name for it (vdsr.io.encode writes them).
OUTPUT_FORMATS: dict[str, str] = {"png": "PNG", "jpg": "JPEG", "webp": "WEBP", "avif": "AVIF", "tiff": "TIFF",
                                  "bmp": "BMP"}
# The extensions an output file may have, and the format each selects.
IMAGE_EXTENSIONS: dict[str, str] = {**{f".{name}": name for name in OUTPUT_FORMATS}, ".jpeg": "jpg", ".tif": "tiff"}

OUTPUT_RULE = ("OUT is a file when there is one input file and OUT ends in an image extension "
               f"({' '.join(IMAGE_EXTENSIONS)}); a folder when it is one already, ends in '/', "
               "or there are several inputs (or a folder) and it has no extension. Anything else is refused "
               "as ambiguous.")

# tempfile.mkstemp's names: the prefix, 8 characters of this alphabet, the suffix (vdsr.io.fileio).
_TEMP_TAIL = r"\.[a-z0-9_]{8}\.tmp"
_PROBE_PREFIX = ".vdsr-write-check"


def display(path: str | os.PathLike[str]) -> str:
    """``path`` for a one-line message: as it is, or quoted with escapes when it holds a newline
    or another control character (a file name must not start a line of its own)."""
    text = os.fspath(path)
    if text.isprintable():
        return text
    return repr(text)


def output_is_file(output: str, one_file: bool) -> bool:
    """Apply :data:`OUTPUT_RULE` to ``output``: ``True`` for a file, ``False`` for a folder.

    ``one_file``: the run has one input and it is a file. Raises :class:`OutputNameRefused`.
    """
    out = Path(output)
    if output.endswith(("/", os.sep)) or out.is_dir():
        return False
    suffix = out.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        if one_file:
            return True
        raise OutputNameRefused(output, "several_inputs", suffix)
    if suffix:
        raise OutputNameRefused(output, "bad_extension", suffix)
    if one_file:
        raise OutputNameRefused(output, "no_extension")
    return False


def format_of(path: str | os.PathLike[str]) -> str:
    """The format (``"png"``, ``"jpg"``, ...) that ``path``'s extension selects, else
    :class:`OutputNameRefused` (``"bad_extension"``)."""
    suffix = Path(path).suffix.lower()
    if suffix not in IMAGE_EXTENSIONS:
        raise OutputNameRefused(os.fspath(path), "bad_extension", suffix)
    return IMAGE_EXTENSIONS[suffix]


def check_format(path: str | os.PathLike[str], fmt: str | None) -> None:
    """A format asked for (``fmt``, or ``None``) must be the one ``path``'s extension selects."""
    if fmt is not None and format_of(path) != fmt:
        raise OutputNameRefused(os.fspath(path), "format_mismatch", Path(path).suffix, fmt)


@dataclass(frozen=True)
class NamingRule:
    """How the outputs in a folder are named: ``NAME{suffix}.{ext}`` for an input ``NAME.*``.

    ``suffix``: ``None`` for ``_x{scale:g}`` (``_x2``, ``_x2.5``), ``""`` keeps the name;
    ``fmt``: the format (``"png"`` when ``None``).
    """

    scale: float
    suffix: str | None = None
    fmt: str | None = None

    def __post_init__(self) -> None:
        if self.suffix is not None and ("/" in self.suffix or os.sep in self.suffix):
            raise OutputNameRefused(self.suffix, "suffix_separator", self.suffix)
        if self.fmt is not None and self.fmt not in OUTPUT_FORMATS:
            raise OutputNameRefused(self.fmt, "bad_extension", self.fmt)

    @property
    def tail(self) -> str:
        """What every output name ends with: ``_x2.png``."""
        suffix = f"_x{self.scale:g}" if self.suffix is None else self.suffix
        return f"{suffix}.{self.fmt or 'png'}"

    def name(self, stem: str) -> str:
        """The output name for an input whose name without extension is ``stem``."""
        return stem + self.tail


def output_name(stem: str, scale: float, suffix: str | None = None, fmt: str | None = None) -> str:
    """``NamingRule(scale, suffix, fmt).name(stem)``: the name of the result of ``stem.*``."""
    return NamingRule(scale, suffix, fmt).name(stem)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_target(path: str | os.PathLike[str], *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike[str]] = (), folder_exists: bool = True) -> None:
    """May ``path`` be written? Raises before any work is done:

    * :class:`OutputIsInput` when it is one of ``inputs`` (the same file, by any name), even
      with ``overwrite``;
    * :class:`OutputUnwritable` (``"is_folder"``) when a folder is there;
    * :class:`OutputExists` when anything else is there (a link to nowhere too) and not
      ``overwrite``;
    * :func:`check_folder` on its folder (``folder_exists``: it must exist already; otherwise it
      may be created later by :func:`make_folders`).

    With ``overwrite``, what is replaced is the path itself: a link is replaced by the file, and
    what it pointed to is left as it was.
    """
    target = Path(path)
    for source in inputs:
        if _same_file(target, Path(source)):
            raise OutputIsInput(str(target), str(source))
    if target.is_dir():
        raise OutputUnwritable(str(target), "is_folder")
    if os.path.lexists(target):
        if target.is_symlink() and not target.exists():
            if not overwrite:
                raise OutputExists(str(target), link_to=os.readlink(target))
        elif not overwrite:
            raise OutputExists(str(target))
    check_folder(target.parent if str(target.parent) else Path("."), create=not folder_exists, path=target)


def check_unique(pairs: Iterable[tuple[str | os.PathLike[str], str | os.PathLike[str]]],
                 kind: str = "inputs") -> None:
    """No two of ``(writer, target)`` may share a target: :class:`OutputCollision` names both
    writers (two inputs, or two outputs of one input with ``kind="outputs"``)."""
    seen: dict[str, str] = {}
    for writer, target in pairs:
        key = os.path.normcase(os.path.abspath(os.path.realpath(target)))
        if key in seen:
            raise OutputCollision(os.fspath(target), seen[key], os.fspath(writer), kind)
        seen[key] = os.fspath(writer)


def _probe(folder: Path, path: Path) -> None:
    """Create and remove a file in ``folder``: the only test of writability that a read-only
    mount, an ACL and root's permissions all answer truly."""
    try:
        fd, name = tempfile.mkstemp(prefix=_PROBE_PREFIX + ".", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise OutputUnwritable(str(path), "unwritable", str(folder), exc.strerror or str(exc)) from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_folder(folder: str | os.PathLike[str], *, create: bool = False,
                 path: str | os.PathLike[str] | None = None) -> None:
    """Can files be written in ``folder``? It must be a folder, or (``create``) be creatable:
    the nearest part of it that exists must be a folder that can be written.

    Raises :class:`OutputUnwritable` for ``path`` (default: ``folder``). Leaves nothing behind.
    """
    folder = Path(folder)
    named = str(path if path is not None else folder)
    probe = folder
    while not os.path.lexists(probe):
        if not create:
            raise OutputUnwritable(named, "missing_folder", str(folder))
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.is_symlink() and not probe.exists():
        raise OutputUnwritable(named, "missing_folder" if not create else "uncreatable", str(probe),
                               "" if not create else f"{probe} is a link to nowhere")
    if not probe.is_dir():
        raise OutputUnwritable(named, "uncreatable" if probe != folder and create else "not_a_folder", str(probe))
    _probe(probe, Path(named))


def make_folders(folders: Iterable[str | os.PathLike[str]]) -> None:
    """Create ``folders`` (and their parents); call after every check of the run has passed."""
    for folder in dict.fromkeys(Path(f) for f in folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise OutputUnwritable(str(folder), "uncreatable", _first_file(folder)) from None
        except OSError as exc:
            raise OutputUnwritable(str(folder), "uncreatable", str(_existing(folder)),
                                   exc.strerror or str(exc)) from None


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return folder


def _first_file(folder: Path) -> str:
    """The part of ``folder`` that is a file (what made creating it fail)."""
    for part in (*reversed(folder.parents), folder):
        if os.path.lexists(part) and not part.is_dir():
            return str(part)
    return str(folder)


def leftover_temp_files(target: str | os.PathLike[str]) -> list[Path]:
    """The temp files that an atomic write of ``target`` (:mod:`vdsr.io.fileio`) leaves beside it
    when it is killed: ``.NAME.XXXXXXXX.tmp`` in its folder, for exactly this ``NAME``."""
    target = Path(target)
    folder = target.parent if str(target.parent) else Path(".")
    pattern = re.compile(re.escape("." + target.name) + _TEMP_TAIL)
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    return sorted(folder / n for n in names if pattern.fullmatch(n))


def remove_leftovers(targets: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """Remove the temp files of killed writes of ``targets`` (and of our writability probes)
    from their folders; returns what was removed. Nothing else is touched: only names that are
    ``.TARGET.XXXXXXXX.tmp`` for one of ``targets``, regular files."""
    by_folder: dict[Path, set[str]] = {}
    for target in targets:
        t = Path(target)
        by_folder.setdefault(t.parent if str(t.parent) else Path("."), set()).add(t.name)
    removed: list[Path] = []
    for folder, names in by_folder.items():
        try:
            entries = os.listdir(folder)
        except OSError:
            continue
        wanted = re.compile(r"\.(?P<name>.+)" + _TEMP_TAIL)
        for entry in entries:
            match = wanted.fullmatch(entry)
            if match is None or (match["name"] not in names and "." + match["name"] != _PROBE_PREFIX):
                continue
            path = folder / entry
            if path.is_symlink() or not path.is_file():
                continue
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed
