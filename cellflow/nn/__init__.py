"""PyTorch side of cellflow: segmentation networks (and, beside them, targets, losses, augmentation)."""

from __future__ import annotations

from cellflow.nn.augment import (
    AugmentParams,
    elastic_deform,
    mirror_crop,
    random_crop,
    random_displacement,
    warp,
)
from cellflow.nn.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from cellflow.nn.losses import REDUCTIONS, class_weights_from_config, weighted_cross_entropy
from cellflow.nn.models import (
    MODELS,
    DeepCell,
    DeepCellEnsemble,
    ModelConfig,
    ResUNet,
    SegmentationModel,
    UNet,
    build_model,
    downsampling,
    empirical_footprints,
    empirical_receptive_field,
    receptive_field,
    receptive_radius,
)
from cellflow.nn.normalize import NORMALIZATION_METHODS, Normalization
from cellflow.nn.predict import ModelCache, cached_model, plan_tiles, predict_plane, whole_image_probabilities
from cellflow.nn.targets import (
    DEFAULT_CLASS_WEIGHTS,
    THREE_CLASSES,
    TWO_CLASSES,
    balanced_class_weights,
    class_weight_vector,
    three_class_targets,
    two_class_targets,
)
from cellflow.nn.train import EpochRecord, TrainParams, TrainResult

# The functions `augment`, `normalize` and `train` are not re-exported here: they share
# their modules' names, and binding them on the package would shadow the submodules
# (`import cellflow.nn.normalize` would then give the function). Use
# `from cellflow.nn.train import train` etc.

__all__ = [
    "DEFAULT_CLASS_WEIGHTS",
    "MODELS",
    "NORMALIZATION_METHODS",
    "REDUCTIONS",
    "THREE_CLASSES",
    "TWO_CLASSES",
    "AugmentParams",
    "Checkpoint",
    "CheckpointError",
    "DeepCell",
    "DeepCellEnsemble",
    "EpochRecord",
    "ModelCache",
    "ModelConfig",
    "Normalization",
    "ResUNet",
    "SegmentationModel",
    "TrainParams",
    "TrainResult",
    "UNet",
    "balanced_class_weights",
    "build_model",
    "cached_model",
    "class_weight_vector",
    "class_weights_from_config",
    "downsampling",
    "elastic_deform",
    "empirical_footprints",
    "empirical_receptive_field",
    "load_checkpoint",
    "mirror_crop",
    "plan_tiles",
    "predict_plane",
    "random_crop",
    "random_displacement",
    "receptive_field",
    "receptive_radius",
    "save_checkpoint",
    "three_class_targets",
    "two_class_targets",
    "warp",
    "weighted_cross_entropy",
    "whole_image_probabilities",
]
