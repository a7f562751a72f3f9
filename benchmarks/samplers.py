"""Sample quality against NFE for every sampler, on the exact oracle (the `gmm` toy: 2D, 8 anisotropic
components), under VP and VE.

For each sampler and NFE budget: energy distance (and sliced Wasserstein) of n samples to n fresh true
samples, averaged over seeds, divided by the true-vs-true floor (the same statistic between two true
sample sets, averaged over --floor-seeds pairs: the statistic is heavy-tailed, and a floor from a few
pairs is off by +-50%); wall time per 10,000 samples. Reports, per sampler,
the smallest NFE within 1.5x of the floor.

Usage: python benchmarks/samplers.py [--n 10000] [--seeds 3] [--out benchmarks/results] [--quick]
Writes samplers.json, samplers.md and samplers.png into --out.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from common import benchmark_parser, setup_run  # noqa: E402

from scoresde import VESDE, VPSDE, energy_distance, sample, toy_dataset
from scoresde.evaluation import sliced_wasserstein

LADDER = (5, 10, 15, 20, 30, 50, 100, 200, 500, 1000, 2000)

# name -> (sampler, options for a target NFE or None when the NFE cannot be hit, largest NFE worth running)
Config = tuple[str, Callable[[int], dict | None], int]
CONFIGS: dict[str, Config] = {
    "pc (reverse_diffusion + langevin)": ("pc", lambda n: {"steps": (n - 1) // 2} if n >= 5 else None, 2000),
    "pc (euler_maruyama)": ("pc", lambda n: {"steps": n - 1, "predictor": "euler_maruyama", "corrector": "none"}, 1000),
    "pc (ancestral_sampling)": (
        "pc",
        lambda n: {"steps": n - 1, "predictor": "ancestral_sampling", "corrector": "none"},
        1000,
    ),
    "sde (torchsde euler)": ("sde", lambda n: {"steps": n - 2}, 500),
    "ode (rk4, log-SNR)": (
        "ode",
        lambda n: (
            {"method": "rk4", "variable": "log_snr", "schedule": "log_snr", "steps": (n - 1) // 4} if n >= 9 else None
        ),
        500,
    ),
    "ddim": ("ddim", lambda n: {"steps": n - 1}, 500),
    "heun (EDM)": ("heun", lambda n: {"steps": (n - 1) // 2}, 500),
    "dpm_solver (2M, log-SNR grid)": ("dpm_solver", lambda n: {"steps": n - 1}, 200),
    "dpm_solver (3M, log-SNR grid)": ("dpm_solver", lambda n: {"steps": n - 1, "order": 3}, 200),
    "dpm_solver (3M, warped log-SNR)": (
        "dpm_solver",
        lambda n: {"steps": n - 1, "order": 3, "schedule": "log_snr_warped"},
        200,
    ),
    "unipc (2, warped log-SNR)": ("unipc", lambda n: {"steps": n - 1, "order": 2}, 200),
    "unipc (3, warped log-SNR)": ("unipc", lambda n: {"steps": n - 1, "order": 3}, 200),
}
ADAPTIVE_RTOL = (1e-2, 1e-3, 1e-4, 1e-5)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def evaluate(sde, score, sampler: str, options: dict, n: int, seeds: int, mixture, device: str = "cpu") -> dict:
    energies, slices, nfe, wall = [], [], 0, 0.0
    for seed in range(seeds):
        g = torch.Generator(device=device).manual_seed(seed)
        _sync(device)
        start = time.perf_counter()
        result = sample(sde, score, (n, 2), sampler, generator=g, **options)
        _sync(device)
        wall += time.perf_counter() - start
        truth = mixture.sample(n, torch.Generator(device=device).manual_seed(10_000 + seed))
        finite = bool(torch.isfinite(result.x).all())
        energies.append(energy_distance(result.x, truth) if finite else float("inf"))
        slices.append(sliced_wasserstein(result.x, truth) if finite else float("inf"))
        nfe = result.nfe
    return {
        "nfe": nfe,
        "energy": sum(energies) / seeds,
        "sliced_w2": sum(slices) / seeds,
        "seconds_per_10k": wall / seeds * 10_000 / n,
    }


def floor(mixture, n: int, seeds: int, device: str = "cpu") -> dict:
    e, s = [], []
    for seed in range(seeds):
        g = torch.Generator(device=device).manual_seed(50_000 + seed)
        a, b = mixture.sample(n, g), mixture.sample(n, g)
        e.append(energy_distance(a, b))
        s.append(sliced_wasserstein(a, b))
    return {"energy": sum(e) / seeds, "sliced_w2": sum(s) / seeds}


def main() -> None:
    parser = benchmark_parser(__doc__, quick="n=1000, 1 seed, NFE <= 10 (a smoke run)")
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="where to sample and measure (cpu, cuda, ...)")
    parser.add_argument("--floor-seeds", type=int, default=20, help="true-vs-true pairs averaged for the floor")
    args = parser.parse_args()
    n, seeds, ladder = (1000, 1, [k for k in LADDER if k <= 10]) if args.quick else (args.n, args.seeds, LADDER)
    toy = toy_dataset("gmm")
    out = setup_run(args)
    device = args.device
    where = (
        torch.cuda.get_device_name(device) if device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    report: dict = {"n": n, "seeds": seeds, "device": where, "sdes": {}}
    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    lines = []
    for ax, (sde_name, sde) in zip(axes, (("VP", VPSDE()), ("VE", VESDE()))):
        ax.set_prop_cycle(color=plt.cm.tab20.colors)
        score = toy.mixture.score_fn(sde)
        base = floor(toy.mixture, n, max(args.floor_seeds, seeds), device)
        rows: dict[str, list[dict]] = {}
        for label, (sampler, options_for, max_nfe) in CONFIGS.items():
            rows[label] = []
            for target in ladder:
                options = options_for(target) if target <= max_nfe else None
                if options is None or min(v for k, v in options.items() if k == "steps") < 1:
                    continue
                row = evaluate(sde, score, sampler, options, n, seeds, toy.mixture, device)
                row["ratio"] = row["energy"] / base["energy"]
                rows[label].append(row)
                row["options"] = options
                print(
                    f"{sde_name} {label:36s} NFE {row['nfe']:5d}  E/floor {row['ratio']:8.2f}  "
                    f"{row['seconds_per_10k']:.2f} s/10k",
                    flush=True,
                )
        rows["ode (dopri5, adaptive)"] = []
        for rtol in ADAPTIVE_RTOL if not args.quick else ADAPTIVE_RTOL[:2]:
            row = evaluate(sde, score, "ode", {"rtol": rtol, "atol": rtol}, n, seeds, toy.mixture, device)
            row["ratio"], row["rtol"] = row["energy"] / base["energy"], rtol
            rows["ode (dopri5, adaptive)"].append(row)
            print(f"{sde_name} ode dopri5 rtol={rtol:g}  NFE {row['nfe']:5d}  E/floor {row['ratio']:8.2f}", flush=True)
        best = {
            label: next((r["nfe"] for r in sorted(rs, key=lambda r: r["nfe"]) if r["ratio"] <= 1.5), None)
            for label, rs in rows.items()
        }
        report["sdes"][sde_name] = {"floor": base, "rows": rows, "smallest_nfe_within_1.5x_floor": best}
        for label, rs in rows.items():
            rs = sorted(rs, key=lambda r: r["nfe"])
            ax.loglog([r["nfe"] for r in rs], [r["ratio"] for r in rs], "o-", ms=3, label=label)
        ax.axhline(1.5, color="k", ls="--", lw=1, label="1.5 x floor")
        ax.axhline(1.0, color="grey", ls=":", lw=1)
        ax.set_xlabel("NFE")
        ax.set_ylabel("energy distance / true-vs-true floor")
        ax.set_title(f"{sde_name}: gmm oracle, n = {n}, {seeds} seed(s)")
        lines.append(f"\n{sde_name}, n = {n}, {seeds} seed(s), {where}; floor (true vs true) = {base['energy']:.3g}\n")
        lines += _markdown(sde_name, rows, best, ladder)
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "samplers.png", dpi=120)
    (out / "samplers.json").write_text(json.dumps(report, indent=2))
    (out / "samplers.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _markdown(sde_name: str, rows: dict, best: dict, ladder) -> list[str]:
    head = (
        f"| {sde_name}: E / floor at NFE | "
        + " | ".join(str(k) for k in ladder)
        + " | smallest NFE <= 1.5x | s / 10k samples (largest NFE) |"
    )
    lines = [head, "|---" * (len(ladder) + 3) + "|"]
    for label, rs in rows.items():
        if label.startswith("ode (dopri5"):
            continue
        by_nfe = {r["nfe"]: r for r in rs}
        cells = []
        for k in ladder:
            match = [r for nfe, r in by_nfe.items() if abs(nfe - k) <= 3]
            cells.append(f"{match[0]['ratio']:.2f}" if match else "")
        wall = f"{rs[-1]['seconds_per_10k']:.2f}" if rs else ""
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {best[label] or '> max'} | {wall} |")
    adaptive = ", ".join(
        f"rtol {r['rtol']:g}: NFE {r['nfe']}, {r['ratio']:.2f}x" for r in rows["ode (dopri5, adaptive)"]
    )
    lines.append(f"\n{sde_name} ode (dopri5, adaptive): {adaptive}\n")
    return lines


if __name__ == "__main__":
    main()
