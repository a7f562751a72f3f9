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
# # 4. Likelihoods: exact NLL through the ODE, Hutchinson, the ELBO, and bits/dim
#
# **What this notebook teaches.** The probability-flow ODE $dx/dt = v(x, t)$ is an invertible map from data to
# noise, so the instantaneous change-of-variables formula gives the exact log-likelihood:
#
# $$\log p_0(x_0) = \log p_T(x_T) + \int_0^T \nabla_x\!\cdot v(x_t, t)\,dt .$$
#
# We check it against the true density of a Gaussian mixture, replace the divergence by Hutchinson's unbiased
# estimator $\nabla\cdot v \approx z^\top (\partial v/\partial x)\,z$, compare with the variational bound (ELBO)
# that needs no ODE, and finish with bits per dimension of discrete images.

# %%
import math
import os

import matplotlib.pyplot as plt
import torch

from scoresde import VPSDE, Trainer, bits_per_dim, elbo, image_dataset, log_likelihood, preset, toy_dataset
from scoresde.config.schema import override

QUICK = os.environ.get("SCORESDE_NOTEBOOK_QUICK") == "1"  # the test suite runs every notebook on small settings
N = 100 if QUICK else 1000

# %% [markdown]
# ## Exact NLL against the true density
# With the exact score of `gmm` under a VP SDE, `log_likelihood` returns $-\log p_\epsilon(x)$ (the ODE stops at
# a small $\epsilon$); the truth is the mixture's marginal at $\epsilon$, `mixture.marginal(sde, eps)`. The
# difference is the ODE solver's error, set by its tolerances.

# %%
sde = VPSDE()
gmm = toy_dataset("gmm")
exact_score = gmm.mixture.score_fn(sde)
x = gmm.sample(N, torch.Generator().manual_seed(0), dtype=torch.float64)
result = log_likelihood(sde, exact_score, x)
truth = -gmm.mixture.marginal(sde, sde.sampling_t_min).log_prob(x)
err = (result.nll - truth).abs()
print(f"mean NLL {float(result.nll.mean()):.5f} nats, true {float(truth.mean()):.5f}; "
      f"max |error| {float(err.max()):.1e} nats at rtol = atol = 1e-5 ({result.nfe} NFE)")

# %% [markdown]
# ## Exact divergence against Hutchinson's estimator
# The exact divergence costs one backward pass per dimension; Hutchinson's costs one, whatever the dimension, and
# is unbiased: $\mathbb E_z[z^\top J z] = \mathrm{tr}\,J$ for Rademacher or Gaussian $z$. Its variance falls as
# $1/(\text{number of probes})$.

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for probes in (1, 4):
    hutch = log_likelihood(sde, exact_score, x, divergence="hutchinson", n_probes=probes, generator=torch.Generator().manual_seed(1))
    diff = hutch.nll - result.nll
    print(f"{probes} probe(s): mean difference {float(diff.mean()):+.4f} +- {float(diff.std()) / math.sqrt(N):.4f} nats, "
          f"per-sample std {float(diff.std()):.3f}")
    ax.hist(diff.numpy(), bins=30, alpha=0.6, label=f"{probes} probe(s)")
ax.set_xlabel("Hutchinson NLL - exact NLL (nats)")
ax.set_ylabel("points")
ax.set_title("Hutchinson's estimator is unbiased; more probes, less spread")
ax.legend()
plt.show()

# %% [markdown]
# ## The ELBO against the exact NLL
# Song, Durkan et al. (2021) bound the NLL without an ODE solve:
#
# $$-\log p_0(x) \le -\mathbb E\,\log p_T(x_T) + \tfrac12\int_0^T g(t)^2\,\mathbb E\Big[\|s_\theta(x_t,t) - \nabla\log p_{0t}(x_t|x_0)\|^2
#   - \|\nabla\log p_{0t}(x_t|x_0)\|^2 - \tfrac{2}{g^2}\nabla\!\cdot f\Big]dt ,$$
#
# estimated by Monte Carlo over $t$ and $x_t$. With the exact score the bound is tight (equal in expectation).
# With a wrong score, careful: the ELBO bounds the NLL of the *reverse-SDE* model, and the probability-flow ODE
# defines a *different* model once $s_\theta \ne \nabla\log p_t$ — so the ELBO can even fall below the ODE's
# exact NLL, as it does here for a score scaled by 0.8 (the SDE's noise partly repairs the wrong score; the ODE's
# deterministic map cannot).

# %%
generator = torch.Generator().manual_seed(2)
for name, score in {"exact score": exact_score, "0.8 x exact score": lambda x, t: 0.8 * exact_score(x, t)}.items():
    nll = log_likelihood(sde, score, x).nll
    bound = elbo(sde, score, x, generator=generator).bound
    print(f"{name:18s}: exact NLL {float(nll.mean()):.4f}, ELBO {float(bound.mean()):.4f} +- {float(bound.std()) / math.sqrt(N):.4f} nats")

# %% [markdown]
# ## Bits per dimension of discrete images
# Images have $K$ levels per pixel. *Uniform dequantisation* $y = x + u$, $u \sim U[0,1)^D$, and the affine map to
# the model's range $[a, b]$ give a bound on the discrete log-likelihood, reported in bits per dimension:
#
# $$\text{bpd} = \frac{-\log p_\theta(x_{model}) - D\log\frac{b-a}{K}}{D\,\ln 2} .$$
#
# We train a small U-Net on the 8x8 digits (17 levels) for a short while and measure its bits/dim on test images
# with Hutchinson's divergence (one probe) — a few minutes of training would be needed for a good number (1.8 bpd,
# see `benchmarks/training.py`); the point here is the recipe.

# %%
import tempfile

config = override(preset("digits-ddpm"), f"train.steps={20 if QUICK else 600}", "train.checkpoint_every=0",
                  *(["model.kwargs.ch=8", "model.kwargs.groups=4"] if QUICK else []))
trainer = Trainer(config, tempfile.mkdtemp(prefix="scoresde-nb4-"), progress=False)
trainer.train()
test = image_dataset("digits", "test")
transform = config.data.transform()
print(transform, "log-det per dim", transform.log_det_per_dim())
bpd = bits_per_dim(trainer.sde, trainer.score_fn, test.x[: 8 if QUICK else 64], transform, divergence="hutchinson",
                   generator=torch.Generator().manual_seed(0), dtype=torch.float32, rtol=1e-3 if QUICK else 1e-4,
                   atol=1e-3 if QUICK else 1e-4)
print(f"bits/dim {bpd.bpd:.3f} +- {bpd.bpd_standard_error:.3f} (offset {bpd.offset:.3f} from the scaling; {bpd.nfe} NFE)")
print(f"a uniform model over 17 levels scores log2(17) = {math.log2(17):.3f} bits/dim")

# %% [markdown]
# **Takeaways.** The ODE gives exact likelihoods to the solver's tolerance (checked here against the truth);
# Hutchinson makes them affordable in high dimension at the price of variance; the ELBO is cheaper still but only
# a bound, tight when the score is exact. Bits/dim adds the dequantisation and the scaling's Jacobian.
