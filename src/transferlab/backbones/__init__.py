"""Backbone registry. Importing this package registers every built-in family and backbone.

``list_backbones()`` answers "what can I use?", ``get_backbone_cfg(name)`` describes one without building it, and
``create_backbone(name)`` is the single door to a built one (an :class:`ImageBackbone` or a :class:`FaceBackbone`).
"""

from . import edgeface as _edgeface  # noqa: F401  (registers EdgeFace's embedders and backbones)
from . import faces as _faces  # noqa: F401  (registers the face family and backbones)
from . import imagenet as _imagenet  # noqa: F401  (registers the ImageNet family and backbones)
from ._factory import create_backbone
from ._registry import (
    RECIPES,
    Backbone,
    BackboneCfg,
    FaceCfg,
    WeightsSource,
    catalogue,
    device_recipe,
    get_backbone_cfg,
    list_backbones,
    recipe_of,
    recorded_recipe,
    register_backbone,
    register_family,
    weights_store,
)
from ._tensors import load_tuned, tensors_sha256
from ._torch import ImageBackbone, TrunkBackbone, split_blocks
from .faces import FaceBackbone, face_areas, face_boxes, face_embeddings, face_landmarks, face_scores
from .weights import add_weights, get_weights, weights_rows

__all__ = [
    "RECIPES",
    "Backbone",
    "BackboneCfg",
    "FaceBackbone",
    "FaceCfg",
    "ImageBackbone",
    "TrunkBackbone",
    "WeightsSource",
    "add_weights",
    "catalogue",
    "create_backbone",
    "device_recipe",
    "face_areas",
    "face_boxes",
    "face_embeddings",
    "face_landmarks",
    "face_scores",
    "get_backbone_cfg",
    "get_weights",
    "list_backbones",
    "load_tuned",
    "recipe_of",
    "recorded_recipe",
    "register_backbone",
    "register_family",
    "split_blocks",
    "tensors_sha256",
    "weights_rows",
    "weights_store",
]
