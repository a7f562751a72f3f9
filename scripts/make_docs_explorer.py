"""Write the documentation's explorer data (``docs/data/explorer.npz``): a small model trained on 8 Gaussians under
the VP SDE (a width-64 MLP, 1,500 steps: about 20 s on 2 CPU cores), its samplers compared (the quick line-up, 500
samples) and its density on a 32 x 32 grid. The docs build draws the page from it (scripts/mkdocs_hooks.py), so the
site needs no training. Deterministic for the seed on the CPU.

    python scripts/make_docs_explorer.py [--out docs/data/explorer.npz]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from scoresde.app.explorer_data import explorer_data
from scoresde.config.presets import preset
from scoresde.config.schema import override
from scoresde.datasets import toy_dataset
from scoresde.evaluation.comparison import compare_samplers, default_lineup
from scoresde.evaluation.held_out import held_out
from scoresde.training.trainer import Trainer

ROOT = Path(__file__).parents[1]
SETTINGS = ["train.steps=1500", "train.batch_size=256", "model.kwargs.width=64", "model.kwargs.depth=2",
            "train.warmup=50", "train.lr=3e-3", "train.ema_decay=0.995", "train.checkpoint_every=0"]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "docs" / "data" / "explorer.npz"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = override(preset("toy-vp"), f"train.seed={args.seed}", *SETTINGS)
    toy = toy_dataset(config.data.name)
    with tempfile.TemporaryDirectory() as folder:
        trainer = Trainer(config, Path(folder) / "run", progress=True, resume=False, overwrite=True)
        trained = trainer.train()
    model, sde = trainer.score_fn, trainer.sde
    data = held_out(config.data, 500, args.seed)
    comparison = compare_samplers(
        sde, model, data.x, lineup=default_lineup(quick=True), n=len(data.x), floor_reference=data.floor,
        true_log_prob=data.sample_log_prob, entropy=data.entropy, seed=args.seed, progress=True,
    )  # fmt: skip
    page = explorer_data(
        sde, model, toy.sample, oracle=toy.oracle, extent=toy.extent, title="A small model of 8 Gaussians (VP SDE)",
        model_name=f"MLP of width 64, {trained.step} training steps", frames=31, n=400, grid=40,
        comparison=comparison, held_out=data.x, likelihood_grid=32, seed=args.seed,
    )  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    path = page.save(args.out)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
