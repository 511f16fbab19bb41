"""Distributed data parallel training under ``torchrun``.

``torchrun --nproc_per_node N -m imgclf train ...`` starts N processes with
``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE`` set. Each process draws the same
permutation of the training set every epoch and trains on its own interleaved
share of it (equal shares, so every process takes the same number of steps);
PyTorch's ``DistributedDataParallel`` averages the gradients; training loss and
accuracy are summed over the processes; validation runs on the whole
validation split in every process. Only rank 0 prints and writes files. A process
that joined the group leaves it when it exits (a gloo group left to the
interpreter's teardown can abort the process: "terminate called without an
active exception").
``train.batch_size`` is per process, as in PyTorch's own DDP examples. The
backend is NCCL on GPUs and gloo on CPUs.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Distributed:
    """This process's place in a distributed run (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> Distributed:
        """Read torchrun's variables and join the process group (once) when there are several processes."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as tdist

        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not tdist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            tdist.init_process_group(backend=backend)
            atexit.register(_leave_process_group)
        return cls(tdist.get_rank(), tdist.get_world_size(), local)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(rank, world_size)`` for :func:`imgclf.data.iterate_batches`, or None."""
        return (self.rank, self.world_size) if self.world_size > 1 else None

    def share(self, n: int) -> int:
        """Examples per epoch each process trains on."""
        return n // self.world_size

    def device(self, device: torch.device) -> torch.device:
        """This process's GPU under torchrun, else ``device`` unchanged."""
        if device.type == "cuda" and self.world_size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """``DistributedDataParallel(model)`` when distributed, else ``model``."""
        if self.world_size <= 1:
            return model
        from torch.nn.parallel import DistributedDataParallel

        device = next(model.parameters()).device
        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    def gather(self, value: Any) -> list[Any]:
        """``value`` of every process, by rank (``[value]`` alone); any picklable object of CPU tensors and
        plain values. Every process must call it, in the same order."""
        if self.world_size <= 1:
            return [value]
        import torch.distributed as tdist

        gathered: list[Any] = [None] * self.world_size
        tdist.all_gather_object(gathered, value)
        return gathered

    def sum(self, loss_sum: torch.Tensor, correct: torch.Tensor, seen: int) -> tuple[float, float, int]:
        """Sum an epoch's loss, correct count and example count over all processes."""
        totals = torch.stack([loss_sum.double(), correct.double(),
                              torch.tensor(float(seen), device=loss_sum.device, dtype=torch.float64)])
        if self.world_size > 1:
            import torch.distributed as tdist

            tdist.all_reduce(totals)
        loss, right, count = totals.tolist()
        return loss, right, int(count)


def _leave_process_group() -> None:
    """Destroy the default process group if it is still there (registered at exit by :meth:`Distributed.from_env`)."""
    import torch.distributed as tdist

    if tdist.is_initialized():
        tdist.destroy_process_group()
