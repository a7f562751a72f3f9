"""Fault injection: kill training runs at random moments, resume them, and count what survived.

Each of ``--n`` trials starts ``scoresde train`` in a subprocess and SIGKILLs it: half of the kills are timed onto
a checkpoint write (the kill lands while the checkpoint's temporary file is on disk), half at a uniformly random
moment of the run (start-up included). The same command is then run again with ``--resume``. Per trial:

- checkpoint loads: the checkpoint the kill left (if one was written) loads without error;
- resume succeeds: the resumed command exits 0;
- bit-identical: its final model and EMA weights equal those of an uninterrupted run of the same command;
- no stale files: nothing but the run files is left in the folder (no temporaries, no lock);
- no repeated metrics: ``metrics.csv`` holds each step once, in order.

The resumed run's checkpoint file is also compared byte for byte with the uninterrupted run's (checkpoints hold no
state that differs between identical runs).

A battery of user errors follows (bad values, bad files, wrong devices, a folder with a user's files, a folder
another trainer holds; and the third pass's: ``--resume`` with nothing to resume, zero counts, a model whose weights
overflow, untrustworthy optimizer state, artefacts of another model or edited by hand, an empty config, a checkpoint
that is a folder, a complex ``.npz``, a diffusers config that does not fit its weights; and the fourth pass's:
``sample`` / ``likelihood`` on a checkpoint with a wrong-shape model or optimizer tensor, a missing model key or
float64 EMA weights, a diffusers folder without its weights file): for each, the exit status, whether a traceback was
printed, the last line, and whether any file the user wrote changed. Last, two Ctrl-C 50 ms apart, and one SIGTERM
(exit 143), at random moments of a training command. Prints a table and writes ``reliability.json`` and
``reliability.md``.

    python benchmarks/reliability.py --n 20
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import benchmark_parser, parse, setup_run  # noqa: E402

from scoresde.training.checkpoint import CHECKPOINT, CheckpointError, load_checkpoint
from scoresde.training.run_folder import RUN_FILES

STEPS, CHECKPOINT_EVERY = 60, 10
TRAIN = [sys.executable, "-m", "scoresde", "train", "--preset", "toy-vp", "--steps", str(STEPS), "--json"] + [
    arg
    for s in (
        "model.kwargs.width=256",
        "model.kwargs.depth=2",
        "train.batch_size=64",
        "train.log_every=1",
        f"train.checkpoint_every={CHECKPOINT_EVERY}",
    )
    for arg in ("--set", s)
]
LINES = (
    "checkpoint loads",
    "resume succeeds",
    "final weights bit-identical",
    "checkpoint file identical",
    "no stale files",
    "no repeated metrics",
)


def _weights_equal(a: dict, b: dict) -> bool:
    return all(
        set(a[kind]) == set(b[kind]) and all(torch.equal(a[kind][k], b[kind][k]) for k in a[kind])
        for kind in ("model", "ema")
    )


def _kill(folder: Path, on_write: bool, run_seconds: float, rng: random.Random) -> dict:
    """Start a run into ``folder`` and SIGKILL it: during its ``k``-th checkpoint write, or after a random delay."""
    proc = subprocess.Popen([*TRAIN, "--out", str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    start = time.perf_counter()
    if on_write:
        target = rng.randint(1, STEPS // CHECKPOINT_EVERY - 1)
        temporary, seen = folder / f".{CHECKPOINT}.tmp-{proc.pid}", 0
        while proc.poll() is None:
            if temporary.exists():
                seen += 1
                if seen == target:
                    proc.kill()
                    break
                while temporary.exists() and proc.poll() is None:
                    pass
        moment = f"checkpoint write {seen} of {STEPS // CHECKPOINT_EVERY}"
        hit = seen == target
    else:
        delay = rng.uniform(0.0, run_seconds)
        time.sleep(delay)
        proc.kill()
        moment, hit = f"{delay:.2f} s", True
    proc.wait()
    return {"moment": moment, "killed": proc.returncode == -9 and hit, "seconds": time.perf_counter() - start}


def _trial(
    folder: Path, reference: dict, reference_bytes: bytes, on_write: bool, run_seconds: float, rng: random.Random
) -> dict:
    row = {"on_write": on_write, **_kill(folder, on_write, run_seconds, rng)}
    try:
        left = load_checkpoint(folder)
        row["checkpoint loads"], row["checkpoint_step"] = True, left["step"]
    except CheckpointError as exc:
        row["checkpoint loads"] = "no checkpoint at" in str(exc)  # killed before the first one: nothing to load
        row["checkpoint_step"] = None
    resumed = subprocess.run([*TRAIN, "--out", str(folder), "--resume"], capture_output=True, text=True)
    row["resume succeeds"] = resumed.returncode == 0
    row["resume_note"] = resumed.stderr.strip().splitlines()[-1][:120] if resumed.stderr.strip() else ""
    try:
        row["final weights bit-identical"] = _weights_equal(reference, load_checkpoint(folder))
    except CheckpointError:
        row["final weights bit-identical"] = False
    final = folder / CHECKPOINT
    row["checkpoint file identical"] = final.is_file() and final.read_bytes() == reference_bytes
    row["no stale files"] = folder.is_dir() and [p.name for p in folder.iterdir() if p.name not in RUN_FILES] == []
    metrics = folder / "metrics.csv"
    steps = [int(line.split(",")[0]) for line in metrics.read_text().split()[1:]] if metrics.is_file() else []
    row["no repeated metrics"] = steps == list(range(1, STEPS + 1))
    return row


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def _artefacts(tmp: Path, run: Path) -> Path:
    """What the third pass's cases need, made in-process: edited copies of ``run`` (overflowing EMA weights, a
    wrong-shape and a NaN optimizer tensor, a checkpoint that is a folder), a VE run, a grid fitted on ``run`` and
    two hand-edited copies, an empty config, a complex .npz, and (with the diffusers extra) a model folder whose
    config.json does not fit its weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from scoresde.config.presets import preset
    from scoresde.config.schema import override
    from scoresde.samplers.grid_fit import fit_grid
    from scoresde.training.runs import load_score_model
    from scoresde.training.trainer import Trainer

    made = tmp / "made"
    made.mkdir()

    def edited(name: str, edit) -> Path:
        folder = made / name
        folder.mkdir()
        for file in ("config.yaml", CHECKPOINT):
            (folder / file).write_bytes((run / file).read_bytes())
        with safe_open(str(folder / CHECKPOINT), framework="pt") as fh:
            metadata, tensors = dict(fh.metadata()), {k: fh.get_tensor(k) for k in fh.keys()}
        edit(tensors)
        save_file(tensors, str(folder / CHECKPOINT), metadata=metadata)
        return folder

    edited("overflowing-ema", lambda t: t.update({k: v * 1e18 for k, v in t.items() if k.startswith("ema.")}))
    edited("optim-shape", lambda t: t.update({"optim.0.exp_avg": t["optim.0.exp_avg"][:1]}))
    edited("optim-nan", lambda t: t.update({"optim.1.exp_avg_sq": t["optim.1.exp_avg_sq"] * float("nan")}))
    # the fourth pass (issue 43): a checkpoint is checked whole by every reader, its dtypes included
    first = "model.net.time.mlp.0.weight"
    edited("model-shape", lambda t: t.update({first: t[first][:1]}))
    edited("model-key", lambda t: t.pop(first))
    edited("float64-ema", lambda t: t.update({k: v.double() for k, v in t.items() if k.startswith("ema.")}))
    (made / "checkpoint-folder" / CHECKPOINT).mkdir(parents=True)
    ve = override(preset("toy-ve"), "train.steps=2", "model.kwargs.width=16", "model.kwargs.depth=1")
    Trainer(ve, made / "ve", progress=False).train()
    model = load_score_model(run)[0]
    grid = fit_grid(model.sde, model, "dpm_solver", 3, (1, 2), n=32, iterations=3, dtype=torch.float32)
    record = grid.save(made / "grid.json") and json.loads((made / "grid.json").read_text())
    for sampler in ("pc", None):
        (made / f"grid-{sampler}.json").write_text(json.dumps({**record, "sampler": sampler}))
    (made / "empty.yaml").write_text("# nothing set\n")
    np.savez(made / "complex.npz", x=np.ones((8, 2), dtype=np.complex64))
    try:
        import diffusers
    except ImportError:
        return made
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D",) * 2,
                                 up_block_types=("UpBlock2D",) * 2, norm_num_groups=4)  # fmt: skip
    diffusers.DDPMPipeline(unet=unet, scheduler=diffusers.DDPMScheduler()).save_pretrained(made / "diffusers")
    (made / "diffusers-no-weights" / "unet").mkdir(parents=True)
    for file in ("model_index.json", "scheduler/scheduler_config.json", "unet/config.json"):
        (made / "diffusers-no-weights" / file).parent.mkdir(parents=True, exist_ok=True)
        (made / "diffusers-no-weights" / file).write_bytes((made / "diffusers" / file).read_bytes())
    config = json.loads((made / "diffusers" / "unet" / "config.json").read_text())
    (made / "diffusers" / "unet" / "config.json").write_text(json.dumps({**config, "block_out_channels": [8, 32]}))
    return made


