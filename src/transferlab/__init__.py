"""transferlab: a folder of labelled photos in, an evaluated and explained classifier out.

The public surface is small and imported lazily, so ``transferlab --help`` starts fast::

    import transferlab
    clf = transferlab.Classifier(backbone="mobilenet_v2", head="logreg").fit("photos/")
    clf.save("model/")
    clf = transferlab.load("model/")
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

__all__ = [
    "Classifier",
    "Options",
    "TransferlabError",
    "__version__",
    "enroll_model",
    "forget_model",
    "list_backbones",
    "load",
    "train",
]

if TYPE_CHECKING:  # pragma: no cover
    from .api import train
    from .backbones import list_backbones
    from .enrolment import enroll_model, forget_model
    from .errors import TransferlabError
    from .options import Options
    from .pipeline import Classifier, load

_WHERE = {
    "Classifier": "pipeline",
    "load": "pipeline",
    "train": "api",
    "enroll_model": "enrolment",
    "forget_model": "enrolment",
    "list_backbones": "backbones",
    "TransferlabError": "errors",
    "Options": "options",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
