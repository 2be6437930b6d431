"""Python API: ``Classifier`` (fit / predict / evaluate / save) and ``train`` (the whole train-and-report job).

The CLI only wraps these. Example::

    >>> import transferlab                                                      # doctest: +SKIP
    >>> clf = transferlab.Classifier(backbone="mobilenet_v2", head="logreg")    # doctest: +SKIP
    >>> clf.fit("photos/")                                                      # doctest: +SKIP
    >>> clf.predict(["a.jpg"])                                                  # doctest: +SKIP
    >>> clf.save("model/"); clf = transferlab.load("model/")                    # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from . import __version__
from ._atomic import atomic_write_text
from ._progress import Reporter
from .errors import TransferlabError
from .intake import Intake, attach_manifest, intake

DEFAULT_BACKBONE = "sface"
DEFAULT_HEAD = "logreg"


@dataclass
class Prediction:
    """One prediction for one input: a label and probabilities, or an error."""

    path: str
    label: str | None = None
    probabilities: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    box: list[float] | None = None
    face_score: float | None = None
    faces: list[dict[str, Any]] = field(default_factory=list)
    fallback: bool = False
    reason: str | None = None  # the skip reason alone (e.g. "truncated") when ``error`` is set

    def to_dict(self, top_k: int | None = None) -> dict[str, Any]:
        """The ``predict --json`` line for this input (face models add ``box`` and ``face_score``)."""
        if self.error is not None:
            return {"path": self.path, "error": self.error}
        out = {"path": self.path, "label": self.label, "probabilities": _top(self.probabilities, top_k)}
        if self.box is not None:
            out.update(box=self.box, face_score=self.face_score, n_faces=len(self.faces))
        if self.fallback:
            out.update(n_faces=0, fallback=True)
        return out

    def face_dicts(self, top_k: int | None = None) -> list[dict[str, Any]]:
        """One ``predict --faces all`` line per face (a single line without faces or on error)."""
        if self.error is not None or not self.faces:
            return [self.to_dict(top_k)]
        return [
            {
                "path": self.path,
                "face": k,
                "label": f["label"],
                "probabilities": _top(f["probabilities"], top_k),
                "box": f["box"],
                "face_score": f["face_score"],
            }
            for k, f in enumerate(self.faces)
        ]


def _as_sequence(items: Any) -> Sequence[Any]:
    """Indexable view of ``items`` without materialising lazy sequences (augmented copies decode on access)."""
    return items if isinstance(items, Sequence) else list(items)


def _top(probabilities: dict[str, float], top_k: int | None) -> dict[str, float]:
    probs = sorted(probabilities.items(), key=lambda kv: -kv[1])
    return {k: round(v, 6) for k, v in (probs[:top_k] if top_k is not None else probs)}


class Classifier:
    """A frozen pretrained backbone with a small trainable head.

    Parameters
    ----------
    backbone
        Registered backbone name (``transferlab backbones`` lists them).
    head
        ``"logreg"``, ``"svm"`` or ``"mlp"`` (the seed's head).
    pool
        ``"avg"``: global-average-pooled features; ``"flatten"``: the flattened feature map (the seed's input).
    head_params
        Keyword arguments for the head (e.g. ``{"epochs": 30}`` for ``mlp``).
    weights
        Local weights file for the backbone (needed offline for vgg16/resnet50/inception_v3).
    download
        Allow downloading hub weights.
    cache_dir, use_cache
        Feature cache location (default: the user's cache directory) and whether to use it.
    batch_size, num_workers
        Featurization batch size (None: 32 on the CPU, sized from free memory on a GPU) and decoding processes.
    face_choice
        Face backbones only: ``"mil"`` picks the face that carries the label in training and the most confident
        known face in prediction; ``"largest"`` always uses the largest face (the simple baseline).
    fallback
        Face backbones only: a whole-image backbone whose logistic-regression head answers for photos in which no
        face is found (otherwise they get "no face found").
    engine
        Where the featurize stage runs: ``None``/``"local"`` (this process) or an engine from
        :func:`transferlab.engines.get_engine` (e.g. Spark). Features and answers are the same either way.
    verbose
        Show progress bars and status lines on stderr.
    device
        Where whole-image backbones run: ``"auto"`` (a CUDA GPU when torch sees one, else the CPU), ``"cpu"``,
        ``"cuda"`` or ``"cuda:N"``. On a GPU: bf16 autocast, channels-last, JPEGs decoded by nvJPEG in batches.
    runtime
        ``"torch"`` or ``"onnxruntime"`` (CPU only: the network exported once to ONNX, ~1.3× torch here;
        the same features within 1e-5, so both share the cache).

    Examples
    --------
    >>> clf = Classifier(backbone="mobilenet_v2", head="logreg")   # doctest: +SKIP
    >>> clf.fit("data/presidents").predict(["photo.jpg"])           # doctest: +SKIP
    array(['obama'], dtype='<U7')
    """

    def __init__(
        self,
        backbone: str = DEFAULT_BACKBONE,
        head: str = DEFAULT_HEAD,
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
        engine: Any = None,
    ) -> None:
        from ._runtime import check_device
        from .backbones import get_backbone_cfg
        from .engines import get_engine
        from .heads import make_head

        if pool not in ("avg", "flatten"):
            raise TransferlabError(f"pool {pool!r}: choose 'avg' or 'flatten'")
        check_device(device)
        if runtime not in ("torch", "onnxruntime"):
            raise TransferlabError(f"--runtime {runtime}: choose torch or onnxruntime")
        if batch_size is not None and batch_size < 1:
            raise TransferlabError(f"batch size {batch_size}: must be at least 1")
        get_backbone_cfg(backbone)  # validate early, with the list of choices
        self.backbone = backbone
        self.head = head
        self.pool = pool
        self.head_params = dict(head_params or {})
        self.weights = weights
        self.download = download
        self.cache_dir = cache_dir
        self.use_cache = use_cache
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.device = device
        self.runtime = runtime
        if face_choice not in ("mil", "largest"):
            raise TransferlabError(f"face choice {face_choice!r}: choose 'mil' or 'largest'")
        self.face_choice = face_choice
        if fallback is not None:
            if get_backbone_cfg(backbone).family != "face":
                raise TransferlabError(f"--fallback applies to face backbones only, not {backbone!r}")
            if get_backbone_cfg(fallback).family == "face":
                raise TransferlabError(f"--fallback {fallback}: must be a whole-image backbone, e.g. mobilenet_v2")
        self.fallback = fallback
        self.verbose = verbose
        self.engine = get_engine(engine or "local") if engine is None or isinstance(engine, str) else engine
        self.head_ = make_head(head, **self.head_params)
        self._backbone: Any = None
        self._reporter = Reporter(verbose)
        self.last_feature_stats: dict[str, int] = {}
        self.meta_: dict[str, Any] = {}

    # -- stages -------------------------------------------------------------------------------------------------
    def backbone_(self) -> Any:
        """The built backbone (created on first use)."""
        if self._backbone is None:
            from .backbones import create_backbone

            bb = create_backbone(self.backbone, weights=self.weights, download=self.download)
            if bb.cfg.family != "face":  # face detectors and embedders run on the CPU (OpenCV, dlib)
                from ._runtime import resolve_device

                bb.to(resolve_device(self.device))
                if self.runtime == "onnxruntime":
                    from .cache import default_cache_dir

                    bb.use_onnxruntime(Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir())
            expected = getattr(self, "_expected_weights", None)
            if expected and bb.weights_hash != expected:
                raise TransferlabError(
                    f"the {self.backbone} weights here ({bb.weights_file}, sha256 {bb.weights_hash[:12]}) differ from "
                    f"those the model was trained with ({expected[:12]}); pass the original file with --weights"
                )
            self._backbone = bb
        return self._backbone

    def featurize(self, sources: Sequence[Any], content_hashes: Sequence[str | None] | None = None) -> Any:
        """Features for images (paths, bytes or PIL images); returns a :class:`~transferlab.features.FeatureResult`."""
        from .features import open_cache

        bb = self.backbone_()
        cache = open_cache(bb, self.pool, self.cache_dir, self.use_cache)
        with self._reporter.task("features", len(sources)) as advance:
            res = self.engine.featurize(
                sources,
                bb,
                pool=self.pool,
                content_hashes=content_hashes,
                cache=cache,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                progress=advance,
            )
        self.last_feature_stats = {"cached": res.n_cached, "computed": res.n_computed, "failed": len(res.errors)}
        return res

    def _intake(self, data: Any, manifest: Any = None) -> Intake:
        from .cache import default_cache_dir

        cache_root = None
        if self.use_cache:
            cache_root = Path(self.cache_dir) if self.cache_dir is not None else default_cache_dir()
        got = intake(data, cache_dir=cache_root, progress=self._reporter.wrap)
        if manifest is not None:
            got.table = attach_manifest(got.table, manifest, got.root)
        return got

    # -- estimator API ------------------------------------------------------------------------------------------
    @property
    def is_face_model(self) -> bool:
        """True when the backbone embeds detected faces rather than whole images."""
        from .backbones import get_backbone_cfg

        return get_backbone_cfg(self.backbone).family == "face"

    def featurize_faces(self, sources: Sequence[Any], content_hashes: Sequence[str | None] | None = None) -> Any:
        """Face rows per image (see :mod:`transferlab.faces`), cached like any feature."""
        from .features import open_cache

        bb = self.backbone_()
        cache = open_cache(bb, "faces", self.cache_dir, self.use_cache)
        with self._reporter.task("faces", len(sources)) as advance:
            res = self.engine.featurize(
                sources,
                bb,
                pool="faces",
                content_hashes=content_hashes,
                cache=cache,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                progress=advance,
            )
        self.last_feature_stats = {"cached": res.n_cached, "computed": res.n_computed, "failed": len(res.errors)}
        return res

    # -- the two primitives every path goes through -------------------------------------------------------------
    def _train_matrix(
        self, sources: Sequence[Any], hashes: Sequence[str | None] | None, labels: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[int, tuple[str, str]]]:
        """Training features: one row per usable image, the row indices used, and errors for the others.

        Face models choose, per image, the face that carries its label (:func:`transferlab.faces.choose_faces`).
        """
        if not self.is_face_model:
            res = self.featurize(_as_sequence(sources), hashes)
            ok = np.flatnonzero(res.ok)
            return res.features[ok], ok, dict(res.errors)
        from .faces import choose_faces, face_areas

        res = self.featurize_faces(_as_sequence(sources), hashes)
        errors = dict(res.errors)
        for i, rows in enumerate(res.faces):
            if rows is not None and len(rows) == 0:
                errors[i] = ("no face", "no face found by the detector")
        ok = np.array([i for i in range(len(sources)) if i not in errors], dtype=int)
        sets = [res.faces[i] for i in ok]
        dim = self.backbone_().cfg.feature_shape[0]
        iterations = 3 if self.face_choice == "mil" else 0
        chosen = choose_faces(sets, np.asarray(labels)[ok], dim, iterations=iterations) if len(ok) else np.zeros(0, int)
        self.face_stats_ = {
            "images_with_faces": len(ok),
            "images_with_several_faces": int(sum(len(f) > 1 for f in sets)),
            "several_faces_not_largest_chosen": int(
                sum(len(f) > 1 and c != int(np.argmax(face_areas(f))) for f, c in zip(sets, chosen, strict=True))
            ),
        }
        X = np.stack([f[c, :dim] for f, c in zip(sets, chosen, strict=True)]) if len(ok) else np.zeros((0, dim))
        return X.astype(np.float32), ok, errors

    def _analyse(self, sources: Sequence[Any], hashes: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """Per image: ``{"proba"}`` of the answer (and ``"faces"`` for face models) or ``{"error"}``.

        Face models answer with the face that most confidently matches a known class; each face carries its own
        probabilities, its similarity to the predicted class and whether it clears the unknown threshold.
        """
        self._check_fitted()
        out: list[dict[str, Any]] = []
        if not self.is_face_model:
            res = self.featurize(_as_sequence(sources), hashes)
            ok = res.ok
            proba = self.head_.predict_proba(res.features[ok]) if ok.any() else None
            rows = iter(range(int(ok.sum())))
            for i in range(len(sources)):
                if i in res.errors:
                    out.append({"error": res.errors[i]})
                else:
                    out.append({"proba": proba[next(rows)]})
            return out
        from .faces import BOX, LANDMARKS, SCORE, face_areas

        res = self.featurize_faces(_as_sequence(sources), hashes)
        dim = self.backbone_().cfg.feature_shape[0]
        for i, rows in enumerate(res.faces):
            if i in res.errors:
                out.append({"error": res.errors[i]})
                continue
            if rows is None or len(rows) == 0:
                out.append({"error": ("no face", "no face found"), "no_face": True})
                continue
            emb = rows[:, :dim]
            proba = self.head_.predict_proba(emb)
            best = np.argmax(proba, axis=1)
            sims = np.sum(emb * self.centroids_[best], axis=1)
            known = sims >= self.unknown_threshold_
            faces = [
                {
                    "box": [round(float(v), 1) for v in rows[k, BOX]],
                    "landmarks": rows[k, LANDMARKS].reshape(5, 2).round(1).tolist(),
                    "face_score": round(float(rows[k, SCORE]), 4),
                    "proba": proba[k],
                    "similarity": float(sims[k]),
                    "known": bool(known[k]),
                }
                for k in range(len(rows))
            ]
            # The answer: among faces that clear the threshold, the most confident; else the closest to a class.
            conf = np.where(known, proba.max(axis=1), -1.0 + sims)
            answer = int(np.argmax(conf)) if self.face_choice == "mil" else int(np.argmax(face_areas(rows)))
            out.append({"proba": proba[answer], "faces": faces, "answer": answer, "known": bool(known[answer])})
        no_face = [i for i, r in enumerate(out) if r.get("no_face")]
        fallback = getattr(self, "fallback_", None)
        if fallback is not None and no_face:
            hs = [hashes[i] for i in no_face] if hashes is not None else None
            for i, r in zip(no_face, fallback._analyse([sources[i] for i in no_face], hs), strict=True):
                if "proba" in r:
                    # Align the fallback's classes with ours (a class can lack faces entirely).
                    col = {c: k for k, c in enumerate(fallback.classes_)}
                    p = np.array([r["proba"][col[c]] if c in col else 0.0 for c in self.classes_])
                    out[i] = {"proba": p / max(p.sum(), 1e-12), "fallback": True, "known": True}
        return out

    # -- estimator API ------------------------------------------------------------------------------------------
    def fit(self, data: Any, labels: Sequence[str] | None = None) -> Classifier:
        """Train the head on every usable image of ``data``.

        Parameters
        ----------
        data
            A folder with one subfolder per class, a CSV with ``path,label``, or a list of images (paths, bytes
            or PIL images) together with ``labels``.
        labels
            Labels for a list of images.

        Returns
        -------
        Classifier
            self, fitted.
        """
        if labels is not None:
            if len(labels) != len(data):
                raise TransferlabError(f"{len(data)} images but {len(labels)} labels")
            y = np.asarray(labels).astype(str)
            X, ok, _ = self._train_matrix(list(data), None, y)
            self._fit_arrays(X, y[ok])
            self._fit_fallback(list(data), None, y)
            return self
        got = self._intake(data)
        return self.fit_table(got.table)

    def fit_table(self, table: pd.DataFrame) -> Classifier:
        """Train on rows of an intake table (``path``, ``label``, ``content_hash``)."""
        y = table["label"].to_numpy().astype(str)
        X, ok, errors = self._train_matrix(table["path"].tolist(), table["content_hash"].tolist(), y)
        self._fit_arrays(X, y[ok])
        self._fit_fallback(table["path"].tolist(), table["content_hash"].tolist(), y)
        self.meta_["training_data"] = {
            "n_images": len(ok),
            "per_class": {str(k): int(v) for k, v in Counter(y[ok]).items()},
            "skipped": dict(Counter(r for r, _ in errors.values())),
        }
        return self

    def _fit_fallback(self, sources: Sequence[Any], hashes: Sequence[str | None] | None, labels: np.ndarray) -> None:
        """Train the whole-image model that answers for photos without a detectable face."""
        if self.fallback is None:
            return
        self.fallback_ = Classifier(
            self.fallback,
            "logreg",
            cache_dir=self.cache_dir,
            use_cache=self.use_cache,
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            verbose=self.verbose,
            engine=self.engine,
        )
        X, ok, _ = self.fallback_._train_matrix(sources, hashes, labels)
        self.fallback_._fit_arrays(X, np.asarray(labels)[ok])

    def _fit_arrays(self, X: np.ndarray, y: np.ndarray) -> None:
        from .heads import MLPHead

        if len(X) == 0:
            raise TransferlabError("no usable training images (all were skipped); see the intake report")
        fit_head = getattr(self.engine, "fit_head", None)
        if fit_head is not None and fit_head(self.head_, X, y):  # Spark ML, for training matrices over its limit
            self._reporter.info(f"trained {self.head} head with Spark ML on {len(X)} images")
        elif isinstance(self.head_, MLPHead):
            with self._reporter.task("head", self.head_.epochs) as advance:
                self.head_.fit(X, y, progress=advance)
        else:
            self._reporter.info(f"training {self.head} head on {len(X)} images")
            self.head_.fit(X, y)
        self.classes_ = np.asarray(self.head_.classes_).astype(str)
        if self.is_face_model:
            from .faces import calibrate_unknown_threshold, class_centroids

            self.centroids_ = class_centroids(X, y, self.classes_)
            self.unknown_threshold_ = calibrate_unknown_threshold(X, y, self.classes_)

    def _check_fitted(self) -> None:
        if not hasattr(self, "classes_"):
            raise TransferlabError("this classifier is not trained yet; call fit() or load a saved model")

    def predict_proba(self, images: Sequence[Any]) -> np.ndarray:
        """Class probabilities per image (columns in ``classes_`` order); NaN rows for unusable images."""
        self._check_fitted()
        proba = np.full((len(images), len(self.classes_)), np.nan)
        for i, r in enumerate(self._analyse(list(images))):
            if "proba" in r:
                proba[i] = r["proba"]
        return proba

    def predict(self, images: Sequence[Any]) -> np.ndarray:
        """Predicted label per image (``None`` for unusable images, ``"unknown"`` for unknown faces)."""
        return np.array([p.label for p in self.predict_images(images)], dtype=object)

    def predict_images(
        self,
        images: Sequence[Any],
        names: Sequence[str] | None = None,
        *,
        unknown_threshold: float | None = None,
    ) -> list[Prediction]:
        """Predictions with probabilities, or an error message, for each image (paths, bytes or PIL images).

        For face models each prediction also lists every face (box, score, label) in ``faces``; faces whose
        similarity to their best class is below ``unknown_threshold`` (default: calibrated at training) are
        ``"unknown"``.
        """
        images = list(images)
        names = (
            list(names)
            if names is not None
            else [str(x) if isinstance(x, str | os.PathLike) else f"<image {i}>" for i, x in enumerate(images)]
        )
        out = [Prediction(path=n) for n in names]
        thr = unknown_threshold if unknown_threshold is not None else getattr(self, "unknown_threshold_", None)
        for p, r in zip(out, self._analyse(images), strict=True):
            if "error" in r:
                reason, detail = r["error"]
                p.reason = reason
                p.error = "no face found" if reason == "no face" else (f"{reason}: {detail}" if detail else reason)
                continue
            p.probabilities = {str(c): float(v) for c, v in zip(self.classes_, r["proba"], strict=True)}
            p.label = str(self.classes_[int(np.argmax(r["proba"]))])
            p.fallback = bool(r.get("fallback"))
            if "faces" in r:
                for k, f in enumerate(r["faces"]):
                    known = f["similarity"] >= thr
                    p.faces.append(
                        {
                            "box": f["box"],
                            "face_score": f["face_score"],
                            "label": str(self.classes_[int(np.argmax(f["proba"]))]) if known else "unknown",
                            "similarity": round(f["similarity"], 4),
                            "probabilities": {str(c): float(v) for c, v in zip(self.classes_, f["proba"], strict=True)},
                            "answer": k == r["answer"],
                        }
                    )
                answer = p.faces[r["answer"]]
                p.label, p.box, p.face_score = answer["label"], answer["box"], answer["face_score"]
        return out

    def score(self, images: Sequence[Any], labels: Sequence[str]) -> float:
        """Accuracy on labelled images (scikit-learn's ``score``)."""
        pred = self.predict(images)
        return float(np.mean(pred == np.asarray(labels).astype(str)))

    def evaluate(
        self,
        data: Any,
        *,
        manifest: str | os.PathLike[str] | None = None,
        group_by: str | None = None,
    ) -> dict[str, Any]:
        """Evaluate on every usable image of a labelled folder or CSV; the ``evaluate --json`` object."""
        got = self._intake(data, manifest)
        metrics, _ = self.evaluate_table(got.table, group_by=group_by, skipped=got.report.skipped_counts())
        # found = used + skipped by reason: every file intake found is accounted for
        metrics["found"] = sum(got.report.found.values())
        metrics["used"] = metrics["n"]
        return metrics

    def evaluate_table(
        self, table: pd.DataFrame, *, group_by: str | None = None, skipped: dict[str, int] | None = None
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Metrics on intake-table rows, and the per-row details (probabilities) for reports.

        Accuracy is over the classes (the answer face's most probable class); for face models
        ``unknown_rate`` adds how many of these images the unknown threshold would have answered ``unknown``.
        """
        from .evaluate import compute_metrics

        self._check_fitted()
        skipped = dict(skipped or {})
        if group_by is not None and group_by not in table.columns:
            cols = [c for c in table.columns if c not in ("path", "label", "content_hash", "width", "height", "group")]
            raise TransferlabError(
                f"--group-by {group_by}: no such column; available: {', '.join(cols) or 'none (pass --manifest CSV)'}"
            )
        known = table["label"].isin(set(self.classes_))
        if not known.all():
            skipped["label not in model"] = skipped.get("label not in model", 0) + int((~known).sum())
            table = table[known].reset_index(drop=True)
        results = self._analyse(table["path"].tolist(), table["content_hash"].tolist())
        ok = np.array(["proba" in r for r in results], dtype=bool)
        for r in results:
            if "error" in r:
                skipped[r["error"][0]] = skipped.get(r["error"][0], 0) + 1
        rows = table[ok].reset_index(drop=True)
        k = len(self.classes_)
        proba = np.stack([r["proba"] for r in results if "proba" in r]) if ok.any() else np.zeros((0, k))
        groups = rows[group_by].tolist() if group_by is not None else None
        metrics = compute_metrics(rows["label"].tolist(), proba, list(self.classes_), groups=groups, skipped=skipped)
        if self.is_face_model:
            answered_known = [r.get("known", True) for r in results if "proba" in r]
            metrics["unknown_rate"] = float(1 - np.mean(answered_known)) if answered_known else float("nan")
            metrics["several_faces"] = int(sum(len(r["faces"]) > 1 for r in results if "faces" in r))
        return metrics, {"rows": rows, "proba": proba}

    # -- persistence --------------------------------------------------------------------------------------------
    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the model directory (``model.json`` + ``head.safetensors``)."""
        from .artifact import save_artifact

        meta, arrays = self._state()
        meta = {
            "transferlab_version": __version__,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            **meta,
        }
        return save_artifact(path, meta, arrays)

    def _state(self) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
        """JSON description and arrays of this fitted model (a fallback model is nested under ``fallback``)."""
        from .features import feature_spec

        self._check_fitted()
        bb = self.backbone_()
        arrays, params = self.head_.to_state()
        arrays.pop("classes_", None)
        meta: dict[str, Any] = {
            "classes": [str(c) for c in self.classes_],
            "backbone": {
                "name": self.backbone,
                "architecture": bb.cfg.architecture,
                "weights_sha256": bb.weights_hash,
                "weights_source": str(self.weights) if self.weights else bb.cfg.weights.describe(),
                "preprocessing": bb.cfg.preprocessing(),
                "num_params": bb.cfg.num_params,
            },
            "features": feature_spec(bb, self.pool),
            "pool": self.pool,
            "head": {"name": self.head, "params": params},
            "face_choice": self.face_choice,
            **self.meta_,
        }
        if self.is_face_model:
            arrays["open_set.centroids"] = self.centroids_.astype(np.float32)
            meta["faces"] = {
                "unknown_threshold": float(self.unknown_threshold_),
                "similarity": "cosine between the face embedding and its predicted class's mean embedding",
                "calibration": "higher of: keeps 98% of training faces of their own class (leave-one-out); "
                "admits 1% of training faces of the other classes",
                "several_faces": "answer with the face that most confidently matches a known class",
                "no_face": (
                    f"answered by the whole-image fallback model ({self.fallback})"
                    if getattr(self, "fallback_", None) is not None
                    else "skipped in training and evaluation; predict says 'no face found'"
                ),
                **getattr(self, "face_stats_", {}),
            }
        fallback = getattr(self, "fallback_", None)
        if fallback is not None:
            fmeta, farrays = fallback._state()
            meta["fallback"] = fmeta
            arrays.update({f"fallback.{k}": v for k, v in farrays.items()})
        return meta, arrays

    @classmethod
    def load(cls, path: str | os.PathLike[str], **kwargs: Any) -> Classifier:
        """Load a saved model directory (JSON + safetensors only; nothing is unpickled).

        ``kwargs`` override runtime options such as ``weights``, ``cache_dir`` or ``verbose``.
        """
        from .artifact import load_artifact

        meta, arrays = load_artifact(path)
        return cls._from_state(meta, dict(arrays), str(path), **kwargs)

    @classmethod
    def _from_state(cls, meta: dict[str, Any], arrays: dict[str, Any], path: str, **kwargs: Any) -> Classifier:
        from .heads import HEADS

        head_name = meta["head"]["name"]
        if head_name not in HEADS:
            raise TransferlabError(f"{path}: unknown head {head_name!r} in model.json")
        clf = cls(
            backbone=meta["backbone"]["name"],
            head=head_name,
            pool=meta.get("pool", "avg"),
            head_params=meta["head"].get("params", {}),
            face_choice=meta.get("face_choice", "mil"),
            fallback=meta["fallback"]["backbone"]["name"] if "fallback" in meta else None,
            **kwargs,
        )
        own = {k: v for k, v in arrays.items() if not k.startswith("fallback.")}
        own["classes_"] = np.asarray(meta["classes"])
        try:
            clf.head_ = HEADS[head_name].from_state(own, meta["head"].get("params", {}))
        except KeyError as exc:
            raise TransferlabError(f"{path}: head weights lack array {exc}; the model is damaged, retrain it") from None
        clf.classes_ = np.asarray(meta["classes"]).astype(str)
        if clf.is_face_model:
            if "open_set.centroids" not in own or "faces" not in meta:
                raise TransferlabError(f"{path}: face model without class centroids; the model is damaged, retrain it")
            clf.centroids_ = np.asarray(own["open_set.centroids"], dtype=np.float32)
            clf.unknown_threshold_ = float(meta["faces"]["unknown_threshold"])
        if "fallback" in meta:
            sub = {k.removeprefix("fallback."): v for k, v in arrays.items() if k.startswith("fallback.")}
            runtime = {
                k: v
                for k, v in kwargs.items()
                if k in ("cache_dir", "use_cache", "verbose", "device", "runtime", "engine")
            }
            clf.fallback_ = cls._from_state(meta["fallback"], sub, path, **runtime)
        clf.meta_ = {k: v for k, v in meta.items() if k in ("training_data", "split", "evaluation", "intake")}
        clf.model_meta = meta
        clf.model_dir_ = path
        clf._expected_weights = meta["backbone"].get("weights_sha256")
        return clf


def load(path: str | os.PathLike[str], **kwargs: Any) -> Classifier:
    """Load a model directory saved by :meth:`Classifier.save` (see :meth:`Classifier.load`)."""
    return Classifier.load(path, **kwargs)


def prediction_counts(predictions: Sequence[Prediction]) -> dict[str, Any]:
    """``{"found", "used", "skipped": {reason: count}}`` for a list of predictions (``found = used + skipped``)."""
    skipped = Counter(p.reason or "unreadable" for p in predictions if p.error is not None)
    return {
        "found": len(predictions),
        "used": sum(p.error is None for p in predictions),
        "skipped": dict(sorted(skipped.items())),
    }


def expand_paths(paths: Sequence[str | os.PathLike[str]]) -> list[str]:
    """Files as given, and every non-hidden file under given folders (sorted)."""
    out: list[str] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            for dirpath, dirnames, filenames in os.walk(p):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
                out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
        else:
            out.append(str(p))
    return out


@dataclass
class FitEvaluation:
    """Result of :func:`fit_evaluate`."""

    metrics: dict[str, Any]
    detail: dict[str, Any]
    stats: dict[str, int]
    train_rows: np.ndarray
    test_rows: np.ndarray
    timings: dict[str, float]


def fit_evaluate(
    clf: Classifier,
    table: pd.DataFrame,
    train_idx: np.ndarray,
    test_idx: np.ndarray,
    *,
    group_by: str | None = None,
    skipped: dict[str, int] | None = None,
    extra_train: tuple[Sequence[Any], Sequence[str], Sequence[str]] | None = None,
) -> FitEvaluation:
    """Fit ``clf`` on the training rows of an intake table and evaluate it on the test rows.

    The test side goes through the prediction path: no label is used to pick its faces or features.
    ``extra_train`` adds ``(sources, cache_keys, labels)`` to the training side (augmented copies, for studies).
    """
    timings: dict[str, float] = {}
    labels = table["label"].to_numpy().astype(str)
    sources = table["path"].to_numpy()[train_idx].tolist()
    hashes = table["content_hash"].to_numpy()[train_idx].tolist()
    t = time.perf_counter()
    X, used, errors = clf._train_matrix(sources, hashes, labels[train_idx])
    y = labels[train_idx][used]
    stats = dict(clf.last_feature_stats)
    if extra_train is not None:
        Xa, used_a, _ = clf._train_matrix(
            _as_sequence(extra_train[0]), list(extra_train[1]), np.asarray(extra_train[2])
        )
        X, y = np.concatenate([X, Xa]), np.concatenate([y, np.asarray(extra_train[2])[used_a]])
        for key in stats:
            stats[key] += clf.last_feature_stats[key]
    timings["features (train)"] = time.perf_counter() - t
    train_rows = train_idx[used]
    t = time.perf_counter()
    clf._fit_arrays(X, y)
    clf._fit_fallback(sources, hashes, labels[train_idx])
    timings["head"] = time.perf_counter() - t
    t = time.perf_counter()
    test_table = table.iloc[test_idx].reset_index(drop=True)
    metrics, detail = clf.evaluate_table(test_table, group_by=group_by, skipped=skipped)
    timings["features + evaluation (test)"] = time.perf_counter() - t
    for key in ("cached", "computed", "failed"):
        stats[key] += clf.last_feature_stats[key]
    for reason, _ in errors.values():
        metrics["skipped"][reason] = metrics["skipped"].get(reason, 0) + 1
    test_paths = set(detail["rows"]["path"])
    test_rows = np.array([i for i in test_idx if table.at[i, "path"] in test_paths], dtype=int)
    return FitEvaluation(metrics, detail, stats, train_rows, test_rows, timings)


@dataclass
class TrainResult:
    """What :func:`train` produced."""

    classifier: Classifier
    metrics: dict[str, Any]
    intake: Intake
    split: Any
    out: Path
    report_path: Path
    timings: dict[str, float]
    feature_stats: dict[str, int]


def train(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: str = DEFAULT_BACKBONE,
    head: str = DEFAULT_HEAD,
    pool: str = "avg",
    head_params: dict[str, Any] | None = None,
    test_size: float = 0.25,
    per_class: int | None = None,
    seed: int = 0,
    manifest: str | os.PathLike[str] | None = None,
    group_by: str | None = None,
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
    engine: Any = None,
) -> TrainResult:
    """Intake → split → features → head → held-out evaluation → saved model with ``report.md``.

    Parameters mirror ``transferlab train`` (see :class:`Classifier` for the model options).

    Returns
    -------
    TrainResult
    """
    from .heads import HEADS
    from .split import split_table

    timings: dict[str, float] = {}
    params = dict(head_params or {})
    if head in HEADS and "random_state" in HEADS[head]().get_params():  # type: ignore[call-arg,attr-defined]
        params.setdefault("random_state", seed)
    clf = Classifier(
        backbone,
        head,
        pool=pool,
        head_params=params,
        weights=weights,
        download=download,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        num_workers=num_workers,
        face_choice=face_choice,
        fallback=fallback,
        verbose=verbose,
        device=device,
        runtime=runtime,
        engine=engine,
    )
    rep = clf._reporter
    clf.backbone_()  # fail fast on missing weights, before any long work (the network itself is built lazily)
    t = time.perf_counter()
    got = clf._intake(data, manifest)
    timings["intake"] = time.perf_counter() - t
    table = got.table
    if group_by is not None and group_by not in table.columns:
        raise TransferlabError(
            f"--group-by {group_by}: no such column in the data; pass --manifest CSV with that column"
        )
    split = split_table(table, test_size=test_size, seed=seed, per_class=per_class)
    skipped = got.report.skipped_counts()
    rep.info(
        f"intake: {sum(got.report.found.values())} files, {len(table)} usable"
        + (
            f", skipped {sum(skipped.values())} ({', '.join(f'{k} {v}' for k, v in sorted(skipped.items()))})"
            if skipped
            else ""
        )
        + f"; split {len(split.train)} train / {len(split.test)} test"
    )
    labels = table["label"].to_numpy().astype(str)
    fe = fit_evaluate(clf, table, split.train, split.test, group_by=group_by, skipped=skipped)
    metrics, detail, stats, train_rows, test_rows = fe.metrics, fe.detail, fe.stats, fe.train_rows, fe.test_rows
    timings.update(fe.timings)
    rep.info(f"features: {stats['computed']} computed, {stats['cached']} from cache")
    out = Path(out)
    split_info = {**split.params(), "n_train": len(train_rows), "n_test": len(test_rows)}
    clf.meta_.update(
        training_data={
            "data": str(data),
            "n_images": len(train_rows),
            "per_class": {str(k): int(v) for k, v in Counter(labels[train_rows]).items()},
        },
        split=split_info,
        evaluation={k: metrics[k] for k in ("accuracy", "accuracy_ci95", "n", "log_loss") if k in metrics}
        | (
            {
                "groups": {k: {"accuracy": v["accuracy"], "n": v["n"]} for k, v in metrics["groups"].items()},
                "group_by": group_by,
            }
            if group_by
            else {}
        ),
    )
    # found = used + skipped by reason: intake skips, feature errors on either side, and rows left out by --per-class
    not_sampled = len(table) - len(split.train) - len(split.test)
    if not_sampled:
        metrics["skipped"]["not sampled (--per-class)"] = not_sampled
    metrics["found"] = sum(got.report.found.values())
    metrics["used"] = len(train_rows) + int(metrics["n"])
    metrics["n_train"] = len(train_rows)
    clf.save(out)
    side = np.full(len(table), "", dtype=object)
    side[split.train] = "skipped"
    side[split.test] = "skipped"
    side[train_rows] = "train"
    side[test_rows] = "test"
    atomic_write_text(out / "split.csv", table.assign(side=side)[lambda d: d["side"] != ""].to_csv(index=False))
    import json

    atomic_write_text(out / "intake.json", json.dumps(got.report.to_dict(), indent=2, default=str))
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2))
    from .report import write_report

    config = {"backbone": backbone, "head": head, "pool": pool, "data": str(data)}
    if clf.is_face_model:
        config["faces"] = {**clf.face_stats_, "unknown_threshold": clf.unknown_threshold_}
    report_path = write_report(
        out,
        metrics=metrics,
        intake_report=got.report,
        config=config,
        split_info=split_info,
        timings=timings,
        feature_stats=stats,
        rows=detail["rows"],
        proba=detail["proba"],
        group_by=group_by,
    )
    return TrainResult(clf, metrics, got, split, out, report_path, timings, stats)


def list_images(data: str | os.PathLike[str]) -> tuple[list[str], list[str | None]]:
    """Paths and labels of ``data``: a folder of class subfolders, a CSV (``path,label``) or image files/folders.

    Unlike intake nothing is decoded or dropped here: a feature table has a row, perhaps an error row, for every
    file found.
    """
    from .intake import _is_hidden, scan_csv, scan_folder

    p = Path(data)
    if not p.exists():
        raise TransferlabError(f"{p}: no such file or folder")
    if p.is_file() and p.suffix.lower() == ".csv":
        items, _ = scan_csv(p)
    elif p.is_dir() and any((p / d).is_dir() and not _is_hidden(d) for d in os.listdir(p)):
        items = scan_folder(p)
    else:
        items = [(f, None) for f in expand_paths([p])]  # type: ignore[misc]
    if not items:
        raise TransferlabError(f"{p}: no image files found")
    return [str(a) for a, _ in items], [b for _, b in items]


def featurize_table(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    backbone: str = DEFAULT_BACKBONE,
    pool: str = "avg",
    weights: str | os.PathLike[str] | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    batch_size: int = 32,
    num_workers: int | None = None,
    engine: Any = None,
    verbose: bool = False,
) -> Any:
    """Featurize every image of ``data`` into a Parquet feature table (``transferlab featurize``).

    The table (columns ``path, content_hash, label, features, error``; see :mod:`transferlab.engines._rows`) is
    the same whichever engine writes it, and both engines fill and read the same feature cache.

    Returns
    -------
    transferlab.engines.TableSummary
    """
    from .engines._rows import row_width
    from .features import feature_spec, open_cache

    clf = Classifier(
        backbone,
        "logreg",
        pool=pool,
        weights=weights,
        download=download,
        cache_dir=cache_dir,
        use_cache=use_cache,
        batch_size=batch_size,
        num_workers=num_workers,
        engine=engine,
        verbose=verbose,
    )
    bb = clf.backbone_()
    paths, labels = list_images(data)
    space = "faces" if clf.is_face_model else pool
    meta = {
        "feature_spec": feature_spec(bb, space),
        "row_width": row_width(bb, space),
        "rows_per_image": "one per face" if clf.is_face_model else "one",
        "engine": clf.engine.name,
        "transferlab_version": __version__,
    }
    with clf._reporter.task("features", len(paths)) as advance:
        return clf.engine.feature_table(
            paths,
            labels,
            bb,
            pool=space,
            cache=open_cache(bb, space, cache_dir, use_cache),
            out=Path(out),
            meta=meta,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=advance,
        )
