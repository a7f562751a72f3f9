r"""Flow-map objectives on every SDE's Gaussian path: the Lagrangian identity (Align Your Flow's LMD, Sabour, Fidler &
Kreis 2025; from data, Boffi, Albergo & Vanden-Eijnden's Lagrangian self-distillation 2025) and MeanFlow's Eulerian
identity (Geng, Deng, Bai, Kolter & He 2025).

In rectified-flow time $\tau = \sigma/(\alpha + \sigma)$ and $z = x/(\alpha + \sigma)$ every forward process is
$z_\tau = (1 - \tau)x_0 + \tau\epsilon$ (`scoresde.models.FlowMapModel`), and the map from $\tau_t$ to $\tau_r$ is
$\Phi(z, \tau_t, \tau_r) = z + (\tau_r - \tau_t)\,u(z, \tau_t, \tau_r)$ with $u$ the average velocity. Two
identities characterise the exact map:

- **Lagrangian** (``identity="lagrangian"``, the default): the end point moves with the velocity found there,
  $\partial_{\tau_r}\Phi = v(\Phi, \tau_r)$, i.e.

  $$u = v\big(\Phi(z, \tau_t, \tau_r), \tau_r\big) - (\tau_r - \tau_t)\,\partial_{\tau_r}u,$$

  one forward-mode JVP in $\tau_r$ alone;
- **Eulerian** (``identity="eulerian"``, MeanFlow): the map is constant along the trajectory of its start,

  $$u = v(z_t, \tau_t) - (\tau_t - \tau_r)\,\frac{d}{d\tau_t}u, \qquad \frac{d}{d\tau_t}u = v\cdot\partial_z u +
  \partial_{\tau_t}u,$$

  one JVP (`torch.func.jvp`) with tangent $(v, 1)$ in $(z, \tau_t)$.

The loss regresses $u_\theta$ on the right-hand side under a stop-gradient, per sample
$\Delta^2 = \operatorname{mean}_d (u_\theta - \mathrm{sg}(u_{tgt}))^2$, optionally weighted as MeanFlow does,
$\mathrm{sg}\big((\Delta^2 + c)^{-p}\big)\,\Delta^2$ (its $p = 1$, $c = 10^{-3}$; default $p = 0$). The velocity:

- **from a teacher** (``flow_map``): its probability-flow velocity $v = \hat\epsilon - \hat x_0$
  ($\hat\epsilon = -\sigma s_{teacher}$, $\hat x_0 = (x - \sigma\hat\epsilon)/\alpha$), where the identity needs it
  (the end point $\Phi_\theta$ for the Lagrangian one, $z_t$ for the Eulerian one); the loss vanishes at the
  teacher's own flow map;
- **from data** (``flow_map_training``): on the diagonal draws ($\tau_r = \tau_t$) the path's conditional velocity
  $\epsilon - x_0$ (whose regression's minimiser is the true velocity, $\mathbb E[\epsilon - x_0 \mid z_\tau]$);
  off it, the Lagrangian identity takes the map's own diagonal (no gradient) as the teacher at the end point,
  the Eulerian one the conditional velocity at the start (MeanFlow).

Measured on the gmm oracle (VP, 2,000 steps; scratch runs at 4,000 samples, 2 seeds, tabled in
docs/concepts/distillation.md): from the exact score, the Lagrangian
identity with uniform times and $p = 0$ reaches 1.5x / 1.3x the energy distance's floor at 1 / 2 NFE, the Eulerian
one 3.5x / 2.9x, and with MeanFlow's own choices (logit-normal times, $p = 1$) 340x / 54x: with an exact
(noise-free) velocity the adaptive weight only slows the far pairs' bootstrapping, and logit-normal draws rarely
pair a noisy start with a clean end.

Times: $(\tau_t, \tau_r)$ two independent draws sorted ($\tau_r \le \tau_t$), of which a fraction ``1 - ratio`` get
$\tau_r = \tau_t$ (velocity matching on the diagonal: MeanFlow's 75 %), in the SDE's range
$[\tau(t_{min}), \tau(T)]$: ``uniform`` in $\tau$ (the default) or MeanFlow's ``logit_normal``
($\operatorname{logit}\tau \sim \mathcal N(\mu, s^2)$, truncated; $-0.4$, $1.0$).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_in_registry, expand_to
from ..models.flow_map import FlowMapModel, rectified_time, time_of_rectified
from ..processes.base import SDE
from ..processes.score import ScoreFn
from ..processes.seam import sigma_score

__all__ = ["TIME_SAMPLINGS", "IDENTITIES", "flow_map_times", "flow_map_loss", "teacher_velocity", "checked_jvp"]

TIME_SAMPLINGS = ("logit_normal", "uniform")
IDENTITIES = ("eulerian", "lagrangian")


def flow_map_times(
    sde: SDE,
    n: int,
    generator: torch.Generator,
    *,
    t_min: float,
    ratio: float,
    sampling: str = "uniform",
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
    sampling: str = "uniform",
    mean: float = -0.4,
    std: float = 1.0,
    adaptive_p: float = 0.0,
    adaptive_c: float = 1e-3,
    identity: str = "lagrangian",
) -> Tensor:
    r"""Per-sample flow-map loss ``[B]`` (module docstring): the ``identity``'s regression $\Delta^2$ from data
    (``teacher=None``) or from a teacher's score, weighted by $\mathrm{sg}((\Delta^2 + c)^{-p})$ (``adaptive_p = 0``,
    the default: plain squares)."""
    check_in_registry("flow-map identity", identity, IDENTITIES, "identity")
    tau_t, tau_r = flow_map_times(sde, x0.shape[0], generator, t_min=t_min, ratio=ratio, sampling=sampling,
                                  mean=mean, std=std, dtype=x0.dtype, device=x0.device)  # fmt: skip
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device).to(x0.device)
    z = expand_to(1 - tau_t, x0) * x0 + expand_to(tau_t, x0) * eps
    path_velocity = eps - x0  # the Gaussian path's conditional velocity dz/dtau
    targets = _lagrangian if identity == "lagrangian" else _eulerian
    u, target = targets(model, sde, teacher, z, tau_t, tau_r, path_velocity)
    square = (u - target.detach()).pow(2).flatten(1).mean(1)
    if adaptive_p == 0:
        return square
    return square / (square.detach() + adaptive_c) ** adaptive_p


def _lagrangian(model, sde, teacher, z, tau_t, tau_r, path_velocity) -> tuple[Tensor, Tensor]:
    r"""$u_\theta$ and $v(\Phi_\theta, \tau_r) - (\tau_r - \tau_t)\,\partial_{\tau_r}u_\theta$ (a JVP in
    $\tau_r$); the velocity at the end point from the teacher, or from data the map's own diagonal there (the
    path's velocity on the diagonal draws, where the end point is the start)."""
    u, du = checked_jvp(model, lambda tau: model.average_velocity(z, tau_t, tau), (tau_r,),
                        (torch.ones_like(tau_r),))  # fmt: skip
    with torch.no_grad():
        end = z + expand_to(tau_r - tau_t, z) * u
        if teacher is not None:
            v_end = teacher_velocity(sde, teacher, end, tau_r)
        else:
            v_end = torch.where(expand_to(tau_r == tau_t, z), path_velocity, model.average_velocity(end, tau_r, tau_r))
    return u, v_end - expand_to(tau_r - tau_t, u) * du


