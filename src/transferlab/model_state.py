"""A fitted pipeline as data: what :meth:`Classifier.save` writes into ``model.json`` and ``head.safetensors``, and
how :meth:`Classifier.load` rebuilds it. Also the whole-image fallback that answers photos without a face.

The format is the same as transferlab's first (format version 1), so models saved by earlier versions load.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._runtime import resolve_device
from .artifact import load_artifact, save_artifact
from .backbones import device_recipe, get_backbone_cfg, recipe_of, recorded_recipe
from .errors import TransferlabError
from .facebag import FaceBagClassifier
from .features import Extractor, feature_spec
from .heads import HEADS, head_name

FALLBACK_PREFIX = "fallback."
CENTROIDS = "open_set.centroids"
PROTOTYPES = "open_set.prototypes"
PROTOTYPE_CLASS = "open_set.prototype_class"
TRAINING_HASHES = "training.content_hashes"
FINETUNED_PREFIX = "finetuned."


@dataclass
class Fallback:
    """A whole-image model that answers for photos in which no face was found (face backbones only)."""

    extractor: Extractor
    head: Any

    def fit(self, sources: Sequence[Any], hashes: Sequence[str | None] | None, y: np.ndarray) -> Fallback:
        """Fit the head on the whole-image features of the training photos."""
        res = self.extractor.extract(sources, hashes)
        self.head.fit(res.features[res.ok], np.asarray(y)[res.ok])
        return self

    def proba(self, sources: Sequence[Any], hashes: Sequence[str | None] | None, classes: Sequence[str]) -> list:
        """Per photo, probabilities over ``classes`` (a class the fallback never saw gets 0), or None."""
        res = self.extractor.extract(sources, hashes)
        col = {str(c): k for k, c in enumerate(self.head.classes_)}
        out: list[np.ndarray | None] = [None] * len(sources)
        ok = np.flatnonzero(res.ok)
        for i, p in zip(ok, self.head.predict_proba(res.features[ok]) if len(ok) else [], strict=True):
            q = np.array([p[col[c]] if c in col else 0.0 for c in classes])
            out[i] = q / max(q.sum(), 1e-12)
        return out


def _backbone_meta(extractor: Extractor) -> dict[str, Any]:
    bb = extractor.backbone
    return {
        "name": bb.cfg.name,
        "architecture": bb.cfg.architecture,
        "weights_sha256": bb.weights_hash,
        "weights_source": str(extractor.weights) if extractor.weights else bb.cfg.weights.describe(),
        "preprocessing": bb.cfg.preprocessing(),
        "num_params": bb.cfg.num_params,
    }


def _head_state(head: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays, params = head.to_state()
    arrays.pop("classes_", None)
    return arrays, {"name": head_name(head), "params": params}


def describe(clf: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``model.json``'s content and the arrays of a fitted :class:`~transferlab.Classifier`."""
    opts = clf.options_
    bag = clf.head_ if isinstance(clf.head_, FaceBagClassifier) else None
    arrays, head = _head_state(bag.estimator_ if bag is not None else clf.head_)
    meta: dict[str, Any] = {
        "classes": [str(c) for c in clf.classes_],
        "backbone": _backbone_meta(clf.extractor_),
        "features": feature_spec(clf.extractor_.backbone, opts.pool.value),
        "pool": opts.pool.value,
        "head": head,
        "face_choice": opts.face_choice.value,
        **getattr(clf, "meta_", {}),
    }
    made = recorded_recipe(meta["features"])  # what was made: "fast" asked on a CPU makes portable features
    meta["recipe"] = {"name": recipe_of(made), "device": resolve_device(opts.device), **made}
    tuned = clf.extractor_.tuned
    if tuned:  # the fine-tuned blocks' tensors, beside the head's (safetensors: no unpickling on load)
        arrays.update({FINETUNED_PREFIX + k: np.asarray(v) for k, v in tuned.items()})
        ft = getattr(clf, "finetune_", None)
        meta["finetune"] = {
            "blocks": opts.finetune,
            "params": opts.finetune_params,
            "config": opts.finetune_config().params(),
            "sha256": clf.extractor_.backbone.tuned_hash,
            "tensors": len(tuned),
            **(
                {"best_epoch": ft.best_epoch, "history": ft.history, "trunk": ft.trunk, "reused": ft.reused}
                if ft is not None
                else {}
            ),
        }
    hashes = getattr(clf, "training_hashes_", [])
    if hashes:  # content hashes (of decoded pixels), so evaluate can tell photos it was trained on
        arrays[TRAINING_HASHES] = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(-1, 32)
    fallback = getattr(clf, "fallback_", None)
    if bag is not None:
        arrays[CENTROIDS] = bag.centroids_.astype(np.float32)
        arrays[PROTOTYPES] = bag.prototypes_.astype(np.float32)
        arrays[PROTOTYPE_CLASS] = np.asarray(bag.prototype_class_, dtype=np.int32)
        meta["faces"] = {
            "unknown_threshold": float(bag.threshold_),
            "similarity": "cosine between the face embedding and the nearest prototype of its predicted class "
            "(k-means means of at least 5 training faces, up to 4 per class)",
            "calibration": f"5-fold cross-validation on the training faces; the higher of: keeps {bag.keep:.0%} of "
            f"faces of their own class, admits {bag.admit_others:.0%} of faces of the other classes"
            + (
                f"; shrunk towards the embedder's same-person cosine {bag.threshold_prior} as if {bag.prior_strength:g}"
                " faces"
                if bag.threshold_prior
                else ""
            ),
            "targets": {"keep_known": bag.keep, "admit_others": bag.admit_others, "prior": bag.threshold_prior},
            "several_faces": "answer with the face that most confidently matches a known class",
            "no_face": (
                f"answered by the whole-image fallback model ({opts.fallback})"
                if fallback is not None
                else "skipped in training and evaluation; predict says 'no face found'"
            ),
            **getattr(clf, "face_stats_", {}),
        }
    if fallback is not None:
        farrays, fhead = _head_state(fallback.head)
        meta["fallback"] = {
            "classes": [str(c) for c in fallback.head.classes_],
            "backbone": _backbone_meta(fallback.extractor),
            "features": feature_spec(fallback.extractor.backbone, "avg"),
            "pool": "avg",
            "head": fhead,
        }
        arrays.update({FALLBACK_PREFIX + k: v for k, v in farrays.items()})
    return meta, arrays


