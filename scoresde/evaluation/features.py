r"""Feature networks for image metrics, and the image-quality figures computed with them.

A feature network maps images with intensities in $[0, 1]$ (``[B, C, H, W]``) to feature vectors ``[B, F]``; the
Fréchet distance between the feature Gaussians of samples and of held-out data
(`scoresde.evaluation.metrics.frechet_distance`),
the kernel distance (KID) and k-NN precision / recall are computed on them.

- ``inception``: the Inception-v3 pool features (2048) that published FIDs use, through torch-fidelity's port of the
  TensorFlow graph (the FID reference, equal to pytorch-fid's), read from the local weight cache only: nothing is
  downloaded. Its figure is called **FID**.
- ``digits`` (8x8) and ``mnist`` (28x28): small CNN classifiers trained on the training split of their data set by
  ``scripts/train_feature_network.py``; the penultimate layer (128 features) is the feature vector, and the weights
  ship in the package (``scoresde/weights``) with their test accuracy. Their figures are called **FD-digits** /
  **FD-mnist**: a Fréchet distance on other features, never comparable with an FID.

Reference statistics of a data set's test split are cached as safetensors, keyed by data set, split, feature network
and a hash of its weights (`reference_features`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from .._checks import check_in_registry, check_positive_int, registering
from .._io import json_safe
from .metrics import GaussianStatistics, frechet_distance, kernel_distance, precision_recall

__all__ = [
    "DigitsFeatureNet",
    "FeatureNetworkUnavailable",
    "ImageMetric",
    "ImageQuality",
    "WEIGHTS_DIR",
    "default_feature_network",
    "feature_network",
    "feature_networks",
    "image_features",
    "image_metric",
    "image_quality",
    "reference_features",
]

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"
"""Where the shipped feature networks' weights (``<name>_features.safetensors``) live."""

INCEPTION_WEIGHTS = "weights-inception-2015-12-05-6726825d.pth"
"""torch-fidelity's file name of the TensorFlow FID Inception weights, looked up in torch's hub cache."""

_NETWORKS: dict[str, Callable[[torch.device], nn.Module]] = {}
_DEFAULT_FOR_DATA = {"digits": "digits", "mnist": "mnist", "mnist5k": "mnist", "cifar10": "inception"}


class FeatureNetworkUnavailable(RuntimeError):
    """A feature network whose package or weights are not on this machine (the message says how to get them)."""


def register_feature_network(name: str) -> Callable:
    """Decorator: ``loader(device) -> nn.Module`` available as ``name``; the module maps images in [0, 1] to
    features and carries ``name``, ``label`` (the figure's name, e.g. ``"FID"``) and ``weights_hash``."""
    return registering("feature network", _NETWORKS, name)


def feature_networks() -> list[str]:
    """Names of the registered feature networks, sorted."""
    return sorted(_NETWORKS)


def default_feature_network(data_name: str) -> str:
    """The feature network a data set is measured with: its own shipped network, or Inception for natural images."""
    return _DEFAULT_FOR_DATA.get(data_name, "inception")


def feature_network(name: str, device: torch.device | str = "cpu") -> nn.Module:
    """The feature network registered as ``name`` on ``device`` (eval mode, no gradients)."""
    loader = _NETWORKS[check_in_registry("feature network", name, list(_NETWORKS))]
    return loader(torch.device(device)).eval().requires_grad_(False)


# ---------------------------------------------------------------------- the shipped CNNs
class DigitsFeatureNet(nn.Module):
    r"""A small CNN classifier of grey images (8x8 digits or 28x28 MNIST) whose penultimate layer is the feature vector.

    Two blocks of (3x3 conv, GELU, 3x3 conv, GELU, 2x2 max-pool), widths ``width`` and ``2 width``, an adaptive
    average pool to 2x2, a linear layer to ``features`` with GELU, and a linear classifier. Input: images in $[0, 1]$,
    ``[B, 1, H, W]``; `logits` returns the class scores, `forward` the features: the penultimate activations
    standardised as $(h - m) / s$ with the training split's mean $m$ and one overall scale $s$ (root mean variance),
    fixed buffers set once by the training script, so that FD and KID are on a unit scale (a scalar changes neither
    ranking).
    """

    def __init__(self, width: int = 32, features: int = 128, classes: int = 10) -> None:
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            conv = lambda a, b: nn.Conv2d(a, b, 3, padding=1)  # noqa: E731
            return [conv(c_in, c_out), nn.GELU(), conv(c_out, c_out), nn.GELU(), nn.MaxPool2d(2)]

        self.body = nn.Sequential(
            *block(1, width),
            *block(width, 2 * width),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(8 * width, features),
            nn.GELU(),
        )
        self.head = nn.Linear(features, classes)
        self.register_buffer("feature_mean", torch.zeros(features))
        self.register_buffer("feature_scale", torch.ones(()))
        self.config = {"width": width, "features": features, "classes": classes}

    def forward(self, images: Tensor) -> Tensor:
        return (self.body(2 * images - 1) - self.feature_mean) / self.feature_scale

    def logits(self, images: Tensor) -> Tensor:
        """Class scores ``[B, classes]``."""
        return self.head(self.body(2 * images - 1))

    @torch.no_grad()
    def standardise(self, images: Tensor) -> None:
        """Set ``feature_mean`` and ``feature_scale`` from the penultimate activations of ``images`` (the training
        split)."""
        h = torch.cat([self.body(2 * part - 1) for part in images.split(1000)])
        self.feature_mean.copy_(h.mean(0))
        self.feature_scale.copy_(h.var(0).mean().sqrt())


