"""Throughput: the toolkit's U-Net beside diffusers' ``UNet2DModel`` at equal architecture, on the same batch and
device.

Two architectures: the published CIFAR-10 DDPM model (google/ddpm-cifar10-32's configuration in diffusers, ours
``ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,)``: 35.7M parameters each) and the MNIST
preset's size (``mnist-ddpm``: ch 32, (1, 2, 2), 28x28, attention at 7x7; diffusers' blocks chosen to match).

For each network and setting (fp32 eager; channels-last; bf16 autocast; compiled; AdamW foreach / loop) and batch
size: **training images/s** (a DSM step: forward, MSE against the noise, backward, AdamW step and an EMA update,
as the Trainer does) and **sampling images/s** (one network evaluation under ``no_grad``: images per second per
NFE), each the median of ``--reps`` timed repetitions after a warm-up, and the peak memory (CUDA: the allocator's
peak; CPU: the growth of the process's peak resident set, ``ru_maxrss``).

Usage: python benchmarks/throughput.py [--device cpu|cuda] [--threads 2] [--quick] [--nets cifar10,mnist]
       [--settings fp32,channels_last,bf16,compile,loop] [--batches 8,32] [--reps 3]
Writes throughput.json, throughput.md and throughput.png (``--tag`` names the files: throughput-<tag>.*).
"""

from __future__ import annotations

import json
import resource
import statistics
import time

import torch
from common import benchmark_parser, parse, setup_run
from torch import nn

from scoresde._io import json_text
from scoresde.models import DDPMUNet
from scoresde.training.speed import build_optimizer, check_precision, compile_network, network_autocast

NETS = {
    "cifar10": {
        "ours": dict(in_channels=3, image_size=32, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2,
                     attn_resolutions=(16,), dropout=0.1),
        "diffusers": dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                          block_out_channels=(128, 256, 256, 256),
                          down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
                          up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                          dropout=0.1, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1),
        "shape": (3, 32, 32),
    },
    "mnist": {
        "ours": dict(in_channels=1, image_size=28, ch=32, ch_mult=(1, 2, 2), num_res_blocks=2, attn_resolutions=(7,),
                     dropout=0.1, groups=8),
        "diffusers": dict(sample_size=28, in_channels=1, out_channels=1, layers_per_block=2,
                          block_out_channels=(32, 64, 64), norm_num_groups=8,
                          down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                          up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
                          dropout=0.1, norm_eps=1e-6, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1),
        "shape": (1, 28, 28),
    },
}  # fmt: skip
SETTINGS = {
    "fp32": {},
    "channels_last": {"channels_last": True},
    "bf16": {"precision": "bf16"},
    "loop": {"optimizer_impl": "loop"},
    "compile": {"compile": True},
    "bf16+compile+channels_last": {"precision": "bf16", "compile": True, "channels_last": True},
}
"""Each setting changes these of the baseline (fp32, eager, contiguous, the device's default AdamW)."""


