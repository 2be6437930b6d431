"""Serve: a saved model behind a JSON API and the "Who's my President?" web page.

``create_app(model_dir)`` loads the model once and returns a FastAPI app:

- ``GET /``: the page (static HTML, CSS and JS shipped in ``transferlab/serve/static``; no network resource).
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
import logging
import os
import socket
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from .._version import __version__
from ..errors import TransferlabError
from .schemas import Health, ModelInfo, PredictResponse
from .service import STATIC_DIR, ModelService
from .upload import MULTIPART_OVERHEAD, UploadRejected, error_responses, read_upload

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
        return FileResponse(STATIC_DIR / "index.html", headers=PAGE_HEADERS)

    app.mount("/static", PageFiles(directory=STATIC_DIR), name="static")
    return app


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
