"""Cascades: the two-stage sampler with exact scores reproduces the joint law of Gaussian-process images (4x4 -> 8x8),
the super-resolution network and objective, `scoresde sample` on a cascade, and the refusals."""

import json

import numpy as np
import pytest
import torch
from conftest import one_line

from scoresde import sample
from scoresde.app.cli import main
from scoresde.config.schema import ConfigError, config_from_dict
from scoresde.models import spec_of
from scoresde.oracles import GaussianCascade, average_pool_matrix
from scoresde.processes.vp import VPSDE
from scoresde.samplers import sample_cascade
from scoresde.training import Trainer
from scoresde.training.runs import load_score_model


@pytest.fixture(scope="module")
def cascade():
    """An 8x8 Gaussian process (squared-exponential kernel, length 1.5 pixels) and its 4x4 block averages."""
    idx = torch.arange(8)
    ii, jj = torch.meshgrid(idx, idx, indexing="ij")
    points = torch.stack([ii.flatten(), jj.flatten()], 1).double()
    d2 = ((points[:, None] - points[None]) ** 2).sum(-1)
    return GaussianCascade(0.5 * torch.exp(-d2 / (2 * 1.5**2)) + 1e-3 * torch.eye(64, dtype=torch.float64), 8, 2)


def _draw(cascade, level: float, bound_level: float | None = None, n: int = 3000):
    sde = VPSDE()
    oracle = cascade.super_resolution(sde)
    if bound_level is not None:  # the stage told a level other than the one the condition was augmented with
        given = oracle.given
        oracle.given = lambda low, _: given(low, bound_level)
    result = sample_cascade(sde, cascade.low.score_fn(sde), sde, oracle, n, (1, 4, 4), (1, 8, 8), level=level,
                            base_sampler="dpm_solver", sampler="dpm_solver", base_options={"steps": 30},
                            options={"steps": 30}, generator=torch.Generator().manual_seed(1),
                            dtype=torch.float64)  # fmt: skip
    return result, torch.cat([result.x.reshape(n, -1), result.low.reshape(n, -1)], 1)