def build(library: str, net_name: str) -> nn.Module:
    """The network of ``library`` (ours / diffusers) in ``net_name``'s architecture, called as ``net(x, t)``."""
    kwargs = NETS[net_name][library]
    if library == "ours":
        return DDPMUNet(**kwargs)
    import diffusers

    unet = diffusers.UNet2DModel(**kwargs)

    class Diffusers(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.unet = unet

        def forward(self, x, t):
            return self.unet(x, t * 999, return_dict=False)[0]

    return Diffusers()


def peak_memory(device: torch.device) -> float:
    """MiB: the CUDA allocator's peak, or the process's peak resident set on the CPU (each measurement runs in a
    fresh process, so the growth over its start is the network's, its optimiser's and its activations')."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_apart(*args) -> dict:
    """`measure` in a fresh process (spawned): its own peak memory and compilation caches, one thread setting."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_child, args)


def _child(threads: int, *args) -> dict:
    torch.set_num_threads(threads)
    return measure(*args)


def timed(fn, reps: int, device: torch.device) -> float:
    """Median seconds of ``fn()`` over ``reps`` runs after two warm-up runs (compilation happens there)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(library: str, net_name: str, setting: dict, batch: int, reps: int, device: torch.device) -> dict:
    """Training and sampling images/s and peak memory of one network, setting and batch size."""
    torch.manual_seed(0)
    net = build(library, net_name).to(device)
    fmt = torch.channels_last if setting.get("channels_last") else torch.contiguous_format
    net = net.to(memory_format=fmt)
    dtype = check_precision(setting.get("precision", "fp32"), device)
    default_impl = "fused" if device.type == "cuda" else "foreach"  # the row "loop" measures the other
    optimizer = build_optimizer(net.parameters(), 2e-4, 0.0, setting.get("optimizer_impl", default_impl), device)
    ema = [p.detach().clone() for p in net.parameters()]
    run = compile_network(net, setting.get("compile", False))
    x = torch.randn(batch, *NETS[net_name]["shape"], device=device).contiguous(memory_format=fmt)
    noise, t = torch.randn_like(x), torch.rand(batch, device=device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    before = peak_memory(device)

    def train_step() -> None:
        net.train()
        with network_autocast(dtype, device):
            out = run(x + noise, t)
        loss = (out.float() - noise).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in net.parameters()], 1e-3)

    @torch.no_grad()
    def sample_step() -> None:
        net.eval()
        with network_autocast(dtype, device):
            run(x, t)

    train = timed(train_step, reps, device)
    sample = timed(sample_step, reps, device)
    return {
        "train_images_per_s": batch / train,
        "sample_images_per_s": batch / sample,
        "peak_memory_mib": peak_memory(device) - (0 if device.type == "cuda" else before),
        "parameters": sum(p.numel() for p in net.parameters()),
        "compiled": setting.get("compile", False) and not getattr(run, "failed", True),
    }


def main() -> None:
    parser = benchmark_parser(__doc__, quick="the MNIST size, batch 4, fp32 and bf16, one repetition")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--nets", default="cifar10,mnist")
    parser.add_argument("--settings", default="fp32,channels_last,bf16,loop,compile")
    parser.add_argument("--batches", default="8,32")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--tag", default="")
    args = parse(parser, nets="mnist", settings="fp32,bf16", batches="4", reps=1)
    out = setup_run(args)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    rows = []
    for net_name in args.nets.split(","):
        for batch in map(int, args.batches.split(",")):
            for name in args.settings.split(","):
                for library in ("ours", "diffusers"):
                    run = (lambda threads, *a: measure(*a)) if args.quick else measure_apart  # quick: in-process
                    figures = run(args.threads, library, net_name, SETTINGS[name], batch, args.reps, device)
                    row = {"net": net_name, "batch": batch, "setting": name, "library": library, **figures}
                    rows.append(row)
                    print(
                        f"{net_name:8s} b={batch:<3d} {name:28s} {library:9s} train {row['train_images_per_s']:8.2f}"
                        f" img/s  sample {row['sample_images_per_s']:8.2f} img/s  peak {row['peak_memory_mib']:8.0f}"
                        f" MiB",
                        flush=True,
                    )
    stem = f"throughput-{args.tag}" if args.tag else "throughput"
    settings = {"device": str(device), "threads": args.threads, "reps": args.reps, "torch": torch.__version__}
    (out / f"{stem}.json").write_text(json_text({"settings": settings, "rows": rows}))
    (out / f"{stem}.md").write_text(table(rows, settings))
    plot(rows, out / f"{stem}.png")
    print(table(rows, settings))


def table(rows: list[dict], settings: dict) -> str:
    """Markdown: ours against diffusers (ratio) per network, batch and setting."""
    lines = [
        f"# Throughput ({json.dumps(settings)})",
        "",
        "| net | batch | setting | ours train img/s | diffusers train img/s | ratio | ours sample img/s | "
        "diffusers sample img/s | ratio | ours peak MiB | diffusers peak MiB |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    pairs = {}
    for row in rows:
        pairs.setdefault((row["net"], row["batch"], row["setting"]), {})[row["library"]] = row
    for (net, batch, setting), pair in pairs.items():
        a, b = pair["ours"], pair["diffusers"]
        lines.append(
            f"| {net} | {batch} | {setting} | {a['train_images_per_s']:.2f} | {b['train_images_per_s']:.2f} | "
            f"{a['train_images_per_s'] / b['train_images_per_s']:.2f} | {a['sample_images_per_s']:.2f} | "
            f"{b['sample_images_per_s']:.2f} | {a['sample_images_per_s'] / b['sample_images_per_s']:.2f} | "
            f"{a['peak_memory_mib']:.0f} | {b['peak_memory_mib']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path) -> None:
    """Bars: training and sampling images/s of ours and diffusers per network, batch and setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["net"], r["batch"], r["setting"]) for r in rows}, key=str)
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 0.9 * len(keys)), 4.5))
    for ax, metric in zip(axes, ("train_images_per_s", "sample_images_per_s")):
        for offset, library in ((-0.2, "ours"), (0.2, "diffusers")):
            values = [next(r[metric] for r in rows if (r["net"], r["batch"], r["setting"]) == k
                           and r["library"] == library) for k in keys]  # fmt: skip
            ax.bar([i + offset for i in range(len(keys))], values, width=0.4, label=library)
        ax.set_xticks(range(len(keys)), [f"{n} b{b}\n{s}" for n, b, s in keys], rotation=60, fontsize=7)
        ax.set_ylabel(metric.replace("_", " ").replace("per s", "/ s"))
        ax.set_title(metric.split("_")[0] + "ing throughput")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