def shipped_weights_path(name: str) -> Path:
    """The path of a shipped feature network's weights (it may not exist)."""
    return WEIGHTS_DIR / f"{name}_features.safetensors"


def _load_shipped(name: str, label: str, device: torch.device) -> nn.Module:
    from safetensors import safe_open

    path = shipped_weights_path(name)
    if not path.is_file():
        raise FeatureNetworkUnavailable(
            f"the {name!r} feature network's weights are not shipped in this install ({path} is missing); train them "
            f"with: python scripts/train_feature_network.py --data {name} [--data-dir DIR]"
        )
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        state = {k: f.get_tensor(k) for k in f.keys()}
    net = DigitsFeatureNet(**json.loads(meta.get("config", "{}")))
    net.load_state_dict(state)
    net.name, net.label = name, label
    net.metadata = {k: v for k, v in meta.items() if k != "config"}
    net.weights_hash = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return net.to(device)


@register_feature_network("digits")
def _digits(device: torch.device) -> nn.Module:
    return _load_shipped("digits", "FD-digits", device)


@register_feature_network("mnist")
def _mnist(device: torch.device) -> nn.Module:
    return _load_shipped("mnist", "FD-mnist", device)


# ---------------------------------------------------------------------- Inception-v3 (the FID's network)
class _InceptionPool(nn.Module):
    """torch-fidelity's TensorFlow-compatible Inception-v3, returning the 2048 pool features of images in [0, 1]
    (grey images repeated to RGB, quantised to 8 bits as the reference takes them)."""

    def __init__(self, extractor: nn.Module) -> None:
        super().__init__()
        self.extractor = extractor

    def forward(self, images: Tensor) -> Tensor:
        if images.shape[1] == 1:
            images = images.repeat(1, 3, 1, 1)
        pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8)
        return self.extractor(pixels)[0]


@register_feature_network("inception")
def _inception(device: torch.device) -> nn.Module:
    cache = Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_WEIGHTS
    try:
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except Exception as exc:  # torch-fidelity missing, or its torchvision import failing
        raise FeatureNetworkUnavailable(
            f"the Inception-v3 FID features need torch-fidelity and a torchvision built for this torch "
            f"(pip install torch-fidelity); importing it failed: {type(exc).__name__}: {exc}"
        ) from None
    if not cache.is_file():
        raise FeatureNetworkUnavailable(
            f"the Inception-v3 FID weights are not in the local cache ({cache}); nothing is downloaded at run time: "
            f"fetch {INCEPTION_WEIGHTS} from torch-fidelity's release page into that folder once"
        )
    # torch-fidelity unpickles its weights file in full; load it here as plain tensors first (weights_only) and
    # hand it a copy that holds nothing else
    state = torch.load(cache, map_location="cpu", weights_only=True)
    safe_copy = cache.with_name(cache.stem + ".tensors-only.pth")
    if not safe_copy.is_file():
        torch.save(state, safe_copy)
    extractor = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=safe_copy)
    net = _InceptionPool(extractor)
    net.name, net.label = "inception", "FID"
    net.weights_hash = hashlib.sha256(cache.read_bytes()).hexdigest()[:16]
    return net.to(device)


