"""Serve: a saved model behind a JSON API and the "Who's my President?" web page.

``create_app(model_dir)`` loads the model once and returns a FastAPI app:

- ``GET /``: the page (static HTML, CSS and JS shipped in ``transferlab/serve/static``; no network resource).
- ``POST /api/predict``: a photo in the multipart field ``file`` → one entry per face (box, label, probabilities).
- ``GET /api/model``: backbone, head, classes and held-out accuracy from the model's report.
- ``GET /api/gallery/{content_hash}`` (with ``gallery_dir``): a small crop of a training photo an answer resembles,
  read from that folder; answers then carry an ``explanation``.
- ``POST`` / ``DELETE /api/people/{name}`` (with ``admin_token_file`` only; bearer token, compared in constant
  time; 401 without detail otherwise): enrol uploaded photos of a person, or forget one. The changed model is saved
  (one atomic switch) and swapped in under the model's lock: a prediction sees the old model or the new one.
- ``GET /healthz``; the OpenAPI document at ``/openapi.json`` and ``/docs`` (Swagger UI served from the
  ``fastapi-offline`` package, not a CDN).

Uploaded photos never touch the disk: the request body is streamed through a multipart parser into memory (Starlette's
own form parser would spool files over 1 MB to a temporary file), the model runs without the feature cache, and
nothing about an upload is logged. Inference runs in a worker thread under one lock, because OpenCV's detector and
recogniser objects keep per-call state (``setInputSize``) and intake's decoder sets process-wide limits while it runs.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import socket
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..errors import TransferlabError
from .schemas import Health, ModelInfo, PredictResponse
from .service import STATIC_DIR, ModelService
from .upload import MULTIPART_OVERHEAD, UploadRejected, error_responses, read_uploads

__all__ = ["DEFAULT_MAX_UPLOAD_BYTES", "MULTIPART_OVERHEAD", "ModelService", "create_app"]

DEFAULT_MAX_UPLOAD_BYTES = 10 * 1024 * 1024
UPLOADS_IN_FLIGHT = 16  # requests whose bodies are held in memory at once; later ones wait before reading theirs
UPLOAD_TIMEOUT_S = 60.0  # a body still arriving after this long is refused, so slow senders cannot hold every slot

# The page is same-origin only: this header makes the browser refuse any network resource but our own.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


class PageFiles(StaticFiles):
    """The page's static files, with the same no-network policy headers as the page."""

    async def get_response(self, path: str, scope: Any) -> Any:
        response = await super().get_response(path, scope)
        response.headers.update(PAGE_HEADERS)
        return response


def create_app(
    model_dir: str | os.PathLike[str],
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    *,
    weights: str | os.PathLike[str] | None = None,
    uploads_in_flight: int = UPLOADS_IN_FLIGHT,
    upload_timeout_s: float = UPLOAD_TIMEOUT_S,
    admin_token_file: str | os.PathLike[str] | None = None,
    gallery_dir: str | os.PathLike[str] | None = None,
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
    admin_token_file
        A file holding the bearer token of the admin routes (``POST`` and ``DELETE /api/people/{name}``: enrol
        and forget); without it those routes do not exist.
    gallery_dir
        The folder the model was trained from: answers then carry the nearest training photos, served (as small
        crops) from this folder only.

    Returns
    -------
    fastapi.FastAPI
        Run it with uvicorn (``transferlab serve`` does).
    """
    from fastapi_offline import FastAPIOffline

    if max_upload_bytes < 1:
        raise TransferlabError(f"--max-upload-mb must be positive, not {max_upload_bytes / (1024 * 1024):g}")
    token = read_token(admin_token_file) if admin_token_file is not None else None
    service = ModelService(model_dir, weights=weights, gallery_dir=gallery_dir)
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

    async def with_uploads(request: Request, max_files: int, work: Any) -> Any:
        """Read up to ``max_files`` uploads in one of the upload slots, within the time allowed, and run ``work``
        on them in a worker thread; the slot is held until it is done, as long as the bodies are in memory."""
        async with gate:
            try:
                async with asyncio.timeout(upload_timeout_s):
                    got = await read_uploads(request, max_upload_bytes, max_files=max_files)
            except TimeoutError:
                raise UploadRejected(
                    408, "too slow", f"the upload took longer than {upload_timeout_s:g} s; try again"
                ) from None
            return await run_in_threadpool(work, got)

    @app.post(
        "/api/predict",
        response_model=PredictResponse,
        response_model_exclude_none=True,
        responses=error_responses(),
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
        return await with_uploads(request, 1, lambda got: service.predict(got[0][1]))

    if token is not None:
        _admin_routes(app, service, token, with_uploads)

    if gallery_dir is not None:

        @app.get("/api/gallery/{content_hash}", include_in_schema=False)
        async def gallery_photo(content_hash: str) -> Response:
            """A training photo the answer resembles (a small crop), from the ``--gallery`` folder."""
            data = await run_in_threadpool(service.gallery_photo, content_hash)
            return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})

    @app.get("/api/model", response_model=ModelInfo, summary="The served model")
    async def model_info() -> Any:
        """Backbone, head, classes and the held-out accuracy measured when the model was trained."""
        return service.info(max_upload_bytes)

    @app.get("/healthz", response_model=Health, summary="Liveness")
    async def healthz() -> Any:
        return {"status": "ok", "model": service.model_dir.name}

    @app.get("/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", PageFiles(directory=STATIC_DIR), name="static")
    return app


ENROL_MAX_FILES = 50  # photos per enrolment request, each within the upload limit


def read_token(path: str | os.PathLike[str]) -> str:
    """The admin bearer token from its file (one line; at least 16 characters)."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise TransferlabError(f"--admin-token-file {path}: cannot read it ({exc})") from None
    if len(token) < 16 or any(c.isspace() for c in token):
        raise TransferlabError(
            f"--admin-token-file {path}: the token should be one line of at least 16 characters without spaces "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE)"
        )
    return token


def _admin_routes(app: FastAPI, service: ModelService, token: str, uploads: Any) -> None:
    """``POST`` / ``DELETE /api/people/{name}``, behind a bearer token compared in constant time."""

    def authorised(request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(given.encode(), token.encode())

    def refused() -> Response:
        return Response(status_code=401, headers={"WWW-Authenticate": "Bearer"})

    @app.post("/api/people/{name}", summary="Enrol photos of a person (admin)")
    async def enrol(name: str, request: Request) -> Any:
        """Add the photos (multipart fields ``file``, up to 50) to person ``name``, new or known; the model is
        refitted, saved and served. Needs ``Authorization: Bearer <token>``."""
        if not authorised(request):
            return refused()
        return await uploads(request, ENROL_MAX_FILES, lambda got: service.enroll(name, got))

    @app.delete("/api/people/{name}", summary="Forget a person (admin)")
    async def forget(name: str, request: Request) -> Any:
        """Remove person ``name`` from the model and the cache; the model is refitted, saved and served. Needs
        ``Authorization: Bearer <token>``."""
        if not authorised(request):
            return refused()
        return await run_in_threadpool(service.forget, name)


def check_port_free(host: str, port: int) -> None:
    """Fail in one line, before the model loads, when ``host:port`` cannot be listened on."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise TransferlabError(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            s.bind(address)
        except OSError as exc:
            raise TransferlabError(
                f"--host {host} --port {port}: cannot listen there ({exc.strerror}); pass another --port"
            ) from None