def _cases(tmp: Path, run: Path, user: Path, bad: Path, made: Path) -> list[tuple[str, str, list]]:
    """``(kind, case, arguments)`` of every user error; ``--quick`` runs the first case of each kind."""
    out = tmp / "outs"
    data_cases = [
        (kind, f"{command} --{option} {name}", [command, "--checkpoint", run, f"--{option}", bad / name, *extra])
        for kind, command, option, extra in (
            ("bad data file", "likelihood", "data", ["--out", out / "l.json"]),
            ("bad image file", "inpaint", "image", ["--mask", "x1", "--out", out / "i.npz"]),
        )
        for name in ("empty.npz", "scalar.npz", "rows0.npz", "trunc.npz")
    ]
    cases = [
        ("user files", "train into a folder with user files", ["train", "--out", user, "--steps", 5]),
        ("user files", "train --resume on user files", ["train", "--out", user, "--resume", "--steps", 5]),
        ("bad value", "train --out ''", ["train", "--out", "", "--steps", 5]),
        ("bad value", "train --set train.steps=true", ["train", "--out", out / "a", "--set", "train.steps=true"]),
        ("bad value", "train --set sde.beta_max=inf", ["train", "--out", out / "b", "--set", "sde.beta_max=inf"]),
        (
            "bad file",
            "train --config with a YAML syntax error",
            ["train", "--out", out / "c", "--config", bad / "syntax.yaml"],
        ),
        ("device", "train --device meta", ["train", "--out", out / "d", "--device", "meta"]),
        ("device", "train --device xpu", ["train", "--out", out / "e", "--device", "xpu"]),
        ("bad value", "train without --out", ["train"]),
        ("lock", "train into a folder another trainer holds", ["train", "--out", tmp / "held", "--steps", 5]),
        (
            "pickle",
            "sample a pickle as checkpoint",
            ["sample", "--checkpoint", bad / "pickle.safetensors", "--out", out / "s.npz"],
        ),
        ("bad value", "compare -n 1", ["compare", "--checkpoint", run, "-n", 1, "--out", out / "cmp"]),
        *data_cases,
        # the third pass (issue 30)
        (
            "resume nothing",
            "train --resume into a missing folder",
            ["train", "--out", out / "missing", "--resume", "--steps", 20],
        ),
        (
            "resume nothing",
            "train --resume into an empty folder",
            ["train", "--out", made / "empty-folder", "--resume"],
        ),
        (
            "zero count",
            "distill --train-steps 0",
            ["distill", "--teacher", "oracle:gmm", "--method", "consistency", "--train-steps", 0, "--out", out / "f"],
        ),
        (
            "zero count",
            "fit-grid --iterations 0",
            ["fit-grid", "--checkpoint", run, "--iterations", 0, "--out", out / "g.json"],
        ),
        (
            "overflowing model",
            "likelihood of EMA weights x 1e18",
            ["likelihood", "--checkpoint", made / "overflowing-ema", "-n", 50, "--out", out / "l2.json"],
        ),
        (
            "overflowing model",
            "train --resume with EMA weights x 1e18",
            ["train", "--out", made / "overflowing-ema", "--resume", "--steps", 70],
        ),
        (
            "optimizer state",
            "train --resume with a wrong-shape exp_avg",
            ["train", "--out", made / "optim-shape", "--resume", "--steps", 70],
        ),
        (
            "optimizer state",
            "train --resume with a NaN exp_avg_sq",
            ["train", "--out", made / "optim-nan", "--resume", "--steps", 70],
        ),
        (
            "artefact",
            "sample a VE run with a VP run's grid",
            ["sample", "--checkpoint", made / "ve", "--grid", made / "grid.json", "--out", out / "s2.npz"],
        ),
        (
            "artefact",
            "sample with a grid edited to sampler pc",
            ["sample", "--checkpoint", run, "--grid", made / "grid-pc.json", "--out", out / "s3.npz"],
        ),
        (
            "artefact",
            "sample with a grid edited to sampler null",
            ["sample", "--checkpoint", run, "--grid", made / "grid-None.json", "--out", out / "s4.npz"],
        ),
        (
            "artefact",
            "fit-grid --sampler pc",
            ["fit-grid", "--checkpoint", run, "--sampler", "pc", "--out", out / "g2.json"],
        ),
        (
            "bad file",
            "train --config with an empty file",
            ["train", "--out", out / "h", "--config", made / "empty.yaml"],
        ),
        (
            "bad file",
            "train --resume where the checkpoint is a folder",
            ["train", "--out", made / "checkpoint-folder", "--resume"],
        ),
        (
            "bad file",
            "likelihood --data complex.npz",
            ["likelihood", "--checkpoint", run, "--data", made / "complex.npz", "--out", out / "l3.json"],
        ),
    ]
    # the fourth pass (issue 43): readers of the EMA weights alone check the whole file, as a resume does
    for folder, what in (
        ("model-shape", "a wrong-shape model tensor"),
        ("optim-shape", "a wrong-shape optimizer tensor"),
        ("model-key", "a missing model key"),
        ("float64-ema", "float64 EMA weights"),
    ):
        cases.append(
            (
                "whole checkpoint",
                f"sample with {what}",
                ["sample", "--checkpoint", made / folder, "--steps", 2, "--out", out / f"{folder}.npz"],
            )
        )
        cases.append(
            (
                "whole checkpoint",
                f"likelihood with {what}",
                ["likelihood", "--checkpoint", made / folder, "-n", 4, "--out", out / f"{folder}.json"],
            )
        )
    cases.append(
        (
            "whole checkpoint",
            "train --resume with float64 EMA weights",
            ["train", "--out", made / "float64-ema", "--resume", "--steps", 70],
        )
    )
    (made / "empty-folder").mkdir(exist_ok=True)
    if (made / "diffusers").is_dir():
        cases.append(
            (
                "diffusers",
                "sample a diffusers folder whose config.json does not fit its weights",
                ["sample", "--checkpoint", made / "diffusers", "--out", out / "s5.npz"],
            )
        )
        for command in ("sample", "likelihood"):
            cases.append(
                (
                    "diffusers",
                    f"{command} a diffusers folder without its weights file",
                    [command, "--checkpoint", made / "diffusers-no-weights", "--out", out / f"{command}6"],
                )
            )
    return cases  # fmt: skip


