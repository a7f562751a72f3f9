"""Training at the field's speed: precision, accumulation, compilation, the data loader, the post-hoc EMA (against
closed-form power-function averages) and reduced-precision inputs of the likelihood."""

import math
import warnings

import numpy as np
import pytest
import torch

from scoresde import VPSDE, log_likelihood
from scoresde.config.presets import preset
from scoresde.config.schema import ConfigError, override
from scoresde.training.objectives import DenoisingScoreMatching
from scoresde.training.posthoc_ema import (
    PowerEMA,
    gamma_to_sigma_rel,
    posthoc_coefficients,
    reconstruct_ema,
    sigma_rel_to_gamma,
)
from scoresde.training.speed import CompiledOrEager, check_precision
from scoresde.training.trainer import Trainer, micro_batches

SMALL = ("train.batch_size=64", "model.kwargs.width=32", "model.kwargs.depth=2", "train.log_every=2",
         "train.checkpoint_every=0", "train.warmup=2")  # fmt: skip


def _toy(steps, *extra):
    return override(preset("toy-vp"), f"train.steps={steps}", *SMALL, *extra)


def _flat(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


class RowKeyedDSM(DenoisingScoreMatching):
    """DSM whose time and noise of a row are functions of the row itself (not of the order of draws), so a batch
    split into micro-batches sees exactly the draws of the whole batch: the accumulation is then testable as an
    identity."""

    def __call__(self, model, batch, generator):
        x0 = batch.x0
        key = (x0 * 12.9898).sum(1, keepdim=True)
        t = 1e-3 + (1 - 1e-3) * torch.frac(torch.sin(key) * 43758.5453).abs().squeeze(1)
        noise = torch.sin(1e3 * x0 + 3.0 * key)
        xt = self.sde.perturb(x0, t, noise)
        return 0.5 * (model.scaled_score(xt, t) + noise).pow(2).sum(1).mean()


def test_accumulated_micro_batches_equal_the_whole_batch(tmp_path):
    """k = 4 micro-batches of 16 rows == one batch of 64, to float32 tolerance (the draws keyed by row; the summed
    gradient of the losses / k is the whole batch's mean-loss gradient). 1e-6: a few float32 ulps of weights of
    order 0.1-1 after three AdamW steps."""
    sde = preset("toy-vp").sde.build()
    runs = [
        Trainer(_toy(3, f"train.accumulate={k}"), tmp_path / str(k), progress=False,
                objective=RowKeyedDSM(sde, "sigma2", False, 1e-3, None))
        for k in (1, 4)
    ]  # fmt: skip
    for run in runs:
        run.train()
    assert float((_flat(runs[0].model) - _flat(runs[1].model)).abs().max()) < 1e-6
    split = micro_batches(runs[0].data.batch(0, torch.Generator().manual_seed(0)), 4)
    assert [p.x0.shape[0] for p in split] == [16] * 4


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_resume_is_exact_with_accumulation_and_posthoc_ema(tmp_path, precision):
    """3 + 3 steps with a restart == 6 in one run, bit for bit, under autocast (fp16: with its gradient scaler's
    state), accumulation and the post-hoc EMA profiles (their averages and step count in the checkpoint)."""
    cfg = _toy(6, f"train.precision={precision}", "train.accumulate=2", "train.ema_profiles=[0.05,0.1]")
    one = Trainer(cfg, tmp_path / "one", progress=False)
    one.train()
    Trainer(cfg, tmp_path / "two", progress=False).train(3)
    two = Trainer(cfg, tmp_path / "two", progress=False)
    two.train()
    assert torch.equal(_flat(one.model), _flat(two.model)) and torch.equal(_flat(one.ema.model), _flat(two.ema.model))
    for a, b in zip(one.posthoc.averages, two.posthoc.averages):
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert one.scaler.get_scale() == two.scaler.get_scale()
    assert sorted(p.name for p in (tmp_path / "one" / "ema").iterdir())[-1] == "step-000000006.safetensors"
    fp32 = Trainer(_toy(6, "train.accumulate=2"), tmp_path / "fp32", progress=False)
    fp32.train()
    assert 0 < float((_flat(fp32.model) - _flat(one.model)).abs().max()) < 0.05  # reduced precision, same run


def test_bad_speed_settings_are_refused_in_one_line(tmp_path):
    for bad, message in [
        ("train.precision=fp8", "'train.precision': 'fp8' is not one of fp32, bf16, fp16"),
        ("train.accumulate=3", "3 micro-batches do not divide train.batch_size 64"),
        ("train.optimizer_impl=adam", "is not one of auto, fused, foreach, loop"),
        ("train.ema_profiles=[0.5]", "relative standard deviations in"),
    ]:
        with pytest.raises(ConfigError, match=message):
            _toy(2, bad)
    with pytest.raises(ValueError, match="cannot run on meta"):
        check_precision("bf16", "meta")
    assert check_precision("fp32", "cpu") is None and check_precision("bf16", "cpu") is torch.bfloat16


def test_compile_falls_back_to_eager_in_one_warning(monkeypatch):
    """A compiler that fails at the first call (no C++ compiler, an unsupported platform): one warning, then the
    eager network's output; an error of the network itself still comes from the eager call."""
    net = torch.nn.Linear(2, 2)

    def broken(module, **kwargs):
        def call(*args, **kw):
            raise RuntimeError("no working C++ compiler found\nlong traceback")

        return call

    monkeypatch.setattr(torch, "compile", broken)
    wrapped = CompiledOrEager(net)
    x = torch.randn(3, 2)
    with pytest.warns(UserWarning, match=r"train.compile: cannot compile the network \(no working C\+\+ compiler"):
        out = wrapped(x)
    assert torch.equal(out, net(x)) and wrapped.failed and wrapped.weight is net.weight
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(wrapped(x), net(x))
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        CompiledOrEager(net)(torch.randn(3, 5))

    def unavailable(module, **kwargs):
        raise RuntimeError("torch.compile is not supported on Python 3.14+")

    monkeypatch.setattr(torch, "compile", unavailable)
    with pytest.warns(UserWarning, match=r"torch.compile is unavailable \(torch.compile is not supported"):
        eager = CompiledOrEager(net)
    assert eager.failed and torch.equal(eager(x), net(x))


def test_image_batches_through_data_loader_workers_equal_the_in_process_ones(tmp_path):
    """Digits with two DataLoader workers (and pinned memory where there is a GPU): the same batches, step for step,
    as gathering in the training process, also after a jump (a resume)."""
    from scoresde.training.data import DataStream

    cfg = override(preset("digits-ddpm"), "train.batch_size=256")
    plain = DataStream(cfg, 0, 1, torch.device("cpu"))
    loaded = DataStream(override(cfg, "train.num_workers=2"), 0, 1, torch.device("cpu"))
    for step in (0, 1, 2, 3, 9, 10):  # 9: a jump restarts the loader there; digits: 7 batches an epoch
        a = plain.batch(step, torch.Generator().manual_seed(step))
        b = loaded.batch(step, torch.Generator().manual_seed(step))
        assert torch.equal(a.x0, b.x0)


# ---------------------------------------------------------------- post-hoc EMA against closed forms


def test_sigma_rel_and_gamma_are_inverse():
    """EDM2's two profiles: sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94 (their Table / code)."""
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.9722, abs=1e-4)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.9372, abs=1e-4)
    for s in (0.01, 0.05, 0.137, 0.25):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-12)
    with pytest.raises(ValueError, match="sigma_rel must lie in"):
        sigma_rel_to_gamma(0.3)


