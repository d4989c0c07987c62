"""The ``vdsr`` command line: parsing (:mod:`.parser`), the commands (:mod:`.commands`) and the
words of errors (here), nothing else: every subcommand maps its flags onto library calls.

Errors from the library (:class:`vdsr.errors.VDSRError`) become one line on stderr and exit code 1;
bad flags exit 2. Nothing here imports torch until a command runs (``vdsr --help`` is quick).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import warnings
from collections.abc import Sequence

from vdsr.cli.console import ending
from vdsr.cli.parser import build_parser
from vdsr.cli.words import describe, err, show_warning

__all__ = ["build_parser", "entry", "main"]


def _return_freed_memory() -> None:
    """Ask glibc to serve allocations of 1 MB and more by mmap, so that freed image buffers and
    network activations go back to the system instead of staying in the heap: the peak RSS of a
    1024² upscale drops by ~110 MB (measured). A no-op where libc is not glibc."""
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 20)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def main(argv: Sequence[str] | None = None, *, program: bool = False) -> int:
    """Run one ``vdsr`` command: returns the exit code (0 ok, 1 error, 2 bad usage, 130
    interrupted, 141 when the reader of stdout has gone, as for a tool that SIGPIPE ends).

    ``program``: the process ends when this returns (:func:`entry`), so Ctrl-C stays ignored
    once the command has been interrupted; otherwise the caller gets its SIGINT handler back.
    """
    from vdsr.errors import StopRequested, TrainingInterrupted, VDSRError

    handler = signal.getsignal(signal.SIGINT)
    try:
        try:
            parser = build_parser()
            args = parser.parse_args(argv)
            _return_freed_memory()
            warnings.showwarning = show_warning
            return int(args.func(args))
        except TrainingInterrupted as exc:
            ending()
            err(f"{exc}: continue with --resume {exc.run_dir}")
            return 130
        except VDSRError as exc:
            err(describe(exc))
            return 1
        except KeyboardInterrupt:
            ending()
            err("interrupted")
            return 130
        except StopRequested as exc:  # SIGTERM outside the part of a command that says more
            ending()
            err(str(exc))
            return 128 + 15 if exc.signal == "SIGTERM" else 130
        except MemoryError:
            err("out of memory (try a smaller --tile or --batch-size)")
            return 1
        finally:
            if not program and signal.getsignal(signal.SIGINT) is not handler:
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(signal.SIGINT, handler)
            sys.stdout.flush()  # a closed pipe shows here, not as a traceback when Python exits
    except BrokenPipeError:  # `vdsr info --json | head -c 100`: stop quietly, as Unix tools do
        with contextlib.suppress(OSError, ValueError, AttributeError):
            # Python flushes stdout again at exit: let that write go nowhere instead of failing.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + 13  # SIGPIPE


def entry() -> None:
    """The ``vdsr`` program (its console script, and ``python -m vdsr``): :func:`main`, then exit
    with its code."""
    sys.exit(main(program=True))


if __name__ == "__main__":  # pragma: no cover
    entry()
