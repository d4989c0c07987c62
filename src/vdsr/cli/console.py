"""What the ``vdsr`` command shows while it works, and how it stops: progress bars (on a terminal
only), the library's notes as ``vdsr:`` lines, SIGTERM as a stop like Ctrl-C."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from typing import Any

from vdsr.cli.words import PROG


def progress_bar(**kwargs: Any) -> Any:
    """A progress bar on stderr, shown only on a terminal (logs and pipes stay clean)."""
    from tqdm import tqdm

    kwargs.setdefault("disable", None)
    return tqdm(file=sys.stderr, dynamic_ncols=True, **kwargs)


@contextlib.contextmanager
def library_notes_shown() -> Iterator[None]:
    """Show the library's INFO notes (a recipe being checked, int8 calibrating) as ``vdsr: ...``
    lines while the block runs; the library stays silent for callers of ``main`` afterwards."""
    logger = logging.getLogger("vdsr")
    handler = logging.StreamHandler(_Stderr())
    handler.setFormatter(logging.Formatter(f"{PROG}: %(message)s"))
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    # Not also to the root logger: a dependency that logs at the root (ONNX Runtime's quantiser
    # does) gives it a handler, and every note would be said twice ("INFO:vdsr.recipes:...").
    logger.propagate = False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate


class _Stderr:
    """Writes to whatever ``sys.stderr`` is at the time (tests and tools replace it)."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


@contextlib.contextmanager
def sigterm_stops() -> Iterator[None]:
    """SIGTERM stops the command the way Ctrl-C does (an exception where the program is, so that
    what is in progress is undone), instead of ending the process with a temp file left."""
    from vdsr.errors import StopRequested

    def stop(signum: int, _frame: Any) -> None:
        raise StopRequested(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class ImageProgress:
    """:class:`vdsr.batch.Events` as a progress bar over images (on a terminal only: logs and
    pipes get the summary alone), with the image in hand, its sizes and the tile of a large one."""

    def __init__(self, total: int, scale: float) -> None:
        self.bar = progress_bar(total=total, desc="upscaling", unit="img")
        self.scale = scale
        self.labels: dict[Any, str] = {}
        self.finished_rows = 0

    def started(self, job: Any) -> None:
        from vdsr.errors import VDSRError
        from vdsr.io.images import probe
        from vdsr.io.outputs import display

        label = display(job.name)
        if not self.bar.disable:
            with contextlib.suppress(VDSRError):
                from vdsr.sizes import upscaled_size

                h, w = probe(job.source)
                out_h, out_w = upscaled_size(h, w, self.scale)
                label += f" {w}x{h} -> {out_w}x{out_h}"
        self.labels[job] = label
        self.bar.set_postfix_str(label, refresh=True)

    def tile(self, job: Any, done: int, total: int) -> None:
        if total > 1:
            self.bar.set_postfix_str(f"{self.labels.get(job, job.name)}, tile {done}/{total}", refresh=True)

    def finished(self, row: dict[str, Any]) -> None:
        self.finished_rows += 1
        self.bar.update(1)


def stop_acknowledged(bar: Any) -> Callable[[str], None]:
    """Trainer's ``on_stop_requested``: say at once that the signal was heard.

    It runs inside the signal handler, which may have interrupted a write to stderr, so it
    writes to the file descriptor directly rather than through the (locked) text stream.
    """

    def acknowledge(signal_name: str) -> None:
        what = ("(Ctrl-C again to stop at once)" if signal_name == "SIGINT"
                else f"({signal_name}; Ctrl-C to stop at once)")
        text = f"{PROG}: stopping at the end of this step... {what}\n"
        if not bar.disable:
            text = "\n" + text  # below the progress bar's line
        try:
            os.write(sys.stderr.fileno(), text.encode())
        except (OSError, ValueError, AttributeError):  # stderr replaced by one without a descriptor
            sys.stderr.write(text)

    return acknowledge


def ending() -> None:
    """The command is ending after an interrupt: from here on Ctrl-C is ignored. A second press
    while it stops would otherwise kill Python on its way out (exit status -2 instead of 130, and
    perhaps a traceback). Only the main thread can do this; elsewhere it does nothing."""
    with contextlib.suppress(ValueError):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