def test_power_ema_tracks_the_closed_form_average():
    r"""A float64 parameter moving as $\theta_k = (k/T)^2$ and $\sin(k/50)$: each tracked profile equals
    $\sum_k k^\gamma\theta_k / \sum_k k^\gamma$ computed directly, to 1e-6 relative (float32 averages of order 1:
    1e-7 rounding per step, averaged)."""
    net = torch.nn.Linear(1, 1, dtype=torch.float64)
    ema, T = PowerEMA(net, [0.05, 0.1]), 400
    for k in range(1, T + 1):
        with torch.no_grad():
            net.weight.fill_((k / T) ** 2)
            net.bias.fill_(math.sin(k / 50))
        ema.update(net)
    k = np.arange(1, T + 1, dtype=np.float64)
    for gamma, average in zip(ema.gammas, ema.averages):
        w = k**gamma / np.sum(k**gamma)
        assert float(average[0]) == pytest.approx(float(np.sum(w * (k / T) ** 2)), rel=1e-6)
        assert float(average[1]) == pytest.approx(float(np.sum(w * np.sin(k / 50))), rel=1e-6)


def test_posthoc_reconstruction_matches_the_closed_form_of_another_length():
    r"""Snapshots of the profiles 0.05 and 0.10 every 1 % of a 2,000-step run of $\theta_k = a + b(k/T) +
    c(k/T)^2$: the reconstructed averages at sigma_rel 0.06, 0.08 and the tracked 0.10 equal the closed-form
    power-function averages to 1e-6 relative (measured 3e-8: a smooth trajectory is what least squares over nearby
    profiles reproduces); the profile-fit residual is reported and a tracked length is reproduced exactly."""
    T = 2000
    k = np.arange(1, T + 1, dtype=np.float64)
    theta = 0.3 - 0.7 * (k / T) + 1.1 * (k / T) ** 2

    def average(t, gamma):
        w = (k[:t] / t) ** gamma
        return float(np.sum(w * theta[:t]) / np.sum(w))

    gammas = [sigma_rel_to_gamma(s) for s in (0.05, 0.1)]
    snaps = [(t, g) for t in range(20, T + 1, 20) for g in gammas]
    stored = np.array([average(t, g) for t, g in snaps])
    for target in (0.06, 0.08, 0.1):
        x, residual = posthoc_coefficients(snaps, T, sigma_rel_to_gamma(target))
        exact = average(T, sigma_rel_to_gamma(target))
        assert abs(float(x @ stored) - exact) <= 1e-6 * abs(exact)
        assert residual < (1e-7 if target == 0.1 else 1e-3)  # 1e-7: sqrt of a float64 difference of squares


