"""Device check: every sampler on every available device (CPU, and CUDA when present) with the exact
oracle score. Deterministic samplers started from the same x_T must agree across devices (float64:
to 1e-6); every run must return finite samples on the device asked for; wall time per 10,000 samples.

Usage: python benchmarks/devices.py [--n 10000] [--out benchmarks/results]
Prints a markdown table and writes devices.json.
"""

from __future__ import annotations

import json
import time

import torch
from common import benchmark_parser, parse, setup_run  # noqa: E402

from scoresde import VESDE, VPSDE, energy_distance, sample, toy_dataset

RUNS = {
    "pc": {"steps": 200},
    "ode": {},
    "sde": {"steps": 200},
    "ddim": {"steps": 50},
    "heun": {"steps": 20},
    "dpm_solver": {"steps": 20},
    "unipc": {"steps": 10},
}
DETERMINISTIC = {"ode", "ddim", "heun", "dpm_solver", "unipc"}


def main() -> None:
    parser = benchmark_parser(__doc__, quick="1,000 samples")
    parser.add_argument("--n", type=int, default=10_000)
    args = parse(parser, n=1000)
    out = setup_run(args)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    mixture = toy_dataset("gmm").mixture
    truth = mixture.sample(args.n, torch.Generator().manual_seed(1), dtype=torch.float64)
    rows = []
    for sde in (VPSDE(), VESDE()):
        score = mixture.score_fn(sde)
        x_T = sde.prior_sampling((args.n, 2), torch.Generator().manual_seed(0), dtype=torch.float64)
        for name, options in RUNS.items():
            outputs = {}
            for device in devices:
                g = torch.Generator(device=device).manual_seed(0)
                start = time.perf_counter()
                result = sample(sde, score, (args.n, 2), name, generator=g, x_T=x_T.to(device), **options)
                if device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.perf_counter() - start
                ok = result.x.device.type == device and bool(torch.isfinite(result.x).all())
                outputs[device] = result.x.cpu()
                rows.append(
                    {
                        "sde": type(sde).__name__,
                        "sampler": name,
                        "device": device,
                        "nfe": result.nfe,
                        "seconds_per_10k": seconds * 10_000 / args.n,
                        "on_device_and_finite": ok,
                        "energy_distance": energy_distance(result.x.cpu(), truth),
                    }
                )
            if len(devices) > 1 and name in DETERMINISTIC:
                gap = float((outputs["cpu"] - outputs["cuda"]).abs().max())
                rows[-1]["max_abs_diff_vs_cpu"] = gap
    print("| SDE | sampler | device | NFE | s / 10k | finite, on device | energy distance | max abs diff vs CPU |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        diff = f"{r['max_abs_diff_vs_cpu']:.1e}" if "max_abs_diff_vs_cpu" in r else ""
        print(
            f"| {r['sde']} | {r['sampler']} | {r['device']} | {r['nfe']} | {r['seconds_per_10k']:.2f} | "
            f"{r['on_device_and_finite']} | {r['energy_distance']:.2e} | {diff} |"
        )
    name = "devices_cuda.json" if len(devices) > 1 else "devices_cpu.json"
    (out / name).write_text(json.dumps({"n": args.n, "devices": devices, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