def save(path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray]) -> Path:
    """Write a model directory (see :func:`transferlab.artifact.save_artifact`)."""
    return save_artifact(path, meta, arrays)


def _head_from(meta: dict[str, Any], arrays: dict[str, Any], path: Any) -> Any:
    name = meta["head"]["name"]
    if name not in HEADS:
        raise TransferlabError(f"{path}: unknown head {name!r} in model.json")
    try:
        return HEADS[name].from_state(
            {**arrays, "classes_": np.asarray(meta["classes"])}, meta["head"].get("params", {})
        )
    except KeyError as exc:
        raise TransferlabError(f"{path}: head weights lack array {exc}; the model is damaged, retrain it") from None


RUNTIME_OPTIONS = (
    "recipe",
    "weights",
    "cache_dir",
    "use_cache",
    "verbose",
    "device",
    "runtime",
    "engine",
    "batch_size",
    "num_workers",
)


def _says(recipe: dict[str, str]) -> str:
    return ("nvJPEG decoding" if recipe["decode"] == "nvjpeg" else "CPU decoding") + f" in {recipe['precision']}"


def recipe_note(trained: dict[str, str], here: dict[str, str]) -> str | None:
    """One line when features here are made differently from the model's training features, else None.

    Examples
    --------
    >>> recipe_note({"precision": "fp32", "decode": "cpu"}, {"precision": "fp32", "decode": "cpu"}) is None
    True
    """
    if trained == here:
        return None
    hint = (
        "--recipe fast chose speed over parity"
        if here["decode"] == "nvjpeg"
        else "train with --recipe portable (the default) for the same answers on every device"
    )
    return (
        f"note: this model's features were made with {_says(trained)}, here with {_says(here)}; a few answers may "
        f"differ from its evaluation ({hint})"
    )


