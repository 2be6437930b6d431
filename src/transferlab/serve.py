"""Serve: a saved model behind a JSON API and the "Who's my President?" web page.

``create_app(model_dir)`` loads the model once and returns a FastAPI app:

- ``GET /``: the page (static HTML, CSS and JS shipped in ``transferlab/static``; no network resource).
- ``POST /api/predict``: a photo in the multipart field ``file`` → one entry per face (box, label, probabilities).
- ``GET /api/model``: backbone, head, classes and held-out accuracy from the model's report.
- ``GET /healthz``; the OpenAPI document at ``/openapi.json`` and ``/docs`` (Swagger UI served from the
  ``fastapi-offline`` package, not a CDN).

Uploaded photos never touch the disk: the request body is streamed through a multipart parser into memory (Starlette's
own form parser would spool files over 1 MB to a temporary file), the model runs without the feature cache, and
nothing about an upload is logged. Inference runs in a worker thread under one lock, because OpenCV's detector and
recogniser objects keep per-call state (``setInputSize``) and intake's decoder sets process-wide limits while it runs.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import math
import os
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect

from . import __version__
from .errors import TransferlabError
from .intake import MAX_PIXELS, ImageRejected, load_rgb

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
MULTIPART_OVERHEAD = 64 * 1024  # room for part headers and boundaries around the file in the request body
UPLOADS_IN_FLIGHT = 16  # requests whose bodies are held in memory at once; later ones wait before reading theirs
UPLOAD_TIMEOUT_S = 60.0  # a body still arriving after this long is refused, so slow senders cannot hold every slot
STATIC_DIR = Path(__file__).with_name("static")
EXAMPLES_DIR = STATIC_DIR / "examples"

# intake's reasons → HTTP status: not a picture at all is an unsupported media type; a picture we cannot use is 422.
_STATUS_FOR_REASON = {
    "not an image": 415,
    "unsupported format": 415,
    "zero-byte": 422,
    "truncated": 422,
    "unreadable": 422,
    "decompression bomb": 422,
    "too small": 422,
}

# The page is same-origin only: this header makes the browser refuse any network resource but our own.
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# -- response models (they are the OpenAPI schema, and FastAPI checks every answer against them) --------------------
class Face(BaseModel):
    """One face (face models) or the whole photo (whole-image models and the no-face fallback)."""

    box: list[float] | None = Field(
        None,
        description="x, y, width, height in pixels of the upright photo (EXIF rotation applied); "
        "absent for whole-image answers",
        min_length=4,
        max_length=4,
    )
    label: str = Field(description="the predicted class, or 'unknown' for a face not close enough to any class")
    probabilities: dict[str, float] = Field(description="probability of every class")
    face_score: float | None = Field(None, description="face detector confidence")
    similarity: float | None = Field(None, description="cosine similarity to the predicted class's mean face")
    answer: bool = Field(description="true for the face the photo's answer comes from")


class ImageSize(BaseModel):
    """Size of the upright photo that ``box`` coordinates refer to."""

    width: int
    height: int


class PredictResponse(BaseModel):
    """The answer for one photo."""

    faces: list[Face] = Field(description="one entry per detected face; one entry without a box for whole-image models")
    image: ImageSize
    label: str | None = Field(None, description="the photo's answer (absent when no face was found)")
    message: str | None = Field(None, description="'no face found', or how the answer was reached when unusual")
    fallback: bool | None = Field(None, description="true when a whole-image fallback model answered")


class ErrorResponse(BaseModel):
    """Why a request was refused."""

    detail: str = Field(description="what was wrong and what to do")
    reason: str = Field(description="a short machine-readable reason, e.g. 'not an image' or 'too large'")


class GroupAccuracy(BaseModel):
    accuracy: float
    n: int


class Example(BaseModel):
    url: str
    label: str
    caption: str


class ModelInfo(BaseModel):
    """Facts about the served model."""

    backbone: str
    architecture: str | None = None
    head: str
    classes: list[str]
    face_model: bool
    accuracy: float | None = Field(None, description="held-out accuracy from the model's training report")
    accuracy_ci95: list[float] | None = None
    n_test: int | None = Field(None, description="held-out photos the accuracy was measured on")
    group_by: str | None = None
    groups: dict[str, GroupAccuracy] | None = None
    unknown_threshold: float | None = None
    fallback: str | None = None
    created: str | None = None
    transferlab_version: str
    max_upload_bytes: int
    examples: list[Example] = Field(default_factory=list, description="bundled photos the page offers to try")


class Health(BaseModel):
    status: str
    model: str


# -- errors ---------------------------------------------------------------------------------------------------------
class UploadRejected(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def _error_responses() -> dict[int | str, dict[str, Any]]:
    return {
        408: {"model": ErrorResponse, "description": "the upload did not arrive in time"},
        413: {"model": ErrorResponse, "description": "the upload is larger than the server's limit"},
        415: {"model": ErrorResponse, "description": "not multipart/form-data, or the file is not a supported image"},
        422: {
            "model": ErrorResponse,
            "description": "empty body, no field 'file', malformed form, or an image that cannot be used "
            "(corrupt, truncated, too small, decompression bomb)",
        },
    }


# -- reading the upload ---------------------------------------------------------------------------------------------
def _too_large(limit: int) -> UploadRejected:
    return UploadRejected(
        413, "too large", f"the upload is larger than {_mb(limit)}; send a smaller photo (the server's limit)"
    )


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.4g} MB"


async def read_upload(request: Request, limit: int) -> bytes:
    """The bytes of the multipart field ``file``, read into memory and never more than ``limit`` of them.

    The body is refused from its ``Content-Length`` when that is already too large, and otherwise while it streams
    in, so a 1 GB request costs at most ``limit`` bytes of memory. Other form fields are read past and dropped.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    body_limit = limit + MULTIPART_OVERHEAD
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > body_limit:
        raise _too_large(limit)
    if ctype != b"multipart/form-data":
        async for chunk in _capped(request, body_limit, limit):
            if chunk:
                raise UploadRejected(
                    415,
                    "not multipart",
                    f"content type {ctype.decode('latin-1') or 'missing'}: send the photo as multipart/form-data "
                    "in the field 'file' (curl -F file=@photo.jpg)",
                )
        raise _empty_body()
    boundary = params.get(b"boundary")
    if not boundary:
        raise UploadRejected(422, "malformed form", "multipart/form-data without a boundary; let your client set it")

    parts: list[bytearray] = []
    state: dict[str, Any] = {"headers": {}, "current": None}  # the part being parsed

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        state["headers"][state.pop("field", b"").lower()] = state.pop("value", b"")

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        wanted = disposition.get(b"name") == b"file" and not parts
        state["current"] = bytearray() if wanted else None
        state["headers"] = {}

    def on_part_data(data: bytes, start: int, end: int) -> None:
        if state["current"] is not None:
            if len(state["current"]) + (end - start) > limit:
                raise _too_large(limit)
            state["current"] += data[start:end]

    def on_part_end() -> None:
        if state["current"] is not None:
            parts.append(state["current"])
            state["current"] = None

    parser = MultipartParser(
        boundary,
        {
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
        },
    )
    seen = 0
    try:
        async for chunk in _capped(request, body_limit, limit):
            seen += len(chunk)
            parser.write(chunk)
        parser.finalize()
    except (FormParserError, ValueError) as exc:
        raise UploadRejected(422, "malformed form", f"the multipart/form-data body is malformed ({exc})") from None
    if seen == 0:
        raise _empty_body()
    if not parts:
        raise UploadRejected(
            422, "no file", "the form has no complete field 'file'; send the photo as multipart field 'file'"
        )
    if not parts[0]:
        raise UploadRejected(422, "zero-byte", "the uploaded file is empty")
    return bytes(parts[0])


