"""What a process knows of the process group it runs in, and the seeds that do not depend on it: shared by the
trainer (one generator per step and rank) and by evaluations that split their data over the processes."""

from __future__ import annotations

import torch

__all__ = ["derived_generator", "process_world"]


def process_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group this process belongs to, ``(0, 1)`` without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def derived_generator(seed: int, index: int, offset: int = 0, device: torch.device | str = "cpu") -> torch.Generator:
    r"""A generator seeded by $(1000003\,s + 7919\,i + o) \bmod (2^{63} - 1)$: a function of the run's ``seed``, an
    ``index`` (a rank, a chunk) and an ``offset`` (a step) only, never of the process that draws from it."""
    return torch.Generator(device).manual_seed((seed * 1_000_003 + index * 7_919 + offset) % (2**63 - 1))
