"""The one timing loop every benchmark script here uses: warm up once, then the median of N runs."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_time(
    fn: Callable[[], object],
    repeats: int,
    warmup: Callable[[], object] | None = None,
    sync: Callable[[], object] | None = None,
) -> tuple[float, list[float]]:
    """Median wall seconds of ``fn()`` over ``repeats`` runs, and every run's time.

    ``warmup`` (default: ``fn`` itself) runs once first, untimed: ORT session builds, oneDNN
    kernel selection and cuDNN autotuning happen there. ``sync`` (e.g.
    ``torch.cuda.synchronize``) is called before and after each timed run so asynchronous
    devices are timed to completion.
    """
    (warmup or fn)()
    times = []
    for _ in range(repeats):
        if sync is not None:
            sync()
        t = time.perf_counter()
        fn()
        if sync is not None:
            sync()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times
