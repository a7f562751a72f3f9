r"""Post-hoc EMA (Karras et al. 2024, EDM2 §3): power-function averages of the weights tracked during training,
stored as snapshots, and any other EMA length reconstructed from them afterwards by a least-squares solve.

A power-function profile of exponent $\gamma$ averages the weights $\theta_1, \dots, \theta_t$ of the first $t$
optimiser steps with weights growing as $k^\gamma$:

$$\hat\theta_\gamma(t) = \frac{\sum_{k=1}^{t} k^\gamma\,\theta_k}{S_\gamma(t)},\qquad S_\gamma(t) = \sum_{k=1}^t
k^\gamma,$$

tracked exactly by $\hat\theta_\gamma(t) = \hat\theta_\gamma(t-1) + \tfrac{t^\gamma}{S_\gamma(t)}(\theta_t -
\hat\theta_\gamma(t-1))$ (EDM2's $\beta = (1 - 1/t)^{\gamma+1}$ is this in the limit of many steps). Its length is
said by the relative standard deviation of the continuous profile $p(\tau) \propto \tau^\gamma$ on $[0, t]$,
$\sigma_{rel} = \sqrt{(\gamma+1)/((\gamma+2)^2(\gamma+3))}$ (EDM2 eq. 3): 0.05 and 0.10 are EDM2's two tracked
profiles.

Each snapshot $i$ (profile $\gamma_i$ at step $t_i$) is a known weighting $w_i(k) = k^{\gamma_i}\,
[k \le t_i] / S_{\gamma_i}(t_i)$ of the same sequence $\theta_k$. A target profile $w_r$ (any $\sigma_{rel}$, at any
step $t_r$ up to the last snapshot) is reconstructed as $\sum_i x_i \hat\theta_i$ with $x$ minimising
$\|\sum_i x_i w_i - w_r\|_2$: the normal equations $G x = b$ with $G_{ij} = \langle w_i, w_j\rangle$,
$b_i = \langle w_i, w_r\rangle$, whose entries are sums of powers $\sum_{k \le m} k^{s}$ computed exactly, in
logarithms, for the discrete profiles that were tracked (EDM2 uses the continuous approximation). The relative
residual $\|Wx - w_r\| / \|w_r\|$ is reported with every reconstruction.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .._io import write_atomic

__all__ = [
    "sigma_rel_to_gamma",
    "gamma_to_sigma_rel",
    "PowerEMA",
    "Snapshot",
    "EMAReconstruction",
    "posthoc_coefficients",
    "read_snapshots",
    "reconstruct_ema",
    "SNAPSHOTS",
    "reconstructed_model",
    "check_ema_target",
    "save_reconstruction",
]

SNAPSHOTS = "ema"
"""The run folder's sub-folder of post-hoc EMA snapshots (``ema/step-<step>.safetensors``)."""
MAX_SIGMA_REL = math.sqrt(1 / 12)
r"""$\sigma_{rel}$ of the uniform average ($\gamma = 0$); shorter profiles have $\gamma > 0$."""


