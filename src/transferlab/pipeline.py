"""The pipeline: :class:`Classifier`, an extractor (backbone + decoding + cache), a head and an engine, composed.

Whole-image backbones give one feature row per photo and the head classifies it. Face backbones give a bag of face
rows per photo; the head is wrapped in a :class:`~transferlab.facebag.FaceBagClassifier` (which face carries the
label, which face answers, who is a stranger), and photos without a face are answered by an optional whole-image
:class:`~transferlab.model_state.Fallback`, or not at all. ``Classifier`` follows scikit-learn's estimator rules:
``__init__`` only stores its parameters (``get_params``, ``clone``); ``fit`` validates them once and learns the
``*_`` attributes.
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator
from sklearn.linear_model import LogisticRegression

from . import model_state
from ._progress import Reporter
from ._version import __version__
from .backbones import face_areas, get_backbone_cfg
from .cache import default_cache_dir
from .errors import TransferlabError
from .evaluate import evaluate_analyses, rows_to_evaluate, seen_in_training
from .facebag import FaceBagClassifier
from .features import Extractor, FeatureResult
from .finetune import FinetuneResult, finetune
from .finetune_faces import finetune_face_embedder
from .heads import LogRegHead, MLPHead
from .intake import Intake, intake
from .options import DEFAULT_BACKBONE, Options, validate_options
from .predictions import Analysis, FaceFinding, Prediction

# Which model makes the multiple-instance face choice. Measured on the bundled data (10 seeds, 75/25 splits, logreg
# head; BENCHMARKS.md): this regularised logistic regression on the raw embeddings held out 0.989; the configured
# head choosing in sample 0.986 (it confirms its own first choices); the configured head out of fold 0.990, within
# noise of this one. So the choice stays with this model and the figures stay as they were; FaceBagClassifier takes
# any other (``choice_estimator``, ``choice_folds``).
MIL_CHOICE: dict[str, Any] = {"choice_estimator": LogisticRegression(C=1.0, max_iter=2000), "choice_folds": None}
# The open-set rule (benchmarks/accuracy.py, BENCHMARKS.md): similarity to the nearest of up to 4 prototypes of the
# predicted class, the threshold calibrated by 5-fold cross-validation (keep 98% of known people's faces, admit 1% of
# other classes' faces) and shrunk towards the embedder's own same-person similarity as if that were 20 faces.
OPEN_SET: dict[str, Any] = {"prototypes": 4, "keep": 0.98, "admit_others": 0.01}


class Classifier(BaseEstimator):
    """A frozen pretrained backbone with a small trainable head.

    Parameters are those of :class:`transferlab.options.Options` (backbone, head, pool, head_params, weights,
    download, cache_dir, use_cache, batch_size, num_workers, face_choice, fallback, verbose, device, runtime,
    recipe, finetune, finetune_params), and
    ``engine``: where the featurize stage runs, None (this process) or an engine from
    :func:`transferlab.engines.get_engine` (e.g. Spark). Features and answers are the same either way.

    Examples
    --------
    >>> clf = Classifier(backbone="mobilenet_v2", head="logreg")   # doctest: +SKIP
    >>> clf.fit("data/presidents").predict(["photo.jpg"])           # doctest: +SKIP
    array(['obama'], dtype=object)
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        head: str = "logreg",
        *,
        pool: str = "avg",
        head_params: dict[str, Any] | None = None,
        weights: str | os.PathLike[str] | None = None,
        download: bool = False,
        cache_dir: str | os.PathLike[str] | None = None,
        use_cache: bool = True,
        batch_size: int | None = None,
        num_workers: int | None = None,
        face_choice: str = "mil",
        fallback: str | None = None,
        verbose: bool = False,
        device: str = "auto",
        runtime: str = "torch",
        recipe: str | None = None,
        finetune: int = 0,
        finetune_params: dict[str, Any] | None = None,
        engine: Any = None,
    ) -> None:
        self.backbone = backbone
        self.head = head
        self.pool = pool
        self.head_params = head_params
        self.weights = weights
        self.download = download
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.face_choice = face_choice
        self.fallback = fallback
        self.verbose = verbose
        self.device = device
        self.runtime = runtime
        self.recipe = recipe
        self.finetune = finetune
        self.finetune_params = finetune_params
        self.engine = engine

    @classmethod
    def from_options(cls, options: Options, engine: Any = None) -> Classifier:
        """A classifier with already validated options."""
        return cls(**{k: getattr(v, "value", v) for k, v in options.model_dump().items()}, engine=engine)

    def options(self) -> Options:
        """These parameters, validated (one line naming the parameter when one is wrong)."""
        return validate_options(**{k: v for k, v in self.get_params(deep=False).items() if k != "engine"})

    @property
    def is_face_model(self) -> bool:
        """True when the backbone embeds detected faces rather than whole images."""
        return self.options().embeds_faces

    def build_extractor(
        self, opts: Options, backbone: str | None = None, expected: str | None = None, tuned: Any = None
    ) -> Extractor:
        """The featurize stage for these options (or for another backbone: the fallback's); ``tuned``: the
        fine-tuned tensors of a saved fine-tuned model."""
        return make_extractor(opts, self.engine, backbone, expected, tuned)

    def featurize(self, sources: Sequence[Any], content_hashes: Sequence[str | None] | None = None) -> FeatureResult:
        """Feature rows for images (paths, bytes or PIL images): one per photo, or one per face."""
        if not hasattr(self, "extractor_"):
            self.extractor_ = self.build_extractor(self.options())
        return self.extractor_.extract(sources, content_hashes, label="faces" if self.is_face_model else "features")

    def read(self, data: Any, manifest: str | os.PathLike[str] | None = None) -> Intake:
        """Intake of a labelled folder or CSV, with this classifier's cache and progress settings."""
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
        ``{index: (reason, detail)}``), ``feature_stats_``, ``fit_seconds_`` (features, head) and ``meta_`` (what
        ``model.json`` says of them).
        """
        opts = self.options_ = self.options()
        self.extractor_ = self.build_extractor(opts)
        y = np.asarray(labels).astype(str)
        hashes = None if content_hashes is None else list(content_hashes)
        self.fit_seconds_ = {}
        if opts.finetune:
            t = time.perf_counter()
            self.finetune_ = _finetune(self.extractor_, opts, sources, hashes, y)
            self.fit_seconds_["finetune"] = time.perf_counter() - t
        t = time.perf_counter()
        res = self.featurize(sources, hashes)
        self.fit_seconds_["features"] = time.perf_counter() - t
        t = time.perf_counter()
        self.feature_stats_ = res.stats()
        errors = dict(res.errors)
        errors.update({i: ("no face", "no face found by the detector") for i in _faceless(res)})
        used = np.array([i for i in range(len(y)) if i not in errors], dtype=int)
        if len(used) == 0:
            raise TransferlabError("no usable training images (all were skipped); see the intake report")
        if opts.embeds_faces:
            bags, start = _face_bags(self.extractor_.backbone, res, used)
            self.head_ = _face_head(opts)
            _fit_head(self.head_, bags, y[used], self.engine, self.head, self.extractor_.reporter, start=start)
            self.face_stats_ = _face_stats(self.head_.choice_stats_)
        else:
            self.head_ = opts.make_head()
            _fit_head(self.head_, res.features[used], y[used], self.engine, self.head, self.extractor_.reporter)
        self.classes_ = np.asarray(self.head_.classes_).astype(str)
        self.fit_seconds_["head"] = time.perf_counter() - t
        self.train_used_, self.train_errors_ = used, errors
        known = (res.content_hashes[i] for i in used) if res.content_hashes else ()
        self.training_hashes_ = sorted({h for h in known if isinstance(h, str) and len(h) == 64})  # real photos only
        skipped = dict(Counter(r for r, _ in errors.values()))
        per_class = {str(k): int(v) for k, v in Counter(y[used]).items()}
        self.meta_ = {"training_data": {"n_images": len(used), "per_class": per_class, "skipped": skipped}}
        if opts.fallback is not None:
            fallback = model_state.Fallback(self.build_extractor(opts, opts.fallback), LogRegHead())
            self.fallback_ = fallback.fit(sources, hashes, y)
        return self

    # -- prediction -------------------------------------------------------------------------------------------
    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise TransferlabError("this classifier is not trained yet; call fit() or load a saved model")

    def analyse(
        self, sources: Sequence[Any], hashes: Sequence[str | None] | None = None, *, threshold: float | None = None
    ) -> list[Analysis]:
        """Per photo, the model's :class:`~transferlab.predictions.Analysis`: the answer's probabilities, every
        face, and whether the answer face is known under ``threshold`` (default: the calibrated one)."""
        self._check_fitted()
        res = self.featurize(sources, hashes)
        out = [Analysis(error=res.errors.get(i)) for i in range(len(sources))]
        ok = [i for i, b in enumerate(res.bags) if b is not None and len(b)]
        if not isinstance(self.head_, FaceBagClassifier):
            for i, p in zip(ok, self.head_.predict_proba(res.features[ok]) if ok else [], strict=True):
                out[i].proba = p
            return out
        bags, start = _face_bags(self.extractor_.backbone, res, ok)
        for i, bag in zip(ok, self.head_.analyse(bags, start=start, threshold=threshold), strict=True):
            rows = res.bags[i]
            faces = [FaceFinding.from_row(r, bag.proba[k], bag.similarity[k], bag.known[k]) for k, r in enumerate(rows)]
            out[i] = Analysis(bag.proba[bag.answer], faces=faces, answer=bag.answer, known=bool(bag.known[bag.answer]))
        no_face = _faceless(res)
        fallback = getattr(self, "fallback_", None)
        for i, p in zip(no_face, _fallback_answers(fallback, no_face, sources, hashes, self.classes_), strict=True):
            out[i] = Analysis(p, fallback=True) if p is not None else Analysis(error=("no face", "no face found"))
        return out

    def predict_images(
        self, images: Sequence[Any], names: Sequence[str] | None = None, *, unknown_threshold: float | None = None
    ) -> list[Prediction]:
        """Predictions with probabilities, or an error message, for each image (paths, bytes or PIL images).

        For face models each prediction also lists every face (box, score, label) in ``faces``; faces whose
        similarity to their best class is below ``unknown_threshold`` (default: calibrated at training) are
        ``"unknown"``, and the same threshold picks the face that answers.
        """
        images = list(images)
        if names is None:
            names = [str(x) if isinstance(x, str | os.PathLike) else f"<image {i}>" for i, x in enumerate(images)]
        analyses = self.analyse(images, threshold=unknown_threshold)
        return [Prediction.from_analysis(n, a, list(self.classes_)) for n, a in zip(names, analyses, strict=True)]

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
    ) -> dict[str, Any]:
        """Evaluate on every usable image of a labelled folder or CSV; the ``evaluate --json`` object."""
        got = self.read(data, manifest)
        metrics, _ = self.evaluate_table(got.table, group_by=group_by, skipped=got.report.skipped_counts())
        metrics["found"] = sum(got.report.found.values())  # found = used + skipped by reason
        metrics["used"] = metrics["n"]
        return metrics

    def evaluate_table(
        self, table: pd.DataFrame, *, group_by: str | None = None, skipped: dict[str, int] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Metrics on intake-table rows, and ``{"rows", "proba"}`` of the answered rows for reports."""
        self._check_fitted()
        table, skipped = rows_to_evaluate(table, self.classes_, group_by, skipped)
        analyses = self.analyse(table["path"].tolist(), table["content_hash"].tolist())
        metrics, detail = evaluate_analyses(table, analyses, list(self.classes_), group_by=group_by, skipped=skipped)
        if getattr(self, "training_hashes_", None):
            metrics.update(seen_in_training(table, detail, set(self.training_hashes_)))
        return metrics, detail

    # -- persistence ------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model directory (``model.json`` + ``head.safetensors``)."""
        self._check_fitted()
        meta, arrays = model_state.describe(self)
        created = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
        return model_state.save(path, {"transferlab_version": __version__, "created": created, **meta}, arrays)

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Classifier:
        """Load a saved model directory (JSON + safetensors only; nothing is unpickled).

        ``kwargs`` override runtime options such as ``weights``, ``cache_dir``, ``device`` or ``verbose``.
        """
        return model_state.restore(cls, path, **kwargs)  # type: ignore[no-any-return]


