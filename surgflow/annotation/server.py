"""Where Label Studio answers: an existing server, or the embedded one.

With ``SURGFLOW_LABEL_STUDIO_URL`` set, surgflow uses that server with
``SURGFLOW_LABEL_STUDIO_TOKEN`` (a legacy API token, or a personal access token, which is a JWT
refresh token). Unset, surgflow runs Label Studio itself on a free loopback port, its SQLite
database and media under ``SURGFLOW_HOME/label-studio``, supervised like the broker
(:mod:`surgflow.services`): detached, recorded in ``SURGFLOW_HOME/label-studio.json``, reused
while it answers. On its first start an admin account and an API token are created and kept in
``SURGFLOW_HOME/label-studio/credentials.json`` (readable by its owner only).

Label Studio pins its own dependencies (Django, pytz, openai ...), so ``scripts/dev setup``
installs it into an environment of its own, ``.venv-label-studio`` beside surgflow's; the
executable is looked up in ``SURGFLOW_LABEL_STUDIO_BIN``, then there, then on ``PATH``. Setup
also migrates an empty database once (``surgflow-template/`` in that environment): a new home
starts from a copy of it in about 3 s instead of migrating its own for about 25 s of CPU.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from surgflow.config import Settings
from surgflow.errors import ConfigError, SurgflowError
from surgflow.processes import free_port
from surgflow.services import Launch, Supervisor
from surgflow.storage import json_bytes, publish_exclusive, read_or_create, temp_path

STATE_FILE = "label-studio.json"
#: the first start migrates a new SQLite database (about 25 s on 2 cores)
START_TIMEOUT_S = 180.0
ADMIN = "admin@surgflow.local"
#: private ranges stay refused for webhooks; loopback is allowed, where surgflow's own
#: annotation bridge answers on the embedded stack
BANNED_SUBNETS = "10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,169.254.0.0/16,100.64.0.0/10"


@dataclass(frozen=True)
class Endpoint:
    """A Label Studio server and the token surgflow signs in with."""

    url: str
    token: str
    embedded: bool
    login: str | None = None
    password: str | None = None


def executable() -> Path:
    """The ``label-studio`` command (see the module docstring)."""
    if os.environ.get("SURGFLOW_LABEL_STUDIO_BIN"):
        path = Path(os.environ["SURGFLOW_LABEL_STUDIO_BIN"])
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise ConfigError(f"SURGFLOW_LABEL_STUDIO_BIN={path} is not an executable file")
        return path
    beside = Path(sys.prefix).parent / ".venv-label-studio" / "bin" / "label-studio"
    if beside.is_file():
        return beside
    found = shutil.which("label-studio")
    if found:
        return Path(found)
    raise SurgflowError(
        "Label Studio is not installed: run `scripts/dev setup` (it installs label-studio 1.23 "
        "into .venv-label-studio), set SURGFLOW_LABEL_STUDIO_BIN, or point "
        "SURGFLOW_LABEL_STUDIO_URL and SURGFLOW_LABEL_STUDIO_TOKEN at a running server")


def _credentials(home: Path) -> dict[str, str]:
    """The embedded server's admin login and API token, made once."""
    return json.loads(read_or_create(
        Path(home) / "label-studio" / "credentials.json",
        lambda: json_bytes({"login": ADMIN, "password": secrets.token_urlsafe(12),
                            "token": secrets.token_hex(20)})))


def _answers(record: dict[str, Any]) -> bool:
    try:
        return httpx.get(f"{record['url']}/health", timeout=2).status_code == 200
    except (httpx.HTTPError, KeyError, TypeError):
        return False


def _supervisor(home: Path) -> Supervisor:
    home = Path(home)
    return Supervisor("Label Studio", home / STATE_FILE, home / ".label-studio.lock",
                      home / "logs" / "label-studio.log", program="label-studio",
                      healthy=_answers, start_timeout_s=START_TIMEOUT_S, poll_s=0.5)


DATABASE = "label_studio.sqlite3"


def _from_template(exe: Path, data: Path) -> None:
    """A new home's database: a copy of the migrated template, where setup made one."""
    template = exe.parent.parent / "surgflow-template" / DATABASE
    target = data / DATABASE
    if target.exists() or not template.is_file():
        return
    data.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(data, suffix=".sqlite3")
    shutil.copyfile(template, tmp)
    publish_exclusive(tmp, target)


def _launch(home: Path) -> Launch:
    home = Path(home)
    creds = _credentials(home)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    data = home / "label-studio"
    exe = executable()
    _from_template(exe, data)
    env = dict(os.environ) | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data), "HOST": url, "DEBUG": "false",
        # nothing leaves the machine: no analytics, error reports or version checks
        "LOG_LEVEL": "WARNING", "COLLECT_ANALYTICS": "false", "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "", "FRONTEND_SENTRY_DSN": "",
        "USE_DEFAULT_BANNED_SUBNETS": "false", "USER_ADDITIONAL_BANNED_SUBNETS": BANNED_SUBNETS,
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "false",
    }
    env.pop("DJANGO_SETTINGS_MODULE", None)
    cmd = [str(exe), "start", "--no-browser", "--host", "127.0.0.1", "--port",
           str(port), "--data-dir", str(data), "--username", creds["login"],
           "--password", creds["password"], "--user-token", creds["token"],
           "--enable-legacy-api-token"]
    return Launch(cmd, url, {"url": url, "started_at": time.time()}, env)


def start(home: Path) -> tuple[dict[str, Any], bool]:
    """Start the embedded Label Studio unless it runs; returns ``(record, started)``."""
    (Path(home) / "logs").mkdir(parents=True, exist_ok=True)
    return _supervisor(home).ensure(lambda: _launch(home), reuse_wait_s=5.0)


def running(home: Path) -> dict[str, Any] | None:
    return _supervisor(home).running(wait_s=2.0)


def stop(home: Path, timeout_s: float = 20.0) -> dict[str, Any] | None:
    return _supervisor(home).stop(timeout_s)


def endpoint(settings: Settings, *, start_embedded: bool = True) -> Endpoint:
    """The configured server, or the embedded one (started if ``start_embedded``)."""
    if settings.label_studio_url:
        if settings.label_studio_token is None:
            raise ConfigError("SURGFLOW_LABEL_STUDIO_URL is set but SURGFLOW_LABEL_STUDIO_TOKEN "
                              "is not: give the API token surgflow signs in with")
        return Endpoint(settings.label_studio_url.rstrip("/"),
                        settings.label_studio_token.get_secret_value(), embedded=False)
    record = start(settings.home)[0] if start_embedded else running(settings.home)
    if record is None:
        raise SurgflowError(f"the embedded Label Studio is not running under {settings.home}; "
                            "start it with `surgflow up` or `surgflow annotate sync`")
    creds = _credentials(settings.home)
    return Endpoint(record["url"], creds["token"], embedded=True, login=creds["login"],
                    password=creds["password"])
