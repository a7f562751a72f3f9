"""Flow maps against closed forms: for Gaussian data the probability-flow map is affine and known for every (t, s)
(`GaussianMixture.flow_map`, checked here against a fine RK4 solve), so the map's exact average velocity can be
plugged into both objectives, the sampler and the likelihood, and a trained map measured against it."""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, FlowMapModel, GaussianMixture, SubVPSDE, log_likelihood, sample
from scoresde.config.schema import config_from_dict
from scoresde.models import ConsistencyModel, ScoreMLP
from scoresde.training import Trainer
from scoresde.training.flow_map import flow_map_loss
from scoresde.training.objectives import build_objective

MEAN = torch.tensor([0.5, -0.3], dtype=torch.float64)
COV = torch.tensor([[0.5, 0.2], [0.2, 0.3]], dtype=torch.float64)
GAUSS = GaussianMixture([1.0], [MEAN.tolist()], [COV.tolist()])
SIGMA_DATA = 0.7
SDES = {"vp": VPSDE, "subvp": SubVPSDE, "ve": lambda: VESDE(sigma_min=0.01, sigma_max=10.0)}


class ExactAverageVelocity(torch.nn.Module):
    r"""The exact average velocity of the Gaussian as a two-time network in rectified-flow time (it undoes the
    model's input scaling): $y = z/(1 - \tau_t)$, the closed-form map $y_s = \mu + U R U^\top(y - \mu)$ with
    $R = \mathrm{diag}\sqrt{(\lambda + \tilde\sigma_s^2)/(\lambda + \tilde\sigma_t^2)}$, $z_s = (1 - \tau_s)y_s$,
    $u = (z_s - z)/(\tau_s - \tau_t)$; on the diagonal the velocity $(1 + \tilde\sigma)\hat\epsilon - y$ with
    $\hat\epsilon = \tilde\sigma(\Sigma + \tilde\sigma^2)^{-1}(y - \mu)$. ``offset`` shifts it."""

    two_times = True

    def __init__(self, offset: float = 0.0):
        super().__init__()
        self.offset = offset
        self.eigenvalues, self.U = torch.linalg.eigh(COV)

    def forward(self, x, tau_t, s):
        tau_s = s
        dtype = x.dtype
        lam, U, mu = self.eigenvalues.to(dtype), self.U.to(dtype), MEAN.to(dtype)
        c_in = torch.rsqrt((1 - tau_t) ** 2 * SIGMA_DATA**2 + tau_t**2)[:, None]
        z = x / c_in
        y = z / (1 - tau_t[:, None])
        level_t, level_s = (tau_t / (1 - tau_t))[:, None], (tau_s / (1 - tau_s))[:, None]
        w = (y - mu) @ U
        y_s = mu + (w * torch.sqrt((lam + level_s**2) / (lam + level_t**2))) @ U.T
        gap = (tau_s - tau_t)[:, None]
        apart = gap.abs() > 1e-12
        general = ((1 - tau_s[:, None]) * y_s - z) / torch.where(apart, gap, torch.ones_like(gap))
        eps_hat = (w * level_t / (lam + level_t**2)) @ U.T
        diagonal = (1 + level_t) * eps_hat - y
        return torch.where(apart, general, diagonal) + self.offset


def exact_model(sde, offset: float = 0.0) -> FlowMapModel:
    return FlowMapModel(ExactAverageVelocity(offset), sde, SIGMA_DATA)


