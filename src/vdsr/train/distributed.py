"""Distributed data-parallel training on PyTorch's own engine (DDP, launched by ``torchrun``).

``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address; this module
only reads them, initialises the process group (NCCL on GPUs, gloo on CPU) and tears it down.

Semantics: ``--batch-size`` is the *global* batch. Every rank draws the same global batch from
an identically seeded sampler and keeps its own ``1/world_size`` slice, so the data order, and
(since DDP averages gradients) the update, equal those of one process with the same batch.
Only rank 0 writes logs, checkpoints and weights.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def shard(self, batch_size: int) -> slice:
        """This rank's slice of a global batch."""
        per = batch_size // self.world_size
        return slice(self.rank * per, (self.rank + 1) * per)

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


@contextlib.contextmanager
def distributed_context(backend: str | None = None) -> Iterator[DistContext]:
    """A :class:`DistContext` from torchrun's environment; single-process when it is absent."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        yield DistContext()
        return
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend)
    try:
        yield DistContext(rank=rank, world_size=world, local_rank=local_rank)
    finally:
        dist.destroy_process_group()
