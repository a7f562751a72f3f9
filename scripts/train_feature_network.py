"""Train the feature network that the FD-<data> image metric uses, and write its weights into the package.

The network (`scoresde.features.DigitsFeatureNet`) is a small CNN classifier trained on the *training split* only
(the metric's reference statistics come from the test split); its test-set accuracy is measured here and stored in the
weights file's metadata with the settings that produced it. Deterministic for a seed on the CPU.

    python scripts/train_feature_network.py --data digits          # 8x8 digits, shipped (about 1 minute on 2 cores)
    python scripts/train_feature_network.py --data mnist --data-dir DIR   # 28x28 MNIST from its IDX files
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

from scoresde.datasets import image_dataset
from scoresde.features import DigitsFeatureNet, shipped_weights_path
from scoresde.run_folder import write_atomic


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
    train, test = (image_dataset(args.data, split, args.data_dir) for split in ("train", "test"))
    scale = train.levels - 1
    x_train, y_train = train.x.float() / scale, train.labels.long()
    x_test, y_test = test.x.float() / scale, test.labels.long()
    epochs = args.epochs or (60 if args.data == "digits" else 8)
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