@pytest.mark.parametrize("sde_name", list(SDES))
def test_the_closed_form_map_is_the_ode_solution_and_the_exact_model_is_it(sde_name):
    """`GaussianMixture.flow_map` against RK4 on the exact probability-flow ODE (400 steps, float64: 1e-10; measured
    3e-11 at worst, falling 16x a halving of the step, RK4's order), and
    the model built on the exact average velocity maps like it for every (t, s), the diagonal included, where the
    map is the identity exactly."""
    sde = SDES[sde_name]()
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t0, s0, n = 0.8, 0.2, 400

    def velocity(x, t):
        times = torch.full((x.shape[0],), t, dtype=torch.float64)
        f, g = sde.sde(x, times)
        return f - 0.5 * g[:, None] ** 2 * GAUSS.marginal_score(sde, x, times)

    y, t, h = x.clone(), t0, (s0 - t0) / n
    for _ in range(n):
        k1 = velocity(y, t)
        k2 = velocity(y + h / 2 * k1, t + h / 2)
        k3 = velocity(y + h / 2 * k2, t + h / 2)
        k4 = velocity(y + h * k3, t + h)
        y, t = y + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4), t + h
    full = lambda v: torch.full((6,), v, dtype=torch.float64)  # noqa: E731
    assert float((GAUSS.flow_map(sde, x, full(t0), full(s0)) - y).abs().max()) < 1e-10
    model = exact_model(sde)
    t, s = torch.rand(6, dtype=torch.float64) * 0.9 + 0.1, torch.rand(6, dtype=torch.float64) * 0.09 + 1e-3
    assert float((model.map(x, t, s) - GAUSS.flow_map(sde, x, t, s)).abs().max()) < 1e-10
    assert torch.equal(model.map(x, t, t), x)
    random = FlowMapModel(ScoreMLP(two_times=True, width=32, depth=1), sde, SIGMA_DATA).double()
    assert torch.equal(random.map(x, t, t), x)  # Phi(x, t, t) = x by construction, whatever the network


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("identity", ["eulerian", "lagrangian"])
def test_the_teacher_objective_vanishes_at_the_exact_map_and_rises_for_a_perturbed_one(sde_name, identity):
    """From the exact score as teacher, the residual of the exact map is zero to float64 rounding (r < t on every
    draw, so the JVP term is exercised). A map whose average velocity is shifted by c = 0.05: in MeanFlow's Eulerian
    identity the residual is the shift (a constant shift leaves the JVP term alone), a loss of c^2 exactly; in the
    Lagrangian one the shifted end point meets another velocity, v(end + (r - t) c) - v(end) = (r - t) J c for the
    Gaussian's affine velocity, so the residual is (I - (r - t) J) c, of order c: the mean loss above c^2 / 4."""
    sde = SDES[sde_name]()
    x0 = GAUSS.sample(512, torch.Generator().manual_seed(1), dtype=torch.float64)
    teacher = GAUSS.score_fn(sde)
    common = {"teacher": teacher, "ratio": 1.0, "adaptive_p": 0.0, "identity": identity}
    exact = flow_map_loss(exact_model(sde), sde, x0, torch.Generator().manual_seed(2), **common)
    assert float(exact.max()) < 1e-20, float(exact.max())
    shifted = flow_map_loss(exact_model(sde, 0.05), sde, x0, torch.Generator().manual_seed(2), **common)
    if identity == "eulerian":
        assert float((shifted - 0.05**2).abs().max()) < 1e-12
    else:
        assert float(shifted.mean()) > 0.05**2 / 4, float(shifted.mean())


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("identity", ["eulerian", "lagrangian"])
def test_the_data_objective_is_stationary_at_the_exact_map(sde_name, identity):
    """From data (the conditional velocity eps - x0), the exact map's residual is not zero draw by draw but averages
    to zero: a constant shift c adds |c|^2 to the loss, and 2 c . E[residual] = 0 within 4 standard errors (the
    same draws for both; the Eulerian identity on half the draws off the diagonal, the Lagrangian one on the
    diagonal, where its target is the path's velocity). Off the diagonal the Lagrangian identity's teacher is the
    map's own diagonal: at the exact map its residual is zero draw by draw."""
    sde = SDES[sde_name]()
    x0 = GAUSS.sample(20_000, torch.Generator().manual_seed(3), dtype=torch.float64)
    common = {"ratio": 0.5 if identity == "eulerian" else 0.0, "adaptive_p": 0.0, "identity": identity}
    exact = flow_map_loss(exact_model(sde), sde, x0, torch.Generator().manual_seed(4), **common)
    shifted = flow_map_loss(exact_model(sde, 0.1), sde, x0, torch.Generator().manual_seed(4), **common)
    extra = shifted - exact  # = 0.1^2 + 0.1 * mean_d(residual_d) * 2 per draw
    standard_error = float(extra.std()) / math.sqrt(len(extra))
    assert abs(float(extra.mean()) - 0.1**2) < 4 * standard_error, (float(extra.mean()), standard_error)
    assert float(exact.mean()) > 0.01  # the conditional target's variance: the residual is not zero draw by draw
    if identity == "lagrangian":
        off = flow_map_loss(exact_model(sde), sde, x0[:512], torch.Generator().manual_seed(4), ratio=1.0,
                            adaptive_p=0.0, identity=identity)  # fmt: skip
        assert float(off.max()) < 1e-20, float(off.max())


