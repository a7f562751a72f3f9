"""Fault injection: kill training runs at random moments, resume them, and count what survived.

Each of ``--n`` trials starts ``scoresde train`` in a subprocess and SIGKILLs it: half of the kills are timed onto
a checkpoint write (the kill lands while the checkpoint's temporary file is on disk), half at a uniformly random
moment of the run (start-up included). The same command is then run again with ``--resume``. Per trial:

- checkpoint loads: the checkpoint the kill left (if one was written) loads without error;
- resume succeeds: the resumed command exits 0;
- bit-identical: its final model and EMA weights equal those of an uninterrupted run of the same command;
- no stale files: nothing but the run files is left in the folder (no temporaries, no lock);
- no repeated metrics: ``metrics.csv`` holds each step once, in order.

A battery of user errors follows (bad values, bad files, wrong devices, a folder with a user's files, a folder
another trainer holds): for each, the exit status, whether a traceback was printed, and whether any file the
user wrote changed. Prints a table and writes ``reliability.json`` and ``reliability.md``.

    python benchmarks/reliability.py --n 20
"""

from __future__ import annotations

import hashlib
import json
import random
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
TRAIN = [sys.executable, "-m", "scoresde", "train", "--steps", str(STEPS), "--json"] + [
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
LINES = ("checkpoint loads", "resume succeeds", "final weights bit-identical", "no stale files", "no repeated metrics")


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


def _trial(folder: Path, reference: dict, on_write: bool, run_seconds: float, rng: random.Random) -> dict:
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
    row["no stale files"] = folder.is_dir() and [p.name for p in folder.iterdir() if p.name not in RUN_FILES] == []
    metrics = folder / "metrics.csv"
    steps = [int(line.split(",")[0]) for line in metrics.read_text().split()[1:]] if metrics.is_file() else []
    row["no repeated metrics"] = steps == list(range(1, STEPS + 1))
    return row


def _fingerprint(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def user_error_battery(tmp: Path, run: Path) -> list[dict]:
    """User errors against the CLI: exit status, traceback, and whether any file the user wrote changed."""
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
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys,time\nfrom scoresde.training.run_folder import RunLock\n"
         "with RunLock(sys.argv[1]):\n print('held', flush=True); time.sleep(600)", str(tmp / "held")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    holder.stdout.readline()
    out = tmp / "outs"
    cases = {
        "train into a folder with user files": ["train", "--out", user, "--steps", 5],
        "train --resume on user files": ["train", "--out", user, "--resume", "--steps", 5],
        "train --out ''": ["train", "--out", "", "--steps", 5],
        "train --set train.steps=true": ["train", "--out", out / "a", "--set", "train.steps=true"],
        "train --set sde.beta_max=inf": ["train", "--out", out / "b", "--set", "sde.beta_max=inf"],
        "train --config with a YAML syntax error": ["train", "--out", out / "c", "--config", bad / "syntax.yaml"],
        "train --device meta": ["train", "--out", out / "d", "--device", "meta"],
        "train --device xpu": ["train", "--out", out / "e", "--device", "xpu"],
        "train without --out": ["train"],
        "train into a folder another trainer holds": ["train", "--out", tmp / "held", "--steps", 5],
        "sample a pickle as checkpoint": ["sample", "--checkpoint", bad / "pickle.safetensors", "--out", out / "s.npz"],
        "compare -n 1": ["compare", "--checkpoint", run, "-n", 1, "--out", out / "cmp"],
        **{
            f"likelihood --data {name}": [
                "likelihood",
                "--checkpoint",
                run,
                "--data",
                bad / name,
                "--out",
                out / "l.json",
            ]
            for name in ("empty.npz", "scalar.npz", "rows0.npz", "trunc.npz")
        },
        **{
            f"inpaint --image {name}": ["inpaint", "--checkpoint", run, "--image", bad / name, "--mask", "x1"]
            + ["--out", out / "i.npz"]
            for name in ("empty.npz", "scalar.npz", "rows0.npz", "trunc.npz")
        },
    }
    rows = []
    try:
        for name, args in cases.items():
            before = _fingerprint(user)
            proc = subprocess.run(
                [sys.executable, "-m", "scoresde", *map(str, args)], capture_output=True, text=True, cwd=tmp
            )
            rows.append(
                {
                    "case": name,
                    "exit": proc.returncode,
                    "traceback": "Traceback" in proc.stderr,
                    "one_line": proc.stderr.strip().count("\n") == 0,
                    "user_files_changed": _fingerprint(user) != before,
                    "message": proc.stderr.strip()[:160],
                }
            )
    finally:
        holder.kill()
        holder.wait()
    return rows


def main() -> None:
    parser = benchmark_parser(__doc__, quick="one kill-and-resume trial")
    parser.add_argument("--n", type=int, default=20, help="kill-and-resume trials (half timed onto a write)")
    parser.add_argument("--seed", type=int, default=0)
    args = parse(parser, n=1)
    out = setup_run(args)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory(prefix="scoresde-reliability-") as tmp_name:
        tmp = Path(tmp_name)
        start = time.perf_counter()
        subprocess.run([*TRAIN, "--out", str(tmp / "whole")], check=True, capture_output=True)
        run_seconds = time.perf_counter() - start
        reference = load_checkpoint(tmp / "whole")
        trials = []
        for i in range(args.n):
            row = _trial(tmp / f"trial{i}", reference, i % 2 == 0, run_seconds, rng)
            trials.append(row)
            flags = " ".join("ok " if row[line] is True else "NO " for line in LINES)
            print(f"trial {i:2d} kill at {row['moment']:<24} {flags} resumed from {row['checkpoint_step']}", flush=True)
        battery = user_error_battery(tmp, tmp / "whole")
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
    misses = [
        f"- {row['case']}: exit {row['exit']}: {row['message']}"
        for row in battery
        if row["exit"] != 2 or row["traceback"] or not row["one_line"] or row["user_files_changed"]
    ]
    table += ["", *misses] if misses else []
    print("\n" + "\n".join(table))
    report = {"n": args.n, "steps": STEPS, "checkpoint_every": CHECKPOINT_EVERY, "run_seconds": run_seconds}
    report.update({"totals": totals, "trials": trials, "user_errors": errors, "battery": battery})
    (out / "reliability.json").write_text(json.dumps(report, indent=2))
    (out / "reliability.md").write_text("\n".join(table) + "\n")
    print(f"\nwrote {out / 'reliability.json'} and reliability.md")


if __name__ == "__main__":
    main()
