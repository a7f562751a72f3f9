"""Latent score models: the discretised decoder, the latent bound against the linear-Gaussian closed form, the KL
autoencoder trained through the Trainer (exact resume, the scaling factor), latent runs that decode, and the
refusals (a missing or foreign autoencoder)."""

import math

import pytest
import torch

from scoresde import sample
from scoresde.config.schema import config_from_dict
from scoresde.datasets import DataTransform
from scoresde.likelihood import decoder_log_prob, latent_bits_per_dim
from scoresde.models import KLAutoencoder, LatentCodec, LatentModel, spec_of
from scoresde.oracles import LinearGaussianAutoencoder
from scoresde.processes.vp import VPSDE
from scoresde.training import Trainer
from scoresde.training.checkpoint import CheckpointError, load_checkpoint
from scoresde.training.kinds import run_kind
from scoresde.training.runs import load_score_model
from scoresde.training.stages import LATENTS_FILE, encode_images, load_autoencoder, run_images

# ------------------------------------------------------------------ the discretised decoder


def test_discretised_decoder_is_a_probability_over_the_levels():
    """Summed over all K levels of one pixel the probabilities are 1 (the end bins are open), and each bin is the
    normal CDF's difference over the level's interval of the model range (mpmath at 200 digits: double-precision CDF
    differences lose the far bins)."""
    import mpmath

    mpmath.mp.dps = 200
    transform = DataTransform(17, -1.0, 1.0)
    levels = torch.arange(17, dtype=torch.float64)[:, None]
    for mean, scale in ((0.13, 0.05), (-0.97, 0.2), (1.4, 0.01)):
        logp = decoder_log_prob(levels, torch.full_like(levels, mean), torch.full_like(levels, scale), transform)
        assert abs(float(logp.exp().sum()) - 1) < 1e-12
        edges = [mpmath.mpf(float(e)) for e in transform.to_model(torch.arange(18, dtype=torch.float64))]
        edges[0], edges[-1] = -mpmath.inf, mpmath.inf
        cdf = [mpmath.ncdf((e - mean) / scale) for e in edges]
        exact = torch.tensor([float(mpmath.log(b - a)) for a, b in zip(cdf[:-1], cdf[1:])], dtype=torch.float64)
        assert torch.allclose(logp, exact, rtol=1e-10, atol=1e-10)


