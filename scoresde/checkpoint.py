"""Checkpoints that never lose work and never run code.

One ``checkpoint.safetensors`` file holds model, EMA, optimiser state, step and the full run config. It is
written atomically (a temporary file in the same folder, flushed to disk, renamed over the old one, the folder
synced), so a kill at any moment leaves either the old or the new checkpoint; it is read with safetensors,
which stores tensors and JSON text only, so loading a file cannot execute code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from .config import RunConfig, config_from_dict

__all__ = ["CHECKPOINT", "FORMAT", "CheckpointError", "save_checkpoint", "load_checkpoint", "checkpoint_step"]

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "scoresde-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or from a different run."""


def save_checkpoint(
    path: str | Path, model: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer, step: int, config: RunConfig
) -> Path:
    """Write model, EMA, optimiser state, step and config to one safetensors file, atomically: a temporary
    file in the same directory is written, flushed to disk and renamed over ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors["rng.torch"] = (
        torch.get_rng_state()
    )  # training draws from (seed, rank, step); kept for code around the trainer
    metadata = {
        "format": FORMAT,
        "step": str(int(step)),
        "config": json.dumps(config.to_dict()),
        "param_groups": json.dumps(opt["param_groups"]),
    }
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp), metadata=metadata)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def checkpoint_step(path: Path) -> str:
    """The step of the checkpoint at ``path`` as text, ``"?"`` when it cannot be read."""
    try:
        return str(load_checkpoint(path)["step"])
    except CheckpointError:
        return "?"


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint safely (safetensors: tensors and JSON text, no code): a dict with ``model``, ``ema``,
    ``optimizer`` state dicts, ``step`` and ``config`` (a `RunConfig`)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}; train first (scoresde train) or pass the run's directory")
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    except Exception as exc:  # safetensors raises its own error types for truncated or foreign files
        raise CheckpointError(
            f"{path} is not a readable checkpoint ({type(exc).__name__}: {exc}); it may be truncated "
            f"or not a scoresde checkpoint"
        ) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a scoresde checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})"
        )
    try:
        config = config_from_dict(json.loads(metadata["config"]))
        param_groups = json.loads(metadata["param_groups"])
        step = int(metadata["step"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path} has corrupt metadata ({exc})") from None
    out = {"model": {}, "ema": {}, "step": step, "config": config, "rng": tensors.get("rng.torch")}
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind in ("model", "ema"):
            out[kind][rest] = value
        elif kind == "optim":
            index, _, name = rest.partition(".")
            optim_state.setdefault(int(index), {})[name] = value
    out["optimizer"] = {"state": optim_state, "param_groups": param_groups}
    return out
