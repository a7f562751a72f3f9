r"""Evaluation while training: every ``train.eval_every`` steps the EMA model's likelihood and sample quality on fixed
data, at a bounded cost, so that a run says whether it is getting better without being stopped.

- **likelihood** (kinds that declare it, `scoresde.training.kinds.RunKind.evaluates`): toys, the held-out NLL in
  nats through the probability-flow ODE (exact divergence) and its gap to the true NLL; images, bits/dim of
  ``train.eval_batch`` test images (one Hutchinson probe, uniform dequantisation, both drawn once), the run kind's
  bound for latent and super-resolution runs. The solve is the exponential integrator on ``train.eval_nfe`` equal
  log-SNR steps (``ei_fixed``): a fixed cost whatever the model, with its embedded error estimate logged beside it
  (``*_error``), so that an undertrained, stiff model never stalls the run.
- **samples**: ``train.eval_samples`` draws by the kind's recipe (DPM-Solver, ``eval_nfe`` steps, for score models;
  a student's own, at its own steps) from a fixed seed; toys, the energy distance to held-out draws; images, the
  Fréchet distance on the data set's shipped feature network (FD-digits, FD-mnist; a set measured with Inception is
  skipped, since its weights are not shipped).

The figures go to ``metrics.csv`` (and TensorBoard) through the Trainer, and `plot_training_curve` draws them
beside the loss.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from ..config.schema import RunConfig
from ..likelihood import bits_per_dim, log_likelihood
from ..models.network import sample_shape
from ..processes.seam import spec_of
from ..samplers import Recipe
from ..samplers.sampling import sample
from ..training.kinds import run_kind
from ..training.workflows import run_bound
from .features import FeatureNetworkUnavailable, image_metric
from .held_out import held_out
from .metrics import energy_distance

__all__ = ["TrainingEvaluator", "evaluation_names", "ema_sweep"]


def evaluation_names(config: RunConfig) -> tuple[str, ...]:
    """The figures evaluation while training logs for ``config`` (the columns it adds to ``metrics.csv``)."""
    measures, toy = run_kind(config).evaluates(config), config.data.kind == "toy"
    names: list[str] = []
    if "likelihood" in measures:
        names += ["eval_nll", "eval_nll_error", "eval_nll_gap"] if toy else ["eval_bpd", "eval_bpd_error"]
    if "samples" in measures:
        names += ["eval_energy"] if toy else ["eval_fd"]
    return (*names, "eval_seconds") if names else ()


class TrainingEvaluator:
    """``evaluator(trainer, step) -> {name: figure}``: the run's EMA model evaluated on fixed held-out data (module
    docstring); `names` declares the figures. Built once per run (``folder``: the run folder, where a latent run's
    autoencoder and a super-resolution stage's base are found); the data, the probes and the sampling seed are fixed,
    so that successive figures differ only by the model."""

    def __init__(self, config: RunConfig, folder: str | Path, device: torch.device | str = "cpu") -> None:
        tc = config.train
        self.config, self.folder, self.device = config, Path(folder), torch.device(device)
        self.kind, self.names = run_kind(config), evaluation_names(config)
        self.measures = self.kind.evaluates(config)
        self.nfe, self.n_samples = tc.eval_nfe, tc.eval_samples
        self.held = held_out(config.data, max(tc.eval_batch, tc.eval_samples), seed=tc.seed)
        self.x = self.held.x[: tc.eval_batch]
        self.images = None
        if config.data.kind == "image":
            self.images = config.data.transform().from_model(self.x).round().to(self.device)
        self._metric, self._model = None, None

    def model(self, trainer: Any) -> Any:
        """The EMA model as the run's kind loads it (a latent model carries its autoencoder): built once, sharing
        the EMA's weights."""
        if self._model is None:
            self._model = self.kind.loaded(trainer.ema.model, self.config, self.folder, self.device)
        return self._model

    def __call__(self, trainer: Any, step: int) -> dict[str, float | None]:
        if not self.names:
            return {}
        start, model = time.perf_counter(), self.model(trainer)
        figures: dict[str, float | None] = {}
        with torch.random.fork_rng(devices=[]):  # nothing here may move the caller's RNG
            if "likelihood" in self.measures:
                figures.update(self.likelihood(model))
            if "samples" in self.measures:
                figures.update(self.samples(model))
        figures["eval_seconds"] = time.perf_counter() - start
        return figures

    def _solver(self) -> dict:
        """The bounded solve: ``ei_fixed`` on ``eval_nfe`` log-SNR steps, probes and dequantisation seeded."""
        return {"method": "ei_fixed", "steps": self.nfe, "generator": torch.Generator().manual_seed(0)}

    def likelihood(self, model: Any) -> dict[str, float | None]:
        """Toys: held-out NLL (nats), its integration error and its gap to the true NLL; images: bits/dim."""
        sde = model.sde
        if self.images is None:
            x = self.x.to(self.device)
            result = log_likelihood(sde, model, x, **self._solver())
            nll = float(result.nll.mean())
            error = float(result.integration_error.mean()) if result.integration_error is not None else None
            gap = nll + float(self.held.log_prob(x.cpu().double()).mean()) if self.held.log_prob is not None else None
            return {"eval_nll": nll, "eval_nll_error": error, "eval_nll_gap": gap}
        options = {**self._solver(), "divergence": "hutchinson"}
        result = run_bound(model, self.config, self.folder, self.images, dtype=torch.float32, **options)
        if result is None:
            transform = self.config.data.transform()
            result = bits_per_dim(sde, model, self.images, transform, dtype=torch.float32, **options)
        error = result.integration_error if self.kind.bound != "cascade" else None
        return {"eval_bpd": float(result.bpd), "eval_bpd_error": error}

    def samples(self, model: Any) -> dict[str, float | None]:
        """Energy distance (toys) or the shipped features' Fréchet distance (images) of ``eval_samples`` draws."""
        own_steps = None if self.kind.student else self.nfe  # a student at its own steps (a flow map: distill.steps)
        recipe = self.kind.recipe(self.config, own_steps) or Recipe.of("dpm_solver", steps=self.nfe)
        data_shape = tuple(self.held.x.shape[1:])  # a latent model draws latents of its own shape
        shape = (self.n_samples, *(sample_shape(model) if spec_of(model).decoder else data_shape))
        generator = torch.Generator(device=self.device).manual_seed(1)
        with torch.no_grad():
            result = sample(model.sde, model, shape, recipe, generator=generator, device=self.device, progress=False)
        x = result.images
        if self.images is None:
            return {"eval_energy": energy_distance(x.cpu(), self.held.x[: self.n_samples])}
        metric = self._image_metric()
        return {"eval_fd": None if metric is None else metric(x).frechet_distance}

    def _image_metric(self):
        """The data set's shipped feature metric, built once (None where its network is not shipped)."""
        if self._metric is None:
            try:
                self._metric = image_metric(self.config.data, device=self.device)
            except FeatureNetworkUnavailable:
                self._metric = False
        return self._metric or None


def ema_sweep(
    folder: str | Path,
    sigma_rels: list[float],
    *,
    t: int | None = None,
    samples: int | None = None,
    nfe: int | None = None,
    likelihood: bool = False,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict]:
    """Quality against EMA length: for each ``sigma_rel`` the run's post-hoc EMA reconstructed
    (`scoresde.training.posthoc_ema.reconstruct_ema`) and measured as evaluation while training measures the run
    (sample quality from ``samples`` draws, default ``train.eval_samples``, in ``nfe`` steps, default
    ``train.eval_nfe``; with ``likelihood`` its held-out bits/dim or NLL too), at step ``t`` (default: the last
    snapshot's). One row per length: ``sigma_rel``,
    the profile fit's ``residual`` and the figures."""
    from dataclasses import replace

    from .._checks import progress_bar
    from ..training.checkpoint import load_checkpoint
    from ..training.posthoc_ema import reconstruct_ema, reconstructed_model

    config = load_checkpoint(folder)["config"]
    tc = config.train
    sized = replace(tc, eval_samples=samples or tc.eval_samples, eval_nfe=nfe or tc.eval_nfe)
    evaluator = TrainingEvaluator(replace(config, train=sized), folder, device)
    rows = []
    for sigma_rel in progress_bar(sigma_rels, "EMA lengths", progress):
        rec = reconstruct_ema(folder, sigma_rel, t)
        model = reconstructed_model(folder, rec, device)
        row = {"sigma_rel": rec.sigma_rel, "step": rec.t, "residual": rec.residual}
        if "samples" in evaluator.measures:
            row.update(evaluator.samples(model))
        if likelihood and "likelihood" in evaluator.measures:
            row.update(evaluator.likelihood(model))
        rows.append(row)
    return rows
