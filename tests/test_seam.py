"""The model seam: a model's declaration (output kind, variance channel, classes) survives every wrapper, is checked
once at the boundary that needs it, and the one converter between output kinds is exact (Gaussian data: the
posterior mean, the noise and the velocity in closed form)."""

from __future__ import annotations

import pytest
import torch

from scoresde import VESDE, VPSDE, ClassifierFreeGuidance, ConsistencyModel, log_likelihood, sample
from scoresde.models import ModelSpec, ScoreMLP, ScoreModel, spec_of
from scoresde.processes.seam import CountingScore, require, to_sigma_score, x0_from_score
from scoresde.samplers import ClassifierGuidance, ThresholdedScore

C, S = torch.tensor([0.7, -1.2], dtype=torch.float64), 0.8
"""Gaussian data N(C, S^2 I): every output kind of the exact model is known in closed form."""


def _posterior_mean(sde, x, t):
    r"""$E[x_0 | x_t] = C + \alpha S^2 (x - \alpha C) / (\alpha^2 S^2 + \sigma^2)$ for the Gaussian data."""
    alpha, sigma = sde.alpha(t)[:, None], sde.sigma(t)[:, None]
    return C + alpha * S**2 * (x - alpha * C) / (alpha**2 * S**2 + sigma**2)


class Declared:
    """The exact model of the Gaussian data, returning the output kind it declares."""

    def __init__(self, sde, output):
        self.sde, self.spec = sde, ModelSpec(output=output)

    def __call__(self, x, t):
        alpha, sigma = self.sde.alpha(t)[:, None], self.sde.sigma(t)[:, None]
        x0 = _posterior_mean(self.sde, x, t)
        eps = (x - alpha * x0) / sigma
        return {"x0": x0, "eps": eps, "v": alpha * eps - sigma * x0, "score": -eps / sigma}[self.spec.output]


