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
# ## One to four steps: a flow map
# The solvers above need five or more evaluations. A **flow map** $\Phi(x, t, s)$ is one network that carries a
# point from time $t$ to any earlier time $s$ along the probability-flow ODE, so $K$ jumps cost $K$ evaluations
# and, because the exact map composes ($\Phi(\Phi(x, t, r), r, s) = \Phi(x, t, s)$), more jumps follow the ODE more
# closely instead of re-noising as multistep consistency sampling does. It is parameterised so that
# $\Phi(x, t, t) = x$ exactly, and its diagonal is the ODE's velocity: the same network is a score, so every other
# sampler and the exact likelihood take it too.
#
# Here we distil one from the **exact** score of `8gaussians` (`scoresde distill --teacher oracle:8gaussians
# --method flow_map`): the Lagrangian identity $\partial_s\Phi(x, t, s) = v(\Phi(x, t, s), s)$ regressed with
# the teacher's velocity $v$ at the map's end point (docs/concepts/distillation.md).

# %%
from pathlib import Path

from scoresde import distill, distillation_config, energy_distance, load_score_model, log_likelihood, sample
from scoresde.training.distill import student_sampling

fm_config = distillation_config("oracle:8gaussians", "flow_map", train_steps=150 if QUICK else 2000)
if QUICK:
    fm_config = override(fm_config, "model.kwargs.width=64", "train.batch_size=256")
fm_dir = Path(tempfile.mkdtemp(prefix="scoresde-nb3-flow-map-"))
(fm_trained,) = distill(fm_config, fm_dir, progress=False)
flow, fm_config, _ = load_score_model(fm_dir)
print(f"flow map distilled in {fm_trained.step} steps, {fm_trained.seconds:.0f} s")

# %% [markdown]
# ### One-step transport
# The same prior draws (coloured by their angle) carried to the data by one jump of the map, and by the exact
# probability-flow ODE (an adaptive solve of the exact score, float64): the map has learned where each region of
# noise goes, not just the data's law.

# %%
x_T = torch.randn(N, 2, generator=torch.Generator().manual_seed(5))
colour = torch.atan2(x_T[:, 1], x_T[:, 0])
one_jump = sample(sde, flow, (N, 2), x_T=x_T, **student_sampling(fm_config, 1)).x
ode_exact = sample(sde, exact, (N, 2), "ode", x_T=x_T.double(), dtype=torch.float64).x
fig, axes = plt.subplots(1, 3, figsize=(12, 4))
for ax, points, title in zip(axes, (x_T, one_jump, ode_exact),
                             ("prior draws x_T", "one jump of the flow map (1 NFE)", "the exact ODE's map")):  # fmt: skip
    ax.scatter(points[:, 0], points[:, 1], c=colour, cmap="hsv", s=3)
    ax.set(title=title, xlim=(-toy.extent, toy.extent), ylim=(-toy.extent, toy.extent), aspect="equal")
plt.show()

# %% [markdown]
# ### K jumps against the ODE's path
# Four jumps of the map (dots) from a few prior draws, beside the exact ODE's paths (lines): the jumps land on
# the paths.

# %%
few = x_T[:12]
jumps = sample(sde, flow, (12, 2), x_T=few, return_trajectory=True, **student_sampling(fm_config, 4)).trajectory
path = sample(sde, exact, (12, 2), "heun", steps=200, x_T=few.double(), dtype=torch.float64, denoise=False,
              return_trajectory=True).trajectory  # fmt: skip
fig, ax = plt.subplots(figsize=(5, 5))
ax.scatter(data.x[:, 0], data.x[:, 1], s=1, color="lightgrey")
for i in range(12):
    ax.plot(path[:, i, 0], path[:, i, 1], color="tab:blue", lw=0.8)
    ax.plot(jumps[:, i, 0], jumps[:, i, 1], "o--", color="tab:red", ms=3, lw=0.6)
ax.set(title="4 jumps of the map (red) and the exact ODE (blue)", xlim=(-toy.extent, toy.extent),
       ylim=(-toy.extent, toy.extent), aspect="equal")  # fmt: skip
plt.show()

# %% [markdown]
# ### Quality against the number of jumps
# Energy distance to held-out data over the noise floor, the flow map against DPM-Solver++ on the *exact* score at
# the same NFE: where solvers cannot go (1-2 NFE), the map is already near the floor, and it does not get worse
# with more jumps.

# %%
ks = (1, 2, 4, 8)
floor = energy_distance(data.x, data.floor)
flow_quality = [energy_distance(sample(sde, flow, (N, 2), x_T=x_T, **student_sampling(fm_config, k)).x, data.x)
                / floor for k in ks]  # fmt: skip
solver_quality = [energy_distance(sample(sde, exact, (N, 2), "dpm_solver", steps=k, x_T=x_T.double(),
                                         dtype=torch.float64).x.float(), data.x) / floor for k in ks]  # fmt: skip
fig, ax = plt.subplots(figsize=(5, 3.5))
ax.plot(ks, flow_quality, "o-", label="flow map (K jumps)")
ax.plot(ks, solver_quality, "s-", label="DPM-Solver++ on the exact score")
ax.axhline(1.0, color="grey", ls="--", lw=0.8)
ax.set(xscale="log", yscale="log", xlabel="NFE", ylabel="energy distance / noise floor", xticks=ks)
ax.set_xticklabels(ks)
ax.legend()
plt.show()
print(dict(zip(ks, [round(q, 2) for q in flow_quality])))

# %% [markdown]
# ### The diagonal is a score: an exact likelihood from the same network
# On the diagonal ($s = t$) the map's average velocity is the probability-flow velocity, which the model seam
# converts to a score: `log_likelihood` takes the flow map as it is, and its NLL sits near the data's true one.

# %%
points = data.x[: 100 if QUICK else 500]
nll = log_likelihood(sde, flow, points).nll
print(f"flow map's NLL {nll.mean():.3f} nats; true NLL {-data.log_prob(points.double()).mean():.3f} nats")

# %% [markdown]
# **Takeaways.** Stochastic samplers need many steps but forgive score errors (the noise re-mixes); ODE solvers
# reach the same quality in tens of NFE with the exact score, and DPM-Solver++ in ~10-20; a flow map, trained for
# it, samples in one to four. On a learned model the gap between the two tables is the model's error, not the
# sampler's — and the deterministic samplers show the model's errors in the prior's tails that the stochastic ones
# wash out.