def test_discretised_decoder_far_tails_and_gradients_are_finite():
    """A mean 40 scales from its bin keeps its digits (log of ~1e-350) and every gradient is finite, the open end
    bins included (an infinite edge reaching a gradient gave NaN)."""
    transform = DataTransform(256, -1.0, 1.0)
    x = torch.tensor([[0.0, 128.0, 255.0]], dtype=torch.float64)
    mean = torch.tensor([[0.9, -0.99, -0.6]], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor(math.log(0.04), dtype=torch.float64, requires_grad=True)
    logp = decoder_log_prob(x, mean, log_scale.exp().expand_as(mean), transform)
    assert torch.isfinite(logp).all() and float(logp.detach()) < -700
    logp.sum().backward()
    assert torch.isfinite(mean.grad).all() and torch.isfinite(log_scale.grad)


def test_continuous_decoder_is_the_gaussian_density():
    x, mean = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    scale = torch.full_like(x, 0.7)
    expected = torch.distributions.Normal(mean, scale).log_prob(x).sum(1)
    assert torch.allclose(decoder_log_prob(x, mean, scale), expected)


# ------------------------------------------------------------------ the bound against the closed form


@pytest.fixture(scope="module")
def oracle():
    torch.manual_seed(0)
    A = torch.randn(6, 6, dtype=torch.float64)
    return LinearGaussianAutoencoder(A @ A.T / 6 + 0.05 * torch.eye(6, dtype=torch.float64), 3, 0.2, 0.3)


def test_latent_bound_with_the_exact_latent_score_is_the_closed_form(oracle):
    """Each term of the code's bound (the prior through the PF-ODE with the exact latent score) within 4 standard
    errors of the closed form's expectation over the data; the encoder term exactly; the bound above the entropy."""
    sde = VPSDE()
    generator = torch.Generator().manual_seed(1)
    x = oracle.data.sample(1500, generator)
    result = latent_bits_per_dim(sde, oracle.latent.score_fn(sde), oracle, x, generator=generator)
    closed = oracle.bound_terms()
    to_bits = 1 / (oracle.D * math.log(2))
    for term in ("prior", "reconstruction"):
        assert abs(result.terms[term] - closed[term] * to_bits) < 4 * result.terms_standard_error[term] + 1e-4, term
    assert result.terms["encoder"] == pytest.approx(closed["encoder"] * to_bits, abs=1e-12)
    assert sum(result.terms.values()) == pytest.approx(result.bpd, abs=1e-12)
    assert abs(result.bpd - closed["bound"] * to_bits) < 4 * result.bpd_standard_error
    assert closed["bound"] > closed["data_entropy"]
    assert result.integration_error is not None and result.integration_error < 1e-3


def test_latent_bound_meets_the_exact_likelihood_in_the_ppca_limit():
    """Discarded eigenvalues equal to the encoder and decoder noise s^2 (probabilistic PCA): the code's bound exceeds
    the data's entropy by the closed-form 1/2 sum log(1 + s^2/lambda_i) (within 4 SE), which vanishes with s."""
    torch.manual_seed(1)
    U = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))[0]
    sde = VPSDE()
    gaps = []
    for s in (0.3, 0.05):
        top = torch.tensor([3.0, 2.0, 1.5], dtype=torch.float64)
        eigenvalues = torch.cat([top, torch.full((3,), s**2, dtype=torch.float64)])
        oracle = LinearGaussianAutoencoder(U @ torch.diag(eigenvalues) @ U.T, 3, s, s)
        x = oracle.data.sample(1000, torch.Generator().manual_seed(2))
        result = latent_bits_per_dim(sde, oracle.latent.score_fn(sde), oracle, x, generator=torch.Generator())
        gap = 0.5 * float(torch.log1p(s**2 / top).sum()) / (6 * math.log(2))
        entropy = oracle.bound_terms()["data_entropy"] / (6 * math.log(2))
        assert abs(result.bpd - (entropy + gap)) < 4 * result.bpd_standard_error + 1e-4
        gaps.append(gap)
    assert gaps[1] < 0.03 * gaps[0]


def test_latent_bound_pays_for_a_wrong_latent_prior(oracle):
    """A latent model with the wrong scale (the latents' law widened) costs its KL in the prior term: the code's
    figure moves by the closed form's difference, which a test of the code against itself could not see."""
    from scoresde.oracles import GaussianMixture

    sde = VPSDE()
    wide = GaussianMixture([1.0], torch.zeros(1, 3, dtype=torch.float64), 2.0 * oracle.latent.covs)
    x = oracle.data.sample(1000, torch.Generator().manual_seed(2))
    right = latent_bits_per_dim(sde, oracle.latent.score_fn(sde), oracle, x, generator=torch.Generator().manual_seed(3))
    wrong = latent_bits_per_dim(sde, wide.score_fn(sde), oracle, x, generator=torch.Generator().manual_seed(3))
    to_bits = 1 / (oracle.D * math.log(2))
    expected = (oracle.bound_terms(wide)["prior"] - oracle.bound_terms()["prior"]) * to_bits
    assert expected > 0.05
    difference = wrong.terms["prior"] - right.terms["prior"]  # the same latent draws: the noise mostly cancels
    assert abs(difference - expected) < 0.1 * expected


def test_inpainting_refuses_a_latent_model(oracle):
    from scoresde import inpaint

    sde = VPSDE()
    model = LatentModel(oracle.latent.score_fn(sde), LatentCodec(oracle))
    with pytest.raises(ValueError, match="this latent model samples latents"):
        inpaint(sde, model, torch.zeros(2, 6), torch.ones(2, 6, dtype=torch.bool))