def make_extractor(
    opts: Options, engine: Any, backbone: str | None = None, expected: str | None = None, tuned: Any = None
) -> Extractor:
    """The featurize stage for ``opts`` on ``engine`` (or for another backbone, without ``opts.weights``)."""
    if isinstance(engine, str) and engine != "local":
        raise TransferlabError(f"engine {engine!r}: pass transferlab.engines.get_engine({engine!r})")
    return Extractor(
        backbone or opts.backbone,
        pool=opts.pool.value,
        weights=opts.weights if backbone is None else None,
        download=opts.download,
        device=opts.device,
        runtime=opts.runtime.value,
        cache_dir=opts.cache_dir,
        use_cache=opts.use_cache,
        batch_size=opts.batch_size,
        num_workers=opts.num_workers,
        engine=None if isinstance(engine, str) else engine,
        reporter=Reporter(opts.verbose),
        expected_weights=expected,
        tuned=tuned,
        recipe=opts.recipe_name,
    )


def _fit_head(head: Any, X: Any, y: np.ndarray, engine: Any, name: str, reporter: Reporter, **params: Any) -> None:
    """Fit a head: with Spark ML when the engine takes it, with a progress bar for the MLP, else plainly."""
    inner = head.estimator if isinstance(head, FaceBagClassifier) else head
    fit_head = getattr(engine, "fit_head", None)
    if fit_head is not None and head is inner and fit_head(head, X, y):
        reporter.info(f"trained {name} head with Spark ML on {len(X)} images")  # over the engine's limit
    elif isinstance(inner, MLPHead):
        with reporter.task("head", inner.epochs) as advance:
            head.fit(X, y, progress=advance, **params)
    else:
        reporter.info(f"training {name} head on {len(X)} images")
        head.fit(X, y, **params)


