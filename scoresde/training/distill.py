"""Distillation above the trainer: a student's config from its teacher, the rounds of progressive distillation run
through `scoresde.training.Trainer`, and how a distilled student samples (its kind's recipe)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from .._checks import check_in_registry, check_positive_int
from ..config.presets import preset
from ..config.schema import DISTILLATION_METHODS, config_from_dict
from ..datasets import toy_dataset
from .checkpoint import CheckpointError, load_checkpoint
from .kinds import get_run_kind, run_kind
from .trainer import Trainer

__all__ = ["distillation_config", "distill", "student_sampling"]


def distillation_config(
    teacher: str,
    method: str,
    *,
    steps: int = 1,
    sde: str = "vp",
    train_steps: int | None = None,
):
    """The student's `RunConfig` for ``teacher`` (a run folder: its SDE, data and network; ``oracle:<toy>``: the toy
    presets' network, ``sde`` and the toy's measured standard deviation as ``sigma_data``), ``method`` and the
    student's ``steps`` (the network as its kind's `student_network`: a flow map's gets its second time input);
    training: AdamW 1e-3 with a cosine decay, EMA 0.999, ``train_steps`` (default 2,000 per round). Change any field
    with `scoresde.config.override`."""

    check_in_registry("distillation method", method, DISTILLATION_METHODS)
    check_positive_int("steps", steps)
    if train_steps is not None:
        check_positive_int("train_steps", train_steps)
    if teacher.startswith("oracle:"):
        name = teacher.removeprefix("oracle:")
        base = preset("toy-vp" if sde == "vp" else "toy-ve").to_dict()
        data = toy_dataset(name).sample(10_000, torch.Generator().manual_seed(0))
        base["model"]["sigma_data"] = round(float(data.std()), 3)
        base["data"] = {"kind": "toy", "name": name}
        if sde not in ("vp", "ve"):
            base["sde"] = {"name": sde}
    else:
        try:
            base = load_checkpoint(Path(teacher))["config"].to_dict()
        except CheckpointError as exc:
            raise ValueError(f"teacher {teacher!r}: {exc}") from None
    base["train"] = {
        **base["train"],
        "steps": 2000 if train_steps is None else train_steps,
        "lr": 1e-3,
        "warmup": 100,
        "lr_schedule": "cosine",
        "ema_decay": 0.999,
        "checkpoint_every": 500,
    }
    kind = get_run_kind(method)
    base["model"]["kwargs"] = kind.student_network(base["model"])
    base["kind"] = method
    base["distill"] = {
        "method": method,
        "teacher": teacher if kind.teacher else None,
        "steps": steps,
    }
    return config_from_dict(base)


def distill(
    config,
    out_dir,
    *,
    teacher_steps: int | None = None,
    device="cpu",
    progress: bool = True,
    resume=True,
    overwrite: bool = False,
) -> list:
    """Train the student of ``config`` into ``out_dir`` with `scoresde.training.Trainer` (checkpoints, resume, EMA,
    DDP as for any run). Progressive distillation runs rounds: from a teacher sampled with ``teacher_steps`` (default
    ``4 * distill.steps``, a power-of-two multiple) the student's steps halve each round down to ``distill.steps``;
    round ``k`` trains in ``out_dir/rounds/<its steps>`` with the previous round as teacher, the last in ``out_dir``.
    Returns the rounds' `TrainResult` s (one for the consistency methods)."""

    out_dir = Path(out_dir)
    plan = [(config, out_dir)]
    if run_kind(config).name == "progressive":
        final = config.distill.steps
        start = 4 * final if teacher_steps is None else check_positive_int("teacher_steps", teacher_steps)
        ratio = start // final
        if start % final or ratio < 2 or ratio & (ratio - 1):
            raise ValueError(
                f"teacher_steps must be the student's steps ({final}) times a power of two >= 2, got {start}"
            )
        plan, teacher, steps = [], config.distill.teacher, start // 2
        while steps >= final:
            folder = out_dir if steps == final else out_dir / "rounds" / str(steps)
            plan.append((replace(config, distill=replace(config.distill, steps=steps, teacher=teacher)), folder))
            teacher, steps = str(folder), steps // 2
    results = []
    for round_config, folder in plan:
        trainer = Trainer(round_config, folder, device=device, progress=progress, resume=resume, overwrite=overwrite)
        try:
            results.append(trainer.train())
        finally:
            trainer.close()
        if results[-1].interrupted:
            break
    return results


def student_sampling(config, steps: int | None = None) -> dict:
    """How a distilled student samples, as the keyword form of `scoresde.sample` (``sampler``, ``steps`` and
    options; its kind's fixed `scoresde.samplers.Recipe`: consistency, multistep consistency sampling, at most
    ``n_times - 1`` steps; progressive, DDIM on its log-SNR grid, exactly its steps, without the final denoising
    evaluation, so NFE = steps; a flow map, K jumps of its map). Too many steps, or a run that is no student: a
    one-line ``ValueError``."""
    recipe = run_kind(config).recipe(config, steps)
    if recipe is None or not run_kind(config).student:
        raise ValueError(f"a {run_kind(config).name} run is not a distilled student (scoresde distill writes one)")
    return recipe.sample_kwargs()
