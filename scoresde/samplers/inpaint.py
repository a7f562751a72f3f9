r"""Inpainting and imputation: sample the unknown part of ``x`` given its known part, with an unconditional score.

At every step of predictor–corrector sampling the known coordinates are replaced by the data noised to the
current time, $x_t[\text{known}] = \alpha(t)\,x_0[\text{known}] + \sigma(t)\,z$, so that the unknown ones evolve
next to a consistent sample of $p_t$:

- ``method="replacement"``: predictor steps only (the replacement method of Song et al. 2021 / Ho et al.);
- ``method="pc"``: predictor and Langevin corrector steps, each followed by the replacement (Song et al. 2021,
  Appendix I, Algorithms 4-5): the corrector pulls the unknown part towards $p_t(x_u \mid x_k)$ at each level.
- ``method="smc"``: SMCDiff (Trippe et al. 2022): the batch is a population of particles for *one* observation;
  the known part follows one forward path $x_k^{t}$ of the data, each particle is weighted by how well its reverse
  step predicts the next value of that path, $p_\theta(x_k^{t_{i+1}} \mid x^{t_i})$ (Gaussian), and the population
  is resampled when its effective size drops below half. Asymptotically exact (many particles):
  $p(x_u^0 \mid x_k^{0:T}) = p(x_u^0 \mid x_k^0)$.

At the end the known coordinates are set to the given values exactly. Replacement and PC are approximations whose
bias does not vanish with more steps when the conditional is multimodal (measured on the oracle: energy distance
0.08 and 0.015 against a floor of 0.0002 for the gmm toy with $x_1 = 1$). SMC removes it: on a two-component
mixture, eight populations of 5000 particles (250 draws each) sit at the noise floor; one population's particles
share one forward path of the known part, so draw from several. The ground truth is the oracle's exact conditional
(`GaussianMixture.condition`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import (
    check_callable,
    check_finite,
    check_in_registry,
    expand_to,
    progress_bar,
    renamed_t_min,
    standard_normal_like,
)
from ..processes.base import SDE, check_sde
from ..processes.grids import time_grid
from ..processes.score import ScoreFn
from ..processes.seam import CountingScore, spec_of
from .base import SampleResult

__all__ = ["inpaint", "named_mask", "MASKS", "INPAINT_METHODS"]

INPAINT_METHODS = ("replacement", "pc", "smc")
MASKS = ("left-half", "right-half", "top-half", "bottom-half", "center", "x1", "x2")
"""Named regions to fill in: halves or the centre of images ``[C, H, W]``; one coordinate of 2D points."""


def named_mask(name: str, shape: tuple[int, ...]) -> Tensor:
    """The **known** mask (``True`` = observed) of one sample of ``shape`` when the named region is missing:
    ``left-half`` etc. for images ``[C, H, W]``, ``x1`` / ``x2`` (the coordinate to complete) for 2D points."""
    check_in_registry("mask", name, MASKS)
    known = torch.ones(shape, dtype=torch.bool)
    if name in ("x1", "x2"):
        if tuple(shape) != (2,):
            raise ValueError(f"mask {name!r} completes one coordinate of 2D points; the data has shape {tuple(shape)}")
        known[0 if name == "x1" else 1] = False
        return known
    if len(shape) != 3:
        raise ValueError(
            f"mask {name!r} is for images [C, H, W]; the data has shape {tuple(shape)} (2D points: x1 or x2)"
        )
    _, H, W = shape
    region = {
        "left-half": (slice(None), slice(None), slice(0, W // 2)),
        "right-half": (slice(None), slice(None), slice(W // 2, W)),
        "top-half": (slice(None), slice(0, H // 2), slice(None)),
        "bottom-half": (slice(None), slice(H // 2, H), slice(None)),
        "center": (slice(None), slice(H // 4, H - H // 4), slice(W // 4, W - W // 4)),
    }[name]
    known[region] = False
    return known


def inpaint(
    sde: SDE,
    score_fn: ScoreFn,
    x_known: Tensor,
    known: Tensor,
    *,
    method: str = "pc",
    steps: int = 500,
    predictor: str = "reverse_diffusion",
    snr: float = 0.16,
    corrector_steps: int = 1,
    t_min: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    return_trajectory: bool = False,
    eps: float | None = None,
) -> SampleResult:
    r"""Complete ``x_known [B, ...]`` where ``known`` (bool, ``[B, ...]`` or one sample's ``[...]``) is ``False``.

    Predictor–corrector sampling from the prior with, after every update at time $t$, the replacement
    $x[\text{known}] \leftarrow \alpha(t)\,x_0[\text{known}] + \sigma(t)\,z$; finally
    $x[\text{known}] = x_0[\text{known}]$.

    Args:
        sde: the forward process of the model.
        score_fn: the unconditional score ``score_fn(x, t)``.
        x_known: data ``[B, ...]`` in the model's range (its unknown entries are ignored; they must be finite).
        known: the observed entries (``True``).
        method: ``"replacement"`` (predictor only), ``"pc"`` (with Langevin corrector steps) or ``"smc"``
            (SMCDiff: the batch is the particle population of one observation; returns draws from it).
        steps: predictor steps on a uniform grid from ``T`` to ``t_min``.
        predictor: a registered predictor.
        snr: the Langevin corrector's signal-to-noise ratio.
        corrector_steps: Langevin steps per level (``method="pc"``).
        t_min: the last time (default ``sde.sampling_t_min``; ``eps`` is its deprecated name).
        generator: the only source of randomness.
        progress: a progress bar over the steps.
        return_trajectory: keep the states on the grid.
    """
    t_min = renamed_t_min(t_min, eps, "inpaint")
    check_sde(sde)
    check_in_registry("inpainting method", method, INPAINT_METHODS)
    check_callable("score_fn", score_fn)
    if spec_of(score_fn).decoder:
        raise ValueError(
            "inpainting replaces known pixels during sampling, and this latent model samples latents: use a "
            "pixel-space model (a latent model's pixels exist only after decoding)"
        )
    check_finite("x_known", x_known)
    if x_known.ndim < 2:
        raise ValueError(f"x_known must be a batch [B, ...], got shape {tuple(x_known.shape)}")
    known = torch.as_tensor(known, device=x_known.device)
    if known.dtype != torch.bool:
        raise ValueError(f"known must be a boolean mask (True = known), got dtype {known.dtype}")
    if tuple(known.shape) not in (tuple(x_known.shape), tuple(x_known.shape[1:])):
        raise ValueError(
            f"known (the mask) of shape {tuple(known.shape)} does not match x_known's shape "
            f"{tuple(x_known.shape[1:])} (one sample) or {tuple(x_known.shape)} (the batch)"
        )
    known = known.expand(x_known.shape)

    def replace(x: Tensor, t: float) -> Tensor:
        t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)
        return torch.where(known, sde.perturb(x_known.to(x.dtype), t_batch, standard_normal_like(x, generator)), x)

    if method == "smc":
        score = CountingScore(score_fn)
        x = _smc(sde, score, x_known, known, steps, t_min, generator, progress)
        settings = {"method": method, "steps": steps, "particles": x.shape[0], "t_min": sde.check_t_min(t_min)}
        return SampleResult(x=x, nfe=score.calls, sampler="inpaint (smc)", settings=settings)
    from .sampling import sample

    x_T = sde.prior_sampling(tuple(x_known.shape), generator, device=x_known.device, dtype=x_known.dtype)
    corrector = "langevin" if method == "pc" else "none"
    result = sample(
        sde,
        score_fn,
        x_T.shape,
        "pc",
        steps=steps,
        t_min=t_min,
        generator=generator,
        progress=progress,
        return_trajectory=return_trajectory,
        x_T=x_T,
        constraint=replace,
        predictor=predictor,
        corrector=corrector,
        corrector_steps=corrector_steps,
        snr=snr,
    )
    result.x = torch.where(known, x_known.to(result.x.dtype), result.x)
    result.sampler, result.settings = f"inpaint ({method})", {"method": method, **result.settings}
    return result


def _smc(
    sde: SDE,
    score: CountingScore,
    x_known: Tensor,
    known: Tensor,
    steps: int,
    t_min: float | None,
    generator: torch.Generator | None,
    progress: bool,
) -> Tensor:
    """SMCDiff with reverse-diffusion proposals; the batch is the particle population of one observation."""
    if not (bool((known == known[:1]).all()) and bool((x_known[known] == x_known[:1].expand_as(x_known)[known]).all())):
        raise ValueError(
            "method 'smc' treats the batch as particles of one observation: pass copies of one sample and one mask "
            "(e.g. x.expand(n, ...)); inpaint several observations one call each"
        )
    B, grid = x_known.shape[0], time_grid(sde, steps, "uniform", t_min).to(x_known.dtype)
    one = x_known[:1]
    # one forward path of the known part, from the data at t_min up to T, on the grid (T first)
    times = grid.flip(0)
    path = [sde.perturb(one, times[:1], standard_normal_like(one, generator))]
    for s_, t_ in zip(times[:-1], times[1:]):
        a, sd = sde.transition(t_, s_)
        path.append(a * path[-1] + sd * standard_normal_like(one, generator))
    path = path[::-1]
    x = torch.where(
        known,
        path[0].expand_as(x_known),
        sde.prior_sampling(tuple(x_known.shape), generator, device=x_known.device, dtype=x_known.dtype),
    )
    log_w = torch.zeros(B, dtype=torch.float64, device=x.device)
    reverse = sde.reverse(score)
    for i in progress_bar(range(len(grid) - 1), "inpaint smc", progress, leave=False):
        t, t_next = grid[i].expand(B), grid[i + 1].expand(B)
        rev_f, rev_G = reverse.step(x, t, t - t_next)
        mean, std = x - rev_f, expand_to(rev_G, x)
        residual = ((path[i + 1] - mean) / std).masked_fill(~known, 0.0)
        log_w = log_w - 0.5 * residual.pow(2).reshape(B, -1).sum(1).double()
        weights = torch.softmax(log_w, 0)
        if float(1.0 / weights.pow(2).sum()) < B / 2:  # effective sample size below half: resample
            index = torch.multinomial(weights, B, replacement=True, generator=generator)
            mean, std, log_w = mean[index], std[index], torch.zeros_like(log_w)
        x = torch.where(known, path[i + 1].expand_as(x), mean + std * standard_normal_like(x, generator))
    index = torch.multinomial(torch.softmax(log_w, 0), B, replacement=True, generator=generator)
    return torch.where(known, x_known, x[index])
