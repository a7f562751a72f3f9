r"""Bits/dim of a whole test set on one process or many, with the same answer.

An adaptive solve takes a different number of steps for different images, so evaluating one batch with DDP, where
every forward pass is a collective, hangs (k-diffusion #79). Here the data are cut into chunks of ``chunk_size``
images; chunk $c$ is solved alone with its own generator, seeded from ``(seed, c)``; under torchrun rank $r$ of $W$
takes chunks $r, r + W, \dots$ and no collective runs inside a solve. The chunks' results are gathered once at the
end (``all_gather_object``) and merged in chunk order, so the figure and its standard error do not depend on how
many processes computed them: one process computes the same chunks with the same seeds.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch
from torch import Tensor

from .._checks import check_positive_int
from .._distributed import derived_generator, process_world
from .._stats import mean_and_standard_error
from ..datasets.scalers import DataTransform
from ..processes.base import SDE
from ..processes.score import ScoreFn
from .bpd import BitsPerDimResult, bits_per_dim

__all__ = ["sharded_bits_per_dim", "merge_bits_per_dim", "chunk_generator"]


def chunk_generator(seed: int, chunk: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one chunk: a function of ``(seed, chunk)`` only, never of the process that solves it."""
    return derived_generator(seed, chunk, device=device)


def sharded_bits_per_dim(
    sde: SDE,
    score_fn: ScoreFn,
    x: Tensor,
    transform: DataTransform,
    *,
    chunk_size: int = 256,
    seed: int = 0,
    **options,
) -> BitsPerDimResult:
    r"""`bits_per_dim` of ``x [B, ...]`` chunk by chunk: chunk $c$ (images $c\,n, \dots, (c+1)\,n - 1$, $n$ =
    ``chunk_size``) with `chunk_generator` ``(seed, c)``; under a process group (torchrun) rank $r$ of $W$ solves
    chunks $c \equiv r \pmod W$ and every rank returns the merged result (`merge_bits_per_dim`), equal to the
    one-process result on the same data, seed and chunk size. ``options`` go to `bits_per_dim` (dequantisation,
    estimator, tolerances, ...; not ``generator``). The number of chunks must be a multiple of $W$ (checked on every
    rank before any solve, so no rank waits on another that refused)."""
    chunk_size = check_positive_int("chunk_size", chunk_size)
    if "generator" in options:
        raise ValueError("sharded_bits_per_dim draws from (seed, chunk) generators: pass seed, not generator")
    rank, world = process_world()
    n_chunks = math.ceil(x.shape[0] / chunk_size) if isinstance(x, Tensor) and x.ndim >= 1 else 0
    if n_chunks == 0 or n_chunks % world:
        raise ValueError(
            f"{x.shape[0] if isinstance(x, Tensor) and x.ndim else 0} images in chunks of {chunk_size} make "
            f"{n_chunks} chunks, not a multiple of the {world} processes: pass a number of images that is a "
            f"multiple of {world * chunk_size} (or a chunk_size that splits them evenly), so that every rank has "
            f"as many chunks"
        )
    if options.get("estimator", "ode") == "ode":
        options = {**options, "shared": False}  # this rank solves its chunks whole: no collective inside a solve
    mine = [
        (c, bits_per_dim(sde, score_fn, x[c * chunk_size : (c + 1) * chunk_size], transform,
                         generator=chunk_generator(seed, c, x.device), **options))
        for c in range(rank, n_chunks, world)
    ]  # fmt: skip
    if world > 1:
        import torch.distributed as dist

        gathered: list = [None] * world
        dist.all_gather_object(gathered, [(c, _to_cpu(result)) for c, result in mine])
        mine = [entry for part in gathered for entry in part]
    merged = merge_bits_per_dim([result for _, result in sorted(mine, key=lambda entry: entry[0])])
    merged.settings.update({"chunk_size": chunk_size, "seed": seed, "processes": world, "chunks": n_chunks})
    return merged


def _to_cpu(result: BitsPerDimResult) -> BitsPerDimResult:
    return replace(result, per_sample=result.per_sample.detach().cpu())


def merge_bits_per_dim(parts: list[BitsPerDimResult]) -> BitsPerDimResult:
    r"""One result from the results of disjoint chunks of the data, in order: per-sample figures concatenated (the
    figure and its standard error exactly as over all samples), the means weighted by chunk size $n_c$, and each
    source of error combined as independent chunks' $\sqrt{\sum_c n_c^2 s_c^2}/N$."""
    if not parts:
        raise ValueError("parts is empty: merge at least one chunk's result")
    sizes = torch.tensor([p.per_sample.numel() for p in parts], dtype=torch.float64)
    total = float(sizes.sum())
    per_sample = torch.cat([p.per_sample.detach().cpu().to(torch.float64) for p in parts])
    bpd, se = mean_and_standard_error(per_sample)

    def weighted(values: list) -> float | None:
        if any(v is None for v in values):
            return None
        return float((sizes * torch.tensor(values, dtype=torch.float64)).sum()) / total

    def combined(values: list) -> float | None:
        if any(v is None or v != v for v in values):
            return None
        return math.sqrt(float((sizes**2 * torch.tensor(values, dtype=torch.float64) ** 2).sum())) / total

    first = parts[0]
    dequantization = combined([p.standard_errors.get("dequantization") for p in parts])
    probes = combined([p.standard_errors.get("probes") for p in parts])
    data = None
    if dequantization is not None or probes is not None:
        data = math.sqrt(max(se**2 - (dequantization or 0.0) ** 2 - (probes or 0.0) ** 2, 0.0))
    return BitsPerDimResult(
        bpd=bpd,
        bpd_standard_error=se,
        bpd_raw=weighted([p.bpd_raw for p in parts]),
        offset=weighted([p.offset for p in parts]),
        nats_per_sample=weighted([p.nats_per_sample for p in parts]),
        per_sample=per_sample,
        nfe=sum(p.nfe for p in parts),
        settings=dict(first.settings),
        integration_error=weighted([p.integration_error for p in parts]),
        standard_errors={"total": se, "data": data, "dequantization": dequantization, "probes": probes},
        rigorous_bpd=weighted([p.rigorous_bpd for p in parts]),
        rigorous_bpd_standard_error=combined([p.rigorous_bpd_standard_error for p in parts]),
        importance_bias=weighted([p.importance_bias for p in parts]),
    )