def _empty_body() -> UploadRejected:
    return UploadRejected(422, "empty body", "the request body is empty; send the photo as multipart field 'file'")


async def _capped(request: Request, body_limit: int, limit: int) -> AsyncIterator[bytes]:
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > body_limit:
                raise _too_large(limit)
            yield chunk
    except ClientDisconnect:
        raise UploadRejected(422, "incomplete body", "the client went away before the upload was complete") from None


# -- the model ------------------------------------------------------------------------------------------------------
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

    def __init__(self, model_dir: str | os.PathLike[str], *, weights: str | os.PathLike[str] | None = None) -> None:
        from .api import load

        self.model_dir = Path(model_dir)
        # use_cache=False: features of uploaded photos must not be written anywhere.
        self.clf = load(self.model_dir, weights=weights, use_cache=False, verbose=False, num_workers=0)
        self.lock = threading.Lock()
        self.is_face_model = self.clf.is_face_model
        backbone = self.clf.backbone_()  # build it now, not on the first request
        if self.is_face_model:
            from .features import FACE_DECODE_DRAFT

            self.draft: tuple[int, int] = FACE_DECODE_DRAFT
        else:
            self.draft = backbone.draft_size
        self.meta: dict[str, Any] = getattr(self.clf, "model_meta", {})
        self._warm_up()

    def _warm_up(self) -> None:
        """One prediction on a blank image, so lazy library set-up does not land on the first user."""
        from PIL import Image

        self.clf.predict_images([Image.new("RGB", (64, 64), (128, 128, 128))])

    def info(self, max_upload_bytes: int) -> dict[str, Any]:
        """The ``GET /api/model`` answer."""
        meta = self.meta
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
            "head": self.clf.head,
            "classes": classes,
            "face_model": self.is_face_model,
            "accuracy": _finite(evaluation.get("accuracy")),
            "accuracy_ci95": [_finite(v) for v in ci] if ci and all(_finite(v) is not None for v in ci) else None,
            "n_test": evaluation.get("n"),
            "group_by": evaluation.get("group_by"),
            "groups": {k: v for k, v in groups.items() if v["accuracy"] is not None} or None,
            "unknown_threshold": getattr(self.clf, "unknown_threshold_", None),
            "fallback": self.clf.fallback,
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
            # Face models get the decoded image (the pixels `transferlab predict` sees, decoded once); whole-image
            # models get the bytes, so their decoder takes the same path as `transferlab predict` too.
            source = decoded.image if self.is_face_model else data
            (pred,) = self.clf.predict_images([source], names=["upload"])
        return self._answer(pred, decoded)

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


