"""The training data of a run: batches in the model's range, a deterministic function of (seed, rank, step)."""

from __future__ import annotations

import torch
from torch import Tensor

from ..config.schema import RunConfig
from ..datasets import DataTransform, image_dataset, toy_dataset

__all__ = ["DataStream"]


class DataStream:
    """Batches of model-range data for step ``k``: a deterministic function of ``(seed, rank, k)``.

    Toys are infinite streams; image sets are finite, split across processes by ``DistributedSampler``
    (reshuffled each epoch from the seed), dequantised uniformly and scaled by the `DataTransform`.
    For a class-conditional model (``model.kwargs.num_classes > 0``) each batch comes with its labels."""

    def __init__(self, config: RunConfig, rank: int, world: int, device: torch.device) -> None:
        self.cfg, self.rank, self.world, self.device = config, rank, world, device
        batch = config.train.batch_size
        if batch % world:
            raise ValueError(f"train.batch_size {batch} must be divisible by the number of processes {world}")
        self.local_batch = batch // world
        data = config.data
        self.transform: DataTransform | None = config.data.transform()
        self.num_classes = int(config.model.kwargs.get("num_classes", 0) or 0)
        if data.kind == "toy":
            self.toy = toy_dataset(data.name)
            self.shape = (2,)
            data_classes = self.toy.num_classes
        else:
            images = image_dataset(data.name, "train", data.data_dir, data.split_seed)
            self.images, self.labels = images.x, images.labels.long()
            self.shape = images.shape
            data_classes = int(self.labels.max()) + 1
            from torch.utils.data import DistributedSampler

            self.sampler = DistributedSampler(
                range(len(images)), num_replicas=world, rank=rank, shuffle=True, seed=config.train.seed, drop_last=True
            )
            self.per_epoch = len(self.sampler) // self.local_batch
            if self.per_epoch == 0:
                raise ValueError(
                    f"{data.name}: {len(images)} images are fewer than one batch per process ({self.local_batch})"
                )
            self._epoch, self._order = -1, None
        if self.num_classes and self.num_classes != data_classes:
            fix = (
                f"set model.kwargs.num_classes={data_classes}"
                if data_classes
                else "train it unconditionally (num_classes=0)"
            )
            raise ValueError(
                f"model.kwargs.num_classes is {self.num_classes} but {data.name} has {data_classes or 'no'} classes; "
                f"{fix}"
            )

    def batch(self, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor | None]:
        """Data ``[b, ...]`` in the model's range and, for a class-conditional model, its labels ``[b]`` (else None)."""
        if self.transform is None:
            if self.num_classes:
                x, y = self.toy.sample_labelled(self.local_batch, generator)
                return x.to(self.device), y.to(self.device)
            return self.toy.sample(self.local_batch, generator).to(self.device), None
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, torch.tensor(list(self.sampler))
        idx = self._order[k * self.local_batch : (k + 1) * self.local_batch]
        x = self.images[idx]
        x = self.transform.dequantize(x, generator) if self.cfg.data.dequantize else self.transform.to_model(x + 0.5)
        return x.to(self.device), (self.labels[idx].to(self.device) if self.num_classes else None)
