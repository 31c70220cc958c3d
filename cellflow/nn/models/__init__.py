"""Segmentation networks: U-Net, residual U-Net and DeepCell, their registry, config and geometry.

Every model maps (N, in_channels, H, W) images to (N, classes, H, W) logits ("same" size, so
tiles stitch), with H and W multiples of its :func:`downsampling` factor, and reports its
:func:`receptive_field` and :func:`receptive_radius`, derived from its layers.
"""

from __future__ import annotations

from cellflow.nn.models._common import (
    SegmentationModel,
    downsampling,
    empirical_footprints,
    empirical_receptive_field,
    receptive_field,
    receptive_radius,
)
from cellflow.nn.models._registry import MODELS, ModelConfig, build_model
from cellflow.nn.models.deepcell import PATCH_SIZE, DeepCell, DeepCellEnsemble, deepcell_ensemble
from cellflow.nn.models.resunet import ResidualBlock, ResUNet
from cellflow.nn.models.unet import UNet

__all__ = [
    "MODELS",
    "PATCH_SIZE",
    "DeepCell",
    "DeepCellEnsemble",
    "ModelConfig",
    "ResUNet",
    "ResidualBlock",
    "SegmentationModel",
    "UNet",
    "build_model",
    "deepcell_ensemble",
    "downsampling",
    "empirical_footprints",
    "empirical_receptive_field",
    "receptive_field",
    "receptive_radius",
]
