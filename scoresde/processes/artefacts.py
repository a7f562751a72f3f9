"""What an artefact belongs to: the record a run's artefacts (fitted grids, moments tables, and what later issues add:
fitted solvers, autoencoders) carry, and the one check that refuses an artefact for another model.

An artefact is fitted or computed for one model of one forward process on one data set. Its record
(`belongs_to`) names the three: the SDE by its ``repr`` (class and parameters), the model by a fingerprint of its
weights (`model_fingerprint`: a SHA-256 of the tensors, so a retrained or edited model is another model) and the
data set by name. `mismatch` compares a record with the model at hand; `check_belongs` turns a mismatch into a
one-line ``ValueError`` that says how to make a fitting artefact. A field either side does not know (a plain
function's fingerprint, an unknown data set) is not compared.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .seam import ModelWrapper

__all__ = ["belongs_to", "model_fingerprint", "mismatch", "check_belongs"]

FIELDS = ("sde", "data", "model")
"""The record's fields, in the order a mismatch is reported (the most telling first)."""


def model_fingerprint(model: Any) -> str | None:
    """The first 16 hex digits of the SHA-256 of ``model``'s tensors (names, dtypes, shapes and bytes, in name
    order), through wrappers (`scoresde.processes.seam.ModelWrapper.inner`) to the module that holds the weights;
    None for a model without weights (a plain function, an oracle's exact score)."""
    while isinstance(model, ModelWrapper):
        model = model.inner
    if not isinstance(model, nn.Module):
        return None
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1).contiguous().cpu()
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())  # bytes of any dtype (bfloat16 included)
    return digest.hexdigest()[:16]


def belongs_to(sde: Any, model: Any = None, data: str | None = None) -> dict:
    """The record of what an artefact fitted for ``model`` of ``sde`` on data set ``data`` belongs to:
    ``{"sde": repr(sde), "data": data, "model": model_fingerprint(model)}`` (JSON-safe)."""
    return {"sde": repr(sde), "data": data, "model": None if model is None else model_fingerprint(model)}


def mismatch(record: dict, expected: dict) -> str | None:
    """The first field in which ``record`` (an artefact's) and ``expected`` (the model at hand's) differ, as words
    for a message, or None when every field both know agrees."""
    for key in FIELDS:
        theirs, ours = record.get(key), expected.get(key)
        if theirs is not None and ours is not None and theirs != ours:
            label = {"sde": "forward SDE", "data": "data set", "model": "model (its weights differ)"}[key]
            shown = "" if key == "model" else f": {theirs}, not this one's {ours}"
            return f"another {label}{shown}"
    return None


def check_belongs(record: Any, expected: dict, path: str | Path, what: str, remedy: str) -> None:
    """Refuse, in one ``ValueError`` line, the artefact at ``path`` (``what``: e.g. "grid") whose ``record``
    (its `belongs_to`) is missing or names another SDE, data set or model than ``expected``; ``remedy`` says how to
    make one that fits (e.g. the command that fits it)."""
    if not isinstance(record, dict):
        raise ValueError(f"{path} records no model it belongs to (an earlier version wrote it); {remedy}")
    differs = mismatch(record, expected)
    if differs is not None:
        raise ValueError(f"{path} is a {what} for {differs}; {remedy}")
