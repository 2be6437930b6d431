"""A fitted pipeline as data: what :meth:`Classifier.save` writes into ``model.json`` and ``head.safetensors``, and
how :meth:`Classifier.load` rebuilds it. Also the whole-image fallback that answers photos without a face.

The format is the same as transferlab's first (format version 1), so models saved by earlier versions load. The
options a model was trained with are saved whole (``options``); the plain head saves itself (``to_state``) and the
model's kind adds what it needs (a face model's open set).
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
from .backbones import device_recipe, recipe_of, recorded_recipe
from .errors import TransferlabError
from .features import Extractor, feature_spec
from .fitted import HEAD_SPECS, FittedHead
from .gallery import PREFIX as GALLERY_PREFIX
from .options import Options

FALLBACK_PREFIX = "fallback."
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
        "weights_source": str(weights) if (weights := extractor.options.weights) else bb.cfg.weights.describe(),
        "preprocessing": bb.cfg.preprocessing(),
        "num_params": bb.cfg.num_params,
        "license": bb.cfg.license,
        "noncommercial": bb.cfg.noncommercial,
    }


def _head_state(head: Any) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    arrays, params = head.to_state()
    arrays.pop("classes_", None)
    return arrays, {"name": head.spec.name, "params": params}


def describe(clf: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``model.json``'s content and the arrays of a fitted :class:`~transferlab.Classifier`."""
    opts = clf.options_
    kind = opts.kind
    arrays, head = _head_state(kind.inner(clf.head_))
    meta: dict[str, Any] = {
        "classes": [str(c) for c in clf.classes_],
        "backbone": _backbone_meta(clf.extractor_),
        "features": feature_spec(clf.extractor_.backbone, opts.pool.value),
        "pool": opts.pool.value,
        "head": head,
        "face_choice": opts.face_choice.value,
        "options": opts.saved(),  # every option saved with the model: what load() rebuilds it from
        **getattr(clf, "meta_", {}),
    }
    made = recorded_recipe(meta["features"])  # what was made: "fast" asked on a CPU makes portable features
    meta["recipe"] = {"name": recipe_of(made), "device": resolve_device(opts.device), **made}
    tuned = clf.extractor_.tuned
    if tuned:  # the fine-tuned blocks' tensors, beside the head's (safetensors: no unpickling on load)
        arrays.update({FINETUNED_PREFIX + k: np.asarray(v) for k, v in tuned.items()})
        meta["finetune"] = _finetune_meta(clf, opts, tuned)
    hashes = getattr(clf, "training_hashes_", [])
    if hashes:  # content hashes (of decoded pixels), so evaluate can tell photos it was trained on
        arrays[TRAINING_HASHES] = np.frombuffer(b"".join(bytes.fromhex(h) for h in hashes), np.uint8).reshape(-1, 32)
    gallery = clf.gallery_ if getattr(clf, "gallery_", None) is not None else None
    if gallery is None and getattr(clf, "saved_gallery_", None) is not None:
        gallery = clf.gallery()  # a loaded model saved again: its gallery, checked against its hash
    if gallery is not None:  # per training photo what the head was fitted on: enrol, forget and explain read it
        garrays, meta["gallery"] = gallery.to_state(kind.gallery_features)
        arrays.update(garrays)
    kind_arrays, kind_meta = kind.save(clf.head_, opts, getattr(clf, "fit_stats_", {}))
    arrays.update(kind_arrays)
    meta.update(kind_meta)
    fallback = getattr(clf, "fallback_", None)
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


