"""What a kind of model is: the interface both kinds implement, their registry, and fitting a head.

A backbone's family names its kind (:func:`transferlab.backbones.register_family`); :func:`kind_of` finds the
kind object, registered by its module with :func:`register_kind`. Everything that differs between a model of whole
photos and a model of faces is a method or attribute here, so the pipeline, the saved model, the server, the study
and the engines ask the kind and never which kind it is.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from .._progress import Reporter
from ..backbones import BackboneCfg, get_backbone_cfg
from ..errors import TransferlabError
from ..features import Extractor, FeatureResult
from ..finetune import FinetuneResult
from ..fitted import l2_normalise
from ..gallery import Gallery
from ..predictions import Analysis


class ModelKind:
    """The interface of a kind of model. ``opts`` is always a validated :class:`transferlab.options.Options`.

    Attributes
    ----------
    name
        ``"images"`` or ``"faces"`` (what families name in ``register_family``).
    unit
        What a feature row describes, as progress bars say it (``"features"``, ``"faces"``).
    rows_per_image
        How many feature rows a photo gives, as feature tables record it.
    answers_with_faces
        Answers carry the faces found (boxes, scores, which face answered); a photo may then have no row at all
        (no face found), which a whole-image fallback model can answer.
    finetune_in_study
        Whether the study adds fine-tuned rows for such backbones.
    export_refusal
        Why such a model cannot be exported as one ONNX graph, or None.
    """

    name: ClassVar[str]
    unit: ClassVar[str]
    rows_per_image: ClassVar[str]
    answers_with_faces: ClassVar[bool]
    finetune_in_study: ClassVar[bool]
    export_refusal: ClassVar[str | None]

    def check(self, opts: Any) -> None:
        """Raise :class:`TransferlabError` (one line naming the option) for options this kind cannot honour."""

    def make_head(self, opts: Any) -> Any:
        """A new, unfitted head for these options (a scikit-learn estimator)."""
        raise NotImplementedError

    gallery_features: ClassVar[str]  # what a gallery row is, as model.json says it

    def bags(self, res: FeatureResult, rows: Sequence[int]) -> tuple[list[np.ndarray], list[int]]:
        """Per photo ``rows`` (indices into ``res``), the feature rows a head can be fitted on, ``(k, d)``, and
        the one to start from."""
        raise NotImplementedError

    def fit(
        self,
        head: Any,
        bags: Sequence[np.ndarray],
        start: Sequence[int],
        y: np.ndarray,
        *,
        engine: Any,
        reporter: Reporter,
    ) -> np.ndarray:
        """Fit ``head`` on the photos' bags (:meth:`bags`; a gallery photo is a bag of its one row) and labels;
        returns per photo the index of the row the head was fitted on."""
        raise NotImplementedError

    def gallery_columns(
        self, res: FeatureResult, rows: Sequence[int], start: Sequence[int], picked: np.ndarray
    ) -> dict[str, np.ndarray]:
        """What the gallery keeps per photo besides its features (e.g. the chosen face's box), given the row each
        photo started from (:meth:`bags`) and the one the head was fitted on."""
        return {}

    def stats(self, gallery: Gallery) -> dict[str, int]:
        """What ``model.json`` says of the training photos (e.g. the face choice), from the gallery."""
        return {}

    def query(self, res: FeatureResult, i: int, analysis: Analysis) -> np.ndarray:
        """The feature row photo ``i``'s answer was made from (comparable with the gallery's rows)."""
        raise NotImplementedError

    def class_similarity(self, head: Any, query: np.ndarray, gallery: Gallery) -> np.ndarray:
        """The query's cosine similarity to each class (in ``head.classes_`` order) as the model measures it."""
        means = gallery.class_means([str(c) for c in head.classes_])
        return means @ l2_normalise(np.asarray(query, np.float32)[None])[0]

    def analyse(
        self, head: Any, res: FeatureResult, rows: Sequence[int], threshold: float | None = None
    ) -> list[Analysis]:
        """The fitted head's :class:`~transferlab.predictions.Analysis` of the photos ``rows`` (indices into
        ``res``, each with at least one feature row), in that order; ``threshold`` overrides an open set's."""
        raise NotImplementedError

    def finetune(
        self,
        extractor: Extractor,
        opts: Any,
        sources: Sequence[Any],
        hashes: list[str | None] | None,
        y: np.ndarray,
    ) -> FinetuneResult:
        """Fine-tune the extractor's network on the training photos (``opts.finetune`` top blocks)."""
        raise NotImplementedError

    def inner(self, head: Any) -> Any:
        """The plain head (the estimator on feature rows) inside ``head``; it saves and restores itself."""
        return head

    def save(self, head: Any, opts: Any, stats: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """What ``model.json`` and ``head.safetensors`` hold of ``head`` beyond its plain head: arrays, and
        entries of ``model.json``."""
        return {}, {}

    def restore(self, inner: Any, meta: dict[str, Any], arrays: dict[str, np.ndarray], opts: Any, path: Any) -> Any:
        """The fitted head from its restored plain head and what :meth:`save` wrote."""
        return inner

    def threshold(self, head: Any) -> float | None:
        """The similarity below which an answer is ``unknown``, for models that have an open set."""
        return None

    def report_config(self, head: Any, stats: dict[str, int]) -> dict[str, Any]:
        """Entries the training report adds to its configuration section."""
        return {}


_KINDS: dict[str, ModelKind] = {}


def register_kind(kind: ModelKind) -> ModelKind:
    """Add a kind (its ``name`` is what backbone families name)."""
    _KINDS[kind.name] = kind
    return kind


def kind_of(backbone: str | BackboneCfg) -> ModelKind:
    """The kind of model a backbone makes.

    Examples
    --------
    >>> kind_of("sface").unit, kind_of("mobilenet_v2").unit
    ('faces', 'features')
    """
    cfg = backbone if isinstance(backbone, BackboneCfg) else get_backbone_cfg(backbone)
    try:
        return _KINDS[cfg.kind]
    except KeyError:
        raise TransferlabError(f"backbone {cfg.name!r}: its kind {cfg.kind!r} is not registered") from None


def fit_head(head: Any, X: Any, y: np.ndarray, *, inner: Any, engine: Any, reporter: Reporter, **params: Any) -> None:
    """Fit a head: by the engine where it takes the fit (Spark ML over its limit), with a progress bar over the
    epochs of an MLP, else plainly."""
    name = inner.spec.name  # a transferlab head (transferlab.heads)
    if head is inner and engine.fit_head(head, X, y):
        reporter.info(f"trained {name} head with Spark ML on {len(X)} images")  # over the engine's limit
    elif name == "mlp":
        with reporter.task("head", inner.epochs) as advance:
            head.fit(X, y, progress=advance, **params)
    else:
        reporter.info(f"training {name} head on {len(X)} images")
        head.fit(X, y, **params)
