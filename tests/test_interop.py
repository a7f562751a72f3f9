"""diffusers models as score functions: a tiny random UNet2DModel saved with save_pretrained, loaded offline.

Our score must be the model's output converted by hand at the scheduler's own timesteps; one DDPM ancestral step
of the scheduler and of our ancestral predictor must agree on the same noise; the CLI samples and measures it.
"""

import json
import subprocess
import sys

import pytest
import torch

from scoresde.app.cli import main
from scoresde.processes.vp import VPSDE, DiscreteVPSDE
from scoresde.samplers.pc import ancestral_sampling
from scoresde.samplers.thresholding import ThresholdedScore
from scoresde.training.interop import InteropError, load_diffusers

diffusers = pytest.importorskip("diffusers", reason="the diffusers extra is not installed")


def _unet(classes: int | None = None):
    torch.manual_seed(0)
    return diffusers.UNet2DModel(
        sample_size=8,
        in_channels=1,
        out_channels=1,
        layers_per_block=1,
        block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"),
        norm_num_groups=4,
        num_class_embeds=classes,
    )


def _save(folder, scheduler, unet=None):
    diffusers.DDPMPipeline(unet=unet or _unet(), scheduler=scheduler).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def eps_folder(tmp_path_factory):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    return _save(tmp_path_factory.mktemp("diffusers") / "eps", scheduler)


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("schedule", ["linear", "squaredcos_cap_v2"])
def test_score_is_the_model_output_converted_at_the_schedulers_timesteps(tmp_path, prediction, schedule):
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction)
    model, info = load_diffusers(_save(tmp_path / "m", scheduler))
    assert info.prediction_type == prediction and info.data.name == "digits" and isinstance(model.sde, DiscreteVPSDE)
    unet = diffusers.UNet2DModel.from_pretrained(tmp_path / "m" / "unet")
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    abar = scheduler.alphas_cumprod.double()
    for k in (0, 10, 500, 999):
        with torch.no_grad():
            out = unet(x, k).sample.double()
            ours = model(x, torch.full((3,), (k + 1) / 1000)).double()
        a, s = abar[k].sqrt(), (1 - abar[k]).sqrt()
        eps = {"epsilon": out, "v_prediction": a * out + s * x, "sample": (x - a * out) / s}[prediction]
        expected = -eps / s
        assert torch.allclose(ours, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())), (k, prediction)


