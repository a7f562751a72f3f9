"""Score networks and the parameterisations: shapes, the conversions against the oracle, bad input."""

import pytest
import torch

from scoresde import VESDE, VPSDE, toy_dataset
from scoresde.models import NCSN, DDPMUNet, ScoreMLP, ScoreModel, create_model, models


@pytest.mark.parametrize(
    "net, shape",
    [
        (lambda: ScoreMLP(dim=3, width=32, depth=2), (4, 3)),
        (lambda: ScoreMLP(dim=2, width=32, depth=1, embedding="sinusoidal"), (4, 2)),
        (
            lambda: DDPMUNet(in_channels=1, image_size=8, ch=16, ch_mult=(1, 2), attn_resolutions=(4,), groups=8),
            (3, 1, 8, 8),
        ),
        (
            lambda: DDPMUNet(in_channels=3, image_size=16, ch=16, ch_mult=(1, 2, 2), attn_resolutions=(8,), groups=8),
            (2, 3, 16, 16),
        ),
        (lambda: NCSN(in_channels=1, image_size=8, ch=16, groups=8), (3, 1, 8, 8)),
        (lambda: NCSN(in_channels=1, image_size=28, ch=8, groups=4), (2, 1, 28, 28)),
    ],
)
def test_networks_map_data_and_time_to_data_shape_and_depend_on_time(net, shape):
    torch.manual_seed(0)
    model = net()
    for p in model.parameters():  # zero-initialised output layers would hide the time dependence
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(shape)
    out = model(x, torch.full((shape[0],), 0.3))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, model(x, torch.full((shape[0],), 0.7)))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_published_cifar10_ddpm_size():
    """Ho et al. 2020 report 35.7M parameters for the CIFAR-10 model."""
    net = DDPMUNet(in_channels=3, image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
    assert abs(sum(p.numel() for p in net.parameters()) / 1e6 - 35.7) < 0.05


class _Oracle(torch.nn.Module):
    """A 'network' returning the exact eps, score or x0 of the oracle, to test the conversions."""

    def __init__(self, mix, sde, kind):
        super().__init__()
        self.mix, self.sde, self.kind = mix, sde, kind

    def forward(self, x, t):
        score = self.mix.marginal_score(self.sde, x, t)
        sigma, alpha = self.sde.sigma(t)[:, None], self.sde.alpha(t)[:, None]
        return {"score": score, "eps": -sigma * score, "x0": (x + sigma**2 * score) / alpha}[self.kind]


@pytest.mark.parametrize("sde", [VPSDE(), VESDE()], ids=["vp", "ve"])
@pytest.mark.parametrize("kind", ["eps", "score", "x0"])
def test_parameterizations_recover_the_exact_score(sde, kind):
    """Each target of the exact score (eps = -sigma s, x0 by Tweedie) is turned back into s (float64, round-off)."""
    mix = toy_dataset("gmm").mixture
    x = torch.randn(64, 2, dtype=torch.float64)
    t = torch.linspace(0.05, 0.9, 64, dtype=torch.float64)
    model = ScoreModel(_Oracle(mix, sde, kind), sde, kind)
    torch.testing.assert_close(model(x, t), mix.marginal_score(sde, x, t), rtol=1e-9, atol=1e-9)


def test_bad_input_and_unknown_names():
    with pytest.raises(ValueError, match="unknown model .resnet.; valid names are: ddpm_unet, kl_autoencoder, mlp"):
        create_model("resnet")
    with pytest.raises(ValueError, match="unknown parameterization 'velocity'; valid names are: edm, eps, score, v"):
        ScoreModel(ScoreMLP(), VPSDE(), "velocity")
    with pytest.raises(ValueError, match="'v' parameterisation needs a variance-preserving SDE"):
        ScoreModel(ScoreMLP(), VESDE(), "v")
    with pytest.raises(ValueError, match=r"ScoreMLP expects x of shape \[B, 2\]"):
        ScoreMLP()(torch.randn(3, 4), torch.rand(3))
    with pytest.raises(ValueError, match="divisible by 2"):
        DDPMUNet(image_size=6, ch_mult=(1, 2, 2))
    with pytest.raises(ValueError, match=r"DDPMUNet expects x of shape \[B, 1, 8, 8\]"):
        DDPMUNet(ch=16, groups=8)(torch.randn(2, 1, 16, 16), torch.rand(2))
    with pytest.raises(ValueError, match="width must be an integer >= 1, got 0"):
        ScoreMLP(width=0)
    assert models() == ["ddpm_unet", "kl_autoencoder", "mlp", "ncsn"]
