"""Evaluation while training and the post-hoc EMA command: figures checked against the oracle's exact density and
the energy distance's noise floor, logged without touching the run, refusals in one line."""

import csv
import json

import torch
from conftest import TINY, one_line, tiny_toy, train_cli

from scoresde import toy_dataset
from scoresde.app.cli import main
from scoresde.app.result_figures import plot_training_curve
from scoresde.evaluation import TrainingEvaluator, energy_distance_floor
from scoresde.likelihood import log_likelihood
from scoresde.training.trainer import Trainer
from scoresde.training.workflows import train_run


class Exact:
    """The oracle's exact score as a model the evaluator measures (its SDE attached)."""

    def __init__(self, sde, score):
        self.sde, self.score = sde, score

    def __call__(self, x, t):
        return self.score(x, t)


def test_the_oracle_evaluates_to_zero_gap_and_the_noise_floor():
    """The exact score of 8gaussians: its held-out NLL gap is 0 up to the bounded solve's reported integration
    error (plus 0.01 nats for t_min = 1e-5 and the error estimate's looseness), and its samples' energy distance
    to held-out draws is within 4 standard errors of the floor two independent sets of 256 draws have."""
    cfg = tiny_toy(10, "data.name=8gaussians", "train.eval_samples=256", "train.eval_batch=256", "train.eval_nfe=32")
    evaluator = TrainingEvaluator(cfg, "unused")
    sde = cfg.sde.build()
    exact = Exact(sde, toy_dataset("8gaussians").oracle.score_fn(sde))
    figures = evaluator.likelihood(exact)
    assert abs(figures["eval_nll_gap"]) <= 3 * figures["eval_nll_error"] + 0.01, figures
    floor, floor_se = energy_distance_floor(lambda n, g: toy_dataset("8gaussians").sample(n, g), 256,
                                            generator=torch.Generator().manual_seed(0))  # fmt: skip
    energy = evaluator.samples(exact)["eval_energy"]
    assert energy <= floor + 4 * floor_se + 3 * floor, (energy, floor)  # one draw of a statistic with mean floor


def test_evaluation_is_logged_beside_the_loss_and_leaves_the_run_unchanged(tmp_path):
    """Every eval_every steps a metrics.csv row carries the figures (blank elsewhere), they agree with the likelihood
    computed directly on the EMA model, the figure draws them beside the loss, and the trained weights are those
    of the same run without evaluation (evaluation draws nothing from the run's randomness)."""
    cfg = tiny_toy(20, "train.log_every=5", "train.eval_every=10", "train.eval_samples=64", "train.eval_batch=32",
                   "train.eval_nfe=8")  # fmt: skip
    run = train_run(cfg, tmp_path / "eval", evaluator=TrainingEvaluator, progress=False)
    plain = Trainer(cfg, tmp_path / "plain", progress=False)
    plain.train()
    assert run.result.step == 20
    with open(tmp_path / "eval" / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["step"] for r in rows] == ["5", "10", "15", "20"]
    assert [bool(r["eval_nll"]) for r in rows] == [False, True, False, True] and all(
        float(r["eval_energy"]) > 0 for r in rows[1::2]
    )
    loaded = Trainer(cfg, tmp_path / "eval", progress=False)  # the run's last checkpoint: its EMA at step 20
    for a, b in zip(loaded.model.parameters(), plain.model.parameters()):
        assert torch.equal(a, b)
    evaluator = TrainingEvaluator(cfg, tmp_path / "eval")
    direct = log_likelihood(cfg.sde.build(), loaded.ema.model, evaluator.x, method="ei_fixed", steps=8)
    assert float(rows[3]["eval_nll"]) == float(direct.nll.mean())
    fig = plot_training_curve(tmp_path / "eval" / "metrics.csv")
    assert [ax.get_title() for ax in fig.axes if ax.get_title()][1:] == [
        "held-out NLL",
        "NLL gap to the true density",
        "energy distance of samples",
    ]


def test_scoresde_ema_writes_a_samplable_length_a_sweep_and_refuses_in_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert train_cli(out, "--steps", "12", "--set", "train.ema_profiles=[0.05,0.1]",
                     "--set", "train.ema_snapshot_every=4") == 0  # fmt: skip
    assert sorted(p.name for p in (out / "ema").iterdir()) == [f"step-{k:09d}.safetensors" for k in (4, 8, 12)]
    capsys.readouterr()
    assert main(["ema", "--checkpoint", str(out), "--sigma-rel", "0.07", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["t"] == 12 and len(made["snapshots"]) == 6 and 0 < made["residual"] < 0.1
    assert main(["sample", "--checkpoint", made["out"], "--out", str(tmp_path / "s.npz"), "-n", "16", "--json"]) == 0
    capsys.readouterr()
    assert main(["ema", "--checkpoint", str(out), "--sweep", "3", "-n", "64", "--steps", "6", "--json"]) == 0
    sweep = json.loads(capsys.readouterr().out)
    assert [round(r["sigma_rel"], 3) for r in sweep["rows"]] == [0.05, 0.075, 0.1]
    assert all(r["eval_energy"] > 0 for r in sweep["rows"]) and (out / "ema-sweep.png").is_file()
    for args, message in [
        (["--sigma-rel", "0.2"], "sigma_rel 0.2 lies outside the tracked EMA lengths [0.05, 0.1]"),
        (["--sigma-rel", "0.07", "--step", "13"], "step 13 is not in the snapshots' range [1, 12]"),
        (["--sigma-rel", "0.07"], "already exists; pass --force"),
        ([], "pass --sigma-rel (between 0.05 and 0.1, the tracked lengths) or --sweep K"),
    ]:
        assert main(["ema", "--checkpoint", str(out), *args]) == 2
        one_line(capsys, message)
    assert train_cli(tmp_path / "plain", "--steps", "2") == 0
    capsys.readouterr()
    assert main(["ema", "--checkpoint", str(tmp_path / "plain"), "--sigma-rel", "0.07"]) == 2
    one_line(capsys, "holds no post-hoc EMA snapshots")
    assert main(["train", "--out", str(tmp_path / "bad"), *TINY, "--set", "train.precision=fp64"]) == 2
    one_line(capsys, "'train.precision': 'fp64' is not one of fp32, bf16, fp16")
    assert not (tmp_path / "bad").exists()
