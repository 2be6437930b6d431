"""Backbone registry. Importing this package registers every built-in backbone."""

from . import faces as _faces  # noqa: F401  (registers the face backbones)
from . import imagenet as _imagenet  # noqa: F401  (registers the ImageNet backbones)
from ._registry import (
    Backbone,
    BackboneCfg,
    WeightsSource,
    create_backbone,
    get_backbone_cfg,
    list_backbones,
    register_backbone,
)

__all__ = [
    "Backbone",
    "BackboneCfg",
    "WeightsSource",
    "create_backbone",
    "get_backbone_cfg",
    "list_backbones",
    "register_backbone",
]