class _PageFiles(StaticFiles):
    """The page's static files, with the same no-network policy headers as the page."""

    async def get_response(self, path: str, scope: Any) -> Any:
        response = await super().get_response(path, scope)
        response.headers.update(_PAGE_HEADERS)
        return response


# -- the app --------------------------------------------------------------------------------------------------------
def create_app(
    model_dir: str | os.PathLike[str],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    *,
    weights: str | os.PathLike[str] | None = None,
    uploads_in_flight: int = UPLOADS_IN_FLIGHT,
    upload_timeout_s: float = UPLOAD_TIMEOUT_S,
) -> FastAPI:
    """Load the model in ``model_dir`` once and return the web app that serves it.

    Parameters
    ----------
    model_dir
        Model directory written by ``transferlab train``.
    max_upload_bytes
        Largest photo accepted; larger uploads get 413.
    weights
        Local backbone weights file, for backbones that need one.
    uploads_in_flight
        Requests whose bodies may be read into memory at the same time; others wait their turn.
    upload_timeout_s
        Time allowed for a body to arrive once its turn has come; slower uploads get 408.

    Returns
    -------
    fastapi.FastAPI
        Run it with uvicorn (``transferlab serve`` does).
    """
    from fastapi_offline import FastAPIOffline

    if max_upload_bytes < 1:
        raise TransferlabError(f"--max-upload-mb must be positive, not {max_upload_bytes / (1024 * 1024):g}")
    service = ModelService(model_dir, weights=weights)
    # A malformed form is answered with 422; python-multipart would also log it, quoting bytes of the upload.
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)
    gate = asyncio.Semaphore(uploads_in_flight)
    app = FastAPIOffline(
        title="transferlab — Who's my President?",
        version=__version__,
        description="Upload a photo; get every face with the predicted person and the probability of each class. "
        "Photos are processed in memory and never stored or logged.",
        redoc_url=None,
    )
    app.state.service = service

    @app.exception_handler(UploadRejected)
    async def _rejected(_: Request, exc: UploadRejected) -> JSONResponse:
        return JSONResponse({"detail": exc.detail, "reason": exc.reason}, status_code=exc.status)

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=_error_responses(),
        summary="Who is in this photo?",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "multipart/form-data": {
                        "schema": {
                            "type": "object",
                            "properties": {"file": {"type": "string", "format": "binary"}},
                            "required": ["file"],
                        }
                    }
                },
            }
        },
    )
    async def predict(request: Request) -> Any:
        """Every face in the photo (field ``file``) with its box, predicted label and class probabilities."""
        async with gate:
            try:
                async with asyncio.timeout(upload_timeout_s):
                    data = await read_upload(request, max_upload_bytes)
            except TimeoutError:
                raise UploadRejected(
                    408, "too slow", f"the upload took longer than {upload_timeout_s:g} s; try again"
                ) from None
            return await run_in_threadpool(service.predict, data)

    @app.get("/api/model", response_model=ModelInfo, summary="The served model")
    async def model_info() -> Any:
        """Backbone, head, classes and the held-out accuracy measured when the model was trained."""
        return service.info(max_upload_bytes)

    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Any:
        return {"status": "ok", "model": service.model_dir.name}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=_PAGE_HEADERS)

    app.mount("/static", _PageFiles(directory=STATIC_DIR), name="static")
    return app
