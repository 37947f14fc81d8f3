"""The local Prefect server: started once, reused, stopped; a damaged state file is survivable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = """
import json, sys
from pathlib import Path
from surgflow.cli.local.prefect_server import ensure_server, running_server, stop_server, supervisor
from surgflow.processes import pid_alive
home = Path(sys.argv[1])
(home / "prefect").mkdir(parents=True)
(home / "prefect" / "server.json").write_text('{"api_url": "http://127')  # torn write
first = ensure_server(home, timeout=180)
again = ensure_server(home, timeout=180)
pid = supervisor(home).recorded()["pid"]
out = {"first": first, "again": again, "running": running_server(home), "alive": pid_alive(pid)}
out["stopped"] = stop_server(home)
out["running_after"] = running_server(home)
out["alive_after"] = pid_alive(pid)
out["stopped_again"] = stop_server(home)
print(json.dumps(out))
"""


@pytest.mark.integration
def test_server_is_started_once_reused_and_stopped(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path / "home")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=Path(__file__).parent.parent,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["first"] == out["again"] == out["running"] and out["alive"]
    assert out["stopped"] and out["running_after"] is None and not out["alive_after"]
    assert out["stopped_again"] is False


@pytest.mark.integration
def test_server_serves_its_ui_pointing_at_its_own_api(prefect_server: str) -> None:
    """The "View at .../runs/flow-run/..." links Prefect prints open the UI, and the UI asks
    this server's API, not the default 127.0.0.1:4200."""
    import httpx

    from surgflow.cli.local.prefect_server import ui_url

    base = ui_url(prefect_server)
    page = httpx.get(f"{base}/runs/flow-run/00000000-0000-0000-0000-000000000000",
                     headers={"accept": "text/html"}, follow_redirects=True, timeout=30)
    assert page.status_code == 200 and "<html" in page.text.lower()
    settings = httpx.get(f"{base}/ui-settings", timeout=30).json()
    assert settings["api_url"] == prefect_server
