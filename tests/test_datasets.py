"""Image data sets from files in their published formats (small fake files, never a download) and the scaler."""

import gzip
import struct

import numpy as np
import pytest
import torch

from scoresde.datasets import DataTransform, image_dataset, image_datasets


def _write_idx(path, array, compress=False):
    header = b"\x00\x00\x08" + bytes([array.ndim]) + struct.pack(f">{array.ndim}i", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open(path, "wb") if compress else open(path, "wb")).write(data)


def test_digits_split_is_fixed_by_seed_and_disjoint():
    train, test = image_dataset("digits", "train", seed=3), image_dataset("digits", "test", seed=3)
    assert train.shape == (1, 8, 8) and train.levels == 17 and len(train) + len(test) == 1797
    assert float(train.x.min()) == 0 and float(train.x.max()) == 16
    assert torch.equal(image_dataset("digits", "train", seed=3).x, train.x)
    assert not torch.equal(image_dataset("digits", "train", seed=4).x, train.x)
    flat = {tuple(v.tolist()) for v in train.x.reshape(len(train), -1)}
    overlap = sum(tuple(v.tolist()) in flat for v in test.x.reshape(len(test), -1))
    assert overlap < 0.02 * len(test)  # digits has a few duplicate images; a leaking split would overlap fully


@pytest.mark.parametrize("compress, layout", [(False, ""), (True, "MNIST/raw/")])
def test_mnist_reads_idx_files(tmp_path, compress, layout):
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (5, 28, 28)), rng.integers(0, 10, 5)
    folder = tmp_path / layout
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    _write_idx(folder / f"t10k-images-idx3-ubyte{suffix}", images, compress)
    _write_idx(folder / f"t10k-labels-idx1-ubyte{suffix}", labels, compress)
    data = image_dataset("mnist", "test", data_dir=tmp_path)
    assert data.x.shape == (5, 1, 28, 28) and data.levels == 256
    assert np.array_equal(data.x[:, 0].numpy(), images) and np.array_equal(data.labels.numpy(), labels)


def test_cifar10_reads_the_binary_batches(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar-10-batches-bin"
    folder.mkdir()
    images, labels = rng.integers(0, 256, (4, 3, 32, 32)), rng.integers(0, 10, 4)
    records = np.concatenate([labels[:, None], images.reshape(4, -1)], axis=1).astype(np.uint8)
    (folder / "test_batch.bin").write_bytes(records.tobytes())
    data = image_dataset("cifar10", "test", data_dir=tmp_path)
    assert np.array_equal(data.x.numpy(), images) and np.array_equal(data.labels.numpy(), labels)
    (folder / "test_batch.bin").write_bytes(records.tobytes()[:-5])
    with pytest.raises(ValueError, match="not a multiple of 3073 bytes"):
        image_dataset("cifar10", "test", data_dir=tmp_path)


def test_missing_and_corrupt_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="MNIST needs --data-dir"):
        image_dataset("mnist")
    with pytest.raises(FileNotFoundError, match="no train-images-idx3-ubyte.*download"):
        image_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="CIFAR-10: no cifar-10-batches-bin/data_batch_1.bin.*binary version"):
        image_dataset("cifar10", data_dir=tmp_path)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(
        b"\x00\x00\x08\x03" + struct.pack(">3i", 10, 28, 28) + b"\x00" * 7
    )
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"")
    with pytest.raises(ValueError, match="truncated"):
        image_dataset("mnist", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown image data set 'svhn'; valid names are: cifar10, digits, mnist"):
        image_dataset("svhn")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        image_dataset("digits", "val")
    assert image_datasets() == ["cifar10", "digits", "mnist", "mnist5k"]


def test_transform_round_trips_levels_and_dequantises_inside_the_bins():
    transform = DataTransform(levels=17, low=-1.0, high=1.0)
    x = torch.arange(17, dtype=torch.float64).repeat(50, 1)
    y = transform.dequantize(x, torch.Generator().manual_seed(0))
    assert float(y.min()) >= -1 and float(y.max()) < 1
    assert torch.equal(transform.from_model(y), x)
    assert torch.equal(transform.from_model(transform.to_model(x + 0.5)), x)