def _z_scores(samples: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Each entry of the sample second moment against the zero-mean Gaussian's, in standard errors
    (var(x_i x_j) = S_ii S_jj + S_ij^2)."""
    n = samples.shape[0]
    se = ((covariance.diag()[:, None] * covariance.diag()[None] + covariance**2) / n).sqrt()
    return (samples.T @ samples / n - covariance) / se


def test_average_pool_matrix_is_the_block_mean():
    x = torch.randn(3, 1, 8, 8, dtype=torch.float64)
    pooled = torch.nn.functional.avg_pool2d(x, 2).reshape(3, -1)
    assert torch.allclose(x.reshape(3, -1) @ average_pool_matrix(8, 2).T, pooled)


def test_two_stages_with_exact_scores_reproduce_the_joint_law(cascade):
    """At augmentation 0 the (x, low) pairs have the closed-form joint covariance (80 x 80 entries within 5 SE:
    ~3,000 entries, so a 5-sigma bound fails by chance with probability ~2e-3); each stage's NFE is reported."""
    result, joint = _draw(cascade, 0.0)
    assert result.nfe == {"base": 31, "super_resolution": 31}
    assert _z_scores(joint, cascade.joint_covariance()).abs().max() < 5


def test_augmented_condition_keeps_the_image_law_and_a_wrong_level_is_seen(cascade):
    """At level 0.3 the images keep their law N(0, Sigma) (x given the augmented condition, then the condition
    integrated out); telling the stage level 0 for a condition augmented at 0.3 distorts it far beyond 5 SE."""
    _, joint = _draw(cascade, 0.3)
    assert _z_scores(joint[:, :64], cascade.covariance).abs().max() < 5
    _, wrong = _draw(cascade, 0.3, bound_level=0.0)
    assert _z_scores(wrong[:, :64], cascade.covariance).abs().max() > 8


# ------------------------------------------------------------------ the network, the objective, the CLI


def _unet(channels: int, size: int, **kwargs) -> dict:
    kw = {"in_channels": channels, "image_size": size, "ch": 8, "ch_mult": [1], "num_res_blocks": 1,
          "attn_resolutions": [], "groups": 4, **kwargs}  # fmt: skip
    return {"name": "ddpm_unet", "kwargs": kw}


def _train(steps: int = 4) -> dict:
    return {"steps": steps, "batch_size": 64, "warmup": 2, "log_every": 2, "checkpoint_every": 0, "weighting": "eps"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A digits cascade: a 4x4 base and an 8x8 super-resolution stage that names it, a few steps each."""
    folder = tmp_path_factory.mktemp("cascade")
    base = config_from_dict({"model": _unet(1, 4), "data": {"kind": "image", "name": "digits", "resolution": 4},
                             "train": _train()})  # fmt: skip
    Trainer(base, folder / "base", progress=False).train()
    sr = config_from_dict({"model": _unet(1, 8, cond_channels=1), "data": {"kind": "image", "name": "digits"},
                           "train": _train(), "stage": {"low_resolution": 4, "base": "base",
                                                        "max_augmentation": 0.4, "augmentation": 0.1}})  # fmt: skip
    trainer = Trainer(sr, folder / "sr", progress=False)
    batch = trainer.data.batch(0, torch.Generator().manual_seed(0))
    assert batch.x0.shape == (64, 1, 8, 8) and batch.low.shape == (64, 1, 4, 4)
    trainer.train()
    (folder / "sr" / "base").symlink_to(folder / "base")  # the run names its base by a path inside its folder
    return folder


def test_super_resolution_model_declares_and_binds_its_condition(runs):
    model, config, _ = load_score_model(runs / "sr")
    assert spec_of(model).condition and config.stage.low_resolution == 4
    with pytest.raises(ValueError, match="super-resolution stage: bind its low-resolution condition first"):
        sample(model.sde, model, (2, 1, 8, 8), "ddim", steps=2)
    low = torch.zeros(2, 1, 4, 4)
    bound = model.given(low, 0.1)
    assert not spec_of(bound).condition
    x = sample(model.sde, bound, (2, 1, 8, 8), "ddim", steps=2, generator=torch.Generator()).x
    assert x.shape == (2, 1, 8, 8) and torch.isfinite(x).all()
    with pytest.raises(ValueError, match="given 2 low-resolution conditions and is called on 3 rows"):
        bound(torch.zeros(3, 1, 8, 8), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match="needs its low-resolution condition"):
        model.net(torch.zeros(2, 1, 8, 8), torch.full((2,), 0.5))


def test_sample_cascade_refusals(runs):
    base, _, _ = load_score_model(runs / "base")
    sr, _, _ = load_score_model(runs / "sr")
    with pytest.raises(ValueError, match="mismatched cascade stages"):
        sample_cascade(base.sde, base, sr.sde, sr, 2, (1, 3, 3), (1, 8, 8))
    with pytest.raises(ValueError, match=r"level must lie in \[0, 0.4\]"):
        sample_cascade(base.sde, base, sr.sde, sr, 2, (1, 4, 4), (1, 8, 8), level=0.5, max_level=0.4)
    with pytest.raises(ValueError, match="declares no condition"):
        sample_cascade(base.sde, base, base.sde, base, 2, (1, 4, 4), (1, 4, 4))


def test_super_resolution_config_needs_its_condition_channels():
    with pytest.raises(ConfigError, match="model.kwargs.cond_channels"):
        config_from_dict({"model": _unet(1, 8), "data": {"kind": "image", "name": "digits"},
                          "stage": {"low_resolution": 4}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"stage.augmentation.*must lie in \[0, max_augmentation = 0.5\]"):
        config_from_dict({"stage": {"augmentation": 0.7}})


def test_cli_samples_the_whole_cascade(runs, tmp_path, capsys):
    out = tmp_path / "c.npz"
    args = ["sample", "--checkpoint", str(runs / "sr"), "-n", "6", "--steps", "3", "--base-steps", "3", "--json"]
    assert main([*args, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["cascade"]["nfe"]["base"] > 0 and summary["cascade"]["nfe"]["super_resolution"] > 0
    assert summary["cascade"]["level"] == 0.1
    saved = np.load(out)
    assert saved["x"].shape == (6, 1, 8, 8) and saved["low"].shape == (6, 1, 4, 4)
    assert out.with_suffix(".png").is_file()
    bad = tmp_path / "bad.npz"
    assert main([*args, "--out", str(bad), "--augmentation", "0.9"]) == 2
    one_line(capsys, "--augmentation 0.9 lies outside the level range the run trained on, [0, 0.4]")
    assert main([*args, "--out", str(bad), "--base", str(runs / "sr")]) == 2
    one_line(capsys, "draws digits at 8x8, this stage is conditioned on digits at 4x4")
    assert main([*args, "--out", str(bad), "--base", str(tmp_path / "nowhere")]) == 2
    one_line(capsys, "does not exist")
    assert not bad.exists() and not bad.with_suffix(".png").exists()
    lik = tmp_path / "l.json"
    args = ["likelihood", "--checkpoint", str(runs / "sr"), "-n", "3", "--method", "ei_fixed", "--json"]
    assert main([*args, "--out", str(lik)]) == 0
    bound = json.loads(lik.read_text())["cascade_bound"]
    assert set(bound["terms"]) == {"super_resolution", "base", "augmentation"} and bound["level"] == 0.1
    assert bound["bpd"] == pytest.approx(sum(bound["terms"].values()) + bound["offset"], rel=1e-9)


def test_cascade_bound_with_exact_stages_meets_the_exact_likelihood(cascade):
    """With the exact base and super-resolution scores, q(augmented | x) = N(Ax, s^2) is the true posterior, so the
    bound's expectation is -log p(x) itself: the mean gap over 300 images within 4 standard errors of 0 (the
    augmentation draw and the Hutchinson probe are the noise). A stage told the wrong level pays far more."""
    import math

    from scoresde.likelihood import cascade_bits_per_dim

    sde = VPSDE()
    x = cascade.data.sample(300, torch.Generator().manual_seed(5)).reshape(300, 1, 8, 8)
    exact = -cascade.data.log_prob(x.reshape(300, -1)) / (64 * math.log(2))
    stage = cascade.super_resolution(sde)

    def gap(model):
        result = cascade_bits_per_dim(sde, cascade.low.score_fn(sde), sde, model, x, 0.2, 4,
                                      generator=torch.Generator().manual_seed(6), divergence="hutchinson")  # fmt: skip
        assert set(result.terms) == {"super_resolution", "base", "augmentation"} and result.offset == 0
        assert sum(result.terms.values()) == pytest.approx(result.bpd, abs=1e-9)
        difference = result.per_sample - exact
        return float(difference.mean()), float(difference.std()) / 300**0.5

    mean, se = gap(stage)
    assert abs(mean) < 4 * se
    given = stage.given
    stage.given = lambda low, level: given(low, 0.05)  # the condition read as if barely augmented
    wrong, _ = gap(stage)
    assert wrong - mean > 10 * se
    with pytest.raises(ValueError, match="level must be > 0"):
        cascade_bits_per_dim(sde, cascade.low.score_fn(sde), sde, stage, x, 0.0, 4)


def test_sampling_and_bounding_a_cascade_are_library_calls(runs):
    """`sample_cascade_run` draws what `sample_cascade` draws with the base `cascade_base` finds; `run_bound` is the
    cascade's bound with it (what `scoresde sample` / `likelihood` do)."""
    from scoresde.likelihood import cascade_bits_per_dim
    from scoresde.training import cascade_base, run_bound, sample_cascade_run
    from scoresde.training.stages import run_images

    model, config, _ = load_score_model(runs / "sr")
    base = cascade_base(config, runs / "sr", level=0.1)
    assert (base.level, base.max_level, base.config.data.resolution) == (0.1, 0.4, 4)
    steps = {"steps": 2}
    got = sample_cascade_run(model, base, 3, ((1, 4, 4), (1, 8, 8)), options=steps, base_options=steps, seed=5)
    want = sample_cascade(base.model.sde, base.model, model.sde, model, 3, (1, 4, 4), (1, 8, 8), level=0.1,
                          max_level=0.4, options=steps, base_options=steps,
                          generator=torch.Generator().manual_seed(5))  # fmt: skip
    assert torch.equal(got.x, want.x) and torch.equal(got.low, want.low) and got.nfe == want.nfe
    x = run_images(config.data, "test")[:2]
    options = {"method": "ei_fixed", "steps": 3, "dtype": torch.float32, "divergence": "hutchinson"}
    bound = run_bound(model, config, runs / "sr", x, base=base, generator=torch.Generator().manual_seed(0), **options)
    direct = cascade_bits_per_dim(base.model.sde, base.model, model.sde, model, x, 0.1, 4, config.data.transform(),
                                  generator=torch.Generator().manual_seed(0), **options)  # fmt: skip
    assert bound.bpd == direct.bpd and set(bound.terms) == set(direct.terms)
    with pytest.raises(ValueError, match="integrates over a conditioning augmentation in"):
        cascade_base(config, runs / "sr", level=0.0, positive=True)
