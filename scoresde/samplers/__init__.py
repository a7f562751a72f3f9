r"""Sampling from a score-based model: one entry point, `sample`, over a registry of samplers.

========================  =====================================================================
``pc``                    predictor–corrector (Song et al. 2021), registries of predictors/correctors
``ode``                   probability-flow ODE with torchdiffeq (or scipy ``solve_ivp``)
``sde``                   reverse-time SDE with torchsde
``ddim``                  DDIM with eta (Song, Meng & Ermon 2021)
``heun``                  EDM's Heun sampler with stochastic churn (Karras et al. 2022)
``dpm_solver``            DPM-Solver++ multistep, orders 1–3 (Lu et al. 2022)
``unipc``                 UniPC predictor–corrector multistep, orders 1–3 (Zhao et al. 2023)
``ipndm``                 improved PNDM: equal-step Adams–Bashforth in rho = sigma/alpha, orders 1–4
``deis``                  DEIS-tAB: exponential integrator, Lagrange extrapolation in t (Zhang & Chen 2023)
``fitted``                DPM-Solver++ with per-step corrections and times fitted to the model (`fit_solver`)
``ddpm``                  DDPM's ancestral chain with a choice of reverse variance
``consistency``           multistep consistency sampling of a consistency model (Song et al. 2023)
``flow_map``              K jumps of a flow map along the probability-flow ODE (MeanFlow, Geng et al. 2025)
========================  =====================================================================

As in k-diffusion, where every sampler takes its ``sigmas``, `sample` builds the time grid once (from the
defaults each sampler declares, or the caller's ``steps`` / ``schedule`` / ``t_min`` / ``rho`` / ``warp``, or
a sequence of times) and hands it in: any grid works with any sampler, and each sampler's options are its own
algorithm's. `sample` also validates once (the grid, ``x_T`` and the first score output); the loops do not.
"""

from ..processes.grids import GRIDS, time_grid
from ..processes.reverse import ProbabilityFlow
from . import consistency, ddim, ddpm, dpm_solver, flow_map, heun, multistep, ode, pc, reverse_sde, unipc  # noqa: F401
from .base import SampleResult, Sampling, grid_defaults, register_sampler, sampler_options, samplers
from .cascade import CascadeResult, augment, sample_cascade
from .fitted_solver import FittedSolver
from .grid_fit import GridFit, fit_grid
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .inpaint import INPAINT_METHODS, MASKS, inpaint, named_mask
from .pc import correctors, predictors, register_corrector, register_predictor
from .recipe import Recipe, choose_recipe
from .sampling import sample
from .solver_fit import fit_solver
from .thresholding import ThresholdedScore

__all__ = [
    "sample",
    "Recipe",
    "choose_recipe",
    "sample_cascade",
    "CascadeResult",
    "augment",
    "ThresholdedScore",
    "SampleResult",
    "Sampling",
    "samplers",
    "sampler_options",
    "register_sampler",
    "predictors",
    "correctors",
    "register_predictor",
    "register_corrector",
    "time_grid",
    "fit_grid",
    "GridFit",
    "fit_solver",
    "FittedSolver",
    "GRIDS",
    "grid_defaults",
    "ProbabilityFlow",
    "ClassifierFreeGuidance",
    "ClassifierGuidance",
    "inpaint",
    "named_mask",
    "MASKS",
    "INPAINT_METHODS",
]