def gamma_to_sigma_rel(gamma: float) -> float:
    r"""$\sigma_{rel} = \sqrt{(\gamma+1)/((\gamma+2)^2(\gamma+3))}$: the relative standard deviation of the profile
    $p(\tau) \propto \tau^\gamma$ on $[0, t]$."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    r"""The exponent $\gamma \ge 0$ of the profile of relative standard deviation ``sigma_rel`` in
    $(0, 1/\sqrt{12}]$: the largest real root of $\gamma^3 + 7\gamma^2 + (16 - \sigma^{-2})\gamma + 12 -
    \sigma^{-2} = 0$ (`gamma_to_sigma_rel` inverted)."""
    if not 0 < sigma_rel <= MAX_SIGMA_REL + 1e-12:
        raise ValueError(f"sigma_rel must lie in (0, {MAX_SIGMA_REL:.4f}] (the uniform average), got {sigma_rel!r}")
    inv = sigma_rel**-2
    roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


class PowerEMA:
    r"""The power-function averages $\hat\theta_\gamma(t)$ of a model's floating-point parameters and buffers for
    each tracked $\sigma_{rel}$ (module docstring), in float32 whatever the model's dtype; `update` after every
    optimiser step. Its state (averages, step count) is part of the checkpoint, so resume is exact."""

    def __init__(self, model: nn.Module, sigma_rels: list[float]) -> None:
        self.sigma_rels = [float(s) for s in sigma_rels]
        self.gammas = [sigma_rel_to_gamma(s) for s in self.sigma_rels]
        self.names = [n for n, v in model.state_dict().items() if v.is_floating_point()]
        self.averages = [[v.detach().float().clone() for v in self._values(model)] for _ in self.gammas]
        self.t = 0

    def _values(self, model: nn.Module) -> list[Tensor]:
        state = model.state_dict()
        return [state[n] for n in self.names]

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        r"""Fold in the weights after one more step: $\hat\theta \leftarrow \hat\theta + \frac{t^\gamma}{S_\gamma(t)}
        (\theta_t - \hat\theta)$; the fraction is computed in float64 as $1 / \sum_{k \le t} (k/t)^\gamma$."""
        self.t += 1
        values = [v.detach().float() for v in self._values(model)]
        k = np.arange(1, self.t + 1, dtype=np.float64) / self.t
        for gamma, average in zip(self.gammas, self.averages):
            weight = 1.0 / float(np.sum(k**gamma))
            torch._foreach_lerp_(average, values, weight)

    def profile(self, index: int) -> dict[str, Tensor]:
        """The average of profile ``index`` as a state dict (float32)."""
        return dict(zip(self.names, self.averages[index]))

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors for the checkpoint: ``<sigma_rel>.<name>`` per profile and ``t`` (the number of steps folded
        in)."""
        out = {f"{s!r}.{n}": v for s, avg in zip(self.sigma_rels, self.averages) for n, v in zip(self.names, avg)}
        out["t"] = torch.tensor(self.t, dtype=torch.int64)
        return out

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore `state_dict` (a ``KeyError`` names a missing tensor)."""
        self.t = int(state["t"])
        for s, average in zip(self.sigma_rels, self.averages):
            for i, n in enumerate(self.names):
                average[i].copy_(state[f"{s!r}.{n}"])

    def save_snapshot(self, folder: Path, step: int) -> Path:
        """Write every profile's average at ``step`` to ``folder/ema/step-<step>.safetensors``, atomically."""
        from safetensors.torch import save

        tensors = {f"{s!r}.{n}": v.contiguous().cpu() for s, avg in zip(self.sigma_rels, self.averages)
                   for n, v in zip(self.names, avg)}  # fmt: skip
        metadata = {"format": "scoresde-posthoc-ema-1", "step": str(step), "t": str(self.t),
                    "sigma_rels": json.dumps(self.sigma_rels)}  # fmt: skip
        path = Path(folder) / SNAPSHOTS / f"step-{step:09d}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, save(tensors, metadata=metadata))


@dataclass(frozen=True)
class Snapshot:
    """One stored average: profile ``sigma_rel`` (exponent ``gamma``) after ``t`` steps, in ``path``."""

    path: Path
    t: int
    sigma_rel: float
    gamma: float


def read_snapshots(folder: str | Path) -> list[Snapshot]:
    """The snapshots of a run folder (``ema/``), ordered by step then profile; a one-line ``ValueError`` when the
    run tracked none (``train.ema_profiles``) or a file is unreadable."""
    from safetensors import safe_open

    files = sorted((Path(folder) / SNAPSHOTS).glob("step-*.safetensors"))
    if not files:
        raise ValueError(
            f"{folder} holds no post-hoc EMA snapshots ({SNAPSHOTS}/step-*.safetensors); train with "
            f"train.ema_profiles (e.g. [0.05, 0.1]) to track them"
        )
    out = []
    for path in files:
        try:
            with safe_open(str(path), framework="pt") as fh:
                meta = fh.metadata() or {}
            t, sigma_rels = int(meta["t"]), json.loads(meta["sigma_rels"])
        except Exception as exc:  # safetensors' own error types, missing or corrupt metadata
            raise ValueError(f"{path} is not a readable post-hoc EMA snapshot ({type(exc).__name__}: {exc})") from None
        out.extend(Snapshot(path, t, float(s), sigma_rel_to_gamma(float(s))) for s in sigma_rels)
    return out