def test_latent_model_samples_decode_to_the_closed_form_law(oracle):
    """`sample` on a `LatentModel` (the exact latent score, the oracle as its codec) returns latents and their
    decoded images; the decoded means W z have covariance W (Lambda_k + s_e^2) W^T within 4 standard errors."""
    sde = VPSDE()
    model = LatentModel(oracle.latent.score_fn(sde), LatentCodec(oracle))
    assert spec_of(model).decoder
    result = sample(sde, model, (4000, 3), "dpm_solver", steps=25, generator=torch.Generator().manual_seed(4),
                    dtype=torch.float64)  # fmt: skip
    assert result.x.shape == (4000, 3) and result.decoded.shape == (4000, 6)
    assert torch.equal(result.images, result.decoded)
    expected = oracle.W @ oracle.latent.covs[0] @ oracle.W.T
    got = result.decoded.T @ result.decoded / 4000
    se = ((expected.diag()[:, None] * expected.diag()[None] + expected**2) / 4000).sqrt()
    assert ((got - expected).abs() / se).max() < 4.5


# ------------------------------------------------------------------ the KL autoencoder and its runs


def _autoencoder_config(steps: int = 6, **train) -> dict:
    return {
        "model": {
            "name": "kl_autoencoder",
            "kwargs": {"in_channels": 1, "image_size": 8, "latent_channels": 2, "downsample": 2, "ch": 8, "groups": 4},
        },  # fmt: skip
        "data": {"kind": "image", "name": "digits"},
        "train": {
            "steps": steps,
            "batch_size": 64,
            "lr": 2e-3,
            "warmup": 2,
            "log_every": 2,
            "checkpoint_every": 0,
            **train,
        },  # fmt: skip
    }


def _latent_config(autoencoder: str, steps: int = 4) -> dict:
    return {
        "model": {
            "name": "ddpm_unet",
            "kwargs": {
                "in_channels": 2,
                "image_size": 4,
                "ch": 8,
                "ch_mult": [1],
                "num_res_blocks": 1,
                "attn_resolutions": [],
                "groups": 4,
            },
        },  # fmt: skip
        "data": {"kind": "image", "name": "digits"},
        "train": {
            "steps": steps,
            "batch_size": 64,
            "warmup": 2,
            "log_every": 2,
            "checkpoint_every": 0,
            "weighting": "eps",
        },  # fmt: skip
        "stage": {"autoencoder": autoencoder},
    }


@pytest.fixture(scope="module")
def autoencoder_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ae")
    Trainer(config_from_dict(_autoencoder_config(30)), folder, progress=False).train()
    return folder


def test_autoencoder_shapes_and_bad_settings():
    ae = KLAutoencoder(in_channels=1, image_size=28, latent_channels=3, downsample=4, ch=8, groups=4)
    mean, std = ae.posterior(torch.randn(2, 1, 28, 28))
    assert mean.shape == std.shape == (2, 3, 7, 7) and bool((std > 0).all())
    assert ae.decode(mean).shape == (2, 1, 28, 28) and ae.latent_shape == (3, 7, 7)
    with pytest.raises(ValueError, match="power of two"):
        KLAutoencoder(downsample=3)
    with pytest.raises(ValueError, match="divisible by downsample 8"):
        KLAutoencoder(image_size=28, downsample=8)
    with pytest.raises(ValueError, match=r"images must have shape \[B, 1, 28, 28\]"):
        ae.posterior(torch.randn(2, 1, 8, 8))