def _eulerian(model, sde, teacher, z, tau_t, tau_r, path_velocity) -> tuple[Tensor, Tensor]:
    r"""$u_\theta$ and MeanFlow's $v(z, \tau_t) - (\tau_t - \tau_r)\,du_\theta/d\tau_t$ (a JVP with tangent
    $(v, 1)$ in $(z, \tau_t)$); $v$ the teacher's, or from data the path's conditional velocity."""
    if teacher is None:
        v = path_velocity
    else:
        with torch.no_grad():
            v = teacher_velocity(sde, teacher, z, tau_t)
    u, du = checked_jvp(model, lambda z, tau: model.average_velocity(z, tau, tau_r), (z, tau_t),
                        (v, torch.ones_like(tau_t)))  # fmt: skip
    return u, v - expand_to(tau_t - tau_r, u) * du


def teacher_velocity(sde: SDE, teacher: ScoreFn, z: Tensor, tau: Tensor) -> Tensor:
    r"""The teacher's probability-flow velocity in rectified-flow variables, $v = \hat\epsilon - \hat x_0$ at
    $x = (\alpha_t + \sigma_t)z$, $t = t(\tau)$ ($\hat\epsilon = -\sigma s_{teacher}$, $\hat x_0 = (x -
    \sigma\hat\epsilon)/\alpha$)."""
    t = time_of_rectified(sde, tau.double()).to(z.dtype)
    alpha, sigma = expand_to(sde.alpha(t), z), expand_to(sde.sigma(t), z)
    x = (alpha + sigma) * z
    eps_hat = -sigma_score(sde, teacher, x, t).to(z.dtype)
    return eps_hat - (x - sigma * eps_hat) / alpha


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
