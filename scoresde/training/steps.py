"""The training loop's parts that are not the `Trainer`: the learning-rate schedule, each step's generator, the
micro-batches of gradient accumulation, the rule of what a resume may change, the run's CSV logs, TF32's scope,
and what a call to train returns."""

from __future__ import annotations

import atexit
import contextlib
import csv
import io
import math
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .._distributed import derived_generator
from .._io import write_atomic
from ..config.schema import DISTILLATION_METHODS, RunConfig
from .kinds import run_kind
from .objectives import Batch

__all__ = [
    "RESUMABLE_CHANGES",
    "LOGS",
    "config_changes",
    "TrainingDiverged",
    "init_distributed",
    "learning_rate",
    "step_generator",
    "TrainResult",
    "micro_batches",
    "append_csv",
    "tf32_scope",
    "stop_on_signals",
]


RESUMABLE_CHANGES = (
    "train.steps",
    "train.log_every",
    "train.checkpoint_every",
    "train.eval_every",
    "train.eval_batch",
    "train.eval_samples",
    "train.eval_nfe",
    "train.num_workers",
    "train.pin_memory",
    "train.compile",
    "data.data_dir",
)
"""Fields a resumed run may change (train longer, log or evaluate differently, data moved, load or compile
differently); any other change is refused."""

LOGS = ("metrics.csv", "evals.csv")


def config_changes(ours: RunConfig, theirs: RunConfig) -> list[str]:
    """The fields (``section.field``, or ``kind``) in which two run configs differ, other than the
    `RESUMABLE_CHANGES` and, for a run that distils nothing, its unread ``distill`` section; a config that declares
    its kind and one written before kinds were declared (``kind: null``) that describes the same kind do not
    differ."""
    a, b = ours.to_dict(), theirs.to_dict()
    kinds = [] if run_kind(ours).name == run_kind(theirs).name else ["kind"]
    # a run that distils nothing never reads its distill section: a default changed there since it was written
    # (flow maps' times and weight) must not stop it from resuming
    unread = () if run_kind(ours).name in DISTILLATION_METHODS else ("distill",)
    return kinds + [
        f"{s}.{k}"
        for s in a
        if isinstance(a[s], dict) and s not in unread
        for k in a[s]
        if a[s][k] != b[s].get(k) and f"{s}.{k}" not in RESUMABLE_CHANGES
    ]


class TrainingDiverged(RuntimeError):
    """The loss became non-finite; the last good checkpoint is kept."""


def init_distributed(device: torch.device | str) -> tuple[int, int]:
    """``(rank, world_size)``: joins the torchrun process group (gloo on CPU, NCCL on CUDA) when launched by
    torchrun. The group belongs to the process, not to one trainer: it is joined once and left when the process
    exits, so that the trainers of one process (a cascade's stages, a script's runs) share it (a second
    ``init_process_group`` on torchrun's store after a ``destroy_process_group`` waits forever)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        backend = "nccl" if torch.device(device).type == "cuda" else "gloo"
        dist.init_process_group(backend)
        atexit.register(_leave_group)
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _leave_group() -> None:
    """At exit: leave the process group ``init_distributed`` joined (if the program did not)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def learning_rate(tc, step: int) -> float:
    r"""Linear warm-up over ``warmup`` steps, then constant or cosine $\tfrac12(1 + \cos(\pi k/K))$ to 0 at
    ``steps``."""
    warm = min(1.0, (step + 1) / tc.warmup) if tc.warmup else 1.0
    if tc.lr_schedule == "cosine" and step >= tc.warmup:
        progress = (step - tc.warmup) / max(tc.steps - tc.warmup, 1)
        return tc.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return tc.lr * warm


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of one step on one process: a function of ``(seed, rank, step)`` only."""
    return derived_generator(seed, rank, step)


@dataclass
class TrainResult:
    """What a call to `Trainer.train` did: steps reached, last logged loss, wall time, throughput."""

    step: int
    loss: float
    seconds: float
    steps_per_second: float
    interrupted: bool = False
    checkpoint: str | None = None
    history: list[dict] = field(default_factory=list)
    stop_signal: int | None = None

    @property
    def exit_status(self) -> int:
        """The process exit status a command reports for this result: 0, or $128 + n$ after signal $n$ stopped it
        (130 for SIGINT, 143 for SIGTERM, what shells and schedulers such as Slurm read)."""
        if not self.interrupted:
            return 0
        return 128 + (self.stop_signal or signal.SIGINT)

    def to_dict(self) -> dict:
        return {
            k: getattr(self, k) for k in ("step", "loss", "seconds", "steps_per_second", "interrupted", "checkpoint")
        }


@contextlib.contextmanager
def tf32_scope(enabled: bool):
    """CUDA's TF32 switches for float32 matmuls and cuDNN convolutions set to ``enabled`` for the duration of
    training (they are process-wide: the caller's settings are restored after)."""
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def append_csv(path: Path, row: dict) -> None:
    """Append ``row`` to the CSV at ``path`` (a header first when new). A row with columns the file lacks (a resumed
    run that now evaluates) rewrites the file, atomically, with the wider header, earlier rows blank there."""
    header: list[str] = []
    if path.is_file():
        with path.open(newline="") as fh:
            header = next(csv.reader(fh), [])
        if header and set(row) - set(header):
            with path.open(newline="") as fh:
                rows = list(csv.DictReader(fh))
            fields = header + [k for k in row if k not in header]
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
            write_atomic(path, text.getvalue().encode())
            header = fields
    new = not path.is_file()
    with path.open("a", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header or list(row), restval="")
        if new:
            writer.writeheader()
        writer.writerow(row)


def micro_batches(batch: Batch, k: int) -> list[Batch]:
    """``batch`` split into ``k`` equal micro-batches (rows in order; labels and conditions split alike)."""
    if k == 1:
        return [batch]
    if batch.x0.shape[0] % k:
        raise ValueError(f"train.accumulate {k} does not divide the batch of {batch.x0.shape[0]} rows of this process")

    def split(t):
        return [None] * k if t is None else list(t.chunk(k))

    return [Batch(x, y, batch.step, low) for x, y, low in zip(split(batch.x0), split(batch.y), split(batch.low))]


def stop_on_signals(stop: Callable[[int], None]) -> Callable[[], None]:
    """Call ``stop(signum)`` on SIGINT / SIGTERM instead of dying (the loop finishes its step and checkpoints); returns
    the function that restores the previous handlers. Off the main thread, where signals cannot be caught, nothing."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.signal(sig, lambda signum, frame: stop(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
