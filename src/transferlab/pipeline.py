"""The pipeline: :class:`Classifier`, an extractor (backbone + decoding + cache), a head and an engine, composed.

What differs between a model of whole photos and a model of faces (the head's wrapping, what it is fitted on, what
an answer carries, how it is fine-tuned and saved) is the model's kind's business (:mod:`transferlab.kinds`); the
pipeline asks the kind. Photos that have no feature row (no face found) are answered by an optional whole-image
:class:`~transferlab.model_state.Fallback`, or not at all. ``Classifier`` follows scikit-learn's estimator rules:
``__init__`` only stores its parameters (``get_params``, ``clone``); ``fit`` validates them once and learns the
``*_`` attributes.
"""

from __future__ import annotations

import datetime as _dt
import inspect
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from . import model_state, people
from ._params import Parameters
from ._progress import Reporter
from ._version import __version__
from .cache import default_cache_dir
from .engines import as_engine
from .errors import TransferlabError
from .evaluate import Metrics, evaluate_analyses, rows_to_evaluate
from .features import Extractor, FeatureResult
from .gallery import Gallery, gallery_paths
from .options import DEFAULT_BACKBONE, Options, validate_options
from .predictions import Analysis, Prediction

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from .intake import Intake


def _parameters() -> dict[str, Any]:
    """Every parameter of :class:`Classifier` and its default: the fields of :class:`Options` (plain values; None
    for a dict, scikit-learn's rule for mutable defaults), then ``engine``."""
    out = {}
    for name, field in Options.model_fields.items():
        default = field.get_default(call_default_factory=True)
        out[name] = None if isinstance(default, dict) else getattr(default, "value", default)
    return {**out, "engine": None}


_PARAMETERS = _parameters()


