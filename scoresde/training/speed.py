r"""What makes training fast on a device, each a config field (`scoresde.config.TrainConfig`) checked once here:
the network's precision (autocast; fp16 with a gradient scaler), compilation, the channels-last layout, AdamW's
implementation and TF32.

Mixed precision runs the network's matmuls and convolutions in bf16 / fp16 under ``torch.autocast``; the master
weights, the optimiser state, the EMA and the loss stay fp32 (`ScoreModel` returns its output in the input's
dtype), so a step changes weights exactly as an fp32 step would up to the network's rounding. fp16's narrow range
needs the loss scaled by $S$ before the backward pass and the gradients by $1/S$ after it, $S$ halved after an
overflow and doubled after ``growth_interval`` clean steps (``torch.amp.GradScaler``); its state is part of the
checkpoint, so resume stays exact.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable

import torch
from torch import nn

from ..models.network import network_autocast

__all__ = [
    "AUTOCAST_DTYPES",
    "DEVICE_DEFAULTS",
    "autocast_dtype",
    "check_precision",
    "network_autocast",
    "build_optimizer",
    "compile_network",
    "CompiledOrEager",
    "speed_settings",
    "scaler_state",
    "load_scaler_state",
]

AUTOCAST_DTYPES: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""``train.precision`` -> the dtype the network runs in under autocast (``None``: no autocast)."""

