"""Input validation shared by the public boundaries of the package.

Every check raises ``ValueError`` (or ``TypeError`` for a wrong kind of object) with one line that names
the argument, the offending value and what was expected, as torchsde's ``check_contract`` does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ._deprecated import ScoresdeDeprecationWarning

__all__ = [
    "check_callable",
    "check_finite",
    "check_positive",
    "check_positive_int",
    "check_probability_vector",
    "check_in_registry",
    "check_labels",
    "expand_to",
    "standard_normal_like",
    "progress_bar",
    "renamed_t_min",
]


def check_callable(name: str, fn: object, where: str | None = None) -> None:
    """Refuse a model argument ``name`` that cannot be called as ``name(x, t)`` (``TypeError``, the argument named as
    the caller's signature spells it; ``where`` the boundary, when it is not the caller itself)."""
    if not callable(fn):
        prefix = f"{where}: " if where else ""
        raise TypeError(f"{prefix}{name} must be callable as {name}(x, t), got {type(fn).__name__}")


def check_positive(name: str, value: float, *, strict: bool = True) -> float:
    """Return ``value`` as a float if it is finite and ``> 0`` (``>= 0`` when ``strict=False``)."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {value!r}") from None
    ok = number > 0 if strict else number >= 0
    if not math.isfinite(number) or not ok:
        bound = "> 0" if strict else ">= 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return number


def check_positive_int(name: str, value: int) -> int:
    """Return ``value`` if it is an integer ``>= 1``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return value


def check_finite(name: str, x: Tensor) -> Tensor:
    """Raise if the tensor ``x`` holds a NaN or an infinity."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{name} holds {n_bad} non-finite value(s) (NaN or inf); pass finite values")
    return x


def check_probability_vector(name: str, w: Tensor, *, atol: float = 1e-6) -> Tensor:
    """Raise unless ``w`` is a 1-D vector of positive numbers summing to 1 (within ``atol``)."""
    check_finite(name, w)
    if w.ndim != 1 or w.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(w.shape)}")
    if bool((w <= 0).any()):
        raise ValueError(f"{name} must be > 0 everywhere, got min {float(w.min()):.3g}")
    total = float(w.sum())
    if abs(total - 1.0) > atol:
        raise ValueError(f"{name} must sum to 1 (within {atol:g}), got sum {total:.8g}; normalise them")
    return w


def check_in_registry(kind: str, name: str, valid: Sequence[str], argument: str | None = None) -> str:
    """Raise ``ValueError`` listing the valid names if ``name`` is not one of them (naming the caller's ``argument``
    when its name is not the ``kind`` itself)."""
    if name not in valid:
        listing = ", ".join(sorted(valid))
        given = f" for {argument}" if argument else ""
        raise ValueError(f"unknown {kind} {name!r}{given}; valid names are: {listing}")
    return name


def registering(kind: str, table: dict, name: str) -> Callable:
    """A decorator that adds its argument to ``table`` under ``name`` (refusing a second ``name``)."""

    def add(obj):
        if name in table:
            raise ValueError(f"a {kind} named {name!r} is already registered")
        table[name] = obj
        return obj

    return add


def expand_to(v: Tensor, x: Tensor) -> Tensor:
    """Pad a per-sample tensor ``v`` of shape ``[B]`` with trailing unit axes to broadcast against ``x [B, ...]``.

    The one broadcasting helper of the package (like improved-diffusion's ``_extract_into_tensor``).
    """
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def standard_normal_like(x: Tensor, generator: torch.Generator | None) -> Tensor:
    r"""$z \sim \mathcal N(0, I)$ shaped like ``x`` (its dtype and device), drawn from ``generator``."""
    return torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def progress_bar(iterable: Iterable, desc: str, enabled: bool, **kwargs):
    """``iterable`` wrapped in a tqdm bar when ``enabled``, following tqdm's convention for logs: the bar is
    drawn only when its stream is a terminal (``disable=None``), so ``make demo > file`` gets no bar lines."""
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, disable=None if enabled else True, **kwargs)


def check_labels(
    y: Tensor | int, batch: int, num_classes: int, device: torch.device | str, *, allow_null: bool = False
) -> Tensor:
    """Class labels ``[batch]`` (long, on ``device``) from one integer or integers ``[batch]``, each in
    ``0 .. num_classes - 1`` (or ``num_classes``, the null label, when ``allow_null``)."""
    labels = torch.as_tensor(y, device=device)
    if labels.is_floating_point() or labels.ndim > 1:
        raise ValueError(f"labels must be one integer or integers [B], got {tuple(labels.shape)} {labels.dtype}")
    labels = labels.long().expand(batch) if labels.ndim == 0 else labels.long()
    if labels.shape != (batch,):
        raise ValueError(f"labels must be one integer or one per sample ({batch}), got {labels.shape[0]}")
    top = num_classes if allow_null else num_classes - 1
    bad = labels[(labels < 0) | (labels > top)]
    if bad.numel():
        null = f" (or {num_classes}, the null label)" if allow_null else ""
        raise ValueError(f"label {int(bad[0])} is outside the model's classes 0..{num_classes - 1}{null}")
    return labels


def renamed_t_min(t_min: float | None, eps: float | None, where: str) -> float | None:
    """The smallest time from ``t_min``, or from its deprecated name ``eps`` (with a ``DeprecationWarning``):
    ``eps`` names the noise $\\epsilon$ in this package, so the time is ``t_min`` from 0.2 on."""
    if eps is None:
        return t_min
    warnings.warn(
        f"{where}: the smallest time is now called t_min; eps= is deprecated", ScoresdeDeprecationWarning, stacklevel=3
    )
    if t_min is not None:
        raise ValueError(f"{where}: pass the smallest time once, as t_min (eps is its deprecated name)")
    return eps