def user_error_battery(tmp: Path, run: Path, quick: bool = False) -> list[dict]:
    """User errors against the CLI: exit status, traceback, the last line, and whether any file the user wrote (their
    own files, the data files, the runs and artefacts the cases use) changed."""
    user = tmp / "user"
    user.mkdir()
    (user / "config.yaml").write_text("keep\n")
    (user / "evals.csv").write_text("x\n")
    (user / "notes.txt").write_text("mine\n")
    bad = tmp / "bad"
    bad.mkdir()
    (bad / "empty.npz").write_bytes(b"")
    np.savez(bad / "scalar.npz", x=np.float64(1.0))
    np.savez(bad / "rows0.npz", x=np.zeros((0, 2)))
    np.savez(bad / "trunc.npz", x=np.zeros((100, 2)))
    (bad / "trunc.npz").write_bytes((bad / "trunc.npz").read_bytes()[:120])
    (bad / "syntax.yaml").write_text("train:\n  steps: [1\n")
    (bad / "pickle.safetensors").write_bytes(b"\x80\x04K\x01.")
    made = _artefacts(tmp, run)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom scoresde.training.run_folder import RunLock\n"
         "with RunLock(sys.argv[1]):\n print('held', flush=True); time.sleep(600)", str(tmp / "held")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder.stdout.readline()
    cases, seen = _cases(tmp, run, user, bad, made), set()
    if quick:  # one case of each of the first five kinds
        cases = [case for case in cases if not (case[0] in seen or seen.add(case[0]))][:5]
    watched = (user, bad, made, run)
    rows = []
    try:
        for kind, name, args in cases:
            before = [_fingerprint(folder) for folder in watched]
            proc = subprocess.run(
                [sys.executable, "-m", "scoresde", *map(str, args)], capture_output=True, text=True, cwd=tmp
            )
            lines = proc.stderr.strip().splitlines()
            rows.append(
                {
                    "kind": kind,
                    "case": name,
                    "exit": proc.returncode,
                    "traceback": "Traceback" in proc.stderr,
                    "one_line": len(lines) <= 1,
                    "user_files_changed": [_fingerprint(folder) for folder in watched] != before,
                    "message": lines[-1].replace(f"{tmp}/", "")[:200] if lines else "",  # paths relative to tmp
                }
            )
    finally:
        holder.kill()
        holder.wait()
    return rows