def _face_bags(backbone: Any, res: FeatureResult, indices: Sequence[int]) -> tuple[list[np.ndarray], list[int]]:
    """The embeddings of each photo's faces, and the index of its largest face."""
    bags = [res.bags[i] for i in indices]
    return [b[:, : backbone.embedding_dim] for b in bags], [int(np.argmax(face_areas(b))) for b in bags]


def _face_head(opts: Options) -> FaceBagClassifier:
    """The configured head in a face bag, with the MIL choice and the open-set rule (see the constants above)."""
    rule = {"threshold_prior": get_backbone_cfg(opts.backbone).extra.get("same_person_cosine"), **OPEN_SET}
    return FaceBagClassifier(opts.make_head(), face_choice=opts.face_choice.value, **rule, **MIL_CHOICE)


def _face_stats(stats: dict[str, int]) -> dict[str, int]:
    """``model.json``'s names for the face choice's statistics."""
    return {
        "images_with_faces": stats["bags"],
        "images_with_several_faces": stats["bags_with_several_faces"],
        "several_faces_not_largest_chosen": stats["several_faces_not_start_chosen"],
    }


def _finetune(
    extractor: Extractor, opts: Options, sources: Sequence[Any], hashes: list[str | None] | None, y: np.ndarray
) -> FinetuneResult:
    """Fine-tune the extractor's backbone on the training photos; its features then come from the tuned network.

    A face backbone's embedder trains on the face that carries each photo's label, chosen by the frozen model's
    multiple-instance step."""
    if opts.embeds_faces:
        res = extractor.extract(sources, hashes, label="faces")
        used = [i for i in range(len(sources)) if i not in res.errors and len(res.bags[i])]
        if not used:
            raise TransferlabError("fine-tuning: no training photo has a detected face")
        bags, start = _face_bags(extractor.backbone, res, used)
        chosen = _face_head(opts).fit(bags, y[used], start=start).chosen_
        result = finetune_face_embedder(
            extractor.backbone,
            [sources[i] for i in used],
            [res.bags[i][c] for i, c in zip(used, chosen, strict=True)],
            y[used],
            opts.finetune_config(),
            reporter=extractor.reporter,
        )
    else:
        result = finetune(
            extractor.backbone,
            sources,
            hashes,
            y,
            opts.finetune_config(),
            cache_dir=opts.cache_dir,
            use_cache=opts.use_cache,
            batch_size=opts.batch_size,
            num_workers=opts.num_workers,
            reporter=extractor.reporter,
        )
    extractor.tuned = result.state
    extractor.backbone.tune(result.state)
    return result


def _fallback_answers(
    fallback: Any, rows: list[int], sources: Sequence[Any], hashes: Sequence[str | None] | None, classes: Any
) -> list[Any]:
    """The whole-image fallback's probabilities for photos without a face (None each without a fallback)."""
    if fallback is None or not rows:
        return [None] * len(rows)
    return fallback.proba([sources[i] for i in rows], None if hashes is None else [hashes[i] for i in rows], classes)


def _faceless(res: FeatureResult) -> list[int]:
    """Images that were read but have no feature row: face photos in which no face was found."""
    return [i for i, b in enumerate(res.bags) if b is not None and not len(b)]


def load(path: str | os.PathLike[str], **kwargs: Any) -> Classifier:
    """Load a model directory saved by :meth:`Classifier.save` (see :meth:`Classifier.load`)."""
    return Classifier.load(path, **kwargs)
