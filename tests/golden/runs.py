"""The golden runs: one tiny run of every run kind trained a few steps (the library call ``scoresde train`` makes),
sampled and evaluated through the commands, and every registered sampler on the gmm oracle, each reduced to a
SHA-256 of its bytes.

``python tests/golden/runs.py`` wrote ``golden.json`` from the main before run kinds were declared (issue 39);
``tests/test_golden.py`` computes the same figures and asserts they are reproduced bit for bit, so the restructuring
changes no weight, draw or bits/dim figure. One intra-op thread, as the test workers run (a reduction's order, and so
its last bits, depends on the thread count)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from pathlib import Path

import numpy as np
import torch

from scoresde import create_sde, toy_dataset
from scoresde.app.cli import main
from scoresde.config.schema import config_from_dict
from scoresde.samplers import samplers
from scoresde.samplers.sampling import sample
from scoresde.training.workflows import train_run

GOLDEN = Path(__file__).parent / "golden.json"

_TRAIN = {"batch_size": 32, "warmup": 2, "log_every": 1, "checkpoint_every": 0}
_MLP = {"name": "mlp", "kwargs": {"width": 16, "depth": 1}}


def _unet(channels: int, size: int, **kwargs) -> dict:
    kw = {"in_channels": channels, "image_size": size, "ch": 8, "ch_mult": [1], "num_res_blocks": 1,
          "attn_resolutions": [], "groups": 4, **kwargs}  # fmt: skip
    return {"name": "ddpm_unet", "kwargs": kw}


def configs() -> dict[str, dict]:
    """One tiny config of each run kind, in training order (a stage before the run that names it)."""
    toy = {"data": {"kind": "toy", "name": "gmm"}, "model": _MLP}
    image = {"steps": 3, "weighting": "eps", **_TRAIN}
    distill = {"steps": 3, **_TRAIN}
    return {
        "score": {**toy, "train": {"steps": 3, **_TRAIN}},
        "learned_variance": {
            **toy,
            "model": {"name": "mlp", "kwargs": {"width": 16, "depth": 1, "learn_variance": True}},
            "train": {"steps": 3, "weighting": "eps", "n_steps": 100, **_TRAIN},
        },
        "progressive": {**toy, "train": distill, "distill": {"method": "progressive", "teacher": "oracle:gmm"}},
        "consistency": {
            **toy,
            "train": distill,
            "distill": {"method": "consistency", "teacher": "oracle:gmm", "steps": 2},
        },
        "consistency_training": {**toy, "train": distill, "distill": {"method": "consistency_training"}},
        "autoencoder": {
            "model": {
                "name": "kl_autoencoder",
                "kwargs": {
                    "in_channels": 1,
                    "image_size": 8,
                    "latent_channels": 2,
                    "downsample": 2,
                    "ch": 8,
                    "groups": 4,
                },
            },  # fmt: skip
            "data": {"kind": "image", "name": "digits"},
            "train": {"steps": 3, "lr": 2e-3, **_TRAIN},
        },
        "latent": {
            "model": _unet(2, 4),
            "data": {"kind": "image", "name": "digits"},
            "train": image,
            "stage": {"autoencoder": "../autoencoder"},
        },
        "base": {"model": _unet(1, 4), "data": {"kind": "image", "name": "digits", "resolution": 4}, "train": image},
        "super_resolution": {
            "model": _unet(1, 8, cond_channels=1),
            "data": {"kind": "image", "name": "digits"},
            "train": image,
            "stage": {"low_resolution": 4, "base": "../base", "max_augmentation": 0.4, "augmentation": 0.1},
        },
    }


def _digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = a.detach().cpu().contiguous().numpy() if isinstance(a, torch.Tensor) else np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()


def _weights(folder: Path) -> str:
    from safetensors import safe_open

    with safe_open(str(folder / "checkpoint.safetensors"), framework="pt") as fh:
        keys = sorted(k for k in fh.keys() if k.startswith(("model.", "ema.")))
        return _digest(*(fh.get_tensor(k) for k in keys))


def _cli(*argv: str) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        status = main([*argv, "--json"])
    if status != 0:
        raise RuntimeError(f"scoresde {' '.join(argv)} exited {status}")


def _samples(path: Path) -> str:
    with np.load(path) as arrays:
        return _digest(*(arrays[k] for k in sorted(arrays.files)))


def figures(root: Path) -> dict:
    """Every golden figure, with the runs trained in ``root``."""
    torch.set_num_threads(1)
    out: dict = {"weights": {}, "samples": {}}
    for name, config in configs().items():
        folder = root / name
        folder.mkdir()
        train_run(config_from_dict(config), folder, progress=False)  # what `scoresde train --config` runs
        out["weights"][name] = _weights(folder)
    for name in ("score", "learned_variance", "progressive", "consistency", "latent", "super_resolution"):
        npz = root / f"{name}-samples.npz"
        steps = ["--steps", "3", "--base-steps", "3"] if name == "super_resolution" else []  # its default: 1000 PC
        _cli("sample", "--checkpoint", str(root / name), "-n", "6", *steps, "--out", str(npz), "--features", "none")
        out["samples"][name] = _samples(npz)
    lik = root / "likelihood.json"
    _cli("likelihood", "--checkpoint", str(root / "score"), "-n", "4", "--method", "ei_fixed", "--out", str(lik))
    out["bits_per_dim"] = json.loads(lik.read_text())["bits_per_dim"]
    sde, oracle = create_sde("vp"), toy_dataset("gmm").oracle
    for name in samplers():
        if name in ("consistency", "fitted", "flow_map"):
            continue  # a consistency model's own sampler (above); a fitted solver needs a fitted file; a flow map
        x = sample(sde, oracle.score_fn(sde), (8, 2), name, steps=6, generator=torch.Generator().manual_seed(0)).x
        out["samples"][f"oracle-{name}"] = _digest(x)
    return out


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        result = figures(Path(tmp))
    GOLDEN.write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    json.dump(result, sys.stdout, indent=1)