def _learned_variance_model(sde, num_classes=0):
    torch.manual_seed(0)
    net = ScoreMLP(dim=2, width=32, depth=2, num_classes=num_classes, learn_variance=True).double()
    return ScoreModel(net, sde, "eps").eval()


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("output", ["eps", "x0", "v"])
def test_each_output_kind_converts_to_the_exact_score(sde, output):
    """eps, x0 and v predictions of the exact model become its score through the one converter (round-off)."""
    if output == "v" and isinstance(sde, VESDE):
        pytest.skip("v-prediction is defined for variance-preserving SDEs")
    x, t = torch.randn(64, 2, dtype=torch.float64), torch.rand(64, dtype=torch.float64) * 0.9 + 0.05
    exact = Declared(sde, "score")(x, t)
    converted = to_sigma_score(sde, output, Declared(sde, output)(x, t), x, t) / sde.sigma(t)[:, None]
    torch.testing.assert_close(converted, exact, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(x0_from_score(sde, x, t, exact), _posterior_mean(sde, x, t), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("output", ["eps", "x0", "v"])
def test_sample_converts_a_declared_output_at_the_boundary(output):
    """A model declaring eps/x0/v samples like the same model's score, draw for draw."""
    sde = VPSDE()
    options = dict(steps=8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    reference = sample(sde, Declared(sde, "score"), (256, 2), "ddim", **options).x
    options["generator"] = torch.Generator().manual_seed(0)
    torch.testing.assert_close(sample(sde, Declared(sde, output), (256, 2), "ddim", **options).x, reference)


def test_learned_variance_with_thresholding_works_and_stays_in_range():
    """The issue's example: the learned variance survives the x0_range wrapper; every sample is clipped into range."""
    sde = VPSDE()
    model = _learned_variance_model(sde)
    result = sample(
        sde, model, (100, 2), "ddpm", steps=10, variance="learned", x0_range=(-0.5, 0.5), dtype=torch.float64
    )
    assert result.nfe == 11 and bool((result.x.abs() <= 0.5 + 1e-12).all())
    wrapped = CountingScore(ThresholdedScore(sde, model, -0.5, 0.5))
    assert spec_of(wrapped).variance and spec_of(wrapped).output == "score"


def test_guidance_around_a_variance_channel_model_keeps_the_variance():
    """Classifier-free guidance of a class-conditional learned-variance model samples with variance='learned'; the
    fraction it forwards is the conditional model's at the guided labels."""
    sde = VPSDE()
    model = _learned_variance_model(sde, num_classes=3)
    guided = ClassifierFreeGuidance(model, 1, w=2.0)
    assert spec_of(guided) == ModelSpec(output="score", variance=True, num_classes=0)
    x, t = torch.randn(5, 2, dtype=torch.float64), torch.full((5,), 0.3, dtype=torch.float64)
    torch.testing.assert_close(guided.variance_fraction(x, t), model.variance_fraction(x, t, torch.ones(5).long()))
    result = sample(sde, guided, (50, 2), "ddpm", steps=5, variance="learned", dtype=torch.float64)
    assert torch.isfinite(result.x).all()
    unconditional = _learned_variance_model(sde)
    classified = ClassifierGuidance(unconditional, lambda x, t: 0 * x.sum(1, keepdim=True).expand(-1, 3), 0)
    assert spec_of(classified).variance  # the zero classifier changes nothing: same draws as the model alone
    options = dict(steps=5, variance="learned", dtype=torch.float64)
    a = sample(sde, classified, (50, 2), "ddpm", **options, generator=torch.Generator().manual_seed(1))
    b = sample(sde, unconditional, (50, 2), "ddpm", **options, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(a.x, b.x)


def test_a_consistency_model_with_x0_range_is_clipped_and_refused_by_score_boundaries():
    sde = VPSDE()
    torch.manual_seed(0)
    model = ConsistencyModel(ScoreMLP(dim=2, width=16, depth=1), sde, sde.sampling_t_min, sigma_data=2.0).eval()
    result = sample(sde, model, (200, 2), "consistency", steps=2, x0_range=(-0.25, 0.25))
    assert bool((result.x.abs() <= 0.25 + 1e-6).all()) and result.nfe == 2
    with pytest.raises(
        ValueError, match="sampler 'ddim' needs a score model.*ConsistencyModel declares output 'consist"
    ):
        sample(sde, model, (4, 2), "ddim", steps=2)
    with pytest.raises(ValueError, match="log_likelihood needs a score model.*ConsistencyModel"):
        log_likelihood(sde, model, torch.zeros(2, 2))
    with pytest.raises(
        ValueError, match="sampler 'consistency' needs a consistency model.*Declared declares output 'x0'"
    ):
        sample(sde, Declared(sde, "x0"), (4, 2), "consistency")


def test_missing_capabilities_name_the_users_model_once_at_the_boundary():
    sde = VPSDE()
    plain = Declared(sde, "score")
    with pytest.raises(ValueError, match=r"variance='learned' needs a learned variance .*this Declared has none"):
        sample(sde, plain, (4, 2), "ddpm", steps=3, variance="learned", x0_range=(-1, 1))
    with pytest.raises(
        ValueError, match="classifier-free guidance needs a class-conditional model.*Declared is uncond"
    ):
        ClassifierFreeGuidance(plain, 0)
    with pytest.raises(ValueError, match="model output"):
        ModelSpec(output="logits")
    with pytest.raises(TypeError, match="must be callable"):
        require(3, "sample")


def test_a_consistency_run_is_refused_as_a_teacher_by_its_declaration(tmp_path):
    from scoresde.config import override, preset
    from scoresde.training import Trainer, load_teacher

    student = override(
        preset("toy-vp"),
        "kind=consistency_training",
        "distill.method=consistency_training",
        "train.steps=2",
        "train.batch_size=8",
    )
    Trainer(student, tmp_path / "ct", progress=False).train()
    config = override(
        preset("toy-vp"), "kind=consistency", "distill.method=consistency", f"distill.teacher={tmp_path / 'ct'}"
    )
    with pytest.raises(ValueError, match="needs a score model .*this ConsistencyModel declares output 'consistency'"):
        load_teacher(config)
