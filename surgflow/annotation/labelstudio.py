"""A small client of Label Studio's REST API (1.23): the calls the sync and the bridge make.

Authentication: a legacy API token is sent as ``Token <t>``; a personal access token (a JWT
refresh token, three dot-separated parts) is exchanged at ``/api/token/refresh`` for a
short-lived access token sent as ``Bearer``. A server that does not answer, or refuses the
token, is a :class:`~surgflow.errors.ConfigError` naming the variable to fix.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx

from surgflow.annotation.server import Endpoint
from surgflow.errors import ConfigError, SurgflowError

PAGE = 100
PROJECT_TITLE = "surgflow · {procedure}"


class LabelStudioError(SurgflowError):
    """Label Studio answered a call with an error."""


class LabelStudio:
    """The REST API of one Label Studio server, signed in as surgflow."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = 30.0):
        self.endpoint = endpoint
        self.http = httpx.Client(base_url=endpoint.url, timeout=timeout_s)
        self._users: dict[int, str] = {}
        self._authenticate()

    def __enter__(self) -> LabelStudio:
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def _where(self) -> str:
        return ("the embedded Label Studio" if self.endpoint.embedded
                else f"SURGFLOW_LABEL_STUDIO_URL={self.endpoint.url}")

    def _authenticate(self) -> None:
        token = self.endpoint.token
        try:
            if token.count(".") == 2:
                r = self.http.post("/api/token/refresh", json={"refresh": token})
                if r.status_code != 200:
                    raise ConfigError(f"SURGFLOW_LABEL_STUDIO_TOKEN was refused by "
                                      f"{self.endpoint.url} ({r.status_code})")
                self.http.headers["Authorization"] = f"Bearer {r.json()['access']}"
            else:
                self.http.headers["Authorization"] = f"Token {token}"
            r = self.http.get("/api/current-user/whoami")
        except httpx.HTTPError as e:
            raise ConfigError(f"{self._where()} does not answer: {e}") from e
        if r.status_code in (401, 403):
            raise ConfigError(f"SURGFLOW_LABEL_STUDIO_TOKEN was refused by {self.endpoint.url}: "
                              f"{_detail(r)}")
        if r.status_code != 200 or not r.headers.get("content-type", "").startswith(
                "application/json"):
            raise ConfigError(f"{self._where()} is not a Label Studio API "
                              f"(GET /api/current-user/whoami answered {r.status_code})")
        self.me = r.json()

    def call(self, method: str, path: str, **kw: Any) -> Any:
        try:
            r = self.http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise LabelStudioError(f"{method} {self.endpoint.url}{path}: {e}") from e
        if r.status_code >= 400:
            raise LabelStudioError(f"{method} {self.endpoint.url}{path} answered "
                                   f"{r.status_code}: {_detail(r)}")
        return r.json() if r.content else None

    # ---- projects -------------------------------------------------------------------------

    def find_project(self, procedure: str) -> dict[str, Any] | None:
        """The project of ``procedure``, if there is one."""
        title = PROJECT_TITLE.format(procedure=procedure)
        return next((p for p in self._pages("/api/projects", {"title": title})
                     if p.get("title") == title), None)

    def project(self, procedure: str, label_config: str) -> dict[str, Any]:
        """The project of ``procedure``, created (or its config brought up to date)."""
        title = PROJECT_TITLE.format(procedure=procedure)
        found = self.find_project(procedure)
        settings = {"label_config": label_config, "show_collab_predictions": True,
                    "show_skip_button": True, "maximum_annotations": 1,
                    "description": f"surgflow feedback tasks of {procedure} videos: correct "
                                   "the phases in the grey Review range, then submit."}
        if found is None:
            return self.call("POST", "/api/projects", json={"title": title, **settings})
        if found.get("label_config") != label_config:
            return self.call("PATCH", f"/api/projects/{found['id']}", json=settings)
        return found

    def set_model_version(self, project: int, model_version: str) -> None:
        """Pre-label with the predictions of ``model_version`` (the production model)."""
        self.call("PATCH", f"/api/projects/{project}", json={"model_version": model_version})

    def ensure_view(self, project: int, title: str, ordering: list[str]) -> None:
        """A data manager tab ``title`` with ``ordering`` (created once)."""
        views = self.call("GET", "/api/dm/views", params={"project": project}) or []
        if not any(v.get("data", {}).get("title") == title for v in views):
            self.call("POST", "/api/dm/views", json={
                "project": project, "data": {"title": title, "ordering": ordering}})

    def ensure_webhook(self, project: int, url: str, actions: list[str],
                       headers: dict[str, str]) -> None:
        hooks = self.call("GET", "/api/webhooks", params={"project": project}) or []
        if any(h.get("url") == url and h.get("headers") == headers for h in hooks):
            return
        for h in hooks:
            if h.get("url") == url:
                self.call("DELETE", f"/api/webhooks/{h['id']}")
        self.call("POST", "/api/webhooks", json={
            "project": project, "url": url, "send_payload": True, "headers": headers,
            "send_for_all_actions": False, "actions": actions, "is_active": True})

    # ---- tasks ----------------------------------------------------------------------------

    def tasks(self, project: int) -> Iterator[dict[str, Any]]:
        """Every task of ``project`` with its annotations, oldest first."""
        page = 1
        while True:
            got = self.call("GET", "/api/tasks", params={
                "project": project, "page": page, "page_size": PAGE, "fields": "all"})
            batch = got.get("tasks", []) if isinstance(got, dict) else got
            yield from batch
            if len(batch) < PAGE:
                return
            page += 1

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        if not tasks:
            return []
        got = self.call("POST", f"/api/projects/{project}/import",
                        params={"return_task_ids": "true"}, json=tasks)
        return list(got.get("task_ids", []))

    def update_task_data(self, task: dict[str, Any], **fields: Any) -> None:
        self.call("PATCH", f"/api/tasks/{task['id']}", json={"data": task["data"] | fields})

    def annotations(self, task_id: int) -> list[dict[str, Any]]:
        return self.call("GET", f"/api/tasks/{task_id}/annotations") or []

    def annotate(self, task_id: int, result: list[dict[str, Any]],
                 cancelled: bool = False) -> dict[str, Any]:
        return self.call("POST", f"/api/tasks/{task_id}/annotations",
                         json={"result": result, "was_cancelled": cancelled})

    def user(self, user_id: int) -> str:
        """A user's e-mail (their name in provenance)."""
        if user_id not in self._users:
            try:
                u = self.call("GET", f"/api/users/{user_id}")
                self._users[user_id] = u.get("email") or u.get("username") or f"user-{user_id}"
            except LabelStudioError:
                self._users[user_id] = f"user-{user_id}"
        return self._users[user_id]

    def _pages(self, path: str, params: dict[str, Any]) -> Iterator[dict[str, Any]]:
        page = 1
        while True:
            got = self.call("GET", path, params=params | {"page": page, "page_size": PAGE})
            results = got.get("results", []) if isinstance(got, dict) else got
            yield from results
            if not (isinstance(got, dict) and got.get("next")):
                return
            page += 1


def _detail(r: httpx.Response) -> str:
    try:
        body = r.json()
    except ValueError:
        return r.text[:200].strip() or r.reason_phrase
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("validation_errors") or body)[:300]
    return str(body)[:300]
