"""Benchmark the exact Gaussian-mixture oracle: score accuracy against autograd and throughput against D.

Usage: python benchmarks/oracle.py [--out benchmarks/results] [--n 4096]
Prints a markdown table and writes oracle.json.
"""

from __future__ import annotations

import json
import math
import time

import torch
from common import benchmark_parser, parse, setup_run  # noqa: E402

from scoresde import VESDE, VPSDE, GaussianMixture


def random_mixture(D: int, K: int = 8, seed: int = 0) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(K, D, D, generator=g, dtype=torch.float64) / math.sqrt(D)
    covs = A @ A.transpose(-1, -2) + 0.02 * torch.eye(D, dtype=torch.float64)
    w = torch.rand(K, generator=g, dtype=torch.float64) + 0.1
    return GaussianMixture(w / w.sum(), 2 * torch.randn(K, D, generator=g, dtype=torch.float64), covs)


def measure(sde, D: int, n: int) -> dict:
    mix = random_mixture(D)
    score_fn = mix.score_fn(sde)
    g = torch.Generator().manual_seed(1)
    t = (1e-3 + (1 - 1e-3) * torch.rand(n, generator=g, dtype=torch.float64)) * sde.T
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * 2
    xg = x[:256].clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(mix.marginal_log_prob(sde, xg, t[:256]).sum(), xg)
    s = score_fn(x[:256], t[:256])
    rel = float(((s - grad).norm(dim=1) / grad.norm(dim=1)).max())
    row = {"sde": type(sde).__name__, "D": D, "max_rel_err_vs_autograd": rel}
    for dtype in (torch.float32, torch.float64):
        xd, td = x.to(dtype), t.to(dtype)
        score_fn(xd[:16], td[:16])
        start = time.perf_counter()
        reps = 5
        for _ in range(reps):
            score_fn(xd, td)
        row[f"evals_per_s_{str(dtype)[6:]}"] = reps * n / (time.perf_counter() - start)
    return row


def main() -> None:
    parser = benchmark_parser(__doc__, quick="256 points")
    parser.add_argument("--n", type=int, default=4096)
    args = parse(parser, n=256)
    rows = [measure(sde, D, args.n) for sde in (VPSDE(), VESDE()) for D in (2, 10, 100)]
    print("| SDE | D | max rel. error vs autograd | score evals/s (fp32) | score evals/s (fp64) |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['sde']} | {r['D']} | {r['max_rel_err_vs_autograd']:.1e} | {r['evals_per_s_float32']:.3g} | "
            f"{r['evals_per_s_float64']:.3g} |"
        )
    out = setup_run(args)
    (out / "oracle.json").write_text(
        json.dumps({"n": args.n, "threads": torch.get_num_threads(), "rows": rows}, indent=2)
    )


if __name__ == "__main__":
    main()
