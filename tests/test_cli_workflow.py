"""The command line as a user drives it (subprocess): train -> sample -> likelihood -> compare on quick settings,
the demo, every command's --help, and user errors (status 2, one line, nothing changed on disk)."""

import json
import math
import subprocess
import sys

import pytest
from conftest import assert_true_nll_matches_the_entropy

from scoresde.app.cli import build_parser, main
from scoresde.app.cli.demo import _demo_summary
from scoresde.app.demo import DEMO_FILES

COMMANDS = ["demo", "toys", "train", "sample", "likelihood", "compare", "inpaint", "list"]


def scoresde(*args, check_rc: int | None = 0):
    proc = subprocess.run([sys.executable, "-m", "scoresde", *map(str, args)], capture_output=True, text=True)
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr[-2000:]
    return proc


def one_line_error(proc, message: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert message in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A small toy run (8 Gaussians, VP): 300 steps of a width-32 MLP, a couple of seconds."""
    folder = tmp_path_factory.mktemp("cli") / "run"
    proc = scoresde(
        "train",
        "--out",
        folder,
        "--steps",
        300,
        "--set",
        "model.kwargs.width=32",
        "--set",
        "train.batch_size=256",
        "--set",
        "train.log_every=20",
        "--seed",
        1,
        "--json",
    )
    summary = json.loads(proc.stdout)
    assert summary["step"] == 300 and summary["config"]["train"]["seed"] == 1
    assert {p.name for p in folder.iterdir()} >= {"checkpoint.safetensors", "config.yaml", "metrics.csv", "loss.png"}
    return folder


def test_sample_likelihood_compare_on_a_trained_run(run, tmp_path, capsys):
    import numpy as np

    out = tmp_path / "samples.npz"
    sampled = json.loads(
        scoresde(
            "sample",
            "--checkpoint",
            run,
            "--sampler",
            "pc",
            "--steps",
            10,
            "--option",
            "predictor=euler_maruyama",
            "--option",
            "corrector=none",
            "-n",
            64,
            "--seed",
            3,
            "--out",
            out,
            "--json",
        ).stdout
    )
    assert sampled["nfe"] == 11 and sampled["settings"]["predictor"] == "euler_maruyama"
    assert np.load(out)["x"].shape == (64, 2) and out.with_suffix(".png").stat().st_size > 1000

    lik = tmp_path / "lik.json"
    summary = json.loads(scoresde("likelihood", "--checkpoint", run, "-n", 50, "--out", lik, "--json").stdout)
    saved = json.loads(lik.read_text())
    assert {k: saved[k] for k in saved} == {k: summary[k] for k in saved}
    for key in (
        "nll_nats",
        "nll_standard_error",
        "bits_per_dim",
        "nfe",
        "elbo_nats",
        "elbo_standard_error",
        "true_nll_nats",
        "nll_gap_nats",
        "nll_gap_standard_error",
    ):
        assert isinstance(saved[key], (int, float)), key
    assert saved["nll_standard_error"] > 0 and saved["nfe"] > 20
    # the held-out points' true NLL estimates the entropy, and an under-trained model is worse than the truth
    assert_true_nll_matches_the_entropy(saved["true_nll_nats"], "8gaussians", 50)
    assert saved["nll_gap_nats"] > 0

    folder = tmp_path / "cmp"
    result = json.loads(
        scoresde("compare", "--checkpoint", run, "--quick", "-n", 300, "--out", folder, "--json").stdout
    )
    table = json.loads((folder / "compare.json").read_text())
    families = {r["family"] for r in table["runs"]}
    assert {
        "pc (reverse diffusion + Langevin)",
        "ode (dopri5, adaptive)",
        "ddim",
        "heun (EDM)",
        "dpm_solver (3M)",
    } <= families
    for row in table["runs"]:
        assert row["nfe"] > 0 and row["seconds"] > 0 and row["energy_distance"] > 0 and row["true_nll"] is not None
    assert table["noise_floor"]["energy_distance"] > 0 and abs(table["entropy"] - 2.8324) < 1e-3
    assert result["best"] in {r["label"] for r in table["runs"]}
    assert (folder / "compare.png").stat().st_size > 10_000 and "| sampler | NFE |" in (
        folder / "compare.md"
    ).read_text()
    before = (folder / "compare.json").read_bytes()
    capsys.readouterr()  # (in-process: the refusal needs no interpreter of its own)
    assert main(["compare", "--checkpoint", str(run), "--quick", "-n", "300", "--out", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "compare.json already exists; pass --force" in err, err
    assert (folder / "compare.json").read_bytes() == before


@pytest.mark.slow
def test_demo_quick_writes_the_report(tmp_path):
    out = tmp_path / "demo"
    metrics = json.loads(scoresde("demo", "--quick", "--out", out, "--json").stdout)
    for name in DEMO_FILES:
        assert (out / name).exists(), name
    report = (out / "report.md").read_text()
    for name in (
        "forward.png",
        "score_field.png",
        "trajectories.png",
        "compare.png",
        "density.png",
        "run/loss.png",
        "reverse.gif",
    ):
        assert f"({name})" in report and (out / name).stat().st_size > 5_000, name
    assert json.loads((out / "metrics.json").read_text()) == metrics
    lik = metrics["likelihood"]
    assert lik["n"] == 200 and abs(lik["true_nll_nats"] - 2.83) < 0.3 and lik["nll_gap_nats"] > -0.2
    assert metrics["train"]["steps"] == 400 and len(metrics["compare"]["runs"]) == 15
    solvers = [run for run in metrics["compare"]["runs"] if run["family"] == "fitted solver (run/solvers)"]
    assert [run["nfe"] for run in solvers] == [4] and (out / "run" / "solvers" / "fitted-4.png").is_file()
    assert metrics["fitted_solvers"]["4"]["error"] <= metrics["fitted_solvers"]["4"]["start_error"]
    students = [run for run in metrics["compare"]["runs"] if run["family"] == "consistency student (student/)"]
    assert [run["nfe"] for run in students] == [1, 2, 4] and metrics["student"]["steps"] == 150
    assert (out / "student" / "checkpoint.safetensors").is_file() and "consistency student" in report
    families = {run["family"] for run in metrics["compare"]["runs"]}
    assert {"unipc (2, warped log-SNR)", "dpm_solver (3M, warped log-SNR)"} <= families  # the benchmarks' best settings
    summary = _demo_summary(metrics, out)
    assert len(summary.splitlines()) <= 27 and "gap" in summary and "report.md" in summary
    from PIL import Image

    with Image.open(out / "reverse.gif") as gif:
        assert gif.n_frames == 15
    proc = scoresde("demo", "--quick", "--out", out, check_rc=None)  # refuses: nothing overwritten
    one_line_error(proc, "already exists; pass --force")


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example_and_the_common_options(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([command, "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "example:" in text and f"scoresde {command}" in text
    for option in ("--device", "--seed", "--json"):
        assert option in text, option
    if command not in ("list",):
        assert "(default:" in text


def test_user_errors_are_one_line_with_status_2(run, tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = [
        (["sample", "--checkpoint", tmp_path / "missing", "--out", tmp_path / "s.npz"], "no checkpoint at"),
        (["compare", "--checkpoint", bad, "--out", tmp_path / "c"], "is not a readable checkpoint"),
        (
            ["sample", "--checkpoint", run, "--sampler", "nope", "--out", tmp_path / "s.npz"],
            "valid names are: consistency, ddim, ddpm, deis, dpm_solver",
        ),
        (
            ["sample", "--checkpoint", run, "--option", "order=7", "--out", tmp_path / "s.npz"],
            "unknown dpm_solver order '7'",
        ),
        (
            ["sample", "--checkpoint", run, "--option", "colour=red", "--out", tmp_path / "s.npz"],
            "unknown option(s) colour",
        ),
        (["sample", "--checkpoint", run, "--out", tmp_path / "s.txt"], "--out must name a .npz file"),
        (["likelihood", "--checkpoint", run, "--out", a_file / "x.json"], "is a file; choose another --out"),
        (
            ["likelihood", "--checkpoint", run, "--data", tmp_path / "none.npz", "--out", tmp_path / "l.json"],
            "does not exist",
        ),
        (["compare", "--checkpoint", run, "--device", "cuda:7", "--out", tmp_path / "c"], "no such CUDA device here"),
        (["train", "--out", tmp_path / "t", "--set", "sde.name=vq"], "invalid config field 'sde.name'"),
        (["demo", "--out", a_file], "is a file; choose another --out"),
    ]
    for args, message in cases[2:]:  # in-process (an escaping exception would fail the test), fast
        assert main([str(a) for a in args]) == 2, args
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and message in err, err
    for args, message in cases[:2]:  # and as a user sees it: no traceback
        one_line_error(scoresde(*args, check_rc=None), message)
    assert not (tmp_path / "s.npz").exists() and not (tmp_path / "c").exists() and not (tmp_path / "t").exists()


def test_guided_sampling_and_inpainting(run, tmp_path, capsys):
    """sample --label/--guidance on a class-conditional run; inpaint on the unconditional one; their bad inputs."""
    import numpy as np

    cond = tmp_path / "cond"
    assert (
        main(
            [
                "train",
                "--out",
                str(cond),
                "--steps",
                "30",
                "--set",
                "model.kwargs.width=16",
                "--set",
                "model.kwargs.num_classes=8",
                "--set",
                "train.label_dropout=0.2",
                "--set",
                "train.batch_size=64",
                "--json",
            ]
        )
        == 0
    )
    capsys.readouterr()
    out = tmp_path / "guided.npz"
    assert (
        main(
            [
                "sample",
                "--checkpoint",
                str(cond),
                "--label",
                "3",
                "--guidance",
                "2",
                "--sampler",
                "ddim",
                "--steps",
                "5",
                "-n",
                "40",
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    summary = json.loads(capsys.readouterr().out)
    assert (
        summary["label"] == 3
        and summary["guidance"] == 2.0
        and summary["nfe"] == 6
        and np.load(out)["x"].shape == (40, 2)
    )

    painted = tmp_path / "inpaint.npz"
    options = "--image test --mask x2 -n 30 --steps 20".split()
    assert main(["inpaint", "--checkpoint", str(run), *options, "--out", str(painted), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    data = np.load(painted)
    assert data["x"].shape == (30, 2) and np.array_equal(data["x"][:, 0], data["original"][:, 0])  # x1 kept
    assert not np.array_equal(data["x"][:, 1], data["original"][:, 1]) and summary["nfe"] == 2 * 20 + 1
    assert painted.with_suffix(".png").stat().st_size > 5000

    bad_mask = tmp_path / "mask.npz"
    np.savez(bad_mask, mask=np.ones((3,), dtype=bool))
    cases = [
        (
            ["sample", "--checkpoint", str(cond), "--label", "8", "--out", str(tmp_path / "a.npz")],
            "label 8 is outside the model's classes 0..7",
        ),
        (
            ["sample", "--checkpoint", str(run), "--label", "1", "--out", str(tmp_path / "a.npz")],
            "guidance needs a class-conditional model",
        ),
        (
            ["sample", "--checkpoint", str(cond), "--guidance", "1", "--out", str(tmp_path / "a.npz")],
            "--guidance needs --label",
        ),
        (
            ["inpaint", "--checkpoint", str(run), "--mask", "left-half", "--out", str(tmp_path / "b.npz")],
            "is for images [C, H, W]",
        ),
        (
            ["inpaint", "--checkpoint", str(run), "--mask", str(bad_mask), "--out", str(tmp_path / "b.npz")],
            "known (the mask) of shape (3,) does not match x_known's shape (2,)",
        ),
        (
            ["inpaint", "--checkpoint", str(run), "--mask", "nope", "--out", str(tmp_path / "b.npz")],
            "unknown mask 'nope'; valid names are",
        ),
        (
            [
                "inpaint",
                "--checkpoint",
                str(run),
                "--mask",
                "x1",
                "--method",
                "magic",
                "--out",
                str(tmp_path / "b.npz"),
            ],
            "unknown inpainting method 'magic'",
        ),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert err.strip().count("\n") == 0 and message in err, err
    assert not (tmp_path / "a.npz").exists() and not (tmp_path / "b.npz").exists()


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A tiny digits U-Net run (2 steps of ch 8): an image model whose samples are still noise."""
    run = tmp_path_factory.mktemp("cli-digits") / "digits"
    settings = ["model.kwargs.ch=8", "model.kwargs.groups=4", "train.batch_size=16"]
    sets = [arg for setting in settings for arg in ("--set", setting)]
    assert main(["train", "--preset", "digits-ddpm", "--out", str(run), "--steps", "2", *sets, "--json"]) == 0
    return run


def test_sample_and_compare_report_fd_digits_on_an_image_run(digits_run, tmp_path, capsys):
    """Image runs get the Fréchet distance on the shipped digits network (named FD-digits), KID, precision and
    recall; an untrained model's noise is far above the floor of held-out digits; the reference features are cached
    next to the run; --features none turns it off and an unknown network is a one-line error."""
    capsys.readouterr()
    out = tmp_path / "s.npz"
    options = ["--checkpoint", str(digits_run), "--sampler", "ddim", "--steps", "3", "-n", "60", "--json"]
    assert main(["sample", *options, "--out", str(out)]) == 0
    quality = json.loads(capsys.readouterr().out)["image_quality"]
    assert quality["label"] == "FD-digits" and quality["n_samples"] == 60 and quality["n_reference"] == 359
    assert list((digits_run / "reference_features").glob("digits-test-digits-*.safetensors"))
    assert main(["compare", "--checkpoint", str(digits_run), "--quick", "-n", "60", "--out", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    report = json.loads((tmp_path / "c" / "compare.json").read_text())
    floor = report["image_floor"]["frechet_distance"]
    runs = [r["image_quality"] for r in report["runs"]]
    assert all(r["label"] == "FD-digits" for r in runs) and min(r["frechet_distance"] for r in runs) > 3 * floor
    assert "FD-digits" in (tmp_path / "c" / "compare.md").read_text()
    assert main(["sample", *options, "--out", str(tmp_path / "n.npz"), "--features", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["image_quality"] is None
    with pytest.raises(SystemExit) as stop:  # refused while parsing: nothing sampled, nothing written
        main(["sample", *options, "--out", str(tmp_path / "r.npz"), "--features", "resnet"])
    assert stop.value.code == 2 and not (tmp_path / "r.npz").exists()
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "digits" in err and "inception" in err, err


def test_inpaint_images_from_a_file_and_a_mask_file(digits_run, tmp_path, capsys):
    """Digits: an .npz of integer images and an .npz mask (nonzero = missing) through a tiny U-Net run."""
    import numpy as np

    from scoresde import image_dataset

    run = digits_run
    capsys.readouterr()
    images = image_dataset("digits", "test").x[:3].numpy().astype(np.uint8)
    np.savez(tmp_path / "images.npz", x=images)
    missing = np.zeros((1, 8, 8), dtype=bool)
    missing[:, 4:, :] = True  # the bottom half
    np.savez(tmp_path / "mask.npz", mask=missing)
    out = tmp_path / "painted.npz"
    options = [
        "--image",
        str(tmp_path / "images.npz"),
        "--mask",
        str(tmp_path / "mask.npz"),
        *"--steps 5 --method replacement".split(),
    ]
    assert main(["inpaint", "--checkpoint", str(run), *options, "--out", str(out), "--json"]) == 0
    data = np.load(out)
    assert data["x"].shape == (3, 1, 8, 8) and data["x"].min() >= 0 and data["x"].max() <= 16
    assert np.array_equal(data["x"][:, :, :4], images[:, :, :4])  # the known top half is returned as given
    assert out.with_suffix(".png").stat().st_size > 3000


def test_ddpm_sampler_with_the_analytic_variance_from_the_cli(run, tmp_path, capsys):
    """--option variance=analytic: Gamma_t of the run's model at the grid's times, computed once and cached in the
    run folder (the second call reads it back); an unknown variance is a one-line error naming the valid ones."""
    options = ["--checkpoint", str(run), "--sampler", "ddpm", "--steps", "8", "-n", "100", "--json"]
    assert main(["sample", *options, "--option", "variance=analytic", "--out", str(tmp_path / "a.npz")]) == 0
    settings = json.loads(capsys.readouterr().out)["settings"]
    assert settings["variance"] == "analytic" and "ScoreMoments(9 times" in settings["moments"]
    (cache,) = run.glob("score_moments-uniform-8-*.safetensors")
    stamp = cache.stat().st_mtime_ns
    assert main(["sample", *options, "--option", "variance=analytic", "--out", str(tmp_path / "b.npz")]) == 0
    assert cache.stat().st_mtime_ns == stamp
    capsys.readouterr()
    assert main(["sample", *options, "--option", "variance=huge", "--out", str(tmp_path / "c.npz")]) == 2
    err = capsys.readouterr().err
    assert err.strip().count("\n") == 0 and "analytic, beta, beta_tilde" in err, err


@pytest.mark.slow
def test_likelihood_of_images_under_each_dequantization_reports_its_offset(digits_run, tmp_path, capsys):
    """`likelihood --dequantization D --dequantizations K [--importance-weighted]` on digits (17 levels on [-1, 1]):
    the offset is derived (log2(17 / 2) = 3.09 bits/dim for uniform), the settings are recorded, importance weighting
    is never above the averaged bound on the same draws' model, and bad combinations are one line, nothing written."""
    base = ["likelihood", "--checkpoint", str(digits_run), "-n", "4", "--no-rigorous", "--json", "--method", "ei_fixed"]
    results = {}
    for name, extra in {
        "uniform": [],
        "uniform-k4": ["--dequantizations", "4"],
        "iw-k4": ["--dequantizations", "4", "--importance-weighted"],
        "truncated": ["--dequantization", "truncated_normal"],
    }.items():
        assert main([*base, *extra, "--out", str(tmp_path / f"{name}.json")]) == 0
        results[name] = json.loads(capsys.readouterr().out)
    assert abs(results["uniform"]["offset_bits_per_dim"] - math.log2(17 / 2)) < 1e-12
    assert results["iw-k4"]["importance_weighted"] and results["iw-k4"]["importance_bias_bits_per_dim"] > 0
    assert results["iw-k4"]["bits_per_dim"] <= results["uniform-k4"]["bits_per_dim"] + 1e-9  # log-mean-exp <= mean
    assert results["truncated"]["dequantization"] == "truncated_normal"
    assert results["truncated"]["offset_bits_per_dim"] > results["uniform"]["offset_bits_per_dim"]  # a narrow q
    for extra, message in (
        (["--importance-weighted"], "--importance-weighted needs --dequantizations K >= 2"),
        (["--dequantizations", "0"], "--dequantizations: must be an integer >= 1"),
    ):
        status = None
        try:
            status = main([*base, *extra, "--out", str(tmp_path / "bad.json")])
        except SystemExit as stop:  # refused while parsing
            status = stop.code
        assert status == 2 and message in capsys.readouterr().err and not (tmp_path / "bad.json").exists()


@pytest.mark.slow
@pytest.mark.bench  # 28 s: two torchrun starts; the two-process equality itself is in the slow tier (spawned gloo)
def test_likelihood_under_torchrun_equals_one_process(digits_run, tmp_path, capsys):
    """`torchrun --nproc_per_node 2 -m scoresde likelihood` shares the chunks between two gloo processes; rank 0
    writes the figure one process writes (same images, seed, chunk size), Hutchinson probes included."""
    import subprocess
    import sys

    args = ["likelihood", "--checkpoint", str(digits_run), "-n", "8", "--chunk-size", "2", "--no-rigorous",
            "--method", "ei_fixed", "--dequantizations", "2", "--json"]  # fmt: skip
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    capsys.readouterr()
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                          "-m", "scoresde", *args, "--out", str(tmp_path / "two.json")],
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    one, two = (json.loads((tmp_path / f"{name}.json").read_text()) for name in ("one", "two"))
    assert abs(one["bits_per_dim"] - two["bits_per_dim"]) < 1e-6
    assert abs(one["bits_per_dim_standard_error"] - two["bits_per_dim_standard_error"]) < 1e-6
    assert one["settings"]["processes"] == 1 and two["settings"]["processes"] == 2
    uneven = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                             "-m", "scoresde", *args[:3], "-n", "6", *args[5:], "--out", str(tmp_path / "x.json")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert uneven.returncode != 0 and "does not split evenly over 2 processes" in uneven.stderr
    assert not (tmp_path / "x.json").exists()
