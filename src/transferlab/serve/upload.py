"""Reading an upload: the multipart field ``file`` streamed into memory (never to disk), within a size limit."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect

from .schemas import ErrorResponse

MULTIPART_OVERHEAD = 64 * 1024  # room for part headers and boundaries around the file in the request body


class UploadRejected(Exception):
    """A request the server refuses, with its HTTP status."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


def error_responses() -> dict[int | str, dict[str, Any]]:
    """The error answers of ``POST /api/predict``, for its OpenAPI description."""
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


def _too_large(limit: int) -> UploadRejected:
    return UploadRejected(
        413, "too large", f"the upload is larger than {_mb(limit)}; send a smaller photo (the server's limit)"
    )


def _mb(n: int) -> str:
    return f"{n / (1024 * 1024):.4g} MB"


async def read_uploads(request: Request, limit: int, *, max_files: int) -> list[tuple[str, bytes]]:
    """``(file name, bytes)`` of up to ``max_files`` multipart fields named ``file``, each read into memory and
    never more than ``limit`` bytes of it.

    The body is refused from its ``Content-Length`` when that is already too large, and otherwise while it streams
    in, so a 1 GB request costs at most about ``max_files × limit`` bytes of memory. Further files and other form
    fields are read past and dropped.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    body_limit = max_files * (limit + MULTIPART_OVERHEAD)
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
    names: list[str] = []
    state: dict[str, Any] = {"headers": {}, "current": None}  # the part being parsed

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state.get("field", b"") + data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state.get("value", b"") + data[start:end]

    def on_header_end() -> None:
        state["headers"][state.pop("field", b"").lower()] = state.pop("value", b"")

    def on_headers_finished() -> None:
        _, disposition = parse_options_header(state["headers"].get(b"content-disposition", b""))
        wanted = disposition.get(b"name") == b"file" and len(parts) < max_files
        state["current"] = bytearray() if wanted else None
        if wanted:
            names.append(disposition.get(b"filename", b"").decode("utf-8", "replace") or f"upload {len(names)}")
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
    if not all(parts):
        raise UploadRejected(422, "zero-byte", "the uploaded file is empty")
    return [(n, bytes(p)) for n, p in zip(names, parts, strict=False)]


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
