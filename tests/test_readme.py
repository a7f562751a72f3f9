"""The README's Python snippets run as printed, and say what they claim (the exact NLL against the truth)."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_the_readme_snippets_run_and_the_likelihood_meets_the_truth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) == 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(README), "exec"), namespace)
    assert namespace["result"].nfe == 10 and (tmp_path / "forward.png").is_file()
    truth = -namespace["toy"].log_prob(namespace["x"].double())
    assert abs(float(namespace["nll"].mean() - truth.mean())) < 1e-3  # the solver's default tolerance, 500 points
