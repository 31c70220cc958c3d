from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cellflow.nn.losses import class_weights_from_config, weighted_cross_entropy
from cellflow.nn.targets import TWO_CLASSES, three_class_targets


def numpy_weighted_ce(logits: np.ndarray, target: np.ndarray, weights: np.ndarray) -> float:
    """sum(w * CE) / sum(w), written out with a log-sum-exp over the class axis."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_softmax = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n, _, h, w = logits.shape
    picked = log_softmax[np.arange(n)[:, None, None], target, np.arange(h)[None, :, None], np.arange(w)[None, None, :]]
    return float((weights * -picked).sum() / weights.sum())


def test_two_pixel_example_by_hand():
    # Pixel a: logits (0, ln 3), target 1 -> p = 3/4, CE = ln(4/3); weight 1.
    # Pixel b: logits (0, 0), target 0 -> p = 1/2, CE = ln 2; weight 3.
    logits = torch.tensor([[[[0.0, 0.0]], [[np.log(3.0), 0.0]]]])  # (1, 2, 1, 2)
    target = torch.tensor([[[1, 0]]])
    weights = torch.tensor([[[1.0, 3.0]]])
    expected = (np.log(4 / 3) + 3 * np.log(2)) / 4
    assert float(weighted_cross_entropy(logits, target, weights)) == pytest.approx(expected, rel=1e-6)
    assert float(weighted_cross_entropy(logits, target, weights, reduction="sum")) == pytest.approx(4 * expected,
                                                                                                    rel=1e-6)
    per_pixel = weighted_cross_entropy(logits, target, weights, reduction="none")
    np.testing.assert_allclose(per_pixel.numpy(), [[[np.log(4 / 3), 3 * np.log(2)]]], rtol=1e-6)


def test_matches_a_numpy_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (2, 3, 5, 7))
    target = rng.integers(0, 3, (2, 5, 7))
    weights = rng.uniform(0.1, 10, (2, 5, 7))
    loss = weighted_cross_entropy(torch.tensor(logits), torch.tensor(target), torch.tensor(weights))
    assert loss.dtype == torch.float64
    assert float(loss) == pytest.approx(numpy_weighted_ce(logits, target, weights), rel=1e-12)


def test_uniform_weights_equal_plain_cross_entropy():
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 3, 8, 6, generator=generator)
    target = torch.randint(0, 3, (3, 8, 6), generator=generator)
    reference = F.cross_entropy(logits, target)
    # float32 sums over 144 px: agreement to ~1e-6 relative
    torch.testing.assert_close(weighted_cross_entropy(logits, target), reference, rtol=1e-6, atol=0)
    torch.testing.assert_close(weighted_cross_entropy(logits, target, torch.full((3, 8, 6), 7.5)), reference,
                               rtol=1e-6, atol=0)


def test_class_weights_equal_the_same_weight_map():
    labels = np.zeros((1, 16, 16), np.int32)
    labels[0, 3:13, 3:13] = 1
    target, weights = three_class_targets(labels[0])
    target_t = torch.from_numpy(target.astype(np.int64))[None]
    logits = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    by_map = weighted_cross_entropy(logits, target_t, torch.from_numpy(weights)[None])
    by_class = weighted_cross_entropy(logits, target_t, class_weights=class_weights_from_config({"boundary": 10}))
    torch.testing.assert_close(by_map, by_class)
    np.testing.assert_allclose(torch.nn.functional.cross_entropy(
        logits, target_t, weight=class_weights_from_config((1, 1, 10))).item(), by_map.item(), rtol=1e-6)


def test_ignored_pixels_weigh_nothing():
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 4, 4, generator=generator)
    target = torch.randint(0, 3, (2, 4, 4), generator=generator)
    weights = torch.rand(2, 4, 4, generator=generator) + 0.5
    keep = torch.ones(2, 4, 4, dtype=torch.bool)
    keep[0, :2] = False
    masked = torch.where(keep, target, torch.full_like(target, 255))
    loss = weighted_cross_entropy(logits, masked, weights, ignore_index=255,
                                  class_weights=torch.tensor([1.0, 2.0, 3.0]))
    expected = weighted_cross_entropy(logits, target, weights * keep, class_weights=torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(loss, expected)


def test_all_zero_weights_give_zero_not_nan():
    logits = torch.randn(1, 2, 3, 3, requires_grad=True)
    loss = weighted_cross_entropy(logits, torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(1, 3, 3))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_gradients_flow_and_match_numerical():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(2, 3, 4, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5), generator=generator)
    weights = torch.rand(2, 4, 5, generator=generator, dtype=torch.float64) * 5
    loss = weighted_cross_entropy(logits, target, weights)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert torch.autograd.gradcheck(lambda x: weighted_cross_entropy(x, target, weights), (logits.detach()
                                                                                          .requires_grad_(),))


def test_inputs_are_validated():
    logits = torch.zeros(2, 3, 4, 4)
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"target must be a torch.long tensor of shape \(2, 4, 4\), got shape "
                                         r"\(2, 4, 4\) and dtype torch.int32"):
        weighted_cross_entropy(logits, target.int())
    with pytest.raises(ValueError, match=r"weights must be a floating-point tensor of shape \(2, 4, 4\)"):
        weighted_cross_entropy(logits, target, torch.ones(2, 4, 5))
    with pytest.raises(ValueError, match=r"logits must be a floating-point \(N, C, H, W\) tensor"):
        weighted_cross_entropy(logits.long(), target)
    with pytest.raises(ValueError, match=r"class_weights must be a tensor of shape \(3,\)"):
        weighted_cross_entropy(logits, target, class_weights=torch.ones(2))
    with pytest.raises(ValueError, match=r"reduction must be one of \('mean', 'sum', 'none'\), got 'avg'"):
        weighted_cross_entropy(logits, target, reduction="avg")


def test_class_weights_from_config():
    assert class_weights_from_config(None).tolist() == [1.0, 1.0, 1.0]
    assert class_weights_from_config({"interior": 2}, TWO_CLASSES).tolist() == [1.0, 2.0]
    weights = class_weights_from_config([1, 1, 10])
    assert weights.dtype == torch.float32 and weights.tolist() == [1.0, 1.0, 10.0]
    with pytest.raises(ValueError, match=r"unknown classes \['boundary'\]"):
        class_weights_from_config({"boundary": 10}, TWO_CLASSES)
