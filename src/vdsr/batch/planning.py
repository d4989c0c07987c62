"""What a folder run will do, decided before anything is loaded: the inputs found in folders and trees,
the output named for each (:mod:`vdsr.io.outputs`), what is skipped and why, and :func:`check`,
which refuses what cannot work. Nothing here writes."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from vdsr.constants import DEFAULT_MAX_OUTPUT_PIXELS, DEFAULT_MAX_PIXELS, DEFAULT_TILE
from vdsr.errors import (
    ImageError,
)
from vdsr.io.outputs import (
    NamingRule,
    check_folder,
    check_format,
    check_target,
    check_unique,
    display,
    output_is_file,
)

MANIFEST = "vdsr-manifest.jsonl"
"""The manifest's name in an output folder: one JSON object a line, appended as images finish."""


ROW_FIELDS = ("input", "output", "status", "error", "input_size", "output_size", "seconds",
              "backend", "precision", "recipe", "device", "worker", "attempt", "finished",
              "error_type", "error_fields")
"""A manifest row: ``status`` is ``"done"``, ``"skipped"`` (the output was there already) or
``"failed"`` (``error`` says why; ``error_type`` and ``error_fields`` are the error's class
and its plain fields, for a caller to word it); sizes are ``[width, height]``; ``worker`` the
host and process that ran it; ``attempt`` 1, or more when a worker died on the image and it
was retried."""


SKIP_REASONS: dict[str, str] = {
    "hidden": "hidden",
    "not_image": "not an image",
    "broken_link": "a link to nowhere",
    "link_loop": "a link loop",
    "outside": "a link out of the input folder (not followed)",
    "folder": "a sub-folder (not recursive)",
    "own_output": "an output of this run",
}
"""Why an entry of an input folder is not an input (:attr:`Plan.skipped`), in words."""


MAX_ATTEMPTS = 3  # an image whose worker dies this often is a failed row, not retried again


@dataclass(frozen=True)
class Job:
    """One image to upscale: ``source`` to ``target``; ``name``: the source's path relative to
    the input it was found in (``sub/photo.png``), for messages."""

    source: Path
    target: Path
    name: str


@dataclass
class Plan:
    """The inputs of a run and their outputs (:func:`plan`); nothing is written yet.

    ``single_file``: ``out`` is the one output file (otherwise the output folder);
    ``skipped``: reason (:data:`SKIP_REASONS`) -> the folder entries skipped for it.
    """

    jobs: list[Job]
    out: Path
    single_file: bool
    skipped: dict[str, list[Path]] = field(default_factory=dict)

    @property
    def manifest(self) -> Path | None:
        """The manifest of a folder run (``None`` for one output file)."""
        return None if self.single_file else self.out / MANIFEST


@dataclass(frozen=True)
class Settings:
    """How each image is upscaled: everything a worker process or Ray actor needs (picklable).

    ``threads``: CPU threads in all (``None``: torch's default); split between workers.
    """

    scale: float
    weights: str | None = None
    device: str = "auto"
    precision: str = "auto"
    backend: str = "auto"
    tile: int | None = DEFAULT_TILE
    ensemble: bool = False
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_output_pixels: int | None = DEFAULT_MAX_OUTPUT_PIXELS
    quality: int = 95
    threads: int | None = None

    def engine(self) -> dict[str, Any]:
        """:class:`vdsr.engine.Upscaler` keyword arguments."""
        return {"device": self.device, "precision": self.precision, "backend": self.backend,
                "tile": self.tile, "ensemble": self.ensemble, "threads": self.threads}


def _image_suffixes() -> tuple[str, ...]:
    from vdsr.io.images import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES


