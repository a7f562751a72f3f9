r"""Judging samplers on one model: the same prior draw through every sampler of a line-up, each scored by
its NFE, its wall time and the distance of its samples to held-out data (and, where the data set has a
density, their mean true negative log-density).

The yardstick is the *noise floor*: the same statistic between two independent held-out sets of the
same size. A sampler within a small factor of the floor is as good as n samples can tell.

Symbols: ``x`` samples ``[n, ...]`` in the model's range; ``reference`` held-out data ``[m, ...]``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from .._checks import check_callable, check_finite, check_positive_int, progress_bar
from .._stats import mean_and_standard_error
from ..processes.base import SDE
from ..processes.score import ScoreFn
from ..processes.seam import spec_of
from ..samplers import Recipe, samplers
from ..samplers.base import sampler_options
from ..samplers.sampling import sample
from .features import ImageQuality
from .metrics import energy_distance, sliced_wasserstein

__all__ = [
    "SamplerSpec",
    "SamplerRun",
    "Comparison",
    "default_lineup",
    "student_lineup",
    "solver_lineup",
    "compare_samplers",
    "measure_images",
]


@dataclass(frozen=True)
class SamplerSpec:
    """One point of a comparison: a ``family`` label (one line in a quality-against-NFE plot), the registered
    ``sampler`` and its ``options`` (``steps`` included); ``model``, when given, is sampled instead of the
    comparison's score (e.g. a distilled student beside its teacher's solvers)."""

    family: str
    sampler: str
    options: dict = field(default_factory=dict)
    model: ScoreFn | None = field(default=None, compare=False, repr=False)

    @classmethod
    def of(cls, family: str, recipe: Recipe, model: ScoreFn | None = None) -> SamplerSpec:
        """The point of a comparison that samples ``recipe`` (a fitted solver's, a student's)."""
        options = recipe.sample_kwargs()
        return cls(family, options.pop("sampler"), options, model)

    @property
    def recipe(self) -> Recipe:
        """How this point samples (`scoresde.samplers.Recipe`)."""
        return Recipe.of(self.sampler, **self.options)

    @property
    def label(self) -> str:
        """``family`` with the step count, e.g. ``"ddim, 25 steps"`` (adaptive ODEs show their tolerance)."""
        if "rtol" in self.options:
            return f"{self.family}, rtol {self.options['rtol']:g}"
        steps = self.options.get("steps", sampler_options(self.sampler).get("steps"))
        return f"{self.family}, {steps} steps"


def default_lineup(quick: bool = False) -> list[SamplerSpec]:
    """The samplers `compare_samplers` runs by default: predictor–corrector (reverse diffusion +
    Langevin, and Euler–Maruyama alone), the reverse SDE (torchsde), the adaptive probability-flow ODE, and the
    few-step solvers DDIM, EDM's Heun, DPM-Solver++ 3M, UniPC, iPNDM and DEIS, each at several step counts (NFE
    budgets).
    The multistep solvers run on their default grids and on the warped log-SNR grid, the setting
    ``benchmarks/samplers.py`` found best at 10 NFE on the oracle (within 1.3-1.5x of the noise floor for VP
    and VE). ``quick``: one or two budgets each, for tests and the quick demo."""
    pc = "pc (reverse diffusion + Langevin)"
    em = "pc (Euler–Maruyama)"
    dpm, dpm_warped, unipc = "dpm_solver (3M)", "dpm_solver (3M, warped log-SNR)", "unipc (2, warped log-SNR)"
    budgets = {
        pc: [50, 250],
        em: [100, 500],
        "sde (torchsde Euler)": [200],
        "ddim": [10, 25, 50],
        "heun (EDM)": [5, 10, 25],
        dpm: [5, 10, 20],
        dpm_warped: [5, 10, 20],
        unipc: [5, 10, 20],
        "ipndm (4, EDM grid)": [5, 10],
        "deis (tAB3, EDM grid)": [5, 10],
    }
    samplers_of = {
        pc: ("pc", {}),
        em: ("pc", {"predictor": "euler_maruyama", "corrector": "none"}),
        "sde (torchsde Euler)": ("sde", {}),
        "ddim": ("ddim", {}),
        "heun (EDM)": ("heun", {}),
        dpm: ("dpm_solver", {"order": 3}),
        dpm_warped: ("dpm_solver", {"order": 3, "schedule": "log_snr_warped"}),
        unipc: ("unipc", {"order": 2}),
        "ipndm (4, EDM grid)": ("ipndm", {"order": 4}),
        "deis (tAB3, EDM grid)": ("deis", {"order": 3}),
    }
    ode_tolerances = [1e-3, 1e-5]
    if quick:
        budgets = {
            pc: [20],
            em: [50],
            "sde (torchsde Euler)": [50],
            "ddim": [10],
            "heun (EDM)": [5, 10],
            dpm: [5, 10],
            dpm_warped: [10],
            unipc: [10],
        }
        ode_tolerances = [1e-3]
    lineup = [
        SamplerSpec(family, samplers_of[family][0], {**samplers_of[family][1], "steps": steps})
        for family, steps_list in budgets.items()
        for steps in steps_list
    ]
    lineup += [SamplerSpec("ode (dopri5, adaptive)", "ode", {"rtol": tol, "atol": tol}) for tol in ode_tolerances]
    return lineup


def solver_lineup(solver, name: str) -> list[SamplerSpec]:
    """A fitted solver (`scoresde.samplers.FittedSolver`) as a point of a comparison, its recipe: on its own times
    with its own coefficients (NFE = its steps); ``name`` labels its family."""
    return [SamplerSpec.of(f"fitted solver ({name})", solver.recipe())]


def student_lineup(student: ScoreFn, config, name: str, counts: Sequence[int] = (1, 2, 4)) -> list[SamplerSpec]:
    """A distilled student (a run whose kind is a student: `scoresde.training.kinds`) as points of a comparison,
    sampled the way it was distilled (its kind's `scoresde.samplers.Recipe`): a consistency model at each of
    ``counts`` steps (NFE = steps), a progressive student at its own steps only. ``name`` labels its family."""
    from ..training.kinds import run_kind

    kind = run_kind(config)
    if not kind.student:
        raise ValueError(f"{name} is not a distilled student (scoresde distill writes one)")
    specs = []
    for steps in kind.student_steps(config, tuple(counts)):
        specs.append(SamplerSpec.of(f"{kind.name} student ({name})", kind.recipe(config, steps), student))
    return specs


@dataclass
class SamplerRun:
    """The outcome of one `SamplerSpec`: samples, NFE, wall time and quality figures.

    Attributes:
        energy_distance, sliced_wasserstein: to the held-out reference (V-statistics, see the metrics module).
        true_nll, true_nll_standard_error: mean of $-\\log p_{data}(x)$ over the samples (nats), when the
            data set has a density; a perfect sampler scores the data's entropy in expectation.
        n_nonfinite: samples that were NaN or infinite (dropped before scoring).
        image_quality: for images, the Fréchet distance on a feature network, KID, precision and recall
            (`scoresde.evaluation.features.ImageQuality`).
    """

    spec: SamplerSpec
    x: Tensor
    nfe: int
    seconds: float
    energy_distance: float
    sliced_wasserstein: float
    true_nll: float | None = None
    true_nll_standard_error: float | None = None
    n_nonfinite: int = 0
    image_quality: ImageQuality | None = None

    def to_dict(self) -> dict:
        return {
            "family": self.spec.family,
            "label": self.spec.label,
            "sampler": self.spec.sampler,
            "options": self.spec.options,
            "nfe": self.nfe,
            "seconds": self.seconds,
            "energy_distance": self.energy_distance,
            "sliced_wasserstein": self.sliced_wasserstein,
            "true_nll": self.true_nll,
            "true_nll_standard_error": self.true_nll_standard_error,
            "n_nonfinite": self.n_nonfinite,
            "image_quality": self.image_quality.to_dict() if self.image_quality is not None else None,
        }


@dataclass
class Comparison:
    """Every `SamplerRun` of `compare_samplers`, with the noise floor and the data's entropy."""

    runs: list[SamplerRun]
    n: int
    floor: dict[str, float]
    entropy: float | None = None
    image_floor: ImageQuality | None = None

    def to_dict(self) -> dict:
        """JSON-safe: the floor, the entropy and one row per run (no tensors)."""
        return {
            "n": self.n,
            "noise_floor": self.floor,
            "entropy": self.entropy,
            "image_floor": self.image_floor.to_dict() if self.image_floor is not None else None,
            "runs": [run.to_dict() for run in self.runs],
        }

    def best(self) -> SamplerRun:
        """The run with the smallest energy distance."""
        return min(self.runs, key=lambda run: run.energy_distance)

    def markdown(self) -> str:
        """The comparison as a Markdown table (energy distance also as a multiple of the noise floor)."""
        floor = self.floor.get("energy_distance", float("nan"))
        density = self.entropy is not None
        images = next((run.image_quality for run in self.runs if run.image_quality is not None), None)
        head = "| sampler | NFE | wall time (s) | energy distance | / floor | sliced W2 |" + (
            " true NLL of samples (nats) |" if density else ""
        )
        head += f" {images.label} | KID | precision | recall |" if images else ""
        rule = "|---|---:|---:|---:|---:|---:|" + ("---:|" if density else "") + ("---:|" * 4 if images else "")
        rows = [head, rule]
        for run in self.runs:
            row = (
                f"| {run.spec.label} | {run.nfe} | {run.seconds:.2f} | {run.energy_distance:.2e} | "
                f"{run.energy_distance / floor:.1f} "
                f"| {run.sliced_wasserstein:.3f} |"
            )
            if density:
                row += f" {run.true_nll:.3f} ± {run.true_nll_standard_error:.3f} |"
            if images:
                row += _image_cells(run.image_quality)
            rows.append(row + (f" ({run.n_nonfinite} non-finite)" if run.n_nonfinite else ""))
        notes = [
            f"Noise floor (two held-out sets of {self.n}): energy distance {floor:.2e}, "
            f"sliced W2 {self.floor.get('sliced_wasserstein', float('nan')):.3f}."
        ]
        if self.image_floor is not None:
            notes.append(
                f"Held-out data against the reference ({self.image_floor.label} floor): {self.image_floor.summary()}."
            )
        if density:
            notes.append(
                f"A perfect sampler's mean true NLL (the data's entropy; for data with edges, the checkerboard, under "
                f"the data blurred by a small sigma): {self.entropy:.3f} nats."
            )
        return "\n".join(rows + [""] + notes) + "\n"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


MIN_IMAGE_SAMPLES = 20
"""Fewest images the image metrics score (KID's jackknife needs 2 per block of 10)."""


def measure_images(image_metric: Callable[[Tensor], ImageQuality] | None, x: Tensor | None) -> ImageQuality | None:
    """The image metric of ``x``, or None without a metric, images or enough of them."""
    if image_metric is None or x is None or len(x) < MIN_IMAGE_SAMPLES:
        return None
    return image_metric(x)


def _image_cells(quality: ImageQuality | None) -> str:
    if quality is None:
        return " - | - | - | - |"
    return (
        f" {quality.frechet_distance:.3f} | {quality.kid:.4f} ± {quality.kid_standard_error:.4f} | "
        f"{quality.precision:.3f} | {quality.recall:.3f} |"
    )


def compare_samplers(
    sde: SDE,
    score_fn: ScoreFn,
    reference: Tensor,
    *,
    lineup: Sequence[SamplerSpec] | None = None,
    n: int = 2000,
    floor_reference: Tensor | None = None,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    entropy: float | None = None,
    postprocess: Callable[[Tensor], Tensor] | None = None,
    image_metric: Callable[[Tensor], ImageQuality] | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    progress: bool = False,
) -> Comparison:
    r"""Run every sampler of ``lineup`` (default `default_lineup`) from the same prior draw
    $x_T \sim p_T$ of ``n`` points and score each against held-out data.

    Quality figures per run: energy distance $2\overline{\|x-y\|} - \overline{\|x-x'\|} - \overline{\|y-y'\|}$
    and sliced Wasserstein-2 to ``reference``; with ``true_log_prob``, the mean true NLL
    $-\frac1n\sum_i \log p_{data}(x_i)$ (against ``entropy``, the value of a perfect sampler).
    The noise floor is the same statistics between ``reference`` and ``floor_reference`` (two independent
    held-out sets; omitted if ``floor_reference`` is None).

    Args:
        sde: the forward process of the model.
        score_fn: the model's score ``score_fn(x, t)``.
        reference: held-out data ``[m, ...]`` in the model's range.
        postprocess: applied to each sampler's output before scoring (e.g. quantising images to the data's levels).
        image_metric: for images, ``metric(x) -> ImageQuality`` on each run's samples and on ``floor_reference``
            (e.g. `scoresde.evaluation.features.image_metric`: FID, or FD-digits on the shipped digits network).
        seed: seeds the prior draw (shared by every run) and each run's own noise.
        device: where to sample.
        dtype: of the prior draw and the samples.
        progress: one progress bar over the line-up.
    """
    check_callable("score_fn", score_fn)
    check_finite("reference", reference)
    n = check_positive_int("n", n)
    lineup = list(lineup) if lineup is not None else default_lineup()
    if not lineup:
        raise ValueError("lineup is empty; pass SamplerSpec entries or leave it None for default_lineup()")
    for spec in lineup:
        if spec.sampler not in samplers():
            raise ValueError(
                f"unknown sampler {spec.sampler!r} in the line-up; valid names are: {', '.join(samplers())}"
            )
    device = torch.device(device)
    reference = reference.to(device)
    latent = spec_of(score_fn).decoder  # a latent model: sampled in latent space, scored on its decoded images
    shape = (n, *(tuple(score_fn.latent_shape) if latent else reference.shape[1:]))
    x_T = sde.prior_sampling(shape, torch.Generator(device=device).manual_seed(seed), device=device, dtype=dtype)
    floor = {}
    if floor_reference is not None:
        floor_reference = floor_reference.to(device)
        floor = {
            "energy_distance": energy_distance(floor_reference, reference),
            "sliced_wasserstein": sliced_wasserstein(floor_reference, reference),
        }
    runs = []
    for index, spec in enumerate(progress_bar(lineup, "compare", progress, leave=False)):
        generator = torch.Generator(device=device).manual_seed(seed + 1 + index)
        _sync(device)
        start = time.perf_counter()
        fn = score_fn if spec.model is None else spec.model
        result = sample(sde, fn, shape, spec.recipe, x_T=x_T.clone(), generator=generator)
        _sync(device)
        seconds = time.perf_counter() - start
        x = result.images.detach()
        finite = torch.isfinite(x.reshape(n, -1)).all(dim=1)
        x = x[finite]
        if postprocess is not None:
            x = postprocess(x)
        run = SamplerRun(
            spec, x.cpu(), result.nfe, seconds, float("nan"), float("nan"), n_nonfinite=int((~finite).sum())
        )
        if len(x):
            run.energy_distance = energy_distance(x, reference)
            run.sliced_wasserstein = sliced_wasserstein(x, reference)
            if true_log_prob is not None:
                run.true_nll, run.true_nll_standard_error = mean_and_standard_error(-true_log_prob(x.to(torch.float64)))
            run.image_quality = measure_images(image_metric, x)
        runs.append(run)
    image_floor = measure_images(image_metric, floor_reference)
    return Comparison(runs=runs, n=n, floor=floor, entropy=entropy, image_floor=image_floor)