def test_scoresde_ema_reconstruction_from_a_run_and_its_refusals(tmp_path):
    """A toy run tracking 0.05 and 0.10: the reconstruction at 0.10 and the last step is the tracked profile itself
    (float32 tolerance); lengths outside [0.05, 0.10] and steps past the last snapshot are refused in one line."""
    trainer = Trainer(_toy(8, "train.ema_profiles=[0.05,0.1]", "train.ema_snapshot_every=2"), tmp_path,
                      progress=False)  # fmt: skip
    trainer.train()
    rec = reconstruct_ema(tmp_path, 0.1)
    tracked = trainer.posthoc.profile(1)
    assert rec.t == 8 and rec.residual < 1e-7
    assert max(float((rec.state[n] - v).abs().max()) for n, v in tracked.items()) < 1e-6
    with pytest.raises(ValueError, match=r"outside the tracked EMA lengths \[0.05, 0.1\]"):
        reconstruct_ema(tmp_path, 0.2)
    with pytest.raises(ValueError, match=r"step 9 is not in the snapshots' range \[1, 8\]"):
        reconstruct_ema(tmp_path, 0.07, t=9)
    with pytest.raises(ValueError, match="holds no post-hoc EMA snapshots"):
        reconstruct_ema(tmp_path / "nothing", 0.07)


# ---------------------------------------------------------------- precision in sampling and likelihood


def test_likelihood_promotes_half_precision_data():
    """fp16 / bf16 data: the integral runs in float32 on the rounded data (before: fp16 overflowed to a refusal
    and bf16 rounded the change of variables); the result says it promoted them."""
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    score = lambda x, t: -2 * x  # noqa: E731  (not the stationary score: a non-zero divergence)
    for dtype in (torch.float16, torch.bfloat16):
        half = log_likelihood(VPSDE(), score, x.to(dtype), method="rk4", steps=4)
        full = log_likelihood(VPSDE(), score, x.to(dtype).float(), method="rk4", steps=4)
        assert torch.equal(half.nll, full.nll) and half.settings["promoted_from"] == str(dtype).split(".")[1]
        assert float(half.delta_logp.abs().min()) > 1.0


def test_network_in_bf16_keeps_the_state_in_float32():
    """`ScoreModel.network_dtype`: the network runs under autocast, its output comes back in the input's dtype, and
    the score differs from fp32 by bf16 rounding (8 bits: relative 2^-8 of the output's scale, a few times)."""
    from scoresde.models import ScoreMLP, ScoreModel

    torch.manual_seed(0)
    model = ScoreModel(ScoreMLP(), VPSDE())
    with torch.no_grad():
        for p in model.parameters():  # the output layer starts at zero: give every layer weights
            p.normal_(0, 0.3)
        x, t = torch.randn(64, 2), torch.rand(64) * 0.9 + 0.05
        ref = model(x, t)
        model.network_dtype = torch.bfloat16
        out = model(x, t)
    assert out.dtype == torch.float32
    assert 0 < float((out - ref).abs().max()) < 0.05 * float(ref.abs().max())


