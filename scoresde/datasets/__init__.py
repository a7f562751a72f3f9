"""Data sets: the 2D toys of the normalising-flow literature (and, in later issues, images and scalers)."""

from .toys import ToyDataset, register_toy, toy_dataset, toy_datasets

__all__ = ["ToyDataset", "register_toy", "toy_dataset", "toy_datasets"]
