"""The annotation bridge: the HTTP side of surgflow that Label Studio and browsers talk to.

- ``GET /media/<key>.mp4?exp=&sig=``: a people-media file by signed, expiring link
  (:mod:`surgflow.annotation.links`), with byte ranges so the player seeks. Nothing but a
  people-media proxy can be named, so no path outside them is ever served.
- ``POST /webhooks/label-studio``: Label Studio's ``ANNOTATION_CREATED``/``UPDATED`` webhooks,
  which must carry the bridge's bearer token. Each annotation is sent on at once as an
  annotation event (the fast path); the periodic sync (:mod:`surgflow.annotation.sync`) sends
  whatever a webhook missed, under the same event id.
- ``GET /healthz``.
"""

from __future__ import annotations

import hmac
import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import FileResponse

from surgflow.annotation.links import MediaLinks, record_bridge
from surgflow.config import Settings
from surgflow.data.proxies import ProxyStore

log = logging.getLogger(__name__)
ACTIONS = {"ANNOTATION_CREATED", "ANNOTATION_UPDATED"}


class Returns:
    """The webhook's Label Studio client and producer, made on first use."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.lock = threading.Lock()
        self.client = None
        self.publisher = None

    def send(self, task: dict[str, Any], annotation: dict[str, Any]) -> str | None:
        from surgflow.annotation.labelstudio import LabelStudio
        from surgflow.annotation.server import endpoint
        from surgflow.annotation.sync import ReturnLedger, return_annotation
        from surgflow.feedback.client import Publisher

        with self.lock:
            if self.client is None:
                self.client = LabelStudio(endpoint(self.settings, start_embedded=False))
            if self.publisher is None:
                self.publisher = Publisher.from_settings(self.settings)
            ledger = ReturnLedger(self.settings.home)
            event = return_annotation(self.client, self.publisher, ledger, task, annotation)
            if event is None:
                return None
            self.publisher.flush()
            ledger.mark_sent(event)
            return event["event_id"]

    def close(self) -> None:
        if self.publisher is not None:
            self.publisher.close()


def create_app(settings: Settings, public_url: str) -> FastAPI:
    links = MediaLinks.for_home(settings.home, public_url)
    store = ProxyStore(settings.home)
    returns = Returns(settings)
    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        record_bridge(settings.home, public_url, os.getpid())
        try:
            yield
        finally:
            returns.close()

    app = FastAPI(title="surgflow annotation bridge", docs_url=None, redoc_url=None,
                  lifespan=lifespan)
    # Label Studio's player fetches media from its own page's origin; the signed link, not
    # the origin, is what admits a request, and no cookie is ever read
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET"],
                       allow_headers=["Range"],
                       expose_headers=["Accept-Ranges", "Content-Range", "Content-Length"])

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/media/{name}")
    def media(name: str, exp: int, sig: str) -> FileResponse:
        key = name.removesuffix(".mp4")
        why = links.check(key, exp, sig)
        if why is not None:
            raise HTTPException(403, f"media link refused: {why}")
        path = store.root / key[:2] / f"{key}.mp4"
        if not path.is_file():
            raise HTTPException(404, "no such media")
        return FileResponse(path, media_type="video/mp4",
                            headers={"Cache-Control": "private, max-age=3600"})

    @app.post("/webhooks/label-studio")
    async def webhook(request: Request, authorization: str = Header("")) -> dict[str, Any]:
        expected = f"Bearer {links.webhook_token}"
        if not hmac.compare_digest(authorization, expected):
            raise HTTPException(401, "missing or wrong bearer token")
        try:
            body = await request.json()
        except ValueError as e:
            raise HTTPException(400, f"body is not JSON: {e}") from e
        action = body.get("action") if isinstance(body, dict) else None
        if action not in ACTIONS:
            return {"action": action, "sent": None}
        task, annotation = body.get("task"), body.get("annotation")
        if not isinstance(task, dict) or not isinstance(annotation, dict):
            raise HTTPException(400, "payload has no task or annotation object")
        from starlette.concurrency import run_in_threadpool

        sent = await run_in_threadpool(returns.send, task, annotation)
        return {"action": action, "sent": sent}

    return app


def serve(settings: Settings, host: str, port: int, public_url: str | None = None) -> None:
    import uvicorn

    url = public_url or settings.annotation_url or f"http://{host}:{port}"
    uvicorn.run(create_app(settings, url), host=host, port=port, log_level="warning")
