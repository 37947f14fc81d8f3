"""Signed, expiring links to people media, and the secret webhooks carry.

A link names a people-media proxy by its content key (64 hex digits, so it can name nothing
else) and an expiry, and is signed with HMAC-SHA256 under a key made once and kept in
``SURGFLOW_HOME/annotation/bridge.key`` (readable by its owner only). The annotation bridge
(:mod:`surgflow.annotation.bridge`) serves a link's file only while its signature holds and it
has not expired; the sync gives open tasks a fresh link before theirs runs out.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from surgflow.config import Settings
from surgflow.data.proxies import Proxy, ProxyStore
from surgflow.processes import pid_alive
from surgflow.storage import json_bytes, read_json, read_or_create, write_atomic

TTL = timedelta(days=7)
RENEW_BEFORE = timedelta(days=1)
KEY = re.compile(r"^[0-9a-f]{64}$")
STATE_FILE = "bridge.json"


def _secret(home: Path) -> bytes:
    return read_or_create(Path(home) / "annotation" / "bridge.key",
                          lambda: secrets.token_bytes(32))


def _sig(secret: bytes, text: str) -> str:
    return hmac.new(secret, text.encode(), hashlib.sha256).hexdigest()[:32]


@dataclass(frozen=True)
class MediaLinks:
    """Links under one bridge's public URL ``base``."""

    base: str
    secret: bytes

    @classmethod
    def for_home(cls, home: Path, base: str) -> MediaLinks:
        return cls(base.rstrip("/"), _secret(home))

    @property
    def webhook_url(self) -> str:
        return f"{self.base}/webhooks/label-studio"

    @property
    def webhook_token(self) -> str:
        return _sig(self.secret, "webhook")

    def media_url(self, proxy: Proxy, now: datetime | None = None) -> str:
        return self._link(ProxyStore.key(proxy.source_sha256, proxy.spec),
                          now or datetime.now(UTC))

    def _link(self, key: str, now: datetime) -> str:
        exp = int((now + TTL).timestamp())
        return f"{self.base}/media/{key}.mp4?exp={exp}&sig={_sig(self.secret, f'{key}:{exp}')}"

    def check(self, key: str, exp: int, sig: str, now: datetime | None = None) -> str | None:
        """Why the link ``key, exp, sig`` may not be served (None: it may)."""
        if not KEY.match(key):
            return "not a media key"
        if not hmac.compare_digest(sig, _sig(self.secret, f"{key}:{exp}")):
            return "bad signature"
        if (now or datetime.now(UTC)).timestamp() > exp:
            return "link expired"
        return None

    def renewed(self, url: str, now: datetime) -> str | None:
        """A fresh link for ``url`` if it is one of ours expiring within a day, else None."""
        parts = urlsplit(url)
        m = re.match(r"^/media/([0-9a-f]{64})\.mp4$", parts.path)
        query = parse_qs(parts.query)
        if not m or not url.startswith(self.base) or "exp" not in query:
            return None
        if int(query["exp"][0]) - now.timestamp() > RENEW_BEFORE.total_seconds():
            return None
        return self._link(m.group(1), now)


def record_bridge(home: Path, url: str, pid: int) -> None:
    write_atomic(Path(home) / "annotation" / STATE_FILE, json_bytes({"url": url, "pid": pid}))


def bridge_url(settings: Settings) -> str | None:
    """The bridge's public URL: configured, or the one recorded by a running bridge."""
    if settings.annotation_url:
        return settings.annotation_url
    data = read_json(settings.home / "annotation" / STATE_FILE)
    if not isinstance(data, dict):
        return None
    return data["url"] if pid_alive(int(data.get("pid", 0))) else None


def links_for(settings: Settings) -> MediaLinks | None:
    url = bridge_url(settings)
    return MediaLinks.for_home(settings.home, url) if url else None
