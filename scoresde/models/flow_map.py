r"""Flow maps (MeanFlow, Geng et al. 2025; Align Your Flow, Sabour, Fidler & Kreis 2025): one network with two time
inputs that carries a point from time $t$ to any earlier time $s$ along the probability-flow ODE.

Every SDE here (VP, sub-VP, VE, any schedule) perturbs as $x_t = \alpha_t x_0 + \sigma_t\epsilon$; rescaled,
$z = x/(\alpha_t + \sigma_t)$ at the time $\tau = \sigma_t/(\alpha_t + \sigma_t) \in (0, 1)$, it is the
rectified-flow path $z_\tau = (1 - \tau)\,x_0 + \tau\,\epsilon$ whose probability-flow ODE is

$$\frac{dz}{d\tau} = v(z, \tau) = \mathbb E[\epsilon - x_0 \mid z_\tau].$$

The flow map is parameterised by its average velocity $u_\theta$ over $[\tau_s, \tau_t]$ (MeanFlow's variable):

$$\Phi_\theta(x, t, s) = (\alpha_s + \sigma_s)\big[z + (\tau_s - \tau_t)\,u_\theta(z, \tau_t, \tau_s)\big],
\qquad z = \frac{x}{\alpha_t + \sigma_t},$$

so that $\Phi_\theta(x, t, t) = x$ exactly. The exact average velocity is
$u(z, \tau_t, \tau_s) = \frac{1}{\tau_s - \tau_t}\int_{\tau_t}^{\tau_s} v\,d\tau$, of order one at every pair of times
(in $\tilde\sigma = \sigma/\alpha$, the variable of EDM, VP's prior end sits at $\tilde\sigma \approx 150$ and the
data's part of a jump from it is $1/150$ of the network's output; here it is of order one). On the diagonal it is
the velocity itself, and $\hat\epsilon = z + (1 - \tau)\,v$: called as ``model(x, t)`` a flow map returns that
$\hat\epsilon$ and declares output ``eps``, so the seam's one converter makes it a score and every sampler and
`scoresde.log_likelihood` take it (one network samples in one step and has an exact likelihood).
``model.map(x, t, s)`` is the map itself (sampler ``flow_map``, declared by ``flow_map`` on the seam).

The network sees $c_{in} z$ with $c_{in} = 1/\sqrt{(1 - \tau)^2\sigma_{data}^2 + \tau^2}$ (unit variance at every
time), and the times $\tau_t$, $\tau_s$ (``net(c_in z, tau_t, s=tau_s)``, a network built with ``two_times``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import check_positive, expand_to
from ..processes.base import SDE, check_sde
from ..processes.seam import ModelSpec
from .network import unwrapped

__all__ = ["FlowMapModel", "rectified_time", "time_of_rectified"]


def rectified_time(sde: SDE, t: Tensor) -> Tensor:
    r"""$\tau(t) = \sigma_t/(\alpha_t + \sigma_t)$: the time of the rectified-flow path $z_\tau = (1 - \tau)x_0 +
    \tau\epsilon$ that $z = x/(\alpha_t + \sigma_t)$ follows."""
    return _rectified(sde, t)[1]


def _rectified(sde: SDE, t: Tensor) -> tuple[Tensor, Tensor]:
    r"""$(\alpha_t + \sigma_t,\ \tau(t))$ from one evaluation of the schedule: the scale $x = (\alpha + \sigma)z$
    and the rectified-flow time."""
    sigma = sde.sigma(t)
    scale = sde.alpha(t) + sigma
    return scale, sigma / scale


def time_of_rectified(sde: SDE, tau: Tensor) -> Tensor:
    r"""The SDE's time $t$ of rectified-flow time $\tau$ (`rectified_time` inverted through the log-SNR
    $\lambda = 2\log((1 - \tau)/\tau)$)."""
    return sde.t_from_log_snr(2 * (torch.log1p(-tau) - torch.log(tau)))


class FlowMapModel(nn.Module):
    r"""The flow map $\Phi_\theta(x, t, s)$ of a two-time network ``net(x, tau_t, s=tau_s)`` (module docstring).
    ``sigma_data``: the data's standard deviation in the model's range (EDM's 0.5 for images in [-1, 1])."""

    spec = ModelSpec(output="eps", flow_map=True)

    def __init__(self, net: nn.Module, sde: SDE, sigma_data: float = 0.5) -> None:
        super().__init__()
        check_sde(sde)
        if not getattr(unwrapped(net), "two_times", False):
            raise ValueError(
                f"a flow map needs a network with two time inputs; this {type(unwrapped(net)).__name__} has one: set "
                f"model.kwargs.two_times: true"
            )
        self.net, self.sde = net, sde
        self.sigma_data = check_positive("sigma_data", sigma_data)

    def average_velocity(self, z: Tensor, tau_t: Tensor, tau_s: Tensor) -> Tensor:
        r"""$u_\theta(z, \tau_t, \tau_s)$: the average of $dz/d\tau$ over $[\tau_s, \tau_t]$ at the rescaled point
        ``z`` $= x/(\alpha_t + \sigma_t)$, in rectified-flow times (shaped like ``z``)."""
        c_in = torch.rsqrt((1 - tau_t) ** 2 * self.sigma_data**2 + tau_t**2)
        return self.net(expand_to(c_in, z) * z, tau_t, s=tau_s).to(z.dtype)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        r"""The diagonal as $\hat\epsilon(x, t) = z + (1 - \tau)\,u_\theta(z, \tau, \tau)$ (declared output
        ``eps``)."""
        scale, tau = _rectified(self.sde, t)
        z = x / expand_to(scale, x)
        return z + expand_to(1 - tau, x) * self.average_velocity(z, tau, tau)

    def map(self, x: Tensor, t: Tensor, s: Tensor) -> Tensor:
        r"""$\Phi_\theta(x, t, s) = (\alpha_s + \sigma_s)[z + (\tau_s - \tau_t)\,u_\theta(z, \tau_t, \tau_s)]$ with
        $z = x/(\alpha_t + \sigma_t)$: ``x`` at time ``t`` carried to time ``s <= t`` (``[B]`` each) in one
        evaluation."""
        if bool((s > t).any()):
            raise ValueError("a flow map carries x from t to an earlier time s <= t (the probability-flow ODE's "
                             "direction of sampling); got s > t")  # fmt: skip
        (scale_t, tau_t), (scale_s, tau_s) = _rectified(self.sde, t), _rectified(self.sde, s)
        u = self.average_velocity(x / expand_to(scale_t, x), tau_t, tau_s)
        return expand_to(scale_s / scale_t, x) * x + expand_to(scale_s * (tau_s - tau_t), x) * u  # x at s = t