def _log_power_sums(exponents: set[float], n_max: int) -> dict[float, np.ndarray]:
    r"""For each exponent $s$: $\log \sum_{k=1}^{m} k^{s}$ for $m = 1..n$ (index $m - 1$), by a cumulative
    log-sum-exp (no overflow at any $s$ or $n$)."""
    log_k = np.log(np.arange(1, n_max + 1, dtype=np.float64))
    return {s: np.logaddexp.accumulate(s * log_k) for s in exponents}


def posthoc_coefficients(
    snapshots: list[tuple[int, float]], target_t: int, target_gamma: float
) -> tuple[np.ndarray, float]:
    r"""The least-squares coefficients $x$ of `snapshots` ``[(t_i, gamma_i)]`` whose combination of weightings is
    nearest the target profile (``target_t``, ``target_gamma``), and the relative residual
    $\|\sum_i x_i w_i - w_r\| / \|w_r\|$ (module docstring). The Gram matrix is solved by a least-squares solve with
    a relative cutoff of 1e-12 (near-duplicate snapshots make it singular)."""
    import scipy.linalg

    t = np.array([p[0] for p in snapshots] + [target_t], dtype=np.int64)
    g = np.array([p[1] for p in snapshots] + [target_gamma], dtype=np.float64)
    pair_exp, pair_end = g[:, None] + g[None, :], np.minimum(t[:, None], t[None, :])
    sums = _log_power_sums(set(pair_exp.ravel().tolist()) | set(g.tolist()), int(t.max()))
    log_norm = np.array([sums[gi][ti - 1] for ti, gi in zip(t.tolist(), g.tolist())])  # log S_gamma(t)
    log_inner = np.empty_like(pair_exp)
    for exponent, cumulative in sums.items():  # a few distinct exponents: one gather each
        mask = pair_exp == exponent
        log_inner[mask] = cumulative[pair_end[mask] - 1]
    inner = np.exp(log_inner - log_norm[:, None] - log_norm[None, :])
    n = len(snapshots)
    gram, rhs, target_sq = inner[:n, :n], inner[:n, n], float(inner[n, n])
    x = scipy.linalg.lstsq(gram, rhs, cond=1e-12)[0]
    residual_sq = max(target_sq - 2 * float(x @ rhs) + float(x @ gram @ x), 0.0)
    return x, math.sqrt(residual_sq / target_sq)


@dataclass
class EMAReconstruction:
    """A reconstructed EMA: its ``state`` (a float32 state dict), the target ``sigma_rel`` and step ``t``, the
    snapshots used with their ``coefficients``, and the relative ``residual`` of the profile fit."""

    state: dict[str, Tensor]
    sigma_rel: float
    t: int
    coefficients: list[float]
    snapshots: list[Snapshot]
    residual: float

    def to_dict(self) -> dict:
        return {
            "sigma_rel": self.sigma_rel,
            "t": self.t,
            "residual": self.residual,
            "snapshots": [
                {"path": str(s.path), "t": s.t, "sigma_rel": s.sigma_rel, "coefficient": c}
                for s, c in zip(self.snapshots, self.coefficients)
            ],
        }


