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
# # 2. Denoising score matching on a 2D toy
#
# **What this notebook teaches.** The reverse of a forward SDE needs the score $\nabla_x \log p_t(x)$ of every
# marginal. We cannot compute it for real data, but *denoising score matching* (Vincent 2011) learns it from
# samples alone: for $x_t = \alpha(t) x_0 + \sigma(t)\epsilon$,
#
# $$\mathcal L(\theta) = \mathbb E_{t}\,\lambda(t)\,\mathbb E_{x_0, \epsilon}
#   \big\| s_\theta(x_t, t) + \epsilon/\sigma(t) \big\|^2 ,$$
#
# whose minimiser is the true score. On a Gaussian mixture the true score is known, so we can *see* how well
# the network learned it, and how the weighting $\lambda(t)$ changes where it is accurate.

# %%
import os

import matplotlib.pyplot as plt
import torch

from scoresde import VPSDE, ScoreMLP, ScoreModel, dsm_loss, toy_dataset
from scoresde.app.figures import plot_score_field

QUICK = os.environ.get("SCORESDE_NOTEBOOK_QUICK") == "1"  # the test suite runs every notebook on small settings
STEPS = 150 if QUICK else 3000
torch.manual_seed(0)

# %% [markdown]
# ## Data, SDE and the exact score
# `8gaussians` is a mixture of 8 isotropic Gaussians on a circle; `mixture.score_fn(sde)` is the exact
# $\nabla_x \log p_t$ for that SDE (the score of a Gaussian mixture, in closed form).

# %%
data = toy_dataset("8gaussians")
sde = VPSDE()
exact = data.mixture.score_fn(sde)

# %% [markdown]
# ## The model and one training loop per weighting
# The network predicts the noise, $\hat\epsilon_\theta(x, t)$, and `ScoreModel` turns it into a score,
# $s_\theta = -\hat\epsilon_\theta/\sigma(t)$. Three weightings of the loss (`scoresde.dsm_loss`):
#
# - `sigma2`: $\lambda(t) = \sigma(t)^2$ (Song et al. 2021) — the loss becomes $\tfrac12\|\sigma s_\theta + \epsilon\|^2
#   $= \tfrac12\|\epsilon - \hat\epsilon_\theta\|^2$. DDPM's $L_{simple}$ (`eps`: $\|\hat\epsilon_\theta - \epsilon\|^2$ averaged
#   over dimensions) is the *same* objective up to a constant factor, so we do not train it separately;
# - `likelihood`: $\lambda(t) = g(t)^2$ (Song, Durkan et al. 2021) — the ELBO weighting, which makes the loss a
#   bound on the negative log-likelihood. It is very uneven in $t$ ($g^2/\sigma^2$ blows up as $t \to 0$), so its
#   Monte-Carlo estimate is noisy; drawing $t$ uniformly in the log-SNR and reweighting (*importance sampling*)
#   keeps the expectation and removes most of the variance. We train it both ways.

# %%
def train(weighting: str, importance_sampling: bool = False, steps: int = STEPS, seed: int = 0) -> ScoreModel:
    """A small MLP trained with Adam on fresh batches of 512 points."""
    torch.manual_seed(seed)
    model = ScoreModel(ScoreMLP(dim=2, width=128, depth=3), sde, "eps")
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        x0 = data.sample(512, generator)
        loss = dsm_loss(model, sde, x0, weighting=weighting, importance_sampling=importance_sampling, generator=generator).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


RUNS = {"sigma2": ("sigma2", False), "likelihood": ("likelihood", False), "likelihood + importance sampling": ("likelihood", True)}
models = {name: train(*args) for name, args in RUNS.items()}

# %% [markdown]
# ## The learned score field against the exact one
# Arrows show $\sigma(t)\,s(x, t)$ (the negative predicted noise), over the exact density $p_t$.

# %%
fig = plot_score_field(sde, models["sigma2"], mixture=data.mixture, extent=data.extent)
plt.show()

# %% [markdown]
# ## How accurate is the score, and where?
# The error that matters for sampling is the score error *under* $p_t$,
#
# $$E(t) = \mathbb E_{x \sim p_t}\, \sigma(t)^2\,\|s_\theta(x, t) - \nabla \log p_t(x)\|^2 ,$$
#
# measured with exact samples of $p_t$ (scaled by $\sigma^2$ so that all times are comparable). Each weighting
# spends the network's capacity differently across $t$.

# %%
times = torch.linspace(0.01, 1.0, 12 if QUICK else 30)
x0 = data.sample(2000, torch.Generator().manual_seed(1))
fig, ax = plt.subplots(figsize=(6.5, 4))
for name, model in models.items():
    errors = []
    for t in times:
        tt = torch.full((len(x0),), float(t))
        mean, std = sde.marginal_prob(x0, tt)  # x_t = alpha x_0 + sigma eps: exact samples of p_t
        xt = mean + std[:, None] * torch.randn_like(x0)
        with torch.no_grad():
            err = (std**2 * (model(xt, tt) - exact(xt, tt)).pow(2).sum(1)).mean()
        errors.append(float(err))
    ax.plot(times, errors, marker="o", ms=3, label=name)
ax.set_yscale("log")
ax.set_xlabel("t")
ax.set_ylabel(r"$\mathbb{E}_{p_t}\,\sigma^2 \|s_\theta - \nabla\log p_t\|^2$")
ax.set_title(f"Score error against t ({STEPS} training steps)")
ax.legend(title="weighting")
fig.tight_layout()
plt.show()

# %% [markdown]
# ## The loss's floor
# DSM's minimum is not zero: at the true score the loss equals
# $\mathbb E\,\lambda(t)\,\big(\mathbb E\|\epsilon/\sigma\|^2 - \mathbb E_{p_t}\|\nabla\log p_t\|^2\big)$, the part of
# the noise no function of $x_t$ can predict. We compare the trained model's loss to the exact score's on the same
# draws: the difference is what training can still gain.

# %%
generator = torch.Generator().manual_seed(2)
x0 = data.sample(20000 if not QUICK else 4000, generator)
for name, model in models.items():
    kwargs = dict(weighting=RUNS[name][0], importance_sampling=RUNS[name][0] == "likelihood")  # low-variance estimate
    with torch.no_grad():
        ours = dsm_loss(model, sde, x0, generator=torch.Generator().manual_seed(3), **kwargs)
        best = dsm_loss(exact, sde, x0, generator=torch.Generator().manual_seed(3), **kwargs)
    gap = ours - best
    print(f"{name:32s}: loss {float(ours.mean()):.4f}, at the exact score {float(best.mean()):.4f}, "
          f"excess {float(gap.mean()):.4f} +- {float(gap.std()) / len(gap) ** 0.5:.4f}")

# %% [markdown]
# **Takeaways.** Denoising score matching needs only samples, yet its minimiser is the exact score. The weighting
# decides which noise levels the network fits best: $\sigma^2$ spreads the effort evenly across $t$, the
# likelihood weighting concentrates on small $t$ (where the log-likelihood is decided) — and without importance
# sampling its gradient noise can cost more than the reweighting gains. Notebook 3 samples from these scores.