# ---------------------------------------------------------------------- features and figures
@torch.no_grad()
def image_features(network: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Features ``[N, F]`` (float64, CPU) of images ``[N, C, H, W]`` with intensities in [0, 1], in batches on the
    network's device."""
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, C, H, W], got {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images hold NaN or inf values; a sampler diverged")
    batch_size = check_positive_int("batch_size", batch_size)
    device = next(network.parameters()).device
    dtype = next(network.parameters()).dtype
    parts = [network(part.to(device=device, dtype=dtype)).double().cpu() for part in images.split(batch_size)]
    return torch.cat(parts)


def _cache_key(data_name: str, split: str, network: nn.Module) -> str:
    return f"{data_name}-{split}-{network.name}-{network.weights_hash}"


def reference_features(
    network: nn.Module,
    data_name: str,
    split: str = "test",
    *,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
) -> Tensor:
    """Features ``[N, F]`` of an image data set's split (intensities level / (levels - 1)), cached as
    ``<cache_dir>/<data>-<split>-<network>-<weights hash>.safetensors`` when ``cache_dir`` is given (written
    atomically, skipped where the folder is not writable; a file that does not load is recomputed)."""
    from safetensors.torch import load, save

    from .._io import write_atomic
    from ..datasets import image_dataset

    path = Path(cache_dir) / f"{_cache_key(data_name, split, network)}.safetensors" if cache_dir else None
    if path is not None and path.is_file():
        try:
            return load(path.read_bytes())["features"]
        except Exception:  # a truncated or foreign file: recompute and replace it
            pass
    data = image_dataset(data_name, split, data_dir, seed)
    features = image_features(network, data.x.float() / (data.levels - 1))
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(path, save({"features": features.contiguous()}))
        except OSError:  # a read-only run folder: the cache is an optimisation, the figures stay the same
            pass
    return features


@dataclass
class ImageQuality:
    """Image-quality figures of samples against reference images, on one feature network.

    Attributes:
        label: the Fréchet distance's name (``"FID"`` on Inception, ``"FD-digits"`` ...).
        frechet_distance: between the feature Gaussians of samples and reference.
        kid, kid_standard_error: kernel distance (unbiased; may be slightly negative) and its standard error.
        precision, recall: k-NN manifold estimates (k = 3).
        n_samples, n_reference: set sizes (the Fréchet distance is biased upwards at small n: compare at equal n).
    """

    feature_network: str
    label: str
    frechet_distance: float
    kid: float
    kid_standard_error: float
    precision: float
    recall: float
    n_samples: int
    n_reference: int

    def to_dict(self) -> dict:
        return json_safe(asdict(self))

    def summary(self) -> str:
        """One line: the figures with their names."""
        return (
            f"{self.label} {self.frechet_distance:.3f}, KID {self.kid:.4f} ± {self.kid_standard_error:.4f}, "
            f"precision {self.precision:.3f}, recall {self.recall:.3f} ({self.n_samples} samples vs "
            f"{self.n_reference} reference images, {self.feature_network} features)"
        )


def image_quality(sample_features: Tensor, reference: Tensor, network: nn.Module) -> ImageQuality:
    """`ImageQuality` of samples' features against reference features (both ``[N, F]``, from ``network``)."""
    kid, kid_se = kernel_distance(sample_features, reference)
    precision, recall = precision_recall(reference, sample_features)
    return ImageQuality(
        feature_network=network.name,
        label=network.label,
        frechet_distance=frechet_distance(GaussianStatistics.from_features(sample_features), reference),
        kid=kid,
        kid_standard_error=kid_se,
        precision=precision,
        recall=recall,
        n_samples=sample_features.shape[0],
        n_reference=reference.shape[0],
    )


class ImageMetric:
    """``metric(x) -> ImageQuality``: samples in a model's range scored against a data set's reference features.

    ``to_unit`` maps the model's range to intensities in [0, 1] (for a run: quantised to the data's levels, then
    level / (levels - 1), exactly as the reference images).
    """

    def __init__(self, network: nn.Module, reference: Tensor, to_unit: Callable[[Tensor], Tensor]) -> None:
        self.network, self.reference, self.to_unit = network, reference, to_unit

    @property
    def label(self) -> str:
        """The Fréchet distance's name (``"FID"``, ``"FD-digits"``)."""
        return self.network.label

    def __call__(self, x: Tensor) -> ImageQuality:
        return image_quality(image_features(self.network, self.to_unit(x)), self.reference, self.network)


def image_metric(
    data,
    feature: str | None = None,
    *,
    device: torch.device | str = "cpu",
    cache_dir: str | Path | None = None,
) -> ImageMetric:
    """The `ImageMetric` of an image run's `DataConfig`: its data set's feature network (`default_feature_network`,
    or ``feature``) against the test split's features (cached in ``cache_dir``). Raises
    `FeatureNetworkUnavailable` when the network's package or weights are missing."""
    network = feature_network(feature or default_feature_network(data.name), device)
    reference = reference_features(network, data.name, "test", data_dir=data.data_dir, cache_dir=cache_dir)
    transform = data.transform()
    return ImageMetric(network, reference, lambda x: transform.from_model(x) / (transform.levels - 1))
