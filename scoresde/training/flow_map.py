r"""Flow-map objectives: the MeanFlow identity (Geng, Deng, Bai, Kolter & He 2025) on every SDE's Gaussian path.

In rectified-flow time $\tau = \sigma/(\alpha + \sigma)$ and $z = x/(\alpha + \sigma)$ every forward process is
$z_\tau = (1 - \tau)x_0 + \tau\epsilon$ (`scoresde.models.FlowMapModel`). Differentiating $(\tau_r - \tau_t)\,
u(z_t, \tau_t, \tau_r) = \int_{\tau_t}^{\tau_r} v\,d\tau$ along the trajectory in $\tau_t$ gives the MeanFlow
identity

$$u(z_t, \tau_t, \tau_r) = v(z_t, \tau_t) - (\tau_t - \tau_r)\,\frac{d}{d\tau_t}u(z_t, \tau_t, \tau_r),
\qquad \frac{d}{d\tau_t}u = v\cdot\partial_z u + \partial_{\tau_t}u,$$

the total derivative one forward-mode JVP (`torch.func.jvp`) with tangent $(v, 1)$ in $(z, \tau_t)$. The loss
regresses $u_\theta$ on the right-hand side under a stop-gradient, per sample
$\Delta^2 = \operatorname{mean}_d (u_\theta - \mathrm{sg}(u_{tgt}))^2$, adaptively weighted:
$\mathrm{sg}\big((\Delta^2 + c)^{-p}\big)\,\Delta^2$ (MeanFlow's $p = 1$, $c = 10^{-3}$).

- **from data** (``flow_map_training``): $v = \epsilon - x_0$, the conditional velocity of the path
  ($\mathbb E[\epsilon - x_0 \mid z_\tau]$ is the true one, so the regression's minimiser is the exact map);
- **from a teacher** (``flow_map``): the same identity with the teacher's probability-flow velocity
  $v = \hat\epsilon - \hat x_0$ ($\hat\epsilon = -\sigma s_{teacher}$, $\hat x_0 = (x - \sigma\hat\epsilon)/\alpha$):
  lower variance, and the loss is exactly zero at the teacher's own flow map.

Times: $(\tau_t, \tau_r)$ two independent draws sorted ($\tau_r \le \tau_t$), of which a fraction ``1 - ratio`` get
$\tau_r = \tau_t$ (velocity matching on the diagonal: MeanFlow's 75 %), in the SDE's range
$[\tau(t_{min}), \tau(T)]$: MeanFlow's ``logit_normal`` ($\operatorname{logit}\tau \sim \mathcal N(\mu, s^2)$,
truncated; $-0.4$, $1.0$) or ``uniform`` in $\tau$.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import expand_to
from ..models.flow_map import FlowMapModel, rectified_time, time_of_rectified
from ..processes.base import SDE
from ..processes.score import ScoreFn
from ..processes.seam import sigma_score

__all__ = ["TIME_SAMPLINGS", "flow_map_times", "flow_map_loss", "checked_jvp"]

TIME_SAMPLINGS = ("logit_normal", "uniform")


def flow_map_times(
    sde: SDE,
    n: int,
    generator: torch.Generator,
    *,
    t_min: float,
    ratio: float,
    sampling: str = "logit_normal",
    mean: float = -0.4,
    std: float = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> tuple[Tensor, Tensor]:
    r"""``(tau_t, tau_r)`` ``[n]`` each in rectified-flow time, $\tau(t_{min}) \le \tau_r \le \tau_t \le \tau(T)$
    (module docstring): a fraction ``ratio`` with $\tau_r < \tau_t$ (two sorted draws), the others equal."""
    ends = rectified_time(sde, torch.tensor([t_min, sde.T], dtype=torch.float64))
    draw = lambda *shape: torch.rand(*shape, generator=generator, dtype=torch.float64, device=generator.device).cpu()  # noqa: E731
    if sampling == "uniform":
        tau = ends[0] + (ends[1] - ends[0]) * draw(2, n)
    else:
        lo, hi = torch.special.ndtr((torch.logit(ends) - mean) / std)
        u = (lo + (hi - lo) * draw(2, n)).clamp(1e-15, 1 - 1e-15)
        tau = torch.sigmoid(mean + std * torch.special.ndtri(u)).clamp(ends[0], ends[1])
    tau_t, tau_r = tau.max(0).values, tau.min(0).values
    tau_r = torch.where(draw(n) < ratio, tau_r, tau_t)
    return tau_t.to(device=device, dtype=dtype), tau_r.to(device=device, dtype=dtype)


def flow_map_loss(
    model: FlowMapModel,
    sde: SDE,
    x0: Tensor,
    generator: torch.Generator,
    *,
    teacher: ScoreFn | None = None,
    t_min: float = 1e-3,
    ratio: float = 0.25,
    sampling: str = "logit_normal",
    mean: float = -0.4,
    std: float = 1.0,
    adaptive_p: float = 1.0,
    adaptive_c: float = 1e-3,
) -> Tensor:
    r"""Per-sample MeanFlow loss ``[B]`` (module docstring): from data (``teacher=None``: $v = \epsilon - x_0$) or
    from a teacher's score ($v = \hat\epsilon - \hat x_0$); adaptively weighted (``adaptive_p = 0``: plain squares)."""
    tau_t, tau_r = flow_map_times(sde, x0.shape[0], generator, t_min=t_min, ratio=ratio, sampling=sampling,
                                  mean=mean, std=std, dtype=x0.dtype, device=x0.device)  # fmt: skip
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
    z = expand_to(1 - tau_t, x0) * x0 + expand_to(tau_t, x0) * eps
    if teacher is None:
        v = eps - x0
    else:
        with torch.no_grad():
            t = time_of_rectified(sde, tau_t.double()).to(x0.dtype)
            alpha, sigma = expand_to(sde.alpha(t), x0), expand_to(sde.sigma(t), x0)
            x = (alpha + sigma) * z
            eps_hat = -sigma_score(sde, teacher, x, t).to(x0.dtype)
            v = eps_hat - (x - sigma * eps_hat) / alpha
    u, du = checked_jvp(model, lambda z, tau: model.average_velocity(z, tau, tau_r), (z, tau_t),
                        (v, torch.ones_like(tau_t)))  # fmt: skip
    target = v - expand_to(tau_t - tau_r, u) * du
    square = (u - target.detach()).pow(2).flatten(1).mean(1)
    if adaptive_p == 0:
        return square
    return square / (square.detach() + adaptive_c) ** adaptive_p


