# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 1. Forward SDEs: how data becomes noise
#
# **What this notebook teaches.** A score-based model starts from a *forward* stochastic differential equation
# that slowly turns data into noise,
#
# $$dx = f(x, t)\,dt + g(t)\,dw, \qquad t \in [0, T].$$
#
# For the three SDEs of Song et al. (2021) — VP, sub-VP and VE — the marginal at time $t$ given a data point
# $x_0$ is Gaussian, $x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon$, so for a **Gaussian-mixture** data set every
# marginal $p_t$ is again a Gaussian mixture, known in closed form. We use that to look at samples *and* exact
# densities side by side, check the prior the process ends in, and compare what the three schedules do
# through their log signal-to-noise ratio $\lambda(t) = \log(\alpha^2/\sigma^2)$.

# %%
import os

import matplotlib.pyplot as plt
import torch

from scoresde import VESDE, VPSDE, SubVPSDE, toy_dataset
from scoresde.app.figures import plot_forward_process

QUICK = os.environ.get("SCORESDE_NOTEBOOK_QUICK") == "1"  # the test suite runs every notebook on small settings
N = 2000 if QUICK else 20000
torch.manual_seed(0)

# %% [markdown]
# ## The data: an anisotropic 8-component Gaussian mixture
# `toy_dataset("gmm")` is a 2D mixture whose weights, means and covariances are known, so its density
# $p_0(x) = \sum_k w_k\,\mathcal N(x; \mu_k, \Sigma_k)$ and its entropy are exact.

# %%
gmm = toy_dataset("gmm")
mixture = gmm.mixture
x0 = gmm.sample(N, torch.Generator().manual_seed(0), dtype=torch.float64)
print(mixture)
print(f"entropy H(p_0) = {gmm.entropy():.4f} nats")

# %% [markdown]
# ## Three forward processes
# - **VP** (variance preserving): $dx = -\tfrac12\beta(t)x\,dt + \sqrt{\beta(t)}\,dw$, with
#   $\alpha(t) = e^{-\frac12\int_0^t\beta}$ and $\sigma^2 = 1 - \alpha^2$. The continuous limit of DDPM.
# - **sub-VP**: the same drift, diffusion $\sqrt{\beta(t)(1 - e^{-2\int_0^t\beta})}$, so
#   $\sigma(t) = 1 - \alpha(t)^2$ — always below VP's.
# - **VE** (variance exploding): $dx = \sqrt{d\sigma^2/dt}\,dw$, $\alpha = 1$, $\sigma(t) = \sigma_{min}(\sigma_{max}/\sigma_{min})^t$.
#   The continuous limit of SMLD / NCSN.

# %%
sdes = {"VP": VPSDE(), "sub-VP": SubVPSDE(), "VE": VESDE(sigma_min=0.01, sigma_max=10.0)}
for name, sde in sdes.items():
    fig = plot_forward_process(sde, mixture, n=min(N, 3000))
    fig.suptitle(f"{name}: samples of $p_t$ (top) and the closed-form density (bottom)")
    plt.show()

# %% [markdown]
# ## The marginals are what the closed form says
# The perturbation kernel gives $\mathbb E[x_t] = \alpha(t)\,\mathbb E[x_0]$ and
# $\mathrm{Cov}[x_t] = \alpha^2\,\mathrm{Cov}[x_0] + \sigma^2 I$. The mixture's `marginal(sde, t)` is the exact
# $p_t$; its mean and covariance match the samples within Monte-Carlo error ($\approx$ std$/\sqrt N$).

# %%
for name, sde in sdes.items():
    t = 0.3 * sde.T
    mean, std = sde.marginal_prob(x0, torch.full((N,), t, dtype=torch.float64))
    xt = mean + std[:, None] * torch.randn_like(x0)
    exact = mixture.marginal(sde, t)
    standard_error = exact.covariance().diagonal().sqrt() / N**0.5
    z = ((xt.mean(0) - exact.mean()) / standard_error).abs().max()
    cov_err = (torch.cov(xt.T) - exact.covariance()).abs().max()
    print(f"{name:7s} t = {t:.2f}: sample mean {xt.mean(0).numpy().round(3)}, exact {exact.mean().numpy().round(3)} "
          f"({z:.1f} standard errors); max covariance error {cov_err:.3f}")

# %% [markdown]
# ## Where the process ends: the prior
# At $t = T$ the VP marginal is within $\alpha(T) \approx 6\times10^{-3}$ of $\mathcal N(0, I)$; VE's is
# $\approx \mathcal N(0, \sigma_{max}^2 I)$ when $\sigma_{max}$ dominates the data's spread. The KL divergence
# $\mathrm{KL}(p_T \,\|\, p_{prior})$ is the price of starting the reverse process from the prior; we estimate
# it by Monte Carlo with the exact $\log p_T$.

# %%
for name, sde in sdes.items():
    pT = mixture.marginal(sde, sde.T)
    z = pT.sample(N, torch.Generator().manual_seed(1), dtype=torch.float64)
    log_ratio = pT.log_prob(z) - sde.prior_logp(z)
    kl, se = float(log_ratio.mean()), float(log_ratio.std()) / N**0.5
    print(f"{name:7s} alpha(T) = {float(sde.alpha(torch.tensor(sde.T))):.4f}, sigma(T) = {float(sde.sigma(torch.tensor(sde.T))):.3f}, "
          f"KL(p_T || prior) = {kl:.1e} +- {se:.1e} nats")

# %% [markdown]
# ## What the schedules do: log-SNR against t
# The log signal-to-noise ratio $\lambda(t) = \log \alpha(t)^2 / \sigma(t)^2$ decreases from large (clean data)
# to very negative (pure noise). Samplers that step uniformly in $\lambda$ (DPM-Solver, the `log_snr` grid)
# spend their steps where the distribution changes fastest. The cosine VP schedule (Nichol & Dhariwal) keeps
# $\lambda$ roughly linear over most of $[0, T]$.

# %%
schedules = {**sdes, "VP (cosine)": VPSDE(schedule="cosine")}
fig, axes = plt.subplots(1, 3, figsize=(14, 4))
for name, sde in schedules.items():
    t = torch.linspace(1e-3, sde.T, 400, dtype=torch.float64)  # the cosine schedule ends at T < 1
    axes[0].plot(t, sde.log_snr(t), label=name)
    axes[1].plot(t, sde.alpha(t), label=name)
    axes[2].plot(t, sde.sigma(t), label=name)
for ax, label in zip(axes, [r"log-SNR $\lambda(t)$", r"signal scale $\alpha(t)$", r"noise scale $\sigma(t)$"]):
    ax.set_xlabel("t")
    ax.set_ylabel(label)
    ax.set_title(label + " against t")
    ax.legend()
axes[2].set_yscale("log")
fig.tight_layout()
plt.show()

# %% [markdown]
# **Takeaways.** All three SDEs have Gaussian perturbation kernels, so every quantity of the forward process —
# marginals, the prior mismatch, the SNR — is exact for mixture data. The next notebook learns the score
# $\nabla_x \log p_t$ of these marginals and compares it with the exact one.
