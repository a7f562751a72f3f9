# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.7
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Predictor–corrector against the probability-flow ODE (and the few-step solvers)
#
# **What this notebook teaches.** Given a score, there are many ways to run the process backwards:
#
# - the **reverse SDE** (Anderson 1982) $dx = [f(x,t) - g(t)^2\,\nabla_x\log p_t(x)]\,dt + g(t)\,d\bar w$, solved
#   by Euler–Maruyama or by the *predictor–corrector* scheme of Song et al. (2021): a predictor step of the reverse
#   SDE, then Langevin MCMC corrector steps $x \leftarrow x + \epsilon\,s + \sqrt{2\epsilon}\,z$ at the same $t$;
# - the **probability-flow ODE** $dx/dt = f(x,t) - \tfrac12 g(t)^2\,\nabla_x\log p_t(x)$, deterministic, with the
#   same marginals, solved by an adaptive Runge–Kutta method;
# - **few-step solvers** of that ODE: DDIM, EDM's Heun, DPM-Solver++ (exponential integrators in the log-SNR).
#
# We run them all from the *same* prior draw, on a trained model and on the exact score, and score them by their
# NFE (score evaluations) and the distance of their samples to held-out data.

# %%
import os
import tempfile

import matplotlib.pyplot as plt
import torch

from scoresde import Trainer, compare_samplers, preset, toy_dataset
from scoresde.evaluation.comparison import default_lineup
from scoresde.evaluation.held_out import held_out
from scoresde.config.schema import override
from scoresde.app.figures import plot_trajectories
from scoresde.app.result_figures import plot_comparison

QUICK = os.environ.get("SCORESDE_NOTEBOOK_QUICK") == "1"  # the test suite runs every notebook on small settings
N = 400 if QUICK else 2000

# %% [markdown]
# ## A trained model
# The `toy-vp` preset (an MLP on `8gaussians`, VP SDE, likelihood-weighted DSM, EMA) for a short run.

# %%
config = override(preset("toy-vp"), f"train.steps={200 if QUICK else 3000}", "train.checkpoint_every=0",
                  *(["model.kwargs.width=64", "train.batch_size=256"] if QUICK else []))
trainer = Trainer(config, tempfile.mkdtemp(prefix="scoresde-nb3-"), progress=False)
result = trainer.train()
model, sde = trainer.score_fn, trainer.sde
print(f"trained {result.step} steps in {result.seconds:.0f} s, final loss {result.loss:.3f}")

# %% [markdown]
# ## Held-out data and the noise floor
# Quality is the energy distance $\mathcal E = 2\,\mathbb E\|x - y\| - \mathbb E\|x - x'\| - \mathbb E\|y - y'\|$ to
# fresh data. Two independent data sets of the same size are not at distance zero: their distance is the
# *noise floor*, the best any sampler can show with $n$ samples.

# %%
toy = toy_dataset("8gaussians")
data = held_out(config.data, N)
lineup = default_lineup(quick=QUICK)
comparison = compare_samplers(sde, model, data.x, lineup=lineup, n=N, floor_reference=data.floor, true_log_prob=data.log_prob,
                              entropy=data.entropy)
print(comparison.markdown())
fig = plot_comparison(comparison, data.x, extent=toy.extent)
plt.show()

# %% [markdown]
# ## Where the deterministic samplers go wrong
# Read the last column too. A learned model is only trained where $p_t$ has mass; a prior draw in the tails
# ($\|x_T\| \gtrsim 4$) meets an extrapolated score, and an ODE, being a deterministic map, carries that error
# to the end: a handful of samples land far from the data. The energy distance barely moves for a few points; the
# samples' true NLL and the sliced Wasserstein distance do. The stochastic samplers' noise pulls such points back.

# %%
for run in comparison.runs:
    far = int((run.x.norm(dim=1) > 2 * toy.extent).sum())
    print(f"{run.spec.label:46s} {far:3d} of {len(run.x)} samples beyond |x| = {2 * toy.extent:g}")

# %% [markdown]
# ## The same samplers on the exact score
# With the exact score $\nabla\log p_t$ the only error left is the sampler's own (discretisation, or the
# tolerance of the ODE solver). This separates "the model is wrong" from "the sampler is coarse".

# %%
exact = toy.mixture.score_fn(sde)
oracle = compare_samplers(sde, exact, data.x.double(), lineup=lineup, n=N, floor_reference=data.floor.double(),
                          true_log_prob=data.log_prob, entropy=data.entropy, dtype=torch.float64)
fig = plot_comparison(oracle, data.x, extent=toy.extent)
fig.suptitle("The same samplers on the exact score")
plt.show()

# %% [markdown]
# ## Trajectories: SDE against ODE from the same noise
# The SDE's paths are rough (Brownian) and two runs from one $x_T$ end in different places; the ODE's are smooth
# and deterministic — the ODE is a *map* from noise to data, which is what makes exact likelihoods possible
# (notebook 4).

# %%
fig = plot_trajectories(sde, model, n=12, steps=100 if QUICK else 400, data=data.x, extent=toy.extent)
plt.show()

# %% [markdown]
# **Takeaways.** Stochastic samplers need many steps but forgive score errors (the noise re-mixes); ODE solvers
# reach the same quality in tens of NFE with the exact score, and DPM-Solver++ in ~10-20. On a learned model the
# gap between the two tables is the model's error, not the sampler's — and the deterministic samplers show the
# model's errors in the prior's tails that the stochastic ones wash out.