@pytest.mark.parametrize("sde_name", ["vp", "ve"])
def test_one_jump_of_the_exact_map_samples_the_gaussian_and_its_diagonal_has_the_exact_likelihood(sde_name):
    """The sampler: one jump (NFE 1) from the prior lands on the data's law up to the prior's mismatch at T
    (mean and covariance within 4 standard errors of 20,000 draws); two jumps land on the same points (the map
    composes). The diagonal as a score: the PF-ODE NLL equals the closed-form density (1e-4 nats)."""
    sde = SDES[sde_name]()
    model = exact_model(sde)
    gen = torch.Generator().manual_seed(5)
    x_T = GAUSS.marginal(sde, sde.T).sample(20_000, gen, dtype=torch.float64)
    one = sample(sde, model, (20_000, 2), "flow_map", steps=1, x_T=x_T, dtype=torch.float64)
    two = sample(sde, model, (20_000, 2), "flow_map", steps=2, x_T=x_T, dtype=torch.float64)
    assert one.nfe == 1 and two.nfe == 2
    assert float((one.x - two.x).abs().max()) < 1e-9
    target = GAUSS.marginal(sde, one.settings["t_min"])
    se = torch.sqrt(torch.diagonal(target.covariance()) / 20_000)
    assert bool(((one.x.mean(0) - target.mean()).abs() < 4 * se).all())
    assert float((torch.cov(one.x.T) - target.covariance()).abs().max()) < 4 * float(COV.max()) * math.sqrt(2 / 20_000)
    x = GAUSS.sample(16, torch.Generator().manual_seed(6), dtype=torch.float64)
    result = log_likelihood(sde, model, x, prior_logp=GAUSS.marginal(sde, sde.T).log_prob, rtol=1e-7, atol=1e-7)
    truth = -GAUSS.marginal_log_prob(sde, x, torch.full((16,), result.settings["t_min"], dtype=torch.float64))
    assert float((result.nll - truth).abs().max()) < 1e-4


def _config(method: str, sde: str, train_steps: int, **distill) -> object:
    return config_from_dict(
        {
            "sde": {"name": sde},
            "model": {"name": "mlp", "sigma_data": SIGMA_DATA, "kwargs": {"dim": 2, "width": 64, "depth": 2,
                                                                        "two_times": True, "emb_scale": 1.0}},
            "data": {"kind": "toy", "name": "gmm"},
            "train": {"steps": train_steps, "batch_size": 256, "lr": 2e-3, "warmup": 50, "lr_schedule": "cosine",
                      "checkpoint_every": 0, "ema_decay": 0.99},
            "distill": {"method": method, "teacher": "oracle:gmm" if method == "flow_map" else None,
                        "flow_times": "uniform", **distill},
        }
    )  # fmt: skip


class _GaussianData:
    """Point the trainer's data stream at the Gaussian (the toys have no single-Gaussian data set)."""

    def __enter__(self):
        import scoresde.training as training
        from scoresde.training.objectives import Batch

        self.saved = training.DataStream.batch
        training.DataStream.batch = lambda stream, step, generator: Batch(
            GAUSS.sample(stream.cfg.train.batch_size, generator).float(), None, step
        )
        return self

    def __exit__(self, *exc):
        import scoresde.training as training

        training.DataStream.batch = self.saved


def _map_errors(model, sde) -> list[float]:
    """The map's RMS error against the closed form over a held-out grid of (t, s), points drawn from the marginal
    at t, each relative to the spread of the map's target at s (in y = x/alpha: sqrt(lambda_max + sigma_s^2 /
    alpha_s^2))."""
    errors = []
    x0 = GAUSS.sample(2000, torch.Generator().manual_seed(7))
    for t_value in (0.2, 0.5, 1.0):
        for fraction in (0.0, 0.5):
            t = torch.full((2000,), t_value)
            s = torch.full((2000,), max(fraction * t_value, 1e-3))
            x = sde.perturb(x0.float(), t, torch.randn(2000, 2, generator=torch.Generator().manual_seed(8)))
            with torch.no_grad():
                error = model.map(x, t, s).double() - GAUSS.flow_map(sde, x.double(), t.double(), s.double())
            alpha, sigma = float(sde.alpha(s[:1])), float(sde.sigma(s[:1]))
            spread = math.sqrt(float(torch.linalg.eigvalsh(COV).max()) + (sigma / alpha) ** 2)
            errors.append(float(error.pow(2).mean().sqrt()) / alpha / spread)
    return errors