def double_interrupts(
    tmp: Path, trials: int, rng: random.Random, signals: tuple[int, ...] = (signal.SIGINT, signal.SIGINT)
) -> list[dict]:
    """``signals`` 50 ms apart (two SIGINTs; or one SIGTERM, a scheduler's stop) at a random moment of a training
    command run as users run it (the console script): the exit status, whether a traceback was printed, and whether
    the stop's checkpoint loads."""
    script = [sys.executable, "-c", "import sys, scoresde_cli; sys.exit(scoresde_cli.main())"]
    rows = []
    for i in range(trials):
        folder = tmp / f"interrupted{i}-{signals[0]}"
        proc = subprocess.Popen([*script, *TRAIN[3:], "--steps", "100000", "--out", str(folder)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
        delay = rng.uniform(0.5, 6.0)
        time.sleep(delay)
        for signum in signals:
            proc.send_signal(signum)
            time.sleep(0.05)
        try:
            _, err = proc.communicate(timeout=120)
        finally:
            proc.kill()
        try:
            step = load_checkpoint(folder)["step"]
        except CheckpointError:
            step = None
        rows.append({"delay": round(delay, 2), "exit": proc.returncode, "traceback": "Traceback" in err, "step": step})
        name = "+".join(signal.Signals(s).name for s in signals)
        print(f"{name} {i}: at {delay:.2f} s exit {proc.returncode} checkpoint step {step}", flush=True)
    return rows


def _stopped(rows: list[dict], statuses: tuple[int, ...]) -> tuple[int, int]:
    """How many signal trials exited with one of ``statuses`` without a traceback, and how many left a checkpoint."""
    clean = sum(row["exit"] in statuses and not row["traceback"] for row in rows)
    return clean, sum(row["step"] is not None for row in rows)


def main() -> None:
    parser = benchmark_parser(
        __doc__, quick="one kill-and-resume trial, one user error of each of five kinds, one double Ctrl-C"
    )
    parser.add_argument("--n", type=int, default=20, help="kill-and-resume trials (half timed onto a write)")
    parser.add_argument("--interrupts", type=int, default=10, help="double Ctrl-C trials")
    parser.add_argument("--seed", type=int, default=0)
    args = parse(parser, n=1, interrupts=1)
    out = setup_run(args)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="scoresde-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        subprocess.run([*TRAIN, "--out", str(tmp / "whole")], check=True, capture_output=True)
        run_seconds = time.perf_counter() - start
        reference = load_checkpoint(tmp / "whole")
        reference_bytes = (tmp / "whole" / CHECKPOINT).read_bytes()
        trials = []
        for i in range(args.n):
            row = _trial(tmp / f"trial{i}", reference, reference_bytes, i % 2 == 0, run_seconds, rng)
            trials.append(row)
            flags = " ".join("ok " if row[line] is True else "NO " for line in LINES)
            print(f"trial {i:2d} kill at {row['moment']:<24} {flags} resumed from {row['checkpoint_step']}", flush=True)
        battery = user_error_battery(tmp, tmp / "whole", quick=args.quick)
        interrupts = double_interrupts(tmp, args.interrupts, rng)
        terms = double_interrupts(tmp, max(1, args.interrupts // 2), rng, (signal.SIGTERM,))
    totals = {line: sum(row[line] is True for row in trials) for line in LINES}
    errors = {
        "cases": len(battery),
        "exit 2": sum(row["exit"] == 2 for row in battery),
        "tracebacks": sum(row["traceback"] for row in battery),
        "not one line": sum(not row["one_line"] for row in battery),
        "user files changed": sum(row["user_files_changed"] for row in battery),
    }
    header = (
        f"kill-and-resume: {args.n} trials ({sum(r['on_write'] for r in trials)} timed onto a checkpoint write, the "
        f"others at a uniform moment of the {run_seconds:.1f} s run; {STEPS} steps, a checkpoint every "
        f"{CHECKPOINT_EVERY})"
    )
    table = [header, "", "| check | trials passed |", "|---|---|"]
    table += [f"| {line} | {totals[line]}/{args.n} |" for line in LINES]
    table += ["", f"user errors ({errors['cases']} cases):", "", "| check | cases |", "|---|---|"]
    table += [f"| {key} | {errors[key]} |" for key in ("exit 2", "tracebacks", "not one line", "user files changed")]
    table += ["", "| case | exit | last line | files changed |", "|---|---|---|---|"]
    table += [
        f"| {row['case']} | {row['exit']} | {row['message'].replace('|', '/')} | "
        f"{'**yes**' if row['user_files_changed'] else 'no'} |"
        for row in battery
    ]
    clean, saved = _stopped(interrupts, (130,))
    table += [
        "",
        f"two Ctrl-C 50 ms apart at a random moment of a training command (console script): {clean}/{len(interrupts)} "
        f"exit 130 without a traceback; {saved} stopped while training, each with its checkpoint on disk, the others "
        f"during start-up (nothing to save yet)",
    ]
    clean, saved = _stopped(terms, (143, -signal.SIGTERM))
    table += [
        "",
        f"one SIGTERM at a random moment of a training command: {clean}/{len(terms)} exit 143 = 128 + 15 without a "
        f"traceback ({saved} stopped while training, with the checkpoint on disk; during start-up the default SIGTERM "
        f"ends the process, which shells also report as 143)",
    ]
    print("\n" + "\n".join(table))
    report = {"n": args.n, "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "run_seconds": run_seconds}
    report.update({"totals": totals, "trials": trials, "user_errors": errors, "battery": battery})
    report.update({"double_interrupts": interrupts, "sigterm": terms})
    (out / "reliability.json").write_text(json.dumps(report, indent=2))
    (out / "reliability.md").write_text("\n".join(table) + "\n")
    print(f"\nwrote {out / 'reliability.json'} and reliability.md")


if __name__ == "__main__":
    main()
