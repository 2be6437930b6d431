"""Features: images → backbone feature rows, batched, decoded in lanes, worker processes or on a GPU, computed once
and cached by content.

- :mod:`.options`: which backbone, and where and how features are computed (:class:`FeatureOptions`);
- :mod:`.spec`: what makes a feature (the recipe) and the cache keyed by it;
- :mod:`.loader`: CPU decoding, batches and lanes; :mod:`.cuda`: decoding on the GPU and its batch size;
- :mod:`.images` and :mod:`.face_rows`: the two featurize loops; :mod:`.extract`: the stage for any backbone.
"""

from ..choices import DEFAULT_BACKBONE, Pool, Recipe, Runtime
from .extract import Extractor, extract, prepare_backbone
from .face_rows import featurize_faces
from .images import featurize_images
from .loader import balanced_batches, cpu_lanes, default_num_workers, map_in_lanes
from .options import FeatureOptions
from .result import FeatureResult
from .spec import FEATURES_VERSION, feature_spec, open_cache

__all__ = [
    "DEFAULT_BACKBONE",
    "FEATURES_VERSION",
    "Extractor",
    "FeatureOptions",
    "FeatureResult",
    "Pool",
    "Recipe",
    "Runtime",
    "balanced_batches",
    "cpu_lanes",
    "default_num_workers",
    "extract",
    "feature_spec",
    "featurize_faces",
    "featurize_images",
    "map_in_lanes",
    "open_cache",
    "prepare_backbone",
]
