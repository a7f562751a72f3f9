"""Shared fixtures: the SDEs every test is parametrised over."""

import os

import pytest
import torch

if os.environ.get("PYTEST_XDIST_WORKER"):
    # one intra-op thread per xdist worker: the tests' small tensors run faster without oversubscription
    torch.set_num_threads(1)

from scoresde import VESDE, VPSDE, SubVPSDE

SDE_FACTORIES = {
    "vp": lambda: VPSDE(),
    "vp-cosine": lambda: VPSDE(schedule="cosine"),
    "subvp": lambda: SubVPSDE(),
    "ve": lambda: VESDE(),
}


@pytest.fixture(params=list(SDE_FACTORIES), ids=list(SDE_FACTORIES))
def sde(request):
    return SDE_FACTORIES[request.param]()


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)
