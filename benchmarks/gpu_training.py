"""A short CIFAR-10-sized training with evaluation while training, at the field's GPU settings against fp32 eager.

The ``cifar10-ddpm`` preset's U-Net (35.7M parameters, batch 128) trained on random pixels in CIFAR-10's file
format (the machine has no network to fetch the real files: throughput and the loop's machinery do not depend on
the pixels) for ``--steps`` steps twice: fp32 eager, and bf16 + torch.compile + channels-last + fused AdamW; the
second run evaluates bits/dim on a fixed held-out batch every ``--eval-every`` steps (FD is skipped: Inception's
weights are not shipped). Reports training images/s (evaluation excluded), the speed-up, peak memory and the
evaluation's cost.

Usage: python benchmarks/gpu_training.py [--device cuda] [--steps 300] [--eval-every 100] [--quick]
Writes gpu_training.json and gpu_training.md.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from common import benchmark_parser, fake_image_files, parse, setup_run

from scoresde._io import json_text
from scoresde.config import override, preset
from scoresde.evaluation import TrainingEvaluator
from scoresde.training.trainer import Trainer

SETTINGS = {
    "fp32 eager": ("train.precision=fp32", "train.compile=false", "train.channels_last=false"),
    "bf16 + compile + channels-last": ("train.precision=bf16", "train.compile=true", "train.channels_last=true"),
}


def run(name: str, sets: tuple, data_dir: Path, args, folder: Path) -> dict:
    """Train one setting; images/s over the steps after the first 10 (compilation and warm-up excluded)."""
    cfg = override(preset(args.preset), f"data.data_dir={data_dir}", f"train.steps={args.steps}",
                   "train.checkpoint_every=0", "train.log_every=10", *sets, *args.set)  # fmt: skip
    if torch.device(args.device).type == "cpu" and "compile" in name:  # a CPU compile of a U-Net takes minutes
        cfg = override(cfg, "train.compile=false")
    evaluate = "bf16" in name and args.eval_every
    if evaluate:
        cfg = override(cfg, f"train.eval_every={args.eval_every}", "train.eval_batch=64", "train.eval_samples=64",
                       "train.eval_nfe=32")  # fmt: skip
    evaluator = TrainingEvaluator(cfg, folder, args.device) if evaluate else None
    trainer = Trainer(cfg, folder, device=args.device, progress=False, eval_fn=evaluator,
                      eval_names=evaluator.names if evaluator else ())  # fmt: skip
    if torch.device(args.device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train(10)
    result = trainer.train()
    eval_seconds = sum(e.get("eval_seconds", 0.0) for e in trainer.evals)
    timed = result.step - 10
    images_per_s = timed * cfg.train.batch_size / max(result.seconds - eval_seconds, 1e-9)
    peak = torch.cuda.max_memory_allocated() / 2**20 if torch.device(args.device).type == "cuda" else None
    row = {"setting": name, "train_images_per_s": images_per_s, "steps": result.step, "peak_memory_mib": peak,
           "eval_seconds": eval_seconds, "evals": trainer.evals, "final_loss": result.loss}  # fmt: skip
    print(f"{name:32s} {images_per_s:9.1f} img/s  peak {peak} MiB  evaluation {eval_seconds:.1f} s", flush=True)
    return row


def main() -> None:
    parser = benchmark_parser(__doc__, quick="a tiny MNIST-sized U-Net, batch 16, 14 steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--preset", default="cifar10-ddpm")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--set", action="append", default=[], help="further config overrides")
    tiny = ["model.kwargs.ch=8", "model.kwargs.groups=4", "model.kwargs.num_res_blocks=1", "train.batch_size=16"]
    args = parse(parser, preset="mnist-ddpm", steps=12, eval_every=12, set=tiny)
    out = setup_run(args)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fake_image_files(Path(tmp), n_cifar=2048)
        for k, (name, sets) in enumerate(SETTINGS.items()):
            rows.append(run(name, sets, Path(tmp), args, Path(tmp) / f"run{k}"))
    speedup = rows[1]["train_images_per_s"] / rows[0]["train_images_per_s"]
    settings = {"device": str(args.device), "preset": args.preset, "steps": args.steps, "torch": torch.__version__,
                "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}  # fmt: skip
    report = {"settings": settings, "rows": rows, "speedup": speedup, "target_speedup": 3.0}
    (out / "gpu_training.json").write_text(json_text(report))
    lines = [f"# GPU training check ({settings})", "", "| setting | train img/s | peak MiB | evaluation s |",
             "|---|---|---|---|"]  # fmt: skip
    lines += [f"| {r['setting']} | {r['train_images_per_s']:.1f} | {r['peak_memory_mib']} | {r['eval_seconds']:.1f} |"
              for r in rows]  # fmt: skip
    lines += ["", f"speed-up {speedup:.2f}x (target >= 3x)"]
    (out / "gpu_training.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
