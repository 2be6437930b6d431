"""The served model: loaded once, used under one lock, answering a photo's bytes with every face it finds."""

from __future__ import annotations

import copy
import io
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._version import __version__
from ..backbones import get_backbone_cfg
from ..cache import default_cache_dir, purge
from ..decode import MAX_PIXELS, ImageRejected, content_hash, load_rgb
from ..engines import as_engine
from ..errors import TransferlabError
from ..pipeline import load
from .upload import UploadRejected

STATIC_DIR = Path(__file__).with_name("static")
EXAMPLES_DIR = STATIC_DIR / "examples"

# decoding's reasons → HTTP status: not a picture at all is an unsupported media type; a picture we cannot use is 422.
_STATUS_FOR_REASON = {
    "not an image": 415,
    "unsupported format": 415,
    "zero-byte": 422,
    "truncated": 422,
    "unreadable": 422,
    "decompression bomb": 422,
    "too small": 422,
}


@dataclass
class _Decoded:
    image: Any  # PIL image, decoded the way the model decodes
    width: int  # upright size of the photo the client sent (box coordinates refer to it)
    height: int


class ModelService:
    """A loaded classifier and the lock that serialises its use.

    Parameters
    ----------
    model_dir
        Directory written by ``transferlab train``.
    weights
        Local backbone weights file, for backbones that need one.
    """

    def __init__(
        self,
        model_dir: str | os.PathLike[str],
        *,
        weights: str | os.PathLike[str] | None = None,
        gallery_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        self.model_dir = Path(model_dir)
        # use_cache=False: features of uploaded photos must not be written anywhere.
        self.clf = load(self.model_dir, weights=weights, use_cache=False, verbose=False, num_workers=0)
        self.lock = threading.Lock()  # the model in use: predictions and the features of an enrolment
        self.change_lock = threading.Lock()  # enrolments and forgets, one at a time
        self.gallery_dir = Path(gallery_dir).resolve() if gallery_dir is not None else None
        if self.gallery_dir is not None:
            if not self.gallery_dir.is_dir():
                raise TransferlabError(
                    f"--gallery {gallery_dir}: not a folder; give the folder the model was trained from"
                )
            self.clf.gallery()  # one line at start when the model keeps no gallery
        self.kind = self.clf.options_.kind
        backbone = self.clf.extractor_.backbone.build()  # located, checked and built now, not on the first request
        self.draft: tuple[int, int] = backbone.draft_size
        self.meta: dict[str, Any] = self.clf.model_meta_
        self._warm_up()

    def _warm_up(self) -> None:
        """One prediction on a blank image, so lazy library set-up does not land on the first user."""
        from PIL import Image

        self.clf.predict_images([Image.new("RGB", (64, 64), (128, 128, 128))])

    def info(self, max_upload_bytes: int) -> dict[str, Any]:
        """The ``GET /api/model`` answer."""
        meta = self.meta
        cfg = get_backbone_cfg(self.clf.backbone)
        evaluation = meta.get("evaluation", {})
        classes = [str(c) for c in self.clf.classes_]
        ci = evaluation.get("accuracy_ci95")
        groups = {
            str(k): {"accuracy": _finite(v.get("accuracy")), "n": v.get("n", 0)}
            for k, v in (evaluation.get("groups") or {}).items()
        }
        return {
            "backbone": self.clf.backbone,
            "architecture": meta.get("backbone", {}).get("architecture"),
            # the licence of the weights the model runs on (recorded at training; a model from before: the registry's)
            "license": meta.get("backbone", {}).get("license", cfg.license),
            "noncommercial": bool(meta.get("backbone", {}).get("noncommercial", cfg.noncommercial)),
            "head": self.clf.head,
            "classes": classes,
            "face_model": self.kind.answers_with_faces,
            "accuracy": _finite(evaluation.get("accuracy")),
            "accuracy_ci95": [_finite(v) for v in ci] if ci and all(_finite(v) is not None for v in ci) else None,
            "n_test": evaluation.get("n"),
            "group_by": evaluation.get("group_by"),
            "groups": {k: v for k, v in groups.items() if v["accuracy"] is not None} or None,
            "unknown_threshold": self.kind.threshold(self.clf.head_),
            "fallback": self.clf.fallback,
            "recipe": self.clf.recipe,
            "recipe_note": self.clf.recipe_note_,
            "created": meta.get("created"),
            "transferlab_version": __version__,
            "max_upload_bytes": max_upload_bytes,
            "examples": bundled_examples(classes),
        }

    def _decode(self, data: bytes) -> _Decoded:
        try:
            img = load_rgb(data, draft=self.draft)
        except ImageRejected as exc:
            raise UploadRejected(_STATUS_FOR_REASON.get(exc.reason, 422), exc.reason, _rejection_text(exc)) from None
        width, height = _upright_size(data, img.size)
        return _Decoded(img, width, height)

    def predict(self, data: bytes) -> dict[str, Any]:
        """The ``POST /api/predict`` answer for a photo's bytes (raises :class:`UploadRejected`)."""
        with self.lock:
            decoded = self._decode(data)
            # The model gets the photo decoded once, at its backbone's draft size: the pixels `transferlab predict`
            # decodes from the file (Pillow and libjpeg-turbo decode alike: tested).
            clf = self.clf
            explain = 3 if self.gallery_dir is not None else 0
            (pred,) = clf.predict_images([decoded.image], names=["upload"], explain=explain)
        answer = self._answer(pred, decoded)
        if pred.explanation is not None:
            answer["explanation"] = _with_urls(pred.explanation.to_dict(), clf.gallery())
        return answer

    # -- people: changes to the served model (admin routes) -------------------------------------------------------
    def enroll(self, name: str, uploads: list[tuple[str, bytes]]) -> dict[str, Any]:
        """Add uploaded photos of ``name`` to the model, save it (one atomic switch on disk) and serve it; returns
        the change (``enroll --json``'s keys). Unusable photos are skipped and listed; none usable is a 422."""
        from .. import people

        with self.change_lock:
            photos, hashes, paths, skipped = [], [], [], []
            for filename, data in uploads:
                shown = f"{name}/{Path(filename).name or 'upload'}"
                try:  # decoded whole, as intake does: the pixel hash is the one a file of this photo gets
                    hashes.append(content_hash(load_rgb(data)))
                except ImageRejected as exc:
                    skipped.append((shown, exc.reason, exc.detail))
                    continue
                photos.append(data)  # featurized from its bytes, as `transferlab enroll` does from the file
                paths.append(shown)
            new = copy.copy(self.clf)  # changed by assignment only: self.clf answers as before meanwhile
            with self.lock:  # the extractor (and the detector's per-call state) is shared with the model in use
                try:
                    change = people.enroll(new, name, photos, hashes, paths, engine=as_engine(None), skipped=skipped)
                except TransferlabError as exc:
                    raise UploadRejected(422, "not enrolled", str(exc)) from None
            return self._switch(new, change.to_dict())

    def forget(self, name: str) -> dict[str, Any]:
        """Remove ``name`` from the served model and save it; 404 when the model does not know the name."""
        from .. import people

        with self.change_lock:
            if name not in set(self.clf.gallery().labels.tolist()):
                raise UploadRejected(404, "unknown person", f"{name}: not a person this model knows")
            new = copy.copy(self.clf)
            try:
                change = people.forget(new, name, engine=as_engine(None))
            except TransferlabError as exc:
                raise UploadRejected(422, "not forgotten", str(exc)) from None
            root = default_cache_dir()  # where `train` cached the photos' features (this server caches none)
            purged = {"dir": str(root), **purge(root, change.removed_hashes)}
            return {**self._switch(new, change.to_dict()), "cache": purged}

    def _switch(self, new: Any, change: dict[str, Any]) -> dict[str, Any]:
        """Save the changed model (a failed save changes nothing), then serve it."""
        from ..enrolment import commit

        try:
            commit(new, self.model_dir)
        except OSError as exc:
            raise UploadRejected(500, "not saved", f"the changed model could not be saved ({exc.strerror})") from None
        with self.lock:
            self.clf = new
            self.meta = new.model_meta_ = json.loads((self.model_dir / "model.json").read_text())
        return {**change, "classes": [str(c) for c in new.classes_]}

    def gallery_photo(self, wanted: str) -> bytes:
        """A training photo of the gallery as a small JPEG (a face model: its chosen face), read from the
        ``--gallery`` folder; 404 unless that folder has the photo with the same pixels."""
        from PIL import Image

        from ..decode import read_rgb

        missing = UploadRejected(404, "not found", "no such photo in the gallery folder")
        if self.gallery_dir is None:
            raise missing
        gallery = self.clf.gallery()
        try:
            i = gallery.hashes.index(wanted)
        except ValueError:
            raise missing from None
        path = (self.gallery_dir / gallery.paths[i]).resolve()
        if not path.is_relative_to(self.gallery_dir) or not path.is_file():
            raise missing
        try:
            img = read_rgb(path)
        except (ImageRejected, OSError):
            raise missing from None
        if content_hash(img) != wanted:  # the folder's file is not the photo the model was trained on
            raise missing
        box = gallery.columns.get("box")
        if box is not None:
            x, y, w, h = (float(v) for v in box[i])
            m = 0.25 * max(w, h)
            img = img.crop((max(0, x - m), max(0, y - m), min(img.width, x + w + m), min(img.height, y + h + m)))
        img.thumbnail((160, 160), Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=85)
        return buf.getvalue()

    def _answer(self, pred: Any, decoded: _Decoded) -> dict[str, Any]:
        out: dict[str, Any] = {"image": {"width": decoded.width, "height": decoded.height}}
        if pred.error is not None:
            if pred.error == "no face found":
                return {**out, "faces": [], "message": "no face found"}
            raise UploadRejected(422, "unreadable", f"the photo could not be used ({pred.error})")
        sx = decoded.width / decoded.image.width
        sy = decoded.height / decoded.image.height
        if pred.faces:
            faces = [
                {
                    "box": [round(v * s, 1) for v, s in zip(f["box"], (sx, sy, sx, sy), strict=True)],
                    "label": f["label"],
                    "probabilities": _rounded(f["probabilities"]),
                    "face_score": f["face_score"],
                    "similarity": f["similarity"],
                    "answer": bool(f["answer"]),
                }
                for f in pred.faces
            ]
            out.update(faces=faces, label=pred.label)
            if pred.label == "unknown":
                out["message"] = "no face is close enough to a person this model knows"
            return out
        entry = {"label": pred.label, "probabilities": _rounded(pred.probabilities), "answer": True}
        out.update(faces=[entry], label=pred.label)
        if pred.fallback:
            out.update(fallback=True, message=f"no face found; the whole-image model ({self.clf.fallback}) answered")
        return out


def _with_urls(explanation: dict[str, Any], gallery: Any) -> dict[str, Any]:
    """The explanation with each neighbour's photo URL (``GET /api/gallery/{content hash}``) instead of its path."""
    by_path = dict(zip(gallery.paths, gallery.hashes, strict=True))
    for n in explanation["neighbours"]:
        h = by_path.get(n.pop("path"))
        if h is not None:
            n["url"] = f"/api/gallery/{h}"
    return explanation


def _finite(x: Any) -> float | None:
    """A number JSON can carry: NaN (e.g. the accuracy of an empty test side) becomes null."""
    return float(x) if isinstance(x, int | float) and math.isfinite(x) else None


def _rounded(probabilities: dict[str, float]) -> dict[str, float]:
    return {k: round(float(v), 6) for k, v in probabilities.items()}


def _rejection_text(exc: ImageRejected) -> str:
    advice = {
        "not an image": "upload a photo (JPEG, PNG, WebP, GIF, BMP or TIFF)",
        "unsupported format": "convert it to JPEG or PNG",
        "decompression bomb": f"photos may have at most {MAX_PIXELS:,} pixels",
        "too small": "upload a larger photo",
        "truncated": "the file is incomplete; upload it again",
        "unreadable": "the file is damaged; try another photo",
        "zero-byte": "the uploaded file is empty",
    }.get(exc.reason, "try another photo")
    return f"{exc}; {advice}"


def _upright_size(data: bytes, decoded: tuple[int, int]) -> tuple[int, int]:
    """Size of the upright photo as sent: JPEG draft mode may have decoded it smaller than that."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:  # header only; load_rgb already accepted these bytes
        w, h = img.size
    if decoded in ((w, h), (h, w)):
        return decoded
    # Draft mode scaled both sides alike; EXIF rotation may have swapped them.
    return (w, h) if (decoded[0] >= decoded[1]) == (w >= h) else (h, w)


def bundled_examples(classes: list[str]) -> list[dict[str, str]]:
    """The example photos shipped with the page whose people this model knows."""
    try:
        listed = json.loads((EXAMPLES_DIR / "examples.json").read_text())
    except (OSError, ValueError):
        return []
    known = set(classes)
    return [
        {"url": f"/static/examples/{e['file']}", "label": e["label"], "caption": e["caption"]}
        for e in listed
        if e["label"] in known and (EXAMPLES_DIR / e["file"]).is_file()
    ]
