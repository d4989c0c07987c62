"""How a training run stops: SIGINT/SIGTERM become a request to stop at the next step boundary
(with a checkpoint), and validation is cut short by :class:`CutShort` when one comes."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["CutShort", "StopSignals"]


class CutShort(BaseException):
    """Raised inside validation to cut it short; a BaseException so no ``except Exception`` in
    the evaluation code swallows it."""


class StopSignals:
    """Turns SIGINT/SIGTERM into a request to stop at the next step boundary (main thread only).

    ``requested`` names the first signal once one arrived, and ``on_request`` is told at once. A
    second SIGINT raises KeyboardInterrupt, for a user who does not want to wait for the step.
    """

    def __init__(self, enabled: bool = True, on_request: Callable[[str], None] | None = None) -> None:
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.on_request = on_request
        self.requested: str | None = None
        self._old: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            return
        self.requested = signal.Signals(signum).name
        if self.on_request is not None:
            self.on_request(self.requested)

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)
        self._old.clear()
