"""Checkpoints that never lose work and never run code.

One ``checkpoint.safetensors`` file holds model, EMA, optimiser state, step and the full run config, and nothing
else: two identical runs write identical files, byte for byte. It is
written atomically (a temporary file in the same folder, flushed to disk, renamed over the old one, the folder
synced), so a kill at any moment leaves either the old or the new checkpoint; it is read with safetensors,
which stores tensors and JSON text only, so loading a file cannot execute code.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .._io import write_atomic
from ..config.schema import RunConfig, config_from_dict

__all__ = [
    "CHECKPOINT",
    "FORMAT",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "load_weights",
    "check_checkpoint",
    "check_optimizer_state",
    "check_weights",
    "checkpoint_step",
    "kept_checkpoint",
    "state_under",
]

CHECKPOINT = "checkpoint.safetensors"
FORMAT = "scoresde-checkpoint-1"


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or from a different run."""


def save_checkpoint(
    path: str | Path,
    model: nn.Module,
    ema: nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: RunConfig,
    extra: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write model, EMA, optimiser state, step, config and the trainer's ``extra`` state tensors (e.g. the hybrid
    loss's step history) to one safetensors file, atomically
    (`scoresde.training.run_folder.write_atomic`: a temporary file in the same folder, flushed to disk, renamed over
    ``path``).
    A failed write (disk full, permission lost) raises `CheckpointError` and leaves the previous checkpoint."""
    from safetensors.torch import save

    path = Path(path)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    tensors.update({f"ema.{k}": v.detach().contiguous().cpu() for k, v in ema.state_dict().items()})
    opt = optimizer.state_dict()
    for index, state in opt["state"].items():
        for key, value in state.items():
            tensors[f"optim.{index}.{key}"] = torch.as_tensor(value).detach().contiguous().cpu()
    tensors.update({f"extra.{k}": v.detach().contiguous().cpu() for k, v in (extra or {}).items()})
    metadata = {
        "format": FORMAT,
        "step": str(int(step)),
        "config": json.dumps(config.to_dict()),
        "param_groups": json.dumps(opt["param_groups"]),
    }
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_atomic(path, _canonical(save(tensors, metadata=metadata)))
    except OSError as exc:
        raise CheckpointError(f"cannot write {path} ({exc.strerror or exc}); {kept_checkpoint(path)}") from None


def _canonical(data: bytes) -> bytes:
    """The safetensors file ``data`` with its JSON header's metadata in sorted order: safetensors writes it from a
    hash map, in an order that changes from process to process. The tensors and their offsets (relative to the end
    of the header) are unchanged; the header is padded with spaces to a multiple of 8 bytes, as safetensors pads."""
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"] = dict(sorted(header.get("__metadata__", {}).items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + data[8 + length :]


def state_under(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint's ``extra`` state saved under ``prefix`` (e.g. ``"target."``), the prefix removed:
    how each holder of extra state (an objective, the training loop) reads back its own."""
    return {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}


def kept_checkpoint(path: Path) -> str:
    """What a failed write leaves at ``path``, for its error message: the checkpoint of which step, or none."""
    return f"the checkpoint of step {checkpoint_step(path)} is kept" if path.is_file() else "no checkpoint is kept"


def _some(names: list[str]) -> str:
    """The first three ``names`` (and an ellipsis if there are more), for a one-line message."""
    return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")


def checkpoint_step(path: Path) -> str:
    """The step of the checkpoint at ``path`` as text, ``"?"`` when it cannot be read."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            return str(int((f.metadata() or {})["step"]))
    except Exception:  # unreadable, not a safetensors file, no step: the message says "?"
        return "?"


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict:
    """Read a checkpoint safely (safetensors: tensors and JSON text, no code): a dict with ``model``, ``ema``,
    ``optimizer`` state dicts, ``step``, ``config`` (a `RunConfig`) and ``extra`` (the trainer's other state)."""
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
    if step < 0:
        raise CheckpointError(f"{path} has corrupt metadata (step {step} < 0)")
    # earlier versions also stored torch's global RNG state (``rng.torch``), on which no result depends: every draw
    # of training comes from (seed, rank, step); it is ignored, so that two identical runs write identical files
    out = {"model": {}, "ema": {}, "extra": {}, "step": step, "config": config}
    optim_state: dict[int, dict] = {}
    for key, value in tensors.items():
        kind, _, rest = key.partition(".")
        if kind in ("model", "ema", "extra"):
            out[kind][rest] = value
        elif kind == "optim":
            index, _, name = rest.partition(".")
            optim_state.setdefault(int(index), {})[name] = value
    out["optimizer"] = {"state": optim_state, "param_groups": param_groups}
    for kind in ("model", "ema"):
        bad = [name for name, value in out[kind].items() if value.is_floating_point() and not value.isfinite().all()]
        if bad:
            raise CheckpointError(
                f"{path} holds non-finite {kind} weights ({_some(bad)}); "
                f"the run diverged before this checkpoint: retrain, or resume from an earlier copy"
            )
    return out


def check_checkpoint(state: dict, module: nn.Module, path: str | Path) -> None:
    """Check a loaded checkpoint (`load_checkpoint`) whole against the network its config builds (``module``): its
    model weights, its EMA weights and its optimiser state, each for keys, shapes and dtypes (`check_weights`,
    `check_optimizer_state`). A checkpoint is one artefact: a reader of its EMA weights alone (``scoresde sample``,
    ``likelihood``) refuses a file that ``train --resume`` would refuse, in the same one line."""
    check_weights(module, state["model"], path, "model")
    check_weights(module, state["ema"], path, "ema")
    check_optimizer_state(state["optimizer"], module, path)


def check_weights(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, kind: str = "model") -> None:
    """Refuse, in one `CheckpointError` line naming the tensors, a state dict that does not fit ``module``: missing,
    unexpected or wrong-shape tensors, or floating-point tensors of another dtype (torch would convert float64
    weights silently: a file edited or written by another tool)."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    shapes = [
        f"{name} {tuple(state[name].shape)} (the network has {tuple(value.shape)})"
        for name, value in expected.items()
        if name in state and state[name].shape != value.shape
    ]
    dtypes = [
        f"{name} {str(state[name].dtype).removeprefix('torch.')} (the network has "
        f"{str(value.dtype).removeprefix('torch.')})"
        for name, value in expected.items()
        if name in state and value.is_floating_point() and state[name].dtype != value.dtype
    ]
    problems = [
        f"{label} {_some(names)}"
        for label, names in (
            ("missing", missing),
            ("unexpected", extra),
            ("wrong shape:", shapes),
            ("wrong dtype:", dtypes),
        )  # fmt: skip
        if names
    ]
    if problems:
        raise CheckpointError(
            f"{path}: the {kind} weights do not fit the network its config builds ({'; '.join(problems)}); "
            f"the file was edited or written by another version"
        )


def load_weights(module: nn.Module, state: dict[str, torch.Tensor], path: str | Path, kind: str = "model") -> None:
    """``module.load_state_dict(state)`` after `check_weights`: a one-line `CheckpointError` naming what does not fit
    (missing, unexpected, wrong-shape or wrong-dtype tensors) instead of torch's multi-line report."""
    check_weights(module, state, path, kind)
    module.load_state_dict(state)


def check_optimizer_state(state: dict, module: nn.Module, path: str | Path) -> None:
    """Refuse, in one line naming the tensor, an optimiser state (``optimizer.state_dict()`` form) that does not fit
    ``module``'s parameters or could not continue a run: a state for a parameter the network lacks, a per-parameter
    tensor of another shape, a NaN or infinity, or a negative second moment (Adam's ``exp_avg_sq``). torch would
    load the first with a traceback and the others silently, and the run would then fail with a loss that blames the
    learning rate."""
    params = list(module.named_parameters())
    for index, entries in sorted(state["state"].items()):
        if not 0 <= index < len(params):
            raise CheckpointError(
                f"{path}: optimizer state optim.{index}.* is for parameter {index}, but the network has "
                f"{len(params)}; the file was edited or written by another version: start afresh (--force)"
            )
        name, param = params[index]
        for key, value in entries.items():
            tensor, where = torch.as_tensor(value), f"{path}: optimizer tensor optim.{index}.{key} (of {name})"
            if tensor.ndim and tensor.shape != param.shape:
                raise CheckpointError(
                    f"{where} has shape {tuple(tensor.shape)}, the parameter {tuple(param.shape)}; the file was "
                    f"edited or written by another version: resume from an earlier copy or start afresh (--force)"
                )
            if tensor.is_floating_point() and not bool(tensor.isfinite().all()):
                raise CheckpointError(
                    f"{where} holds non-finite values; the file was edited or corrupted: resume from an earlier copy "
                    f"or start afresh (--force)"
                )
            if key == "exp_avg_sq" and bool((tensor < 0).any()):
                raise CheckpointError(
                    f"{where} holds negative second moments; the file was edited or corrupted: resume from an "
                    f"earlier copy or start afresh (--force)"
                )