@pytest.mark.parametrize("clip", [False, True])
def test_one_ancestral_step_equals_the_ddpm_schedulers(tmp_path, clip):
    """DDPMScheduler.step (posterior mean and variance beta-tilde, x0 clipped to [-1, 1] when clip_sample) against
    our ancestral predictor from t = (k + 1)/N to k/N on the same noise (our x0_range clip for clip_sample)."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, clip_sample=clip)
    model, _ = load_diffusers(_save(tmp_path / "m", scheduler))
    score = ThresholdedScore(model.sde, model, -1.0, 1.0) if clip else model
    reverse = model.sde.reverse(score)
    x = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(2)) * 1.5
    for k in (999, 400, 37, 1):
        with torch.no_grad():
            eps = model.net.unet(x, k).sample
            theirs = scheduler.step(eps, k, x, generator=torch.Generator().manual_seed(3)).prev_sample
            t, t_next = torch.full((4,), (k + 1) / 1000), torch.full((4,), k / 1000)
            ours, _ = ancestral_sampling(reverse, x, t, t_next, generator=torch.Generator().manual_seed(3))
        assert torch.allclose(ours, theirs, rtol=1e-4, atol=1e-4), (k, float((ours - theirs).abs().max()))


def test_the_discrete_sde_matches_the_chain_and_the_continuous_vp():
    """log alpha^2 hits log alphabar_k at t = (k + 1)/N exactly; for DDPM's linear betas the chain is within 1e-3 of
    the continuous VP SDE (beta 0.1 to 20) it discretises; log-SNR inverts."""
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000)
    sde = DiscreteVPSDE(scheduler.alphas_cumprod)
    t = torch.arange(1, 1001, dtype=torch.float64) / 1000
    assert torch.allclose(sde.alpha(t) ** 2, scheduler.alphas_cumprod.double(), rtol=1e-12, atol=0)
    assert torch.allclose(sde.alpha(t), VPSDE().alpha(t), atol=1e-3)
    assert torch.allclose(sde.t_from_log_snr(sde.log_snr(t)), t, atol=1e-12)
    assert torch.allclose(sde.timestep(t[:3]), torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="strictly decreasing"):
        DiscreteVPSDE([0.5, 0.9])


@pytest.mark.slow  # 8 s: four commands on an imported model (the default tier keeps its score and DDPM step tests)
def test_cli_samples_measures_inpaints_and_compares_a_diffusers_model(eps_folder, tmp_path, capsys):
    args = ["--checkpoint", str(eps_folder), "--json"]
    assert (
        main(["sample", *args, "--sampler", "ddim", "--steps", "4", "-n", "24", "--out", str(tmp_path / "s.npz")]) == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert result["checkpoint_step"] is None and result["nfe"] == 5 and result["image_quality"]["label"] == "FD-digits"
    likelihood = ["likelihood", *args, "-n", "4", "--no-rigorous", "--out", str(tmp_path / "l.json")]
    assert main(likelihood) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["data"] == "digits" and summary["bits_per_dim"] > 0
    painting = ["inpaint", *args, "--image", "test", "--mask", "left-half", "-n", "3", "--steps", "5"]
    assert main([*painting, "--out", str(tmp_path / "p.npz")]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    assert main(["compare", *args, "--quick", "-n", "24", "--out", str(tmp_path / "c")]) == 0
    runs = json.loads((tmp_path / "c" / "compare.json").read_text())["runs"]
    assert len(runs) >= 10 and all(r["image_quality"]["label"] == "FD-digits" for r in runs)


def test_folders_that_are_not_supported_diffusers_models_are_one_line_errors(eps_folder, tmp_path, capsys):
    with pytest.raises(InteropError, match="not a diffusers model folder"):
        load_diffusers(tmp_path)
    pndm = tmp_path / "pndm"
    _save(pndm, diffusers.PNDMScheduler())
    with pytest.raises(InteropError, match="supported: DDPMScheduler, DDIMScheduler"):
        load_diffusers(pndm)
    config = json.loads((eps_folder / "scheduler" / "scheduler_config.json").read_text())
    bad = tmp_path / "bad"
    _save(bad, diffusers.DDPMScheduler())
    (bad / "scheduler" / "scheduler_config.json").write_text(json.dumps({**config, "prediction_type": "flow"}))
    with pytest.raises(InteropError, match="supported: epsilon, v_prediction, sample"):
        load_diffusers(bad)
    capsys.readouterr()
    assert main(["sample", "--checkpoint", str(pndm), "-n", "4", "--out", str(tmp_path / "x.npz")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "DDPMScheduler" in err and "Traceback" not in err


@pytest.mark.slow  # 7 s: a process of its own
def test_a_config_that_does_not_fit_the_weights_is_one_line_and_loading_is_quiet(eps_folder, tmp_path, capsys):
    """diffusers' own warnings (accelerate missing, a dtype cast) are not the user's business; a config.json edited
    away from its weights is one line naming the first tensor that does not fit (it was a 147-line traceback)."""
    args = ["sample", "--checkpoint", str(eps_folder), "-n", "2", "--steps", "2", "--json"]
    proc = subprocess.run(  # a process of its own: diffusers' log handler writes to the stderr it found at import
        [sys.executable, "-m", "scoresde", *args, "--out", str(tmp_path / "x.npz")], capture_output=True, text=True
    )
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr  # not a word from diffusers
    bad = tmp_path / "bad"
    _save(bad, diffusers.DDPMScheduler())
    config = json.loads((bad / "unet" / "config.json").read_text())
    (bad / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [8, 32]}))
    with pytest.raises(InteropError, match="the weights do not fit its config.json \\(size mismatch for "):
        load_diffusers(bad)
    assert main(["sample", "--checkpoint", str(bad), "-n", "2", "--out", str(tmp_path / "y.npz")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "the weights do not fit its config.json" in err and "Traceback" not in err


def test_a_folder_without_its_weights_file_names_the_missing_file(tmp_path, capsys):
    """The config is fine, the weights file is gone: one line naming it (it was diffusers' line, then ours blaming the
    config), for `sample` and `likelihood`, nothing written."""
    folder = _save(tmp_path / "model", diffusers.DDPMScheduler())
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(InteropError, match="diffusion_pytorch_model.safetensors is missing"):
        load_diffusers(folder)
    for command in ("sample", "likelihood"):
        out = tmp_path / f"{command}.out"
        assert main([command, "--checkpoint", str(folder), "-n", "2", "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and "unet/diffusion_pytorch_model.safetensors is missing" in err, err
        assert "config.json (" not in err and not out.exists()
