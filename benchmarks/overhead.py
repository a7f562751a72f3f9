"""Per-step overhead of the samplers: wall time per step of DDIM and PC (reverse diffusion + Langevin) when
the score costs next to nothing, and with a small U-Net.

The trivially cheap score (``-x``, the exact score of N(0, I) under VP) isolates what the sampler loop itself
costs per step: validation, host syncs, object rebuilds, bookkeeping. The small U-Net (the digits-ddpm
architecture, random weights, 8x8 images) shows how much of it remains visible behind a real network.

Also counts the reads of tensor values back into Python in one run (bool / float / int / item / tolist): on a
GPU each is a host synchronisation that stalls the stream, whatever the CPU timings say.

Usage: python benchmarks/overhead.py [--steps 200] [--repeats 5] [--out benchmarks/results] [--label after]
Writes overhead_<label>.json into --out and prints a table (median over repeats, microseconds per step).
"""

from __future__ import annotations

import json
import statistics
import time

import torch
from common import benchmark_parser, parse, setup_run  # noqa: E402

from scoresde import VPSDE, DDPMUNet, ScoreModel, sample


def _per_step(run, steps: int, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, per step, in microseconds (one warm-up call first)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) / steps * 1e6


def _host_reads(run) -> int:
    """How many times one ``run()`` reads a tensor's value back into Python (``bool``, ``float``, ``int``, ``item``,
    ``tolist``): on a GPU each is a host synchronisation that stalls the stream."""
    names = ("__bool__", "__float__", "__int__", "item", "tolist")
    originals = {name: getattr(torch.Tensor, name) for name in names}
    count = [0]

    def counting(original):
        def wrapper(self, *args, **kwargs):
            count[0] += 1
            return original(self, *args, **kwargs)

        return wrapper

    try:
        for name, original in originals.items():
            setattr(torch.Tensor, name, counting(original))
        run()
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)
    return count[0]


def main() -> None:
    parser = benchmark_parser(__doc__, quick="20 steps, one repeat")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--label", default="after", help="name of this measurement (before / after a change)")
    args = parse(parser, steps=20, repeats=1)
    torch.set_num_threads(args.threads)  # --threads (a smoke run beside a busy core: 1)
    sde = VPSDE()
    torch.manual_seed(0)
    net = DDPMUNet(in_channels=1, image_size=8, ch=32, ch_mult=(1, 2), attn_resolutions=(4,), groups=8)
    with (
        torch.no_grad()
    ):  # the zero-initialised output layers would make the score vanish (and Langevin's step infinite)
        for p in net.parameters():
            if not bool(p.any()):
                p.normal_(0.0, 0.02)
    unet = ScoreModel(net, sde).eval()
    cases = {
        "cheap score, 10000 x 2": (lambda x, t: -x, (10_000, 2)),
        "small U-Net, 64 x 1x8x8": (unet, (64, 1, 8, 8)),
    }
    samplers = {"ddim": {"sampler": "ddim"}, "pc": {"sampler": "pc", "corrector_steps": 1}}
    rows = []
    for case, (score, shape) in cases.items():
        for name, options in samplers.items():

            def run(score=score, shape=shape, options=options):
                return sample(
                    sde, score, shape, steps=args.steps, generator=torch.Generator().manual_seed(0), **options
                )

            nfe = run().nfe
            us = _per_step(run, args.steps, args.repeats)
            reads = _host_reads(run)
            rows.append(
                {"case": case, "sampler": name, "steps": args.steps, "nfe": nfe, "us_per_step": us, "host_reads": reads}
            )
            print(
                f"{case:28s} {name:5s} {args.steps} steps, NFE {nfe:4d}: {us:10.1f} us / step, {reads} host reads",
                flush=True,
            )
    out = setup_run(args)
    (out / f"overhead_{args.label}.json").write_text(
        json.dumps({"label": args.label, "threads": 2, "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
