"""The optimisation section of a run config: `TrainConfig`."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from .fields import check_types, require

__all__ = ["TrainConfig", "LR_SCHEDULES", "WEIGHTINGS", "PRECISIONS", "OPTIMIZER_IMPLS"]

LR_SCHEDULES = ("constant", "cosine")
WEIGHTINGS = ("sigma2", "likelihood", "eps")
PRECISIONS = ("fp32", "bf16", "fp16")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: AdamW with linear warm-up then a constant or cosine (to 0 at ``steps``) learning rate,
    gradient clipping, EMA; DSM loss settings; logging cadence."""

    steps: int = 10_000
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 200
    lr_schedule: str = "constant"
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    weighting: str = "sigma2"
    importance_sampling: bool = False
    n_steps: int | None = None
    t_min: float | None = None
    """Smallest time of the DSM loss (default: the SDE's ``sampling_t_min``); ``eps`` in configs before 0.2."""
    seed: int = 0
    log_every: int = 50
    checkpoint_every: int = 1000
    eval_every: int = 0
    label_dropout: float = 0.0
    """Class-conditional models: probability of training a sample with the null label (classifier-free guidance)."""
    vlb_weight: float = 0.001
    """Models with a learned variance: lambda of the hybrid loss L_simple + lambda L_vlb (Improved DDPM's 0.001)."""
    vlb_importance_sampling: bool = False
    """Models with a learned variance: draw the chain's steps by importance
    (`scoresde.training.losses.VLBTimeSampler`)."""
    kl_weight: float = 0.001
    """Autoencoders: beta of the objective's [-log p(x|z) + beta KL(q(z|x) || N(0, I))] (1: the ELBO)."""
    feature_weight: float = 0.0
    """Autoencoders: weight of the feature-matching term with the data set's shipped feature network (0: off)."""
    precision: str = "fp32"
    """The network's arithmetic in training: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 with a gradient scaler).
    The loss, the EMA, the optimiser state and the master weights stay fp32."""
    compile: bool = False
    """Compile the network with ``torch.compile`` (a one-line warning and eager mode where it cannot compile)."""
    channels_last: bool | None = None
    """U-Nets in the channels-last memory layout; null: the measured default of the device
    (`scoresde.training.speed.DEVICE_DEFAULTS`)."""
    optimizer_impl: str = "auto"
    """AdamW's implementation: ``fused``, ``foreach``, ``loop`` or ``auto`` (the measured default of the device)."""
    accumulate: int = 1
    """Micro-batches per optimiser step: ``batch_size / accumulate`` rows each, their gradients summed into the one
    of the whole batch (it must divide the batch of each process)."""
    tf32: bool = True
    """CUDA: TF32 tensor cores for float32 matmuls and convolutions (no effect elsewhere)."""
    num_workers: int = 0
    """Image sets: DataLoader worker processes gathering the next batches (0: in the training process)."""
    pin_memory: bool | None = None
    """Image sets: page-locked batches copied to the GPU without blocking; null: on for CUDA."""
    ema_profiles: list = field(default_factory=list)
    """Post-hoc EMA (EDM2): the relative standard deviations sigma_rel of the power-function EMA profiles tracked
    during training (e.g. [0.05, 0.10]; empty: off). ``scoresde ema`` reconstructs any length between them."""
    ema_snapshot_every: int = 0
    """Post-hoc EMA: store the profiles every this many steps (0: at every checkpoint)."""
    eval_batch: int = 64
    """Evaluation while training (``eval_every``): held-out rows whose bits/dim (or NLL) is logged."""
    eval_samples: int = 256
    """Evaluation while training: samples drawn for the quality figure (FD / KID, or energy distance for toys)."""
    eval_nfe: int = 32
    """Evaluation while training: the step budget of its sampler and of its likelihood solve (it never stalls a
    run)."""

    def __post_init__(self) -> None:
        check_types(self, "train")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            require(isinstance(value, int) and value > 0, f"train.{name}", f"must be a positive integer, got {value!r}")
        for name in ("accumulate", "eval_batch", "eval_samples", "eval_nfe"):
            value = getattr(self, name)
            require(value > 0, f"train.{name}", f"must be a positive integer, got {value!r}")
        require(
            self.batch_size % self.accumulate == 0,
            "train.accumulate",
            f"{self.accumulate} micro-batches do not divide train.batch_size {self.batch_size}: choose a divisor",
        )
        require(
            self.precision in PRECISIONS,
            "train.precision",
            f"{self.precision!r} is not one of {', '.join(PRECISIONS)}",
        )
        require(
            self.optimizer_impl in OPTIMIZER_IMPLS,
            "train.optimizer_impl",
            f"{self.optimizer_impl!r} is not one of {', '.join(OPTIMIZER_IMPLS)}",
        )
        profiles = self.ema_profiles
        require(
            isinstance(profiles, (list, tuple))
            and all(isinstance(s, (int, float)) and not isinstance(s, bool) and 0 < s < 0.2887 for s in profiles)
            and len(set(profiles)) == len(profiles),
            "train.ema_profiles",
            f"must be a list of distinct relative standard deviations in (0, 0.2887) (e.g. [0.05, 0.1]), got "
            f"{profiles!r}",
        )
        object.__setattr__(self, "ema_profiles", sorted(float(s) for s in profiles))
        for name in (
            "warmup",
            "log_every",
            "checkpoint_every",
            "eval_every",
            "seed",
            "num_workers",
            "ema_snapshot_every",
        ):
            value = getattr(self, name)
            require(
                isinstance(value, int) and value >= 0, f"train.{name}", f"must be a non-negative integer, got {value!r}"
            )
        require(
            isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0,
            "train.lr",
            f"must be a positive number, got {self.lr!r}",
        )
        require(
            self.lr_schedule in LR_SCHEDULES,
            "train.lr_schedule",
            f"{self.lr_schedule!r} is not one of {', '.join(LR_SCHEDULES)}",
        )
        require(self.weight_decay >= 0, "train.weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        require(self.grad_clip >= 0, "train.grad_clip", f"must be >= 0 (0 disables clipping), got {self.grad_clip!r}")
        require(0 <= self.ema_decay < 1, "train.ema_decay", f"must lie in [0, 1), got {self.ema_decay!r}")
        require(
            self.weighting in WEIGHTINGS, "train.weighting", f"{self.weighting!r} is not one of {', '.join(WEIGHTINGS)}"
        )
        require(
            self.n_steps is None or (isinstance(self.n_steps, int) and self.n_steps > 1),
            "train.n_steps",
            f"must be null (continuous time) or an integer > 1, got {self.n_steps!r}",
        )
        require(self.t_min is None or self.t_min > 0, "train.t_min", f"must be null or positive, got {self.t_min!r}")
        require(
            not self.importance_sampling or self.weighting == "likelihood",
            "train.importance_sampling",
            "applies to weighting 'likelihood' only",
        )
        require(
            isinstance(self.label_dropout, (int, float)) and 0 <= self.label_dropout < 1,
            "train.label_dropout",
            f"must lie in [0, 1), got {self.label_dropout!r}",
        )
        require(self.vlb_weight >= 0, "train.vlb_weight", f"must be >= 0, got {self.vlb_weight!r}")
        require(self.kl_weight >= 0, "train.kl_weight", f"must be >= 0, got {self.kl_weight!r}")
        require(self.feature_weight >= 0, "train.feature_weight", f"must be >= 0, got {self.feature_weight!r}")