def _walk(root: Path, recursive: bool, skipped: dict[str, list[Path]]) -> Iterator[tuple[Path, PurePosixPath]]:
    """``(path, path relative to root)`` of the images in ``root`` (sorted by name, sub-folders
    after a folder's own files when ``recursive``); what is passed over goes into ``skipped``."""
    suffixes = _image_suffixes()
    real_root = root.resolve()

    def skip(reason: str, path: Path) -> None:
        skipped.setdefault(reason, []).append(path)

    def visit(folder: Path, rel: PurePosixPath, above: frozenset[Path]) -> Iterator[tuple[Path, PurePosixPath]]:
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise ImageError(f"{display(folder)}: cannot read the folder ({exc.strerror})") from None
        folders: list[tuple[Path, PurePosixPath]] = []
        for name in names:
            path, relative = folder / name, rel / name
            if name.startswith("."):
                skip("hidden", path)
                continue
            try:
                info = os.stat(path)  # follows links
            except OSError as exc:
                skip("link_loop" if exc.errno == errno.ELOOP else "broken_link", path)
                continue
            if recursive and path.is_symlink() and not path.resolve().is_relative_to(real_root):
                skip("outside", path)
                continue
            if stat.S_ISDIR(info.st_mode):
                if not recursive:
                    skip("folder", path)
                elif path.resolve() in above:  # a link back up the tree
                    skip("link_loop", path)
                else:
                    folders.append((path, relative))
            elif stat.S_ISREG(info.st_mode) and path.suffix.lower() in suffixes:
                yield path, relative
            else:
                skip("not_image", path)
        for sub, relative in folders:
            yield from visit(sub, relative, above | {sub.resolve()})

    yield from visit(root, PurePosixPath(), frozenset({real_root}))


def plan(inputs: Sequence[str | os.PathLike[str]], output: str | os.PathLike[str], rule: NamingRule,
         *, recursive: bool = False) -> Plan:
    """The jobs of ``vdsr upscale INPUTS -o OUTPUT`` (see the module's docstring); writes nothing.

    Raises :class:`~vdsr.errors.OutputNameRefused` (an output name that says neither file nor
    folder), :class:`~vdsr.errors.ImageError` (a missing input, a folder without images) and
    :class:`~vdsr.errors.OutputCollision` (two inputs would write one output).
    """
    if not inputs:
        raise ImageError("no inputs given")
    paths = [Path(p) for p in inputs]
    skipped: dict[str, list[Path]] = {}
    found: list[tuple[Path, PurePosixPath]] = []
    for path in paths:
        if path.is_dir():
            before = len(found)
            found.extend(_walk(path, recursive, skipped))
            if len(found) == before:
                raise ImageError(f"no images found in {display(path)}")
        else:  # a file named on the command line: read (and refused, if it must be) in its turn
            found.append((path, PurePosixPath(path.name)))
    text = os.fspath(output)
    out = Path(text)
    if output_is_file(text, len(paths) == 1 and not paths[0].is_dir()):
        check_format(out, rule.fmt)
        return Plan([Job(paths[0], out, paths[0].name)], out, True)
    jobs = [Job(src, out.joinpath(*rel.parent.parts, rule.name(Path(rel.name).stem)), str(rel))
            for src, rel in found]
    # Our own outputs among the inputs (OUT inside IN, run again): not inputs, however named.
    targets = {os.path.realpath(j.target): j for j in jobs}
    own = [j for j in jobs if targets.get(os.path.realpath(j.source), j) is not j]
    for j in own:
        skipped.setdefault("own_output", []).append(j.source)
    jobs = [j for j in jobs if j not in own]
    check_unique((j.source, j.target) for j in jobs)
    return Plan(jobs, out, False, skipped)


def check(plan: Plan, *, overwrite: bool = False) -> None:
    """Refuse, before any work, what would fail as a whole: a single output file that is the
    input, or exists (without ``overwrite``); an output folder that cannot be written, or
    created (the nearest existing part must be a writable folder). Writes nothing."""
    if plan.single_file:
        job = plan.jobs[0]
        check_target(job.target, overwrite=overwrite, inputs=[job.source])
    else:
        check_folder(plan.out, create=True)


def describe_skipped(skipped: dict[str, list[Path]]) -> str:
    """``3 hidden, 1 not an image, 2 links to nowhere (a.png, b.png)``-like words for
    :attr:`Plan.skipped` (empty when nothing was skipped)."""
    parts = []
    for reason, words in SKIP_REASONS.items():
        paths = skipped.get(reason, [])
        if not paths:
            continue
        shown = ", ".join(display(p.name) for p in paths[:3]) + (", ..." if len(paths) > 3 else "")
        parts.append(f"{len(paths)} {words} ({shown})")
    return "; ".join(parts)


def row_settings(settings: Settings) -> dict[str, Any]:
    """``settings`` as a plain dict (Ray actors receive it so)."""
    return asdict(settings)