@pytest.mark.slow
@pytest.mark.parametrize("method", ["flow_map_training", "flow_map"])
def test_a_trained_flow_map_approaches_the_closed_form(tmp_path, method):
    """600 steps on Gaussian data with the default Lagrangian identity (from data: self-distilled from the map's own
    diagonal; or distilled from the exact score; time features of scale 1, times uniform): over a held-out grid of
    (t, s) the map's summed relative error falls 2x from the untrained network's (measured 2.35x from data, more
    distilled), the half-way jumps within 20 % from data (measured 0.05-0.15: the self-teacher's diagonal is still
    learning; MeanFlow's Eulerian identity, whose data target needs no diagonal, measured 0.006-0.03) and 5 %
    distilled."""
    config = _config(method, "vp", 600)
    sde = config.sde.build()
    teacher = GAUSS.score_fn(sde) if method == "flow_map" else None
    trainer = Trainer(config, tmp_path / method, progress=False, teacher=teacher)
    before = _map_errors(trainer.score_fn, sde)
    with _GaussianData():
        trainer.train()
    after = _map_errors(trainer.score_fn, sde)
    assert sum(after) < sum(before) / 2, (before, after)
    assert max(after[1::2]) < (0.2 if method == "flow_map_training" else 0.05), after


@pytest.mark.parametrize("method", ["flow_map_training", "flow_map"])
def test_resume_is_exact_for_both_objectives(tmp_path, method):
    """Six steps in one call against three, a new trainer resumed from the checkpoint, and three more: the same
    weights bit for bit (the JVP objective draws everything from the step's generator)."""
    config = _config(method, "ve", 6, flow_ratio=0.5)
    teacher = GAUSS.score_fn(config.sde.build()) if method == "flow_map" else None
    whole = Trainer(config, tmp_path / "whole", progress=False, teacher=teacher)
    whole.train()
    first = Trainer(config, tmp_path / "split", progress=False, teacher=teacher)
    first.train(3)
    resumed = Trainer(config, tmp_path / "split", progress=False, teacher=teacher, resume=True)
    resumed.train()
    for a, b in zip(whole.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)


def test_bad_input_is_one_line():
    """s > t, a one-time network, K < 1, a flow map where a score model's sampler needs a flow map, a consistency
    model as teacher, and a layer without a forward-mode derivative (named)."""
    sde = VPSDE()
    model = exact_model(sde)
    x = torch.zeros(4, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match="earlier time s <= t"):
        model.map(x, torch.full((4,), 0.2, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match="two_times: true"):
        FlowMapModel(ScoreMLP(), sde)
    with pytest.raises(ValueError, match="steps"):
        sample(sde, model, (4, 2), "flow_map", steps=0)
    with pytest.raises(ValueError, match="needs a flow map"):
        sample(sde, GAUSS.score_fn(sde), (4, 2), "flow_map", steps=1)
    with pytest.raises(ValueError, match="two_times"):
        ScoreMLP()(torch.zeros(4, 2), torch.rand(4), s=torch.rand(4))
    consistency = ConsistencyModel(ScoreMLP(), sde, 1e-3)
    with pytest.raises(ValueError, match="objective's teacher needs a score model"):
        build_objective(_config("flow_map", "vp", 2), sde, teacher=consistency)

    class NoForwardAD(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad

    class Odd(torch.nn.Module):
        def forward(self, x):
            return NoForwardAD.apply(x)

    net = ScoreMLP(two_times=True, width=16, depth=1)
    net.inp = torch.nn.Sequential(net.inp, Odd())
    with pytest.raises(ValueError, match=r"layer 'net.inp.1' \(Odd\) has no forward-mode derivative"):
        flow_map_loss(FlowMapModel(net, sde), sde, torch.zeros(8, 2), torch.Generator().manual_seed(0),
                      identity="eulerian")  # fmt: skip
    with pytest.raises(ValueError, match="unknown flow-map identity 'euler' for identity; valid names are"):
        flow_map_loss(model, sde, x, torch.Generator().manual_seed(0), identity="euler")