def checked_jvp(model: nn.Module, fn, primals: tuple, tangents: tuple) -> tuple:
    """``torch.func.jvp(fn, primals, tangents)`` through ``model``: where an operation has no forward-mode
    derivative, the call is repeated with each layer of ``model`` watched and a one-line ``ValueError`` names the
    layer it failed in (the innermost module whose forward had begun and not ended)."""
    try:
        return torch.func.jvp(fn, primals, tangents)
    except (RuntimeError, NotImplementedError) as exc:
        failure = exc
    names = {module: name or type(model).__name__ for name, module in model.named_modules()}
    open_layers: list[str] = []

    def enter(module: nn.Module, args) -> None:
        open_layers.append(names[module])

    def leave(module: nn.Module, args, out) -> None:
        open_layers.pop()

    handles = [m.register_forward_pre_hook(enter) for m in names] + [m.register_forward_hook(leave) for m in names]
    try:
        torch.func.jvp(fn, primals, tangents)
    except (RuntimeError, NotImplementedError):
        pass
    finally:
        for handle in handles:
            handle.remove()
    if not open_layers:
        raise failure
    layer = open_layers[-1]
    kind = next(type(m).__name__ for m, n in names.items() if n == layer)
    raise ValueError(
        f"the flow-map objective differentiates the network forward (a JVP), and its layer {layer!r} ({kind}) has no "
        f"forward-mode derivative ({str(failure).splitlines()[0]}): replace that layer"
    ) from None