DEVICE_DEFAULTS: dict[str, dict[str, object]] = {
    # benchmarks/throughput.py, 2 CPU threads (benchmarks/results/throughput-cpu-*.md), training images/s: AdamW as a
    # loop over parameters beat foreach (CIFAR-10 U-Net at batch 8: 4.23 vs 4.08; the MNIST preset's at batch 32:
    # 68.3 vs 57.3); channels-last was slower for the CIFAR-10 U-Net (3.37 vs 4.08) and faster for MNIST's
    # (63.4 vs 57.3): off, as the larger model decides
    "cpu": {"channels_last": False, "optimizer_impl": "loop"},
    # the field's GPU settings (EDM2, diffusers, k-diffusion): channels-last convolutions for tensor cores and the
    # fused AdamW kernel; benchmarks/gpu_check.sh measures them whenever a GPU is at hand
    "cuda": {"channels_last": True, "optimizer_impl": "fused"},
}
"""The measured default of each device for the config fields left to it (``null`` / ``auto``); other devices take
the CPU's."""


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The dtype of ``precision`` (``fp32`` -> ``None``), or a one-line ``ValueError`` listing the valid names."""
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(AUTOCAST_DTYPES)}")
    return AUTOCAST_DTYPES[precision]


def check_precision(precision: str, device: torch.device | str) -> torch.dtype | None:
    """The autocast dtype of ``precision``, tried once on ``device`` (a small matmul and convolution): a device that
    cannot run it (a GPU without bf16, a backend without autocast) raises one ``ValueError`` naming the fix."""
    dtype, device = autocast_dtype(precision), torch.device(device)
    if dtype is None:
        return None
    reason = None
    if device.type == "cuda" and dtype is torch.bfloat16 and not torch.cuda.is_bf16_supported():
        reason = "this GPU has no bf16"
    else:
        try:
            with torch.autocast(device.type, dtype=dtype):
                x = torch.ones(2, 1, 4, 4, device=device)
                out = nn.functional.conv2d(x, torch.ones(1, 1, 3, 3, device=device), padding=1)
            if out.dtype != dtype:
                reason = f"autocast on {device.type} ran the convolution in {out.dtype}"
        except (RuntimeError, TypeError) as exc:
            reason = str(exc).splitlines()[0]
    if reason:
        other = "bf16" if precision == "fp16" else "fp16"
        raise ValueError(
            f"train.precision {precision} cannot run on {device} ({reason}); choose fp32 or {other}, or another device"
        )
    return dtype


def speed_settings(tc, device: torch.device | str) -> dict[str, object]:
    """The config's speed fields with the device's measured defaults (`DEVICE_DEFAULTS`) filled in for those left
    to it: ``channels_last``, ``optimizer_impl`` (fused / foreach / loop), ``pin_memory``, ``tf32``."""
    kind = torch.device(device).type
    defaults = DEVICE_DEFAULTS.get(kind, DEVICE_DEFAULTS["cpu"])
    impl = defaults["optimizer_impl"] if tc.optimizer_impl == "auto" else tc.optimizer_impl
    return {
        "channels_last": defaults["channels_last"] if tc.channels_last is None else tc.channels_last,
        "optimizer_impl": impl,
        "pin_memory": kind == "cuda" if tc.pin_memory is None else tc.pin_memory,
        "tf32": kind == "cuda" and tc.tf32,
    }


def build_optimizer(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, impl: str, device: torch.device | str
) -> torch.optim.AdamW:
    """AdamW in the implementation ``impl``: ``fused`` (one kernel for every parameter; CUDA and CPU in recent
    torch), ``foreach`` (one vectorised op per state tensor kind) or ``loop`` (a Python loop over parameters). A
    fused AdamW the device cannot run raises one ``ValueError`` naming the others."""
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True}, "loop": {"foreach": False}}[impl]
    params = list(params)
    try:
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kwargs)
    except (RuntimeError, ValueError) as exc:
        raise ValueError(
            f"train.optimizer_impl {impl} cannot run on {torch.device(device)} ({str(exc).splitlines()[0]}); choose "
            f"foreach or loop"
        ) from None


class CompiledOrEager(nn.Module):
    """``torch.compile(net)``, falling back to ``net`` itself the first time the compiled call fails (compilation
    is lazy: a missing compiler shows at the first call) with a one-line warning; an error of the network itself
    then comes from the eager call, as without compilation. The parameters are ``net``'s, under its names."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net, self.failed = net, False
        try:
            compiled = torch.compile(net)
        except Exception as exc:  # torch.compile unavailable here (a Python or platform it does not support)
            compiled, self.failed = None, True
            warnings.warn(f"train.compile: torch.compile is unavailable ({str(exc).splitlines()[0]}); running the "
                          f"network eagerly", stacklevel=2)  # fmt: skip
        object.__setattr__(self, "_compiled", compiled)  # not a submodule: no second copy of the names

    def forward(self, *args, **kwargs):
        if not self.failed:
            try:
                return self._compiled(*args, **kwargs)
            except Exception as exc:  # a compiler error of any type: the eager call decides whether the input is bad
                out = self.net(*args, **kwargs)
                self.failed = True
                warnings.warn(
                    f"train.compile: cannot compile the network ({str(exc).splitlines()[0]}); running it eagerly",
                    stacklevel=2,
                )
                return out
        return self.net(*args, **kwargs)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.net, name)


def compile_network(net: nn.Module, enabled: bool) -> nn.Module:
    """``net`` compiled by ``torch.compile`` when ``enabled`` (`CompiledOrEager`: eager, with a one-line warning,
    where compilation is unavailable), else ``net``."""
    return CompiledOrEager(net) if enabled else net


def scaler_state(scaler: torch.amp.GradScaler) -> dict[str, torch.Tensor]:
    """An enabled gradient scaler's state as tensors for the checkpoint (``scale``, ``growth_tracker``); nothing
    for a disabled one (fp32, bf16)."""
    if not scaler.is_enabled():
        return {}
    state = scaler.state_dict()
    return {
        "scale": torch.tensor(float(state["scale"]), dtype=torch.float64),
        "growth_tracker": torch.tensor(int(state["_growth_tracker"]), dtype=torch.int64),
    }


def load_scaler_state(scaler: torch.amp.GradScaler, saved: dict[str, torch.Tensor]) -> None:
    """Restore `scaler_state` into an enabled scaler (a missing tensor raises ``KeyError``)."""
    if scaler.is_enabled():
        state = scaler.state_dict()
        state["scale"], state["_growth_tracker"] = float(saved["scale"]), int(saved["growth_tracker"])
        scaler.load_state_dict(state)