def test_autoencoder_trains_through_the_trainer_and_resumes_exactly(autoencoder_run, tmp_path):
    """The objective falls from its start (a likelihood: nats/dim), and 3 + 3 steps with a restart give the same
    weights as 6 in one run (the objective's draws come from the step's generator)."""
    import csv

    losses = [float(r["loss"]) for r in csv.DictReader((autoencoder_run / "metrics.csv").open())]
    assert losses[-1] < 0.7 * losses[0]
    config = config_from_dict(_autoencoder_config(6))
    Trainer(config, tmp_path / "one", progress=False).train()
    Trainer(config, tmp_path / "two", progress=False).train(3)
    Trainer(config, tmp_path / "two", progress=False).train()
    a, b = (load_checkpoint(tmp_path / name)["model"] for name in ("one", "two"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_scaling_factor_is_measured_and_stored_with_the_run(autoencoder_run):
    """c = 1/std of the training latents, written to latents.json; the scaled latents of the training images have
    unit standard deviation (the same draw)."""
    codec, config = load_autoencoder(autoencoder_run)
    assert (autoencoder_run / LATENTS_FILE).is_file() and run_kind(config).name == "autoencoder"
    x = config.data.transform().to_model(run_images(config.data, "train") + 0.5)
    mean, std = encode_images(codec, x, "cpu")
    z = mean + std * torch.randn(mean.shape, generator=torch.Generator().manual_seed(0))
    assert float(z.double().std()) == pytest.approx(1.0, abs=1e-5)
    again, _ = load_autoencoder(autoencoder_run)  # read back from the file
    assert again.scaling_factor == codec.scaling_factor


def test_latent_run_trains_on_latents_and_decodes(autoencoder_run, tmp_path):
    folder = tmp_path / "latent"
    trainer = Trainer(config_from_dict(_latent_config(str(autoencoder_run))), folder, progress=False)
    assert trainer.data.batch(0, torch.Generator().manual_seed(0)).x0.shape == (64, 2, 4, 4)
    trainer.train()
    model, config, _ = load_score_model(folder)
    assert isinstance(model, LatentModel) and spec_of(model).decoder
    result = sample(model.sde, model, (8, *model.latent_shape), "ddim", steps=5, generator=torch.Generator())
    assert result.x.shape == (8, 2, 4, 4) and result.decoded.shape == (8, 1, 8, 8)
    test = run_images(config.data, "test")[:4]
    bound = latent_bits_per_dim(model.sde, model, model.codec, test, config.data.transform(), dtype=torch.float32,
                                generator=torch.Generator().manual_seed(0), divergence="hutchinson",
                                method="ei_fixed", steps=8)  # fmt: skip
    assert set(bound.terms) == {"prior", "encoder", "reconstruction"} and math.isfinite(bound.bpd)
    assert bound.nfe <= 4 * 9 * 2  # a fixed 8-step solve per row batch (and its error estimate)
    assert bound.terms["reconstruction"] > 0 and bound.data_dim == 64 and bound.latent_dim == 32


def test_latent_run_is_evaluated_while_training_by_its_bound_and_decoded_samples(autoencoder_run, tmp_path):
    """Evaluation while training of a latent run: its kind's bound (bits/dim, finite, with an integration error) and
    FD-digits of decoded samples, every 2 steps, in metrics.csv."""
    import csv

    from scoresde.evaluation import TrainingEvaluator

    data = _latent_config(str(autoencoder_run))
    data["train"].update(eval_every=2, eval_samples=32, eval_batch=8, eval_nfe=4)
    config = config_from_dict(data)
    evaluator = TrainingEvaluator(config, tmp_path / "latent")
    assert evaluator.names == ("eval_bpd", "eval_bpd_error", "eval_fd", "eval_seconds")
    Trainer(config, tmp_path / "latent", progress=False, eval_fn=evaluator, eval_names=evaluator.names).train()
    rows = list(csv.DictReader((tmp_path / "latent" / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["2", "4"]
    assert all(math.isfinite(float(r["eval_bpd"])) and float(r["eval_fd"]) > 0 for r in rows)


def test_latent_run_refusals(autoencoder_run, tmp_path):
    """A missing autoencoder, one trained on other data, a run that is not an autoencoder: one line each; a latent run
    whose autoencoder has gone cannot be loaded to decode."""
    with pytest.raises(ValueError, match="does not exist"):
        Trainer(config_from_dict(_latent_config(str(tmp_path / "nowhere"))), tmp_path / "a", progress=False)
    other = _latent_config(str(autoencoder_run))
    other["data"] = {"kind": "image", "name": "mnist5k"}
    with pytest.raises(ValueError, match="was trained on digits .* this run's data is mnist5k"):
        Trainer(config_from_dict(other), tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "config.yaml").exists()
    folder = tmp_path / "latent"
    Trainer(config_from_dict(_latent_config(str(autoencoder_run), 2)), folder, progress=False).train()
    with pytest.raises(ValueError, match="is not an autoencoder run"):
        load_autoencoder(folder)
    moved = tmp_path / "moved"
    autoencoder_run.rename(moved)
    try:
        with pytest.raises(CheckpointError, match="latent model that decodes with its autoencoder.*does not exist"):
            load_score_model(folder)
    finally:
        moved.rename(autoencoder_run)


# ------------------------------------------------------------------ the CLI, guidance, compare, diffusers


def test_latent_run_on_the_cli_samples_decoded_images_and_its_bound(autoencoder_run, tmp_path, capsys):
    import json

    import numpy as np

    from scoresde.app.cli import main
    from scoresde.config.io import save_config

    config = tmp_path / "latent.yaml"
    save_config(config_from_dict(_latent_config(str(autoencoder_run), 2)), config)
    run = tmp_path / "latent"
    assert main(["train", "--config", str(config), "--out", str(run), "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "s.npz"
    assert main(["sample", "--checkpoint", str(run), "-n", "5", "--steps", "3", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["latent"] is True
    saved = np.load(out)
    assert saved["x"].shape == (5, 1, 8, 8) and saved["x"].max() <= 16  # digits' levels, decoded
    lik = tmp_path / "l.json"
    args = ["likelihood", "--checkpoint", str(run), "-n", "3", "--out", str(lik), "--json", "--method", "ei_fixed"]
    assert main(args) == 0
    bound = json.loads(lik.read_text())["latent_bound"]
    assert set(bound["terms"]) == {"prior", "encoder", "reconstruction"}
    assert bound["bpd"] == pytest.approx(sum(bound["terms"].values()), rel=1e-9)
    # the autoencoder gone: the latent run cannot decode, and says so in one line; nothing is written
    moved = tmp_path / "moved"
    autoencoder_run.rename(moved)
    try:
        bad = tmp_path / "bad.npz"
        assert main(["sample", "--checkpoint", str(run), "-n", "5", "--out", str(bad)]) == 2
        err = capsys.readouterr().err
        assert "decodes with its autoencoder" in err and err.strip().count("\n") == 0 and not bad.exists()
        fresh = tmp_path / "fresh"
        assert main(["train", "--config", str(config), "--out", str(fresh), "--json"]) == 2
        assert "does not exist" in capsys.readouterr().err and not fresh.exists()
    finally:
        moved.rename(autoencoder_run)


def test_guidance_and_compare_run_in_latent_space(autoencoder_run, tmp_path):
    """A class-conditional latent model under classifier-free guidance keeps its decoder through the wrapper;
    `compare_samplers` samples latents and scores their decoded images against held-out images."""
    from scoresde.evaluation.comparison import SamplerSpec, compare_samplers
    from scoresde.evaluation.held_out import held_out
    from scoresde.samplers import ClassifierFreeGuidance

    config = _latent_config(str(autoencoder_run), 2)
    config["model"]["kwargs"]["num_classes"] = 10
    config["train"]["label_dropout"] = 0.1
    Trainer(config_from_dict(config), tmp_path / "cond", progress=False).train()
    model, run_config, _ = load_score_model(tmp_path / "cond")
    guided = ClassifierFreeGuidance(model, 3, 1.5)
    assert spec_of(guided).decoder
    result = sample(model.sde, guided, (4, *model.latent_shape), "ddim", steps=3, generator=torch.Generator())
    assert result.decoded.shape == (4, 1, 8, 8)
    data = held_out(run_config.data, 16)
    comparison = compare_samplers(model.sde, model, data.x, n=16, lineup=[SamplerSpec("ddim", "ddim", {"steps": 3})])
    run = comparison.runs[0]
    assert run.x.shape == (16, 1, 8, 8) and math.isfinite(run.energy_distance)


def test_a_diffusers_autoencoder_folder_is_accepted(tmp_path):
    """A tiny diffusers AutoencoderKL saved to disk: its scaling_factor and latent_dist are the codec's, and a
    latent run trains on it (the interop extra; skipped without diffusers)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 2,
                                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16),
                                  layers_per_block=1, latent_channels=2, norm_num_groups=4, sample_size=8,
                                  scaling_factor=0.5)  # fmt: skip
    folder = tmp_path / "vae"
    vae.save_pretrained(folder)
    codec, config = load_autoencoder(folder)
    assert config is None and codec.scaling_factor == 0.5 and codec.latent_shape == (2, 4, 4)
    x = torch.rand(3, 1, 8, 8) * 2 - 1
    with torch.no_grad():
        expected = vae.eval().encode(x).latent_dist.mean
    assert torch.allclose(codec.posterior(x)[0], 0.5 * expected, atol=1e-5)
    Trainer(config_from_dict(_latent_config(str(folder), 2)), tmp_path / "latent", progress=False).train()
    model, _, _ = load_score_model(tmp_path / "latent")
    assert sample(model.sde, model, (2, 2, 4, 4), "ddim", steps=2, generator=torch.Generator()).decoded.shape == (
        2, 1, 8, 8)  # fmt: skip


@pytest.mark.slow
def test_the_mnist_presets_train_both_stages_and_sample(tmp_path, capsys):
    """`scoresde train --preset mnist-latent` trains its autoencoder run first (inside --out, its scaling factor
    stored), `sample` decodes; `--preset mnist-cascade` trains its 14x14 base first and `sample` runs both stages."""
    import json

    import numpy as np

    from scoresde.app.cli import main

    latent, cascade = tmp_path / "latent", tmp_path / "cascade"
    assert main(["train", "--preset", "mnist-latent", "--out", str(latent), "--steps", "3", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["stages"]["autoencoder"]["scaling_factor"] > 0 and (latent / "autoencoder" / LATENTS_FILE).is_file()
    out = tmp_path / "latent.npz"
    assert main(["sample", "--checkpoint", str(latent), "-n", "4", "--steps", "2", "--out", str(out), "--json"]) == 0
    assert np.load(out)["x"].shape == (4, 1, 28, 28)
    assert main(["train", "--preset", "mnist-cascade", "--out", str(cascade), "--steps", "2", "--json"]) == 0
    capsys.readouterr()
    out = tmp_path / "cascade.npz"
    args = ["sample", "--checkpoint", str(cascade), "-n", "4", "--steps", "2", "--base-steps", "2", "--json"]
    assert main([*args, "--out", str(out)]) == 0
    saved = np.load(out)
    assert saved["x"].shape == (4, 1, 28, 28) and saved["low"].shape == (4, 1, 14, 14)


def test_feature_matching_term_uses_the_shipped_network(tmp_path):
    """With train.feature_weight the objective adds the feature-matching term on the data set's shipped network
    (gradients reach the decoder through it); without the network it is refused in one line; the CLI loads it."""
    from scoresde.app.cli import main
    from scoresde.config.io import save_config
    from scoresde.evaluation.features import feature_network
    from scoresde.training.stage_objectives import AutoencoderObjective

    transform = DataTransform(17)
    with pytest.raises(ValueError, match="needs the data set's feature network"):
        AutoencoderObjective(transform, 1e-3, 0.5)
    ae = KLAutoencoder(in_channels=1, image_size=8, latent_channels=2, downsample=2, ch=8, groups=4)
    objective = AutoencoderObjective(transform, 1e-3, 0.5, feature_network("digits"))
    x = transform.dequantize(run_images(config_from_dict(_autoencoder_config()).data, "train")[:16])
    terms = objective.terms(ae, x, torch.Generator().manual_seed(0))
    assert terms["features"].shape == (16,) and bool((terms["features"] > 0).all())
    terms["features"].sum().backward()
    assert ae.decoder[-1].weight.grad.abs().sum() > 0
    config = tmp_path / "ae.yaml"
    save_config(config_from_dict(_autoencoder_config(2, feature_weight=0.5)), config)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run"), "--json"]) == 0
    # an autoencoder run also gets its scaling factor and its pictures (reconstructions, the latent space)
    for name in ("latents.json", "reconstructions.png", "latent_space.png"):
        assert (tmp_path / "run" / name).is_file(), name