def _finetune_meta(clf: Any, opts: Any, tuned: dict[str, Any]) -> dict[str, Any]:
    """``model.json``'s ``finetune`` entry: what was trained, how, and how it went."""
    ft = getattr(clf, "finetune_", None)
    return {
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


def save(
    path: str | os.PathLike[str], meta: dict[str, Any], arrays: dict[str, np.ndarray], *, replace: bool = False
) -> Path:
    """Write a model directory (see :func:`transferlab.artifact.save_artifact`)."""
    return save_artifact(path, meta, arrays, replace=replace)


def _head_from(meta: dict[str, Any], arrays: dict[str, Any], path: Any) -> FittedHead:
    """The saved head, answering from its arrays (:class:`~transferlab.fitted.FittedHead`)."""
    name = meta["head"]["name"]
    if name not in HEAD_SPECS:
        raise TransferlabError(f"{path}: unknown head {name!r} in model.json")
    try:
        return FittedHead(name, arrays, meta["head"].get("params", {}), meta["classes"])
    except KeyError as exc:
        raise TransferlabError(f"{path}: head weights lack array {exc}; the model is damaged, retrain it") from None


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


def _saved_options(meta: dict[str, Any]) -> dict[str, Any]:
    """The options a model was saved with: its ``options`` entry, or, in models from before it was written, the
    fields those models kept."""
    if "options" in meta:
        return {**Options.before_saved(), **meta["options"]}
    fmeta = meta.get("fallback")
    return {
        **Options.before_saved(),
        "backbone": meta["backbone"]["name"],
        "head": meta["head"]["name"],
        "pool": meta.get("pool", "avg"),
        "head_params": meta["head"].get("params", {}),
        "face_choice": meta.get("face_choice", "mil"),
        "fallback": fmeta["backbone"]["name"] if fmeta else None,
        "finetune": int(meta.get("finetune", {}).get("blocks", 0)),
        "finetune_params": meta.get("finetune", {}).get("params") or {},
    }


def restore(cls: type, path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """Rebuild a fitted classifier of type ``cls`` from a model directory; ``kwargs`` are the options chosen per
    run (:meth:`~transferlab.features.FeatureOptions.runtime_fields`) and ``engine``."""
    runtime = (*Options.runtime_fields(), "engine")
    unknown = sorted(set(kwargs) - set(runtime))
    if unknown:
        raise TransferlabError(f"load() takes options chosen per run ({', '.join(runtime)}), not {', '.join(unknown)}")
    meta, arrays = load_artifact(path)
    saved = _saved_options(meta)
    clf = cls(**{k: v for k, v in saved.items() if k in Options.model_fields}, **kwargs)
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
        if not k.startswith((FALLBACK_PREFIX, FINETUNED_PREFIX, GALLERY_PREFIX)) and k != TRAINING_HASHES
    }
    if "gallery" in meta:  # read (and checked against its hash) when enrol, forget or explain need it
        clf.saved_gallery_ = ({k: v for k, v in arrays.items() if k.startswith(GALLERY_PREFIX)}, meta["gallery"])
    head_arrays = {k: v for k, v in own.items() if not k.startswith("open_set.")}
    if TRAINING_HASHES in arrays:
        clf.training_hashes_ = [row.tobytes().hex() for row in np.asarray(arrays[TRAINING_HASHES], np.uint8)]
    clf.head_ = opts.kind.restore(_head_from(meta, head_arrays, path), meta, own, opts, path)
    clf.classes_ = np.asarray(meta["classes"]).astype(str)
    clf.extractor_ = clf.build_extractor(opts, expected=meta["backbone"].get("weights_sha256"), tuned=tuned or None)
    fmeta = meta.get("fallback")
    if fmeta:
        sub = {k.removeprefix(FALLBACK_PREFIX): v for k, v in arrays.items() if k.startswith(FALLBACK_PREFIX)}
        fx = clf.build_extractor(
            opts.features_of(fmeta["backbone"]["name"]), expected=fmeta["backbone"].get("weights_sha256")
        )
        clf.fallback_ = Fallback(fx, _head_from(fmeta, sub, path))
    clf.meta_ = {k: v for k, v in meta.items() if k in ("training_data", "split", "evaluation", "intake")}
    clf.model_meta_ = meta
    clf.model_dir_ = str(path)
    return clf
