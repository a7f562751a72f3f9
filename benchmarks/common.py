"""What the benchmarks share: the command line (``--out``, ``--threads``, ``--quick``), the tail (the table printed,
``<name>.json``, ``<name>.md`` and ``<name>.png`` written), the digits comparison and the training of a distilled
student. Scripts import this and the library, never each other."""

from __future__ import annotations

import argparse
import csv
import statistics
import struct
from collections.abc import Callable
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from scoresde import energy_distance, image_dataset, sample  # noqa: E402
from scoresde._io import json_text  # noqa: E402
from scoresde._stats import mean_and_standard_error  # noqa: E402
from scoresde.config import override  # noqa: E402
from scoresde.evaluation.comparison import SamplerSpec, compare_samplers  # noqa: E402
from scoresde.evaluation.features import image_metric  # noqa: E402
from scoresde.evaluation.metrics import energy_distance_floor  # noqa: E402
from scoresde.training import CheckpointError, Trainer, distill, distillation_config, load_checkpoint  # noqa: E402

QUICK_TRAINING = ("train.steps=20", "model.kwargs.ch=8", "model.kwargs.groups=4", "model.kwargs.num_res_blocks=1")
"""A digits model trained for a smoke run (seconds): what ``--quick`` trains where a script needs digits-ddpm."""

RESULTS = Path(__file__).parent / "results"
"""Where the committed figures live (the default ``--out``)."""


def benchmark_parser(doc: str | None, *, quick: str = "small sizes: a smoke run") -> argparse.ArgumentParser:
    """The parser every script starts from: ``--out`` (default `RESULTS`), ``--threads`` (2: the machines the
    figures are quoted for) and ``--quick`` (``quick`` says what it shrinks); the script adds its own options."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(RESULTS), help="folder of the JSON, Markdown and PNG files")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def parse(parser: argparse.ArgumentParser, **quick) -> argparse.Namespace:
    """Parse the command line; with ``--quick`` the script's own options named in ``quick`` take those values
    (``parse(parser, n=500)``: 500 samples in a smoke run), whatever the command line said."""
    args = parser.parse_args()
    if args.quick:
        for name, value in quick.items():
            setattr(args, name, value)
    return args


def setup_run(args: argparse.Namespace) -> Path:
    """Apply ``--threads`` and create ``--out``; returns the output folder."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_report(out: Path, name: str, report: dict, text: str, plot: Callable[[dict, Path], None]) -> None:
    """Print the Markdown ``text``; write ``report`` as JSON (null for non-finite numbers: the package's one rule),
    ``text`` as Markdown and ``plot(report, path)``'s PNG."""
    print(text)
    (out / f"{name}.json").write_text(json_text(report))
    (out / f"{name}.md").write_text(text)
    plot(report, out / f"{name}.png")
    print(f"wrote {out / f'{name}.json'}, {name}.md and {name}.png")


