"""transferlab: a folder of labelled photos in, an evaluated and explained classifier out.

The public surface is small and imported lazily, so ``transferlab --help`` starts fast::

    import transferlab
    clf = transferlab.Classifier(backbone="mobilenet_v2", head="logreg").fit("photos/")
    clf.save("model/")
    clf = transferlab.load("model/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = ["Classifier", "TransferlabError", "__version__", "list_backbones", "load", "train"]

if TYPE_CHECKING:  # pragma: no cover
    from .api import Classifier, load, train
    from .backbones import list_backbones
    from .errors import TransferlabError


def __getattr__(name: str) -> Any:
    if name in ("Classifier", "load", "train"):
        from . import api

        return getattr(api, name)
    if name == "list_backbones":
        from .backbones import list_backbones

        return list_backbones
    if name == "TransferlabError":
        from .errors import TransferlabError

        return TransferlabError
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
