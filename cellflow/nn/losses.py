"""Losses for the segmentation networks: softmax cross-entropy weighted per pixel.

The per-pixel weight map comes with the targets (:mod:`cellflow.nn.targets`); it
already holds the class weights there. :func:`class_weights_from_config` is for the
other route, per-class weights given to the loss itself: use one route or the
other, not both, or the class weights count twice.

Normalisation of :func:`weighted_cross_entropy` with ``reduction="mean"``::

    loss = sum_i w_i * CE_i / sum_i w_i

over every pixel ``i`` of the batch, where ``CE_i = -log softmax(logits_i)[target_i]``
and ``w_i = weights_i * class_weights[target_i]`` (0 at ignored pixels). This is a
weighted *average*: its scale does not depend on the batch size, the tile size, or
a common factor of the weights, and with all weights equal it is exactly
:func:`torch.nn.functional.cross_entropy`. When every weight is 0 the loss is 0
(with a gradient of 0), not NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from cellflow.nn.targets import THREE_CLASSES, class_weight_vector

__all__ = ["REDUCTIONS", "class_weights_from_config", "weighted_cross_entropy"]

REDUCTIONS = ("mean", "sum", "none")


def class_weights_from_config(
    config: Mapping[str, float] | Sequence[float] | None,
    classes: Sequence[str] = THREE_CLASSES,
    *,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-class weights for :func:`weighted_cross_entropy` from a training spec.

    Parameters
    ----------
    config : mapping of str to float, sequence of float or None
        ``{"boundary": 10}`` (classes not named get 1), one weight per class in the
        order of ``classes``, or None for all ones; see
        :func:`~cellflow.nn.targets.class_weight_vector`.
    classes : sequence of str
        Class names in class-index order. Default background, interior, boundary.
    device : torch.device or str, optional
        Where the tensor lives (default: the CPU).

    Returns
    -------
    class_weights : (len(classes),) torch.Tensor of float32

    Raises
    ------
    ValueError
        Unknown class names, a wrong length, or weights that are negative, not
        finite or all 0.

    Examples
    --------
    >>> class_weights_from_config({"boundary": 10.0})
    tensor([ 1.,  1., 10.])
    """
    return torch.as_tensor(class_weight_vector(config, classes), device=device)


def _check_inputs(logits: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None,
                  class_weights: torch.Tensor | None, reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS!r}, got {reduction!r}")
    if not isinstance(logits, torch.Tensor) or logits.ndim < 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a floating-point (N, C, H, W) tensor, got {_describe(logits)}")
    expected = (logits.shape[0], *logits.shape[2:])
    if not isinstance(target, torch.Tensor) or target.dtype != torch.long or tuple(target.shape) != expected:
        raise ValueError(f"target must be a torch.long tensor of shape {expected}, got {_describe(target)}")
    if weights is not None and (not isinstance(weights, torch.Tensor) or not weights.is_floating_point()
                                or tuple(weights.shape) != expected):
        raise ValueError(f"weights must be a floating-point tensor of shape {expected}, got {_describe(weights)}")
    if class_weights is not None and (not isinstance(class_weights, torch.Tensor)
                                      or tuple(class_weights.shape) != (logits.shape[1],)):
        raise ValueError(
            f"class_weights must be a tensor of shape ({logits.shape[1]},), one per class, "
            f"got {_describe(class_weights)}"
        )


def _describe(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"shape {tuple(value.shape)} and dtype {value.dtype}"
    return repr(type(value).__name__)


def weighted_cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    class_weights: torch.Tensor | None = None,
    ignore_index: int | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Softmax cross-entropy weighted per pixel: ``sum(w * CE) / sum(w)`` (see the module docstring).

    Parameters
    ----------
    logits : (N, C, H, W) torch.Tensor of float
        Unnormalised class scores (any number of spatial dims).
    target : (N, H, W) torch.Tensor of torch.long
        Class indices in ``[0, C)``, or ``ignore_index``. Values out of range make
        torch raise (on a GPU, a device-side assert): they are not checked here, as
        that would synchronise every step.
    weights : (N, H, W) torch.Tensor of float, optional
        Per-pixel weights, e.g. from :func:`~cellflow.nn.targets.three_class_targets`;
        default all ones.
    class_weights : (C,) torch.Tensor of float, optional
        Multiplies each pixel's weight by its class's
        (:func:`class_weights_from_config`).
    ignore_index : int, optional
        Pixels whose target is this value weigh 0 (unlabelled or padded regions).
    reduction : {'mean', 'sum', 'none'}
        ``'mean'``: ``sum(w * CE) / sum(w)`` (0 if all weights are 0); ``'sum'``:
        ``sum(w * CE)``; ``'none'``: the ``(N, H, W)`` map ``w * CE``.

    Returns
    -------
    loss : torch.Tensor
        A scalar, or ``(N, H, W)`` with ``reduction='none'``.

    Raises
    ------
    ValueError
        A tensor has the wrong shape or dtype, or ``reduction`` is unknown.

    Examples
    --------
    >>> logits = torch.zeros(1, 3, 1, 2)
    >>> target = torch.tensor([[[0, 2]]])
    >>> weights = torch.tensor([[[1.0, 10.0]]])
    >>> round(float(weighted_cross_entropy(logits, target, weights)), 4)  # log(3): uniform logits
    1.0986
    """
    _check_inputs(logits, target, weights, class_weights, reduction)
    if ignore_index is None:
        ce = F.cross_entropy(logits, target, reduction="none")
        valid = None
        index = target
    else:
        ce = F.cross_entropy(logits, target, reduction="none", ignore_index=ignore_index)
        valid = target != ignore_index
        index = torch.where(valid, target, torch.zeros_like(target))  # a safe index for class_weights
    w = torch.ones_like(ce) if weights is None else weights.to(ce.dtype)
    if class_weights is not None:
        w = w * class_weights.to(device=ce.device, dtype=ce.dtype)[index]
    if valid is not None:
        w = w * valid.to(ce.dtype)
    weighted = w * ce
    if reduction == "none":
        return weighted
    total = weighted.sum()
    if reduction == "sum":
        return total
    w_sum = w.sum()
    return total / torch.where(w_sum > 0, w_sum, torch.ones_like(w_sum))