def test_a_likelihood_that_cannot_meet_its_tolerance_still_answers_with_its_error():
    """dopri5 held to 5 steps, the exponential integrator to 3, and a solve out of time: each batch is finished by
    ei_fixed on 128 log-SNR steps (default 256) and says so; its NLL (8gaussians' exact score) matches the tight
    solve's within its reported integration error, and fallback=None refuses as before. Reference: the same
    integral solved tightly (ei at 1e-6; the true NLL at t = 0 differs from the density at t_min = 1e-5 by up to
    7e-4 nats on these sharp components)."""
    from scoresde import toy_dataset
    from scoresde.likelihood.exponential_integrator import SolverError

    sde, toy = VPSDE(), toy_dataset("8gaussians")
    score = toy.oracle.score_fn(sde)
    x = toy.sample(16, torch.Generator().manual_seed(0)).double()
    tight = log_likelihood(sde, score, x, rtol=1e-6, atol=1e-6)
    for options in ({"method": "dopri5", "max_steps": 5}, {"method": "ei", "max_steps": 3},
                    {"method": "dopri5", "max_seconds": 1e-6, "batch_size": 8}):  # fmt: skip
        result = log_likelihood(sde, score, x, rtol=1e-3, atol=1e-3, fallback_steps=128, **options)
        fallback = result.settings["fallback"]
        assert fallback["method"] == "ei_fixed" and not fallback["tolerance_met"] and fallback["steps"] == 128
        assert len(fallback["batches"]) == (2 if "batch_size" in options else 1)
        gap = (result.nll - tight.nll).abs()
        bound = result.integration_error + tight.integration_error + 1e-7  # |fine - half| bounds the fine error
        assert bool((gap <= bound).all()), (gap.max(), result.integration_error.max())
    with pytest.raises(SolverError, match="did not converge"):
        log_likelihood(sde, score, x, method="dopri5", max_steps=5, fallback=None)


DDP_EQUIVALENCE = """
import os, sys, torch
from scoresde.config import override, preset
from scoresde.training import Trainer
from scoresde.training.objectives import DenoisingScoreMatching
torch.set_num_threads(1)

class RowKeyed(DenoisingScoreMatching):
    def __call__(self, model, batch, generator):
        x0 = batch.x0
        key = (x0.flatten(1) * 12.9898).sum(1)
        t = 1e-3 + (1 - 1e-3) * torch.frac(torch.sin(key) * 43758.5453).abs()
        noise = torch.sin(1e3 * x0 + 3.0 * key[:, None, None, None])
        xt = self.sde.perturb(x0, t, noise)
        return 0.5 * (model.scaled_score(xt, t) + noise).pow(2).flatten(1).sum(1).mean()

def run(folder, *sets):
    cfg = override(preset("digits-ddpm"), "train.steps=3", "train.batch_size=64", "model.kwargs.ch=8",
                   "model.kwargs.groups=4", "model.kwargs.num_res_blocks=1", "model.kwargs.dropout=0.0",
                   "train.checkpoint_every=0", "data.dequantize=false", "train.lr=1e-3", "train.warmup=0", *sets)
    sde = cfg.sde.build()
    trainer = Trainer(cfg, folder, progress=False, objective=RowKeyed(sde, "sigma2", False, 1e-3, None))
    trainer.train()
    flat = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    trainer.close()
    return flat

out = sys.argv[1]
fp32 = run(out + "/fp32", *sys.argv[3:])
bf16 = run(out + "/bf16", "train.precision=bf16", *sys.argv[3:])
if os.environ.get("RANK", "0") == "0":
    torch.save({"fp32": fp32, "bf16": bf16}, out + "/weights.pt")
"""


@pytest.mark.slow
def test_two_process_ddp_with_bf16_and_accumulation_equals_one_process(tmp_path):
    """torchrun --nproc_per_node=2 with accumulate=2 (each process: 2 micro-batches of 16 of its 32 rows) against one
    process on the whole batch of 64, the draws keyed by row (data at the levels' centres, so both see the same 64
    rows a step): fp32 to 1e-5 (float32 reductions in another order, through three AdamW steps of lr 1e-3), bf16
    within 2 lr a step (Adam's step is at most about lr a parameter; bf16's rounding of per-row activations depends
    on the batch's size, so single gradient entries near zero may differ in sign)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "ddp.py"
    script.write_text(DDP_EQUIVALENCE)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one"), "save"], capture_output=True, text=True,
                         env=env, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          str(script), str(tmp_path / "two"), "save", "train.accumulate=2"],
                         capture_output=True, text=True, env=env, timeout=300, start_new_session=True)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    a = torch.load(tmp_path / "one" / "weights.pt")
    b = torch.load(tmp_path / "two" / "weights.pt")
    assert float((a["fp32"] - b["fp32"]).abs().max()) < 1e-5
    assert float((a["bf16"] - b["bf16"]).abs().max()) < 2 * 1e-3 * 3