class Classifier(Parameters):
    """A pretrained backbone with a small head, trained on labelled photos.

    Its parameters are the fields of :class:`transferlab.options.Options` (``backbone`` and ``head``, which may be
    given by position, then ``pool``, ``head_params``, ``face_choice``, ``fallback``, ``finetune``,
    ``finetune_params``, ``weights``, ``download``, ``cache_dir``, ``use_cache``, ``batch_size``, ``num_workers``,
    ``device``, ``runtime``, ``recipe``, ``verbose``; each documented there), and ``engine``: where the featurize
    stage runs, an engine from :func:`transferlab.engines.get_engine` (e.g. Spark); None is the local engine.
    Features and answers are the same either way. A new option declared in :class:`Options` is a parameter here
    at once.

    Examples
    --------
    >>> clf = Classifier(backbone="mobilenet_v2", head="logreg")   # doctest: +SKIP
    >>> clf.fit("data/presidents").predict(["photo.jpg"])           # doctest: +SKIP
    array(['obama'], dtype=object)
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, head: str = "logreg", **params: Any) -> None:
        unknown = sorted(set(params) - set(_PARAMETERS))
        if unknown:
            raise TypeError(f"Classifier() got an unexpected keyword argument {unknown[0]!r}")
        self.backbone = backbone
        self.head = head
        for name, default in _PARAMETERS.items():
            if name not in ("backbone", "head"):
                setattr(self, name, params.get(name, default))

    # scikit-learn reads the parameters from __init__'s signature (get_params, clone, repr): the one declared here.
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            *(
                inspect.Parameter(
                    name,
                    inspect.Parameter.POSITIONAL_OR_KEYWORD
                    if name in ("backbone", "head")
                    else inspect.Parameter.KEYWORD_ONLY,
                    default=default,
                )
                for name, default in sorted(_PARAMETERS.items(), key=lambda kv: (kv[0] != "backbone", kv[0] != "head"))
            ),
        ]
    )

    @classmethod
    def from_options(cls, options: Options, engine: Any = None) -> Classifier:
        """A classifier with already validated options."""
        return cls(**{k: getattr(v, "value", v) for k, v in options.model_dump().items()}, engine=engine)

    def options(self) -> Options:
        """These parameters, validated (one line naming the parameter when one is wrong)."""
        return validate_options(**{k: v for k, v in self.get_params(deep=False).items() if k != "engine"})

    def build_extractor(
        self, options: Any, *, expected: str | None = None, tuned: dict[str, Any] | None = None
    ) -> Extractor:
        """The featurize stage for ``options`` (this model's :class:`Options`, or a fallback's
        :class:`~transferlab.features.FeatureOptions`) on this classifier's engine; ``expected``: the weights'
        sha256 a saved model was trained with; ``tuned``: a saved fine-tuned model's tensors."""
        return Extractor(
            options, as_engine(self.engine), reporter=Reporter(options.verbose), expected_weights=expected, tuned=tuned
        )

    def featurize(self, sources: Sequence[Any], content_hashes: Sequence[str | None] | None = None) -> FeatureResult:
        """Feature rows for images (paths, bytes or PIL images): one per photo, or one per face."""
        if not hasattr(self, "extractor_"):
            self.extractor_ = self.build_extractor(self.options())
        return self.extractor_.extract(sources, content_hashes, label=self.extractor_.options.kind.unit)

    def read(self, data: Any, manifest: str | os.PathLike[str] | None = None) -> Intake:
        """Intake of a labelled folder or CSV, with this classifier's cache and progress settings."""
        from .intake import intake  # only jobs that read a folder pay for pandas and the perceptual hashes

        opts = self.options()
        cache = (opts.cache_dir or default_cache_dir()) if opts.use_cache else None
        return intake(data, cache_dir=cache, progress=Reporter(opts.verbose).wrap, manifest=manifest)

    # -- fitting ----------------------------------------------------------------------------------------------
    def fit(self, data: Any, labels: Sequence[Any] | None = None) -> Classifier:
        """Train on every usable image of ``data``: a folder with one subfolder per class, a CSV with
        ``path,label``, or a list of images (paths, bytes or PIL images) together with ``labels``."""
        if labels is None:
            table = self.read(data).table
            return self.fit_sources(table["path"].tolist(), table["label"].astype(str), table["content_hash"])
        if len(labels) != len(data):
            raise TransferlabError(f"{len(data)} images but {len(labels)} labels")
        return self.fit_sources(list(data), np.asarray(labels).astype(str))

    def fit_sources(
        self, sources: Sequence[Any], labels: Sequence[str], content_hashes: Sequence[str | None] | None = None
    ) -> Classifier:
        """Train on images and their labels.

        Besides the model, sets ``train_used_`` (indices of the images trained on), ``train_errors_`` (the others,
        ``{index: (reason, detail)}``), ``feature_stats_``, ``fit_seconds_`` (features, head), ``fit_stats_`` (what
        the kind's fit says of the training photos, e.g. the face choice) and ``meta_`` (what ``model.json`` says
        of them).
        """
        opts = self.options_ = self.options()
        kind = opts.kind
        self.extractor_ = self.build_extractor(opts)
        y = np.asarray(labels).astype(str)
        hashes = None if content_hashes is None else list(content_hashes)
        self.fit_seconds_ = {}
        if opts.finetune:
            t = time.perf_counter()
            self.finetune_ = kind.finetune(self.extractor_, opts, sources, hashes, y)
            self.extractor_.tuned = self.finetune_.state  # its features now come from the tuned network
            self.extractor_.backbone.tune(self.finetune_.state)
            self.fit_seconds_["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        res = self.featurize(sources, hashes)
        self.fit_seconds_["features"] = time.perf_counter() - t
        t = time.perf_counter()
        self.feature_stats_ = res.stats()
        errors = dict(res.errors)
        errors.update({i: ("no face", "no face found by the detector") for i in _without_rows(res)})
        used = np.array([i for i in range(len(y)) if i not in errors], dtype=int)
        if len(used) == 0:
            raise TransferlabError("no usable training images (all were skipped); see the intake report")
        self.head_ = kind.make_head(opts)
        bags, start = kind.bags(res, used)
        picked = kind.fit(
            self.head_, bags, start, y[used], engine=as_engine(self.engine), reporter=self.extractor_.reporter
        )
        self.classes_ = np.asarray(self.head_.classes_).astype(str)
        self.fit_seconds_["head"] = time.perf_counter() - t
        self.train_used_, self.train_errors_ = used, errors
        keys = [res.content_hashes[i] if res.content_hashes else None for i in used]
        self.gallery_ = Gallery(
            np.stack([b[p] for b, p in zip(bags, picked, strict=True)]),
            y[used],
            keys,
            gallery_paths(sources, used),
            kind.gallery_columns(res, used, start, picked),
        )
        self.training_hashes_ = sorted({h for h in keys if isinstance(h, str) and len(h) == 64})  # real photos only
        people.gallery_changed(self, skipped=dict(Counter(r for r, _ in errors.values())))
        if opts.fallback is not None:
            from .heads import LogRegHead

            fallback = model_state.Fallback(self.build_extractor(opts.features_of(opts.fallback)), LogRegHead())
            self.fallback_ = fallback.fit(sources, hashes, y)
        return self

    def gallery(self) -> Gallery:
        """The training photos the head was fitted on (:class:`~transferlab.gallery.Gallery`); a saved model's is
        read on first use (one line when it is missing or does not match its hash)."""
        self._check_fitted()
        return people.gallery_of(self)

    # -- prediction -------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise TransferlabError("this classifier is not trained yet; call fit() or load a saved model")

    def analyse(
        self,
        sources: Sequence[Any],
        hashes: Sequence[str | None] | None = None,
        *,
        threshold: float | None = None,
        explain: int = 0,
    ) -> list[Analysis]:
        """Per photo, the model's :class:`~transferlab.predictions.Analysis`: the answer's probabilities, every
        face, and whether the answer face is known under ``threshold`` (default: the calibrated one); with
        ``explain=k``, each answer's explanation with its ``k`` nearest training photos."""
        self._check_fitted()
        if explain:
            self.gallery()  # one line before any work when the model keeps none
        res = self.featurize(sources, hashes)
        out = [Analysis(error=res.errors.get(i)) for i in range(len(sources))]
        rows = [i for i, b in enumerate(res.bags) if b is not None and len(b)]
        for i, a in zip(rows, self.options_.kind.analyse(self.head_, res, rows, threshold), strict=True):
            out[i] = a
        empty = _without_rows(res)
        fallback = getattr(self, "fallback_", None)
        for i, p in zip(empty, _fallback_answers(fallback, empty, sources, hashes, self.classes_), strict=True):
            out[i] = Analysis(p, fallback=True) if p is not None else Analysis(error=("no face", "no face found"))
        if explain:
            people.explain(self, res, out, explain)
        return out

    def predict_images(
        self,
        images: Sequence[Any],
        names: Sequence[str] | None = None,
        *,
        unknown_threshold: float | None = None,
        explain: int = 0,
    ) -> list[Prediction]:
        """Predictions with probabilities, or an error message, for each image (paths, bytes or PIL images).

        For face models each prediction also lists every face (box, score, label) in ``faces``; faces whose
        similarity to their best class is below ``unknown_threshold`` (default: calibrated at training) are
        ``"unknown"``, and the same threshold picks the face that answers. ``explain=k`` adds each answer's
        :class:`~transferlab.predictions.Explanation` (its ``k`` nearest training photos, see :meth:`explain`).
        """
        images = list(images)
        if names is None:
            names = [str(x) if isinstance(x, str | os.PathLike) else f"<image {i}>" for i, x in enumerate(images)]
        analyses = self.analyse(images, threshold=unknown_threshold, explain=explain)
        threshold = unknown_threshold if unknown_threshold is not None else self.options_.kind.threshold(self.head_)
        classes = list(self.classes_)
        return [
            Prediction.from_analysis(n, a, classes, threshold=threshold) for n, a in zip(names, analyses, strict=True)
        ]

    def explain(self, images: Sequence[Any], k: int = 5) -> list[Prediction]:
        """Predictions that say why: per answer the ``k`` nearest training photos (label, similarity, path), the
        similarity to each class (a face model: its nearest prototype), the margin to the ``unknown`` threshold and
        which face answered (``Prediction.explanation``)."""
        if k < 1:
            raise TransferlabError(f"explain: k={k}; ask for at least one nearest training photo")
        return self.predict_images(images, explain=k)

    # -- people: the model changes without the training folder ------------------------------------------------
    def enroll(
        self,
        name: str,
        images: Sequence[Any],
        content_hashes: Sequence[str | None] | None = None,
        paths: Sequence[str] | None = None,
    ) -> people.Change:
        """Add photos of ``name``, new or known, and refit on the gallery plus them; ``paths`` name them in the
        gallery. Returns a :class:`~transferlab.people.Change`; see :func:`transferlab.people.enroll`."""
        self._check_fitted()
        return people.enroll(self, name, list(images), content_hashes, paths, engine=as_engine(self.engine))

    def forget(self, name: str | None = None, *, content_hashes: Sequence[str] = ()) -> people.Change:
        """Remove a person or photos (by content hash) from the gallery and refit on the rest (see
        :func:`transferlab.people.forget`; :func:`transferlab.forget_model` also purges the cache)."""
        self._check_fitted()
        if name is None and not content_hashes:
            raise TransferlabError("forget: name a person or give photos")
        return people.forget(self, name, content_hashes, engine=as_engine(self.engine))

    def predict_proba(self, images: Sequence[Any]) -> np.ndarray:
        """Class probabilities per image (columns in ``classes_`` order); NaN rows for unusable images."""
        analyses = self.analyse(list(images))
        nan = np.full(len(self.classes_), np.nan)
        return np.stack([a.proba if a.proba is not None else nan for a in analyses]) if analyses else nan[None, :0]

    def predict(self, images: Sequence[Any]) -> np.ndarray:
        """Predicted label per image (``None`` for unusable images, ``"unknown"`` for unknown faces)."""
        return np.array([p.label for p in self.predict_images(images)], dtype=object)

    def score(self, images: Sequence[Any], labels: Sequence[str]) -> float:
        """Accuracy on labelled images (scikit-learn's ``score``)."""
        return float(np.mean(self.predict(images) == np.asarray(labels).astype(str)))

    # -- evaluation -------------------------------------------------------------------------------------------
    def evaluate(
        self, data: Any, *, manifest: str | os.PathLike[str] | None = None, group_by: str | None = None
    ) -> Metrics:
        """Evaluate on every usable image of a labelled folder or CSV (``to_dict()``: the ``evaluate --json``
        object)."""
        got = self.read(data, manifest)
        metrics, _ = self.evaluate_table(got.table, group_by=group_by, skipped=got.report.skipped_counts())
        # files the intake could not read (a duplicate was read: its first copy is evaluated)
        metrics = metrics.unread([(s.path, s.reason) for s in got.report.skipped if s.reason != "duplicate"])
        return metrics.counted(found=sum(got.report.found.values()), used=metrics.n)  # found = used + skipped

    def evaluate_table(
        self, table: pd.DataFrame, *, group_by: str | None = None, skipped: dict[str, int] | None = None
    ) -> tuple[Metrics, dict[str, Any]]:
        """Metrics on intake-table rows, and ``{"rows", "proba", "answers"}`` of the answered rows for reports."""
        self._check_fitted()
        table, skipped = rows_to_evaluate(table, self.classes_, group_by, skipped)
        analyses = self.analyse(table["path"].tolist(), table["content_hash"].tolist())
        return evaluate_analyses(
            table,
            analyses,
            list(self.classes_),
            group_by=group_by,
            skipped=skipped,
            training_hashes=set(getattr(self, "training_hashes_", ())),
        )

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str], *, replace: bool = False) -> Path:
        """Write the model directory (``model.json`` + ``head.safetensors``); ``replace``: switch a model already
        there to this one in one atomic step (a crash leaves the old model or this one, never a mix)."""
        self._check_fitted()
        meta, arrays = model_state.describe(self)
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        meta = {"transferlab_version": __version__, "created": created, **meta}
        return model_state.save(path, meta, arrays, replace=replace)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Classifier:
        """Load a saved model directory (JSON + safetensors only; nothing is unpickled).

        ``kwargs`` override options chosen per run, such as ``weights``, ``cache_dir``, ``device``, ``verbose`` or
        ``engine``.
        """
        return model_state.restore(cls, path, **kwargs)  # type: ignore[no-any-return]


def _fallback_answers(
    fallback: Any, rows: list[int], sources: Sequence[Any], hashes: Sequence[str | None] | None, classes: Any
) -> list[Any]:
    """The whole-image fallback's probabilities for photos without a feature row (None each without one)."""
    if fallback is None or not rows:
        return [None] * len(rows)
    return fallback.proba([sources[i] for i in rows], None if hashes is None else [hashes[i] for i in rows], classes)


def _without_rows(res: FeatureResult) -> list[int]:
    """Images that were read but have no feature row: face photos in which no face was found."""
    return [i for i, b in enumerate(res.bags) if b is not None and not len(b)]


def load(path: str | os.PathLike[str], **kwargs: Any) -> Classifier:
    """Load a model directory saved by :meth:`Classifier.save` (see :meth:`Classifier.load`)."""
    return Classifier.load(path, **kwargs)
