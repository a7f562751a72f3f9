"""Training: a trainer that never loses work, at the field's speed, on one process or many (torchrun / DDP).

- AdamW (fused / foreach) with warm-up, clipping, an EMA of the weights (the model evaluated, sampled and returned)
  and the post-hoc EMA's power-function profiles (`scoresde.training.posthoc_ema`); mixed precision, compilation,
  channels-last, gradient accumulation (`scoresde.training.speed`); evaluation hooks, a progress bar, CSV logs.
- Deterministic: every step's randomness comes from a generator seeded by ``(seed, rank, step)`` (dropout: torch's
  global RNG seeded from it inside ``fork_rng``), so a run is a function of its config and nothing else.
- Checkpoints (`scoresde.training.checkpoint`) hold model, EMA, optimiser, step, config and the loop's state (the
  fp16 scaler, the EMA profiles), written atomically, read without running code: resume is exact.
- SIGINT / SIGTERM finish the step, save and return (``interrupted=True``); a non-finite loss raises
  `TrainingDiverged`, keeping the last good checkpoint. Under torchrun the network is wrapped in DDP (gloo on CPU,
  NCCL on GPU; all-reduced once per step under accumulation), finite data sets are split with
  ``DistributedSampler``, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from .._checks import check_positive_int, progress_bar
from ..config.io import load_config, save_config
from ..config.schema import ConfigError, RunConfig
from ..models import ScoreModel
from ..processes.score import ScoreFn
from .checkpoint import (
    CHECKPOINT,
    CheckpointError,
    check_checkpoint,
    checkpoint_step,
    kept_checkpoint,
    load_checkpoint,
    save_checkpoint,
    state_under,
)
from .data import DataStream
from .ema import EMA
from .kinds import run_kind
from .objectives import Batch, Objective, build_objective
from .posthoc_ema import PowerEMA
from .run_folder import RunFolderError, RunLock, remove_run_files, remove_stale_temporaries, run_files, truncate_log
from .runs import build_model, load_teacher, wrap_network
from .speed import (
    build_optimizer,
    check_precision,
    compile_network,
    load_scaler_state,
    network_autocast,
    scaler_state,
    speed_settings,
)
from .steps import (
    LOGS,
    TrainingDiverged,
    TrainResult,
    append_csv,
    config_changes,
    init_distributed,
    learning_rate,
    micro_batches,
    step_generator,
    stop_on_signals,
    tf32_scope,
)

__all__ = [
    "Trainer",
    "TrainResult",
    "TrainingDiverged",
    "EMA",
    "save_checkpoint",
    "load_checkpoint",
    "CheckpointError",
    "DataStream",
    "init_distributed",
    "learning_rate",
]


class Trainer:
    """Train the score model of ``config`` into ``out_dir`` (checkpoint, config.yaml, metrics.csv).

    Args:
        config: the run (see `scoresde.config`).
        out_dir: the run folder (`scoresde.training.run_folder`); an existing checkpoint there is resumed
            when ``resume``, and so is a run killed before its first checkpoint (its ``config.yaml`` equal to
            ``config``: it starts again at step 0). Files of any other run are left alone: `train` refuses them unless
            ``overwrite``, which removes the run files (`scoresde.training.run_folder.RUN_FILES`) and nothing else.
        device: where to train. progress: show a progress bar (rank 0).
        eval_fn: ``eval_fn(trainer, step) -> dict`` called every ``train.eval_every`` steps (rank 0, EMA model;
            e.g. `scoresde.evaluation.TrainingEvaluator`); its figures go to `evals`, those in ``eval_names`` to
            ``metrics.csv`` (a row at every evaluation), TensorBoard and the progress bar, any others to
            ``evals.csv``.
        objective: what the loop minimises (`scoresde.training.objectives`); default: the config's
            (`build_objective`). The loop is the same for every objective.
        teacher: the score a distillation objective learns from; default: loaded from ``config.distill.teacher``
            (`scoresde.training.runs.load_teacher`).
        features: an autoencoder's feature network for ``train.feature_weight`` (`build_objective`).
    """

    def __init__(
        self,
        config: RunConfig,
        out_dir: str | Path,
        *,
        device: torch.device | str = "cpu",
        progress: bool = True,
        resume: bool = True,
        overwrite: bool = False,
        eval_fn: Callable[[Trainer, int], dict] | None = None,
        eval_names: tuple[str, ...] = (),
        objective: Objective | None = None,
        teacher: ScoreFn | None = None,
        features: nn.Module | None = None,
    ) -> None:
        self.config, self.out_dir, self.device = config, Path(out_dir), torch.device(device)
        self.rank, self.world = init_distributed(self.device)
        if self.world > 1 and self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", self.rank)))  # one GPU per process
            torch.cuda.set_device(self.device)
        self.progress, self.eval_fn, self.eval_names = progress, eval_fn, tuple(eval_names)
        self._postfix: dict[str, str] = {}
        self.kind = run_kind(config)
        self.sde = config.sde.build()
        self.model = build_model(config, self.sde, self.device)
        self.ema = EMA(self.model, config.train.ema_decay)
        self._has_dropout = any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in self.model.modules())
        tc = config.train
        self.speed = speed_settings(tc, self.device)
        self.autocast = check_precision(tc.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=tc.precision == "fp16")
        if self.speed["channels_last"]:
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(
            self.model.parameters(), tc.lr, tc.weight_decay, self.speed["optimizer_impl"], self.device
        )
        self.posthoc = PowerEMA(self.model, tc.ema_profiles) if tc.ema_profiles else None
        self.data = DataStream(config, self.rank, self.world, self.device, self.out_dir, self.speed["pin_memory"])
        if objective is None:
            teacher = teacher if teacher is not None or not self.kind.teacher else load_teacher(config, self.device)
            objective = build_objective(config, self.sde, teacher=teacher, world=self.world, features=features)
        self.objective = objective
        self.objective.init_model(self.model, self.ema.model)
        self.step = 0
        self.evals: list[dict] = []
        self._stop, self._stop_signal = False, None
        self._resume, self._overwrite, self._owns_folder = resume, overwrite, False
        if resume and (self.out_dir / CHECKPOINT).is_file():
            self._restore(self.out_dir / CHECKPOINT)
            self._owns_folder = True
        self._train_model, self._ddp, self._closed = self.model, None, False
        net = self.kind.network(self.model)
        if self.world > 1 and self.kind.distributed:  # an autoencoder's objective refuses torchrun
            from torch.nn.parallel import DistributedDataParallel

            net = self._ddp = DistributedDataParallel(
                net, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        if self._ddp is not None or tc.compile:
            self._train_model = wrap_network(config, self.sde, compile_network(net, tc.compile))

    # ------------------------------------------------------------------ public
    @property
    def score_fn(self) -> ScoreModel:
        """The EMA model as a score function (eval mode)."""
        return self.ema.model

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def train(self, steps: int | None = None) -> TrainResult:
        """Train up to step ``steps`` (default ``train.steps``); returns early, after a checkpoint, on SIGINT /
        SIGTERM (a second signal during that save is absorbed: the checkpoint is still written).

        Rank 0 holds the run folder (`scoresde.training.run_folder.RunLock`) meanwhile: a second trainer there raises
        `RunFolderError`. A write that fails (disk full, permission lost) raises `CheckpointError` /
        `RunFolderError` in one line, keeping the last good checkpoint."""
        tc = self.config.train
        if steps is not None:
            check_positive_int("steps", steps)
        target = tc.steps if steps is None else min(int(steps), tc.steps)
        start, start_step, history = time.perf_counter(), self.step, []
        restore = self._install_signal_handlers()
        tf32 = tf32_scope(self.speed["tf32"]) if self.device.type == "cuda" else contextlib.nullcontext()
        lock = RunLock(self.out_dir) if self.is_main else None
        try:
            with lock or contextlib.nullcontext(), tf32:
                self._prepare_folder()
                last_loss = self._loop(target, start, history)
                path = self.save()
        except (OSError, CheckpointError) as exc:
            if isinstance(exc, CheckpointError):  # a failed checkpoint write, already in one line
                error, message = CheckpointError, str(exc)
            else:
                kept = kept_checkpoint(self.out_dir / CHECKPOINT)
                error, message = RunFolderError, f"cannot write into {self.out_dir} ({exc.strerror or exc}); {kept}"
            if lock is not None and lock.left:
                message += f"; {lock.path} could not be removed (it holds no lock): delete it once you can"
            raise error(message) from None
        finally:
            restore()
        seconds = time.perf_counter() - start
        done = self.step - start_step
        return TrainResult(
            step=self.step,
            loss=last_loss,
            seconds=seconds,
            steps_per_second=done / seconds if seconds > 0 else 0.0,
            interrupted=self._stop,
            checkpoint=str(path) if path else None,
            history=history,
            stop_signal=self._stop_signal,
        )

    def _loop(self, target: int, start: float, history: list[dict]) -> float:
        """Steps up to ``target`` (or a signal) with logging, evaluation and periodic checkpoints; the mean loss
        of the last logging window."""
        tc = self.config.train
        running: list[float] = []
        last_loss = float("nan")
        bar = progress_bar(
            None, "train", self.progress and self.is_main, total=target, initial=self.step, dynamic_ncols=True
        )
        try:
            while self.step < target and not self._stop:
                loss = self._train_step()
                running.append(loss)
                self.step += 1
                bar.update(1)
                evaluating = bool(tc.eval_every and self.step % tc.eval_every == 0 and self.eval_fn is not None)
                figures = self._evaluate() if evaluating and self.is_main else {}
                if evaluating or (tc.log_every and (self.step % tc.log_every == 0 or self.step == target)):
                    last_loss = sum(running) / len(running)
                    row = {
                        "step": self.step,
                        "loss": last_loss,
                        "lr": self.optimizer.param_groups[0]["lr"],
                        "seconds": time.perf_counter() - start,
                        **{name: figures.get(name) for name in self.eval_names},
                    }
                    history.append(row)
                    running = []
                    shown = {k.removeprefix("eval_"): f"{v:.4g}" for k, v in figures.items() if k in self.eval_names
                             and v is not None and k != "eval_seconds"}  # fmt: skip
                    self._postfix.update(shown)
                    bar.set_postfix(loss=f"{last_loss:.4g}", **self._postfix)
                    self._log(row)
                if self._snapshot_due(target):
                    self.posthoc.save_snapshot(self.out_dir, self.step)
                if tc.checkpoint_every and self.step % tc.checkpoint_every == 0:
                    self.save()
        finally:
            bar.close()
        return sum(running) / len(running) if running else last_loss

    def _snapshot_due(self, target: int) -> bool:
        """Whether this step stores the post-hoc EMA profiles (rank 0): every ``train.ema_snapshot_every`` steps
        (0: with the checkpoints) and at the last step."""
        if self.posthoc is None or not self.is_main:
            return False
        every = self.config.train.ema_snapshot_every or self.config.train.checkpoint_every
        return self.step == target or bool(every and self.step % every == 0)

    def _prepare_folder(self) -> None:
        """Rank 0, holding the folder: remove a killed writer's partial checkpoints, then either continue this
        trainer's own run (logs cut back to its step), or start one where no other run's files are (or
        ``overwrite`` removed them), writing ``config.yaml``."""
        if not self.is_main:
            return
        remove_stale_temporaries(self.out_dir)
        if not self._owns_folder:
            present = run_files(self.out_dir)
            if present and self._overwrite:
                remove_run_files(self.out_dir)
            elif present and not (self._resume and self._killed_before_checkpoint()):
                raise RunFolderError(
                    f"{present[0]} already exists and is not a run this trainer resumes; "
                    f"{'pass --force' if self._resume else 'pass --resume to continue it, or --force'} "
                    f"(overwrite=True) to replace the run's files, or choose another folder"
                )
            self._owns_folder = True
        for log in LOGS:
            truncate_log(self.out_dir / log, self.step)
        save_config(self.config, self.out_dir / "config.yaml")

    def _killed_before_checkpoint(self) -> bool:
        """Whether the folder holds this config's run, killed before it wrote a checkpoint."""
        if (self.out_dir / CHECKPOINT).exists():
            return False
        try:
            return not config_changes(self.config, load_config(self.out_dir / "config.yaml"))
        except ConfigError:
            return False

    def close(self) -> None:
        """Release the DDP wrapper (whose reducer holds the process group) and meet the other ranks at a barrier (a
        no-op on one process), so that no rank's gloo / NCCL work outlives another's run. The group itself stays:
        it belongs to the process (`init_distributed` leaves it at exit), and the next trainer of this process
        shares it."""
        if self.world == 1 or self._closed:
            return
        import gc

        import torch.distributed as dist

        self._train_model, self._ddp, self._closed = self.model, None, True
        gc.collect()
        dist.barrier()

    def save(self) -> Path | None:
        """Write the checkpoint (rank 0 only; atomic)."""
        if not self.is_main:
            return None
        extra = {**self.objective.state_dict(), **self._state_dict()}
        return save_checkpoint(
            self.out_dir / CHECKPOINT, self.model, self.ema.model, self.optimizer, self.step, self.config, extra
        )

    # ------------------------------------------------------------------ internals
    def _train_step(self) -> float:
        generator = step_generator(self.config.train.seed, self.rank, self.step)
        dropout_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        if not self._has_dropout:  # every draw comes from the step's generator
            return self._optimise(generator)
        # nn.Dropout takes no generator: seed torch's global RNG for this step only, and restore it afterwards
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            torch.manual_seed(dropout_seed)
            return self._optimise(generator)

    def _optimise(self, generator: torch.Generator) -> float:
        """One optimiser step on the batch of ``self.step``, every draw from ``generator``; returns the loss.

        With ``train.accumulate = k`` the batch is split into ``k`` micro-batches whose losses, each divided by
        ``k``, are backpropagated in turn (under DDP the gradients are all-reduced once, with the last): the
        summed gradient is that of the whole batch's mean loss. The network runs under autocast at
        ``train.precision``; fp16 scales the loss (`torch.amp.GradScaler`) and unscales before clipping."""
        tc = self.config.train
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(tc, self.step)
        self.model.train()
        batch = self.data.batch(self.step, generator)
        if batch.y is not None and tc.label_dropout > 0:  # classifier-free guidance: some rows train unconditionally
            drop = torch.rand(batch.y.shape, generator=generator) < tc.label_dropout
            y = torch.where(drop.to(batch.y.device), torch.full_like(batch.y, self.data.num_classes), batch.y)
            batch = Batch(batch.x0, y, batch.step, batch.low)
        if self.speed["channels_last"] and batch.x0.ndim == 4:
            batch = Batch(batch.x0.contiguous(memory_format=torch.channels_last), batch.y, batch.step, batch.low)
        self.optimizer.zero_grad(set_to_none=True)
        parts = micro_batches(batch, tc.accumulate)
        total = torch.zeros((), device=self.device)
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            sync = contextlib.nullcontext() if last or self._ddp is None else self._ddp.no_sync()
            with sync:
                with network_autocast(self.autocast, self.device):
                    loss = self.objective(self._train_model, part, generator)
                self.scaler.scale(loss.float() / len(parts)).backward()
            total = total + loss.detach().float()
        loss = float(total) / len(parts)  # one host sync a step: the divergence check needs it
        if not math.isfinite(loss):
            raise self._diverged(loss)
        if tc.grad_clip:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.model, self.step)
        if self.posthoc is not None:
            self.posthoc.update(self.model)
        self.objective.after_step(self.model, self.step)
        return loss

    def _diverged(self, loss: float) -> TrainingDiverged:
        """The error of a non-finite loss at this step, naming the checkpoint kept (the weights are unchanged)."""
        last = self.out_dir / CHECKPOINT
        kept = (
            f"the last good checkpoint {last} (step {checkpoint_step(last)}) is kept"
            if last.is_file()
            else "no checkpoint was written"
        )
        return TrainingDiverged(
            f"the loss became {loss} at step {self.step}; {kept}; lower train.lr, raise train.warmup or set "
            f"train.grad_clip"
            + ("; with train.precision fp16, try bf16 or fp32" if self.config.train.precision == "fp16" else "")
        )

    def _state_dict(self) -> dict[str, torch.Tensor]:
        """The loop's own state for the checkpoint: the fp16 gradient scaler's and the post-hoc EMA profiles'."""
        out = {f"trainer.scaler.{k}": v for k, v in scaler_state(self.scaler).items()}
        if self.posthoc is not None:
            out.update({f"trainer.posthoc.{k}": v for k, v in self.posthoc.state_dict().items()})
        return out

    def _load_state_dict(self, extra: dict[str, torch.Tensor], path: Path) -> None:
        """Restore `_state_dict` from the checkpoint at ``path``; missing state refuses the resume in one line."""
        try:
            load_scaler_state(self.scaler, state_under(extra, "trainer.scaler."))
            if self.posthoc is not None:
                self.posthoc.load_state_dict(state_under(extra, "trainer.posthoc."))
        except KeyError as exc:
            raise CheckpointError(
                f"{path} lacks the training loop's state {exc} (the fp16 gradient scaler or the post-hoc EMA "
                f"profiles), so a resume would not be exact; start afresh (scoresde train --force)"
            ) from None

    def _evaluate(self) -> dict:
        """Run ``eval_fn`` on this step (rank 0); its figures go to ``evals.csv`` (and, those named in
        ``eval_names``, to this step's row of ``metrics.csv``)."""
        figures = self.eval_fn(self, self.step)
        self.evals.append({"step": self.step, **figures})
        if set(figures) - set(self.eval_names):
            append_csv(self.out_dir / "evals.csv", {"step": self.step, **figures})
        return figures

    def _log(self, row: dict) -> None:
        if not self.is_main:
            return
        append_csv(self.out_dir / "metrics.csv", row)  # an OSError here is turned into one line by train()
        writer = self._tensorboard()
        if writer is not None:
            for k, v in row.items():
                if k != "step" and v is not None:
                    writer.add_scalar(k, v, row["step"])

    def _tensorboard(self):
        if not hasattr(self, "_tb"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.out_dir / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self._tb = None
        return self._tb

    def _restore(self, path: Path) -> None:
        """Continue the checkpoint at ``path`` exactly, or refuse: a different config, weights that do not fit or
        are not finite, or a checkpoint without the optimiser state that an exact resume needs."""
        state = load_checkpoint(path, device=self.device)
        diff = config_changes(self.config, state["config"])
        if diff:
            raise CheckpointError(
                f"{path} was written by a run with a different config ({', '.join(diff)}); "
                f"use another out_dir, or resume=False (scoresde train --force) to start afresh"
            )
        n_params = len(list(self.model.parameters()))
        optim = state["optimizer"]
        if state["step"] > 0 and not optim["state"]:
            raise CheckpointError(
                f"{path} holds no optimizer state (step {state['step']}, {n_params} parameters), so a resume would "
                f"not be exact; start afresh (scoresde train --force)"
            )
        check_checkpoint(state, self.model, path)
        self.model.load_state_dict(state["model"])
        self.ema.model.load_state_dict(state["ema"])
        self._check_outputs(path)
        try:
            self.optimizer.load_state_dict(optim)
        except (KeyError, ValueError, RuntimeError) as exc:
            raise CheckpointError(f"{path} holds an optimizer state that does not fit the model ({exc})") from None
        self.objective.load_state_dict(state["extra"], path)
        self._load_state_dict(state["extra"], path)
        self.step = state["step"]

    def _check_outputs(self, path: Path) -> None:
        """Refuse restored weights that are finite but overflow: the model's and the EMA's outputs on two rows of the
        data at two times must be finite (as `scoresde.sample` refuses such a model's samples)."""
        full = self.data.batch(0, torch.Generator().manual_seed(0))
        two = Batch(full.x0[:2], None if full.y is None else full.y[:2], 0, None if full.low is None else full.low[:2])
        with torch.no_grad():
            for kind, model in (("model", self.model), ("ema", self.ema.model)):
                model.eval()  # no dropout draw; the loop sets train mode at every step
                for where, out in self.objective.outputs(model, two, self.sde).items():
                    if not bool(torch.isfinite(out).all()):
                        raise CheckpointError(
                            f"{path} holds {kind} weights that are finite but overflow (the {kind} network's output "
                            f"at {where} is not finite); the file was edited or the run diverged: resume from an "
                            f"earlier copy or start afresh (--force)"
                        )

    def _install_signal_handlers(self) -> Callable[[], None]:
        """SIGINT / SIGTERM ask the loop to stop after this step (`stop_on_signals`); returns the restorer."""
        self._stop, self._stop_signal = False, None
        return stop_on_signals(self._request_stop)

    def _request_stop(self, signum: int) -> None:
        self._stop = True
        if self._stop_signal is None:  # the first signal is the one the exit status reports
            self._stop_signal = int(signum)
