"""The named choices of transferlab's options (heads, pooling, runtimes, recipes, face policy, engines), as enums
that import nothing: the command line declares its flags with them without loading torch, scikit-learn or pydantic,
so ``transferlab --help`` answers at once. :class:`transferlab.options.Options` validates against the same enums."""

from __future__ import annotations

import enum


class HeadName(enum.StrEnum):
    """Heads: scikit-learn estimators on features (:mod:`transferlab.heads`)."""

    logreg = "logreg"
    svm = "svm"
    mlp = "mlp"


class Pool(enum.StrEnum):
    """How a whole-image feature map becomes a vector."""

    avg = "avg"
    flatten = "flatten"


class Runtime(enum.StrEnum):
    """What runs a whole-image network."""

    torch = "torch"
    onnxruntime = "onnxruntime"


class Recipe(enum.StrEnum):
    """How features are made on a GPU (:func:`transferlab.backbones.device_recipe`)."""

    portable = "portable"
    fast = "fast"


class FaceChoice(enum.StrEnum):
    """Which face of a photo is learned from and answers."""

    mil = "mil"
    largest = "largest"


class EngineName(enum.StrEnum):
    """Where the featurize stage runs."""

    local = "local"
    spark = "spark"


class FacesOutput(enum.StrEnum):
    """``predict --faces``: one answer per photo, or one per face."""

    best = "best"
    all = "all"


DEFAULT_BACKBONE = "sface"
