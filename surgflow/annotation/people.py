"""A person at Label Studio, over HTTP exactly as their browser talks to it: sign up or log in
through the forms (a session cookie and a CSRF token), list a project's tasks, submit and
update annotations. The demo's simulated annotators and the tests work through it, so what
they exercise is the path a person's browser takes, not surgflow's API token."""

from __future__ import annotations

from typing import Any

import httpx

from surgflow.annotation.labelstudio import LabelStudioError


class BrowserSession:
    """One signed-in annotator."""

    def __init__(self, url: str, email: str, password: str, timeout_s: float = 30.0):
        self.url = url.rstrip("/")
        self.email = email
        self.http = httpx.Client(base_url=self.url, timeout=timeout_s, follow_redirects=True)
        if not self._form("/user/login/", email, password):
            self._form("/user/signup/", email, password)
        me = self.http.get("/api/current-user/whoami")
        if me.status_code != 200 or me.json().get("email") != email:
            raise LabelStudioError(f"{email} could not sign in to {self.url} "
                                   f"({me.status_code})")

    def _form(self, path: str, email: str, password: str) -> bool:
        self.http.get(path)
        r = self.http.post(path, data={"email": email, "password": password,
                                       "csrfmiddlewaretoken": self.http.cookies["csrftoken"]},
                           headers={"Referer": f"{self.url}{path}"})
        return r.status_code == 200 and not str(r.url).endswith(path)

    def _call(self, method: str, path: str, **kw: Any) -> Any:
        headers = {"X-CSRFToken": self.http.cookies.get("csrftoken", ""),
                   "Referer": f"{self.url}/"}
        r = self.http.request(method, path, headers=headers, **kw)
        if r.status_code >= 400:
            raise LabelStudioError(f"{method} {path} as {self.email}: {r.status_code} "
                                   f"{r.text[:200]}")
        return r.json() if r.content else None

    def tasks(self, project: int) -> list[dict[str, Any]]:
        out, page = [], 1
        while True:
            got = self._call("GET", "/api/tasks", params={
                "project": project, "fields": "all", "page": page, "page_size": 100})
            out.extend(got["tasks"])
            if len(got["tasks"]) < 100:
                return out
            page += 1

    def submit(self, task: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("POST", f"/api/tasks/{task}/annotations", json={"result": result})

    def update(self, annotation: int, result: list[dict[str, Any]]) -> dict[str, Any]:
        return self._call("PATCH", f"/api/annotations/{annotation}", json={"result": result})

    def close(self) -> None:
        self.http.close()
