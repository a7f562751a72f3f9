"""Data sets: the 2D toys of the normalising-flow literature, image data sets, and the data <-> model scaler."""

from .images import ImageDataset, image_dataset, image_datasets, register_image_dataset
from .scalers import DataTransform
from .toys import ToyDataset, register_toy, toy_dataset, toy_datasets

__all__ = [
    "ToyDataset",
    "register_toy",
    "toy_dataset",
    "toy_datasets",
    "DataTransform",
    "ImageDataset",
    "image_dataset",
    "image_datasets",
    "register_image_dataset",
]