def digits_markdown(report: dict) -> str:
    """The digits comparison's table (`compare_on_digits`'s report) in Markdown."""
    floor = report["floor"]
    lines = [
        f"digits-ddpm (step {report['step']}): {report['n']} samples per sampler from one prior draw against the "
        f"test split ({floor['n_reference']} images); FD-digits = Fréchet distance on the shipped digits network",
        "",
        "| sampler | NFE | FD-digits | KID | precision | recall | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for run in report["runs"]:
        q = run["image_quality"]
        lines.append(
            f"| {run['label']} | {run['nfe']} | {q['frechet_distance']:.3f} | {q['kid']:.4f} ± "
            f"{q['kid_standard_error']:.4f} | {q['precision']:.3f} | {q['recall']:.3f} | {run['seconds']:.1f} |"
        )
    lines.append(
        f"| training split (the floor) | - | {floor['frechet_distance']:.3f} | {floor['kid']:.4f} ± "
        f"{floor['kid_standard_error']:.4f} | {floor['precision']:.3f} | {floor['recall']:.3f} | - |"
    )
    return "\n".join(lines) + "\n"


def plot_digits_quality(report: dict, path: Path) -> None:
    """FD-digits and KID against NFE for every family of the digits comparison, the training split's floor."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for family in dict.fromkeys(run["family"] for run in report["runs"]):
        runs = [r for r in report["runs"] if r["family"] == family]
        nfe = [r["nfe"] for r in runs]
        for ax, key in zip(axes, ("frechet_distance", "kid")):
            ax.plot(nfe, [r["image_quality"][key] for r in runs], marker="o", label=family)
    for ax, key, name in zip(axes, ("frechet_distance", "kid"), ("FD-digits", "KID")):
        ax.axhline(report["floor"][key], color="grey", ls="--", label="training split (floor)")
        ax.set(xscale="log", xlabel="NFE", ylabel=name, title=f"digits-ddpm: {name} against NFE")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def compare_on_digits(trainer: Trainer, specs: list[SamplerSpec]) -> tuple:
    """``specs`` on the trained digits model from one prior draw of as many samples as the training split has
    images, scored against the test split with the shipped digits network. Returns the `Comparison` and its report
    (JSON-safe: the floor, one row per run)."""
    config = trainer.config
    transform = config.data.transform()
    test, train = (image_dataset("digits", split) for split in ("test", "train"))
    metric = image_metric(config.data, cache_dir=trainer.out_dir / "reference_features")
    with torch.no_grad():
        comparison = compare_samplers(
            trainer.sde,
            trainer.score_fn,
            transform.to_model(test.x.float() + 0.5),
            lineup=specs,
            n=len(train),
            floor_reference=transform.to_model(train.x.float() + 0.5),
            postprocess=lambda x: transform.to_model(transform.from_model(x) + 0.5),
            image_metric=metric,
            progress=True,
        )
    report = {
        "step": trainer.step,
        "n": comparison.n,
        "feature_network": {"name": metric.network.name, "label": metric.label, **metric.network.metadata},
        "floor": comparison.image_floor.to_dict(),
        "runs": [run.to_dict() for run in comparison.runs],
    }
    return comparison, report


def toy_quality(
    sde, fn, toy, sampler: str | None, steps: int | None, floors: dict, n: int = 10_000, seeds: int = 3,
    distance: Callable = energy_distance, **options
) -> dict:  # fmt: skip
    """The figures of one sampler on a toy (``sample(sde, fn, (n, 2), sampler, steps=steps, **options)``), each the mean
    over ``seeds`` evaluations (fresh prior draws and sampler noise,
    fresh true samples) with its standard error: a few samples thrown far away move one 10,000-sample energy
    distance by the floor or more, so one seed does not tell 2x from 4x. ``distance``: the exact pairwise energy
    distance, or an estimator of it (`scoresde._stats.sliced_energy_distance`, unbiased over its directions)."""
    energies, gaps = [], []
    for k in range(seeds):
        with torch.no_grad():
            result = sample(sde, fn, (n, 2), sampler, steps=steps,
                            generator=torch.Generator().manual_seed(5 + 10 * k), **options)  # fmt: skip
        x = result.x.double()
        reference = toy.sample(n, torch.Generator().manual_seed(2 + 10 * k)).double()
        energies.append(distance(x, reference))
        gaps.append(float(-toy.nll_log_prob(x).mean()) - toy.perfect_nll())
    energy, energy_se = mean_and_standard_error(torch.tensor(energies))
    return {
        "nfe": result.nfe,
        "energy": energy,
        "energy_se": energy_se,
        "energies": energies,
        "over_floor": energy / floors["closed_form"],
        "over_floor_se": energy_se / floors["closed_form"],
        "over_measured_floor": energy / floors["measured"],
        "nll_minus_entropy": statistics.mean(gaps),
    }


def toy_floors(toy, n: int, measured_pairs: int = 10) -> dict:
    """The true-vs-true floor of an ``n``-sample energy distance on ``toy``: in closed form ((1/n + 1/m) E|X - X'|
    from 10^6 pairs, `scoresde.evaluation.metrics.energy_distance_floor`, with its standard error) and measured
    (the mean over ``measured_pairs`` true-vs-true pairs)."""
    closed, closed_se = energy_distance_floor(toy.sample, n, generator=torch.Generator().manual_seed(0))
    measured = statistics.mean(
        energy_distance(toy.sample(n, torch.Generator().manual_seed(100 + 2 * k)).double(),
                        toy.sample(n, torch.Generator().manual_seed(101 + 2 * k)).double())
        for k in range(measured_pairs)
    )  # fmt: skip
    return {"closed_form": closed, "closed_form_se": closed_se, "measured": measured}


def finished(config, folder: Path) -> bool:
    """Whether ``folder`` holds this very student, trained to its last step (then it is reused, not retrained)."""
    try:
        checkpoint = load_checkpoint(folder)
    except CheckpointError:
        return False
    return checkpoint["config"].to_dict() == config.to_dict() and checkpoint["step"] == config.train.steps


def training_seconds(folder: Path) -> float:
    """The training's own wall time: the last ``seconds`` of the run's metrics.csv."""
    with open(folder / "metrics.csv") as f:
        return float(list(csv.DictReader(f))[-1]["seconds"])


def train_student(
    teacher: str, name: str, method: str, out: Path, reuse: bool, *, steps: int = 1, train_steps: int,
    teacher_steps: int | None = None, sde: str = "vp", **extra
) -> tuple:  # fmt: skip
    """Distil ``teacher`` into ``out/name`` (kept if ``reuse`` and already trained with the same config). Returns the
    config and the wall time of each student: ``{steps: seconds}``, a progressive round's the sum of the rounds up to
    it (its teachers' training included)."""
    config = distillation_config(teacher, method, steps=steps, sde=sde, train_steps=train_steps)
    config = override(config, *(f"{k}={v}" for k, v in extra.items()))
    folder = out / name
    if not (reuse and finished(config, folder)):
        distill(config, folder, teacher_steps=teacher_steps, progress=False, overwrite=True, resume=False)
    if method != "progressive":
        return config, {"any": training_seconds(folder)}
    rounds = sorted((int(p.name) for p in (folder / "rounds").iterdir()), reverse=True)
    seconds, total = {}, 0.0
    for round_steps in rounds:
        total += training_seconds(folder / "rounds" / str(round_steps))
        seconds[round_steps] = total
    seconds[steps] = total + training_seconds(folder)
    return config, seconds


def fake_image_files(folder: Path, n_cifar: int = 128) -> None:
    """Random pixels in MNIST's IDX and CIFAR-10's binary format (``n_cifar`` records a file): a throughput run
    only needs the shapes, and a GPU machine has no network to fetch the real files."""
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 64)):
        for kind, shape in (("images-idx3", (n, 28, 28)), ("labels-idx1", (n,))):
            arr = rng.integers(0, 256 if kind.startswith("images") else 10, shape).astype(np.uint8)
            header = b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(f">{arr.ndim}i", *arr.shape)
            (folder / f"{prefix}-{kind}-ubyte").write_bytes(header + arr.tobytes())
    cifar = folder / "cifar-10-batches-bin"
    cifar.mkdir(exist_ok=True)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        (cifar / name).write_bytes(rng.integers(0, 256, (n_cifar, 3073)).astype(np.uint8).tobytes())