def check_ema_target(snapshots: list[Snapshot], sigma_rel: float, t: int | None, folder: str | Path) -> int:
    """The step of a reconstruction target (``t``, default the last snapshot's), checked against the ``snapshots``
    of the run in ``folder``: a length outside the tracked profiles' range or a step outside the snapshots' raises
    one ``ValueError`` naming what was tracked."""
    tracked = sorted({s.sigma_rel for s in snapshots})
    last = max(s.t for s in snapshots)
    real = isinstance(sigma_rel, (int, float)) and not isinstance(sigma_rel, bool)
    if not (real and tracked[0] - 1e-12 <= sigma_rel <= tracked[-1] + 1e-12):
        raise ValueError(
            f"sigma_rel {sigma_rel!r} lies outside the tracked EMA lengths [{tracked[0]:g}, {tracked[-1]:g}] of "
            f"{folder}; choose one between them (or train with a wider train.ema_profiles)"
        )
    t = last if t is None else int(t)
    if not 1 <= t <= last:
        raise ValueError(f"step {t} is not in the snapshots' range [1, {last}] of {folder}; choose one within it")
    return t


def reconstruct_ema(folder: str | Path, sigma_rel: float, t: int | None = None) -> EMAReconstruction:
    r"""The EMA of relative standard deviation ``sigma_rel`` at step ``t`` (default: the last snapshot's) of the run
    in ``folder``, reconstructed from its snapshots (`posthoc_coefficients`). A length outside the tracked
    profiles' range or a step after the last snapshot raises one ``ValueError`` naming what was tracked."""
    from safetensors import safe_open

    snapshots = read_snapshots(folder)
    t = check_ema_target(snapshots, sigma_rel, t, folder)
    used = [s for s in snapshots if s.t <= t]
    x, residual = posthoc_coefficients([(s.t, s.gamma) for s in used], t, sigma_rel_to_gamma(sigma_rel))
    state: dict[str, Tensor] = {}
    for snap, coef in zip(used, x):
        prefix = f"{snap.sigma_rel!r}."
        with safe_open(str(snap.path), framework="pt") as fh:
            for key in fh.keys():
                if key.startswith(prefix):
                    name = key[len(prefix) :]
                    value = fh.get_tensor(key).to(torch.float64) * float(coef)
                    state[name] = state[name] + value if name in state else value
    return EMAReconstruction(
        {k: v.float() for k, v in state.items()}, float(sigma_rel), t, [float(c) for c in x], used, residual
    )


def _network_with(folder: str | Path, rec: EMAReconstruction, device: torch.device | str) -> tuple[nn.Module, Any]:
    """The run's model built from its checkpoint's config, holding the reconstructed weights ``rec.state`` (the
    floating-point tensors the profiles track; any other buffer keeps the built network's value), and the config."""
    from .checkpoint import load_checkpoint, load_weights
    from .runs import build_model

    config = load_checkpoint(folder, device)["config"]
    model = build_model(config, config.sde.build(), device)
    full = model.state_dict()
    full.update({k: v.to(device=device, dtype=full[k].dtype) for k, v in rec.state.items()})  # summed in float64
    load_weights(model, full, folder, f"post-hoc EMA (sigma_rel {rec.sigma_rel:g})")
    return model, config


def reconstructed_model(folder: str | Path, rec: EMAReconstruction, device: torch.device | str = "cpu") -> Any:
    """The run's model (as `scoresde.training.runs.load_score_model` loads it: the kind's wrapper, eval mode) with
    the reconstructed EMA weights ``rec.state``."""
    from .kinds import run_kind

    model, config = _network_with(folder, rec, device)
    return run_kind(config).loaded(model.eval(), config, Path(folder), device)


def save_reconstruction(folder: str | Path, rec: EMAReconstruction, path: str | Path) -> Path:
    """Write the reconstructed EMA as a checkpoint file at ``path`` (model and EMA weights both the reconstruction,
    no optimiser state: it samples and evaluates like the run, ``scoresde sample --checkpoint PATH``, and cannot be
    resumed), atomically."""
    from .checkpoint import save_checkpoint

    model, config = _network_with(folder, rec, "cpu")
    optimizer = torch.optim.AdamW(model.parameters())
    return save_checkpoint(path, model, copy.deepcopy(model), optimizer, rec.t, config)
