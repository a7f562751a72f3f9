"""Issue 39's guard: the golden runs (`tests/golden/runs.py`: one tiny run of every run kind trained through the
commands, sampled and evaluated, and every registered sampler on the gmm oracle) reproduce, bit for bit, the figures
written from the main before run kinds were declared (`tests/golden/golden.json`; a digest that a change moved on
purpose is listed with the reason under ``changes`` there). One test, so that the runs are made once (a module
fixture would be made again on each test worker)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

HERE = Path(__file__).parent / "golden"


def test_golden_runs_weights_draws_and_bits_per_dim_are_reproduced_bit_for_bit(tmp_path):
    spec = importlib.util.spec_from_file_location("golden_runs", HERE / "runs.py")
    runs = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runs)
    got, expected = runs.figures(tmp_path), json.loads((HERE / "golden.json").read_text())
    for part in ("weights", "samples"):
        assert got[part].keys() == expected[part].keys()
        assert {k: v for k, v in got[part].items() if v != expected[part][k]} == {}, part
    assert got["bits_per_dim"] == expected["bits_per_dim"]
