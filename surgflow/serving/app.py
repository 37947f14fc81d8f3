"""The HTTP API of SPEC §8 as a FastAPI app over a :class:`Service`.

Every route but ``/healthz`` needs ``Authorization: Bearer <token>``. The token is checked by an
ASGI middleware in front of routing and body parsing, so a request without it gets 401 whatever
its body or path; the comparison is constant-time (:func:`hmac.compare_digest`). The same
middleware refuses bodies over ``SURGFLOW_SERVE_MAX_BODY_BYTES`` (413) while they stream in.
Every error, FastAPI's own validation errors and unknown routes included, is
``{"error": "<reason>"}``. Analyses run in worker threads, at most ``SURGFLOW_SERVE_MAX_CONCURRENT``
at once (others wait their turn), so the event loop keeps answering.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from surgflow.data.registry import VIDEO_ID
from surgflow.errors import (
    BadInput,
    BrokerError,
    ConflictError,
    NotFound,
    SurgflowError,
    UnknownName,
    UnsafeURI,
    describe_validation,
    dotted,
)
from surgflow.serving.pool import NotServed

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/healthz"})
_bearer = HTTPBearer(auto_error=False, description="SURGFLOW_API_TOKEN of the service")


# ---- wire models (the OpenAPI schema) -------------------------------------------------------

class ErrorBody(BaseModel):
    error: str


class AnalyzeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    video_id: str = Field(pattern=VIDEO_ID.pattern, max_length=128,
                          description="id the inference event carries")
    uri: str = Field(min_length=1, max_length=4096,
                     description="local path or file:// URI inside SURGFLOW_VIDEO_ROOTS")
    procedure: str = Field(min_length=1, max_length=256)


class ModelRef(BaseModel):
    name: str
    version: int


class SegmentOut(BaseModel):
    start_frame: int
    end_frame: int
    label: str
    confidence: float


class KeyMoment(BaseModel):
    frame: int
    time_s: float
    from_label: str
    to_label: str


class AnalyzeResponse(BaseModel):
    video_id: str
    procedure: str
    model: ModelRef
    fps: float
    num_frames: int
    segments: list[SegmentOut]
    key_moments: list[KeyMoment]


class Rejected(BaseModel):
    version: int
    reason: str
    at: str


class ServedModel(BaseModel):
    name: str
    version: int | None
    loaded_at: str | None
    rejected: Rejected | None = None


class Health(BaseModel):
    status: str


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: {"model": ErrorBody} for c in codes}


# ---- exceptions to status codes -------------------------------------------------------------

def status_of(e: BaseException) -> int:
    """The HTTP status of an error raised while serving a request."""
    if isinstance(e, UnsafeURI):
        return 403
    if isinstance(e, (NotFound, UnknownName)):
        return 404
    if isinstance(e, (NotServed, ConflictError)):
        return 409
    if isinstance(e, BadInput):
        return 422
    if isinstance(e, BrokerError):
        return 503
    return 500


def _error(status: int, reason: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(reason).split())}, status_code=status,
                        headers=headers)


def _describe_validation(e: RequestValidationError) -> str:
    errors = e.errors()
    # FastAPI reports unparsable JSON as a validation error whose location ends in the character
    # offset and whose input is {}: say what the parser said, not "(got a mapping)".
    bad_json = next((err for err in errors if err["type"] == "json_invalid"), None)
    if bad_json is not None:
        return (f"request body is not valid JSON: {bad_json['ctx']['error']} "
                f"at character {bad_json['loc'][-1]}")
    return "request body does not match the schema: " + describe_validation(e, _body_field)


def _body_field(loc: tuple[int | str, ...]) -> str:
    return dotted(tuple(p for p in loc if p != "body")) or "body"


# ---- token and body-size guard ---------------------------------------------------------------

def token_matches(header: str | None, token: str) -> bool:
    """Whether an ``Authorization`` header carries ``token`` (constant-time comparison)."""
    if not header:
        return False
    scheme, _, given = header.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), token.encode())


class Guard:
    """ASGI middleware: bearer token on every path but ``/healthz``, bounded request bodies."""

    def __init__(self, app, *, token: str | None, max_body_bytes: int):
        self.app, self.token, self.max_body = app, token, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if (self.token is not None and scope.get("path") not in OPEN_PATHS
                and not token_matches(headers.get("authorization"), self.token)):
            reason = ("missing bearer token" if "authorization" not in headers
                      else "wrong bearer token")
            return await _send(send, 401, f"{reason}: send Authorization: Bearer <token>",
                               {"www-authenticate": "Bearer"})
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _send(send, 413, self._too_big(length))
        received = 0

        async def bounded_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    # FastAPI re-raises an HTTPException met while reading the body
                    raise HTTPException(413, self._too_big(f"over {received}"))
            return message

        await self.app(scope, bounded_receive, send)

    def _too_big(self, given: str) -> str:
        return (f"request body of {given} bytes exceeds the limit of {self.max_body} bytes "
                "(SURGFLOW_SERVE_MAX_BODY_BYTES)")


async def _send(send, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"error": reason}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


# ---- the app ---------------------------------------------------------------------------------

def create_app(service) -> FastAPI:
    """The FastAPI app of ``service`` (a :class:`surgflow.serving.server.Service`)."""
    app = FastAPI(title="surgflow inference service", version="1",
                  description="Phase timelines of surgical videos from each procedure's "
                              "production model chain (SPEC §8).",
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.add_middleware(Guard, token=service.token,
                       max_body_bytes=service.settings.serve_max_body_bytes)
    protected = [Security(_bearer)]

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException):
        reason = e.detail if isinstance(e.detail, str) else json.dumps(e.detail)
        if e.status_code == 404 and reason == "Not Found":
            reason = f"no route {request.method} {request.url.path}"
        return _error(e.status_code, reason, getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return _error(422, _describe_validation(e))

    @app.exception_handler(SurgflowError)
    async def _refused(request: Request, e: SurgflowError):
        status = status_of(e)
        if status >= 500:
            log.error("%s %s failed: %s", request.method, request.url.path, e)
        return _error(status, str(e))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception):
        # Starlette logs the traceback after this answer is sent
        return _error(500, f"internal error ({type(e).__name__}); see the service log")

    @app.get("/healthz", response_model=Health, tags=["service"])
    async def healthz():
        """Liveness: 200 while the process serves HTTP."""
        return {"status": "ok"}

    @app.get("/openapi.json", include_in_schema=False, dependencies=protected)
    async def openapi():
        return JSONResponse(app.openapi())

    @app.get("/v1/models", response_model=dict[str, ServedModel], tags=["models"],
             dependencies=protected, responses=_errors(401))
    async def models():
        """The production chain served for every procedure, and any version refused."""
        return service.pool.status()

    @app.post("/v1/analyze", response_model=AnalyzeResponse, tags=["analysis"],
              dependencies=protected, responses=_errors(401, 403, 404, 409, 413, 422, 503))
    async def analyze(body: AnalyzeRequest):
        """Analyse one video with its procedure's production chain; the same segments are
        published to the ``inference`` topic before the answer is sent."""
        return await service.analyze_async(body.video_id, body.uri, body.procedure)

    return app