def restore(cls: type, path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Rebuild a fitted classifier of type ``cls`` from a model directory; ``kwargs`` are runtime options."""
    unknown = sorted(set(kwargs) - set(RUNTIME_OPTIONS))
    if unknown:
        raise TransferlabError(
            f"load() takes runtime options only ({', '.join(RUNTIME_OPTIONS)}), not {', '.join(unknown)}"
        )
    meta, arrays = load_artifact(path)
    fmeta = meta.get("fallback")
    clf = cls(
        backbone=meta["backbone"]["name"],
        head=meta["head"]["name"],
        pool=meta.get("pool", "avg"),
        head_params=meta["head"].get("params", {}),
        face_choice=meta.get("face_choice", "mil"),
        fallback=fmeta["backbone"]["name"] if fmeta else None,
        finetune=int(meta.get("finetune", {}).get("blocks", 0)),
        finetune_params=meta.get("finetune", {}).get("params") or None,
        **kwargs,
    )
    trained = recorded_recipe(meta.get("features", {}))
    if clf.recipe is None:  # reproduce the recipe the model was trained with, where this device can
        clf.recipe = recipe_of(trained)
    opts = clf.options_ = clf.options()
    clf.recipe_note_ = recipe_note(trained, device_recipe(resolve_device(opts.device), opts.recipe_name))
    tuned = {k.removeprefix(FINETUNED_PREFIX): v for k, v in arrays.items() if k.startswith(FINETUNED_PREFIX)}
    if opts.finetune and not tuned:
        raise TransferlabError(f"{path}: fine-tuned model without its fine-tuned weights; the model is damaged")
    own = {
        k: v
        for k, v in arrays.items()
        if not k.startswith((FALLBACK_PREFIX, FINETUNED_PREFIX)) and k != TRAINING_HASHES
    }
    head_arrays = {k: v for k, v in own.items() if not k.startswith("open_set.")}
    if TRAINING_HASHES in arrays:
        clf.training_hashes_ = [row.tobytes().hex() for row in np.asarray(arrays[TRAINING_HASHES], np.uint8)]
    head = _head_from(meta, head_arrays, path)
    if opts.embeds_faces:
        if CENTROIDS not in own or "faces" not in meta:
            raise TransferlabError(f"{path}: face model without class centroids; the model is damaged, retrain it")
        prior = get_backbone_cfg(opts.backbone).extra.get("same_person_cosine")
        bag = FaceBagClassifier(opts.make_head(), face_choice=opts.face_choice.value, threshold_prior=prior)
        bag.estimator_, bag.classes_ = head, head.classes_
        bag.centroids_ = np.asarray(own[CENTROIDS], dtype=np.float32)
        bag.threshold_ = float(meta["faces"]["unknown_threshold"])
        if PROTOTYPES in own:  # models from before prototypes compare with the class means
            bag.prototypes_ = np.asarray(own[PROTOTYPES], dtype=np.float32)
            bag.prototype_class_ = np.asarray(own[PROTOTYPE_CLASS], dtype=np.int64)
        head = bag
    clf.head_ = head
    clf.classes_ = np.asarray(meta["classes"]).astype(str)
    clf.extractor_ = clf.build_extractor(opts, expected=meta["backbone"].get("weights_sha256"), tuned=tuned or None)
    if fmeta:
        sub = {k.removeprefix(FALLBACK_PREFIX): v for k, v in arrays.items() if k.startswith(FALLBACK_PREFIX)}
        fx = clf.build_extractor(opts, fmeta["backbone"]["name"], expected=fmeta["backbone"].get("weights_sha256"))
        clf.fallback_ = Fallback(fx, _head_from(fmeta, sub, path))
    clf.meta_ = {k: v for k, v in meta.items() if k in ("training_data", "split", "evaluation", "intake")}
    clf.model_meta_ = meta
    clf.model_dir_ = str(path)
    return clf
