"""Kinds of model: what a photo becomes and what the model does with it, one object per kind.

- :mod:`.images` — whole photos: one feature row per photo, the configured head on it;
- :mod:`.faces` — faces: a bag of face rows per photo, the head in a
  :class:`~transferlab.facebag.FaceBagClassifier`, an open set, photos without a face answered by a fallback;
- :mod:`._base` — the interface (:class:`ModelKind`), the registry and fitting a head.

A backbone family names its kind when it registers (:func:`transferlab.backbones.register_family`); a new family
of an existing kind (another face embedder, another ImageNet network) needs nothing here. Importing this package
registers both kinds.
"""

from . import faces as _faces  # noqa: F401  (registers the faces kind)
from . import images as _images  # noqa: F401  (registers the images kind)
from ._base import ModelKind, kind_of, register_kind

__all__ = ["ModelKind", "kind_of", "register_kind"]
