"""The training data of a run: batches in the model's range, a deterministic function of (seed, rank, step): toy
draws, images (at the run's resolution), an autoencoder's scaled latents (a latent model), or images with their
low-resolution versions (a super-resolution stage)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.utils.data
from torch import Tensor

from ..config.schema import RunConfig
from ..datasets import DataTransform, image_dataset, toy_dataset
from ..datasets.images import downsample_levels
from .kinds import run_kind
from .objectives import Batch

__all__ = ["DataStream"]


class DataStream:
    r"""Batches of model-range data for step ``k``: a deterministic function of ``(seed, rank, k)``.

    Toys are infinite streams; image sets are finite, split across processes by ``DistributedSampler``
    (reshuffled each epoch from the seed), dequantised uniformly and scaled by the `DataTransform`.
    For a class-conditional model (``model.kwargs.num_classes > 0``) each batch comes with its labels. The run's kind
    adds what its objective needs (`scoresde.training.kinds.RunKind.prepare_data`): a latent model sees
    $z_s = c(\mu + s\epsilon)$, a fresh draw of the frozen autoencoder's posterior for every batch (``posterior``, the
    training images' posteriors computed once); a super-resolution stage gets each image's low-resolution version,
    dequantised on its own, in ``batch.low`` (``low``).
    ``folder``: the run folder that a relative autoencoder path is looked up in first."""

    def __init__(
        self,
        config: RunConfig,
        rank: int,
        world: int,
        device: torch.device,
        folder: str | Path | None = None,
        pin_memory: bool = False,
    ) -> None:
        self.cfg, self.rank, self.world, self.device = config, rank, world, device
        self.pin_memory, self.num_workers, self._loader = pin_memory, config.train.num_workers, None
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
            if data.resolution is not None:
                self.images = downsample_levels(self.images, data.resolution)
            self.shape = tuple(self.images.shape[1:])
            self.low = self.posterior = None
            run_kind(config).prepare_data(self, config, device, folder)  # a stage's latents or low-resolution images
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

    def batch(self, step: int, generator: torch.Generator) -> Batch:
        """The `Batch` of ``step``: data ``[b, ...]`` in the model's range, for a class-conditional model its labels
        ``[b]``, for a super-resolution stage the low-resolution images."""
        if self.transform is None:
            if self.num_classes:
                x, y = self.toy.sample_labelled(self.local_batch, generator)
                return Batch(x.to(self.device), y.to(self.device), step)
            return Batch(self.toy.sample(self.local_batch, generator).to(self.device), None, step)
        if self.posterior is not None:
            idx = self.indices(step)
            y = self.labels[idx].to(self.device) if self.num_classes else None
            mean, std = self.posterior[0][idx], self.posterior[1][idx]
            z = mean + std * torch.randn(mean.shape, generator=generator, dtype=mean.dtype).to(mean.device)
            return Batch(z, y, step)
        images, labels, low = self._loaded(step)
        y = labels.to(self.device, non_blocking=True) if self.num_classes else None
        x = self._model_range(images.to(self.device, non_blocking=True), generator)
        low = None if low is None else self._model_range(low.to(self.device, non_blocking=True), generator)
        return Batch(x, y, step, low)

    def indices(self, step: int) -> Tensor:
        """The rows of this process's batch of ``step``: the ``DistributedSampler`` order of its epoch."""
        epoch, k = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self.sampler.set_epoch(epoch)
            self._epoch, self._order = epoch, torch.tensor(list(self.sampler))
        return self._order[k * self.local_batch : (k + 1) * self.local_batch]

    def gather(self, step: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """The integer images, labels and low-resolution images of ``step``'s batch (no randomness: the
        dequantisation draws come from the step's generator in the training process)."""
        idx = self.indices(step)
        return self.images[idx], self.labels[idx], None if self.low is None else self.low[idx]

    def _loaded(self, step: int) -> tuple[Tensor, Tensor, Tensor | None]:
        """`gather` of ``step``: in this process, or with ``train.num_workers`` / pinned memory from a DataLoader
        whose workers gather the next batches ahead (restarted at ``step`` when the steps jump, e.g. on resume)."""
        if not (self.num_workers or self.pin_memory):
            return self.gather(step)
        if self._loader is None or self._loader[0] != step:
            from torch.utils.data import DataLoader

            loader = DataLoader(_StepBatches(self, step), batch_size=None, num_workers=self.num_workers,
                                pin_memory=self.pin_memory, persistent_workers=False)  # fmt: skip
            self._loader = [step, iter(loader)]
        self._loader[0] += 1
        return next(self._loader[1])

    def _model_range(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Integer images in the model's range: dequantised (``data.dequantize``) or at their levels' centres."""
        return self.transform.dequantize(x, generator) if self.cfg.data.dequantize else self.transform.to_model(x + 0.5)


class _StepBatches(torch.utils.data.IterableDataset):
    """The gathered batches of steps ``start, start + 1, ...`` (`DataStream.gather`), for a DataLoader: with
    workers, worker ``w`` of ``W`` gathers the steps ``start + w, start + w + W, ...`` and the loader interleaves
    them back in order."""

    def __init__(self, stream: DataStream, start: int) -> None:
        self.stream, self.start = stream, start

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        offset, stride = (0, 1) if info is None else (info.id, info.num_workers)
        step = self.start + offset
        while True:
            yield self.stream.gather(step)
            step += stride
