"""The production pointer has no side door: an MLflow alias moved with MLflow's own client
(what the pencil in MLflow's UI does) is reported, never served, and put back by surgflow."""

from __future__ import annotations

import pytest

from surgflow.data.synthetic import generate_video
from surgflow.registry import ModelRegistry
from surgflow.serving.server import BackgroundServer, build_service
from tests.cli_helpers import run_cli
from tests.serving_helpers import NAME, TOKEN, http, register_bundle, serving_settings
from tests.test_model_registry import make_seal

pytestmark = pytest.mark.integration


def test_a_production_alias_moved_to_a_rejected_version_is_never_served(
        tmp_path, tiny_chain_bundle, embedded_broker, monkeypatch):
    videos = tmp_path / "videos"
    clip = generate_video(videos / "case-0001.mp4", seed=5, duration_s=6, fps=10, width=64,
                          height=64, gop=10)
    settings = serving_settings(tmp_path, embedded_broker.bootstrap, [videos], serve_poll_s=0.2)
    monkeypatch.setenv("SURGFLOW_HOME", str(settings.home))
    reg = ModelRegistry(settings)
    good, bad = (register_bundle(settings, tiny_chain_bundle.bundle_dir) for _ in range(2))
    reg.put_seal(NAME, good, make_seal(good))
    reg.put_seal(NAME, bad, make_seal(bad, verdict="rejected"))
    reg.promote(NAME, good, by="test")

    service = build_service(settings, token=TOKEN)
    try:
        with BackgroundServer(service) as server, http(server.url) as c:
            reg.client.set_registered_model_alias(NAME, "production", str(bad))
            service.pool.refresh()  # what the watcher does every poll
            served = c.get("/v1/models").json()["cholecystectomy"]
            assert served["version"] == good
            assert served["rejected"]["version"] == bad
            assert served["rejected"]["reason"] == (
                f"production alias moved outside surgflow to {bad}")
            r = c.post("/v1/analyze", json={"video_id": "case-0001", "uri": clip.path.as_uri(),
                                            "procedure": "cholecystectomy"})
            assert r.status_code == 200 and r.json()["model"]["version"] == good

            shown = run_cli("models", "show", f"{NAME}@production", json=True)
            assert shown.data["version"] == good and "production" in shown.data["stages"]
            assert shown.data["alias_drift"][0]["alias"] == bad
            assert "alias moved outside surgflow" in shown.stderr
            audit = run_cli("models", "verify", NAME, json=True, check=False)
            assert audit.returncode == 1 and audit.data["alias_drift"][0]["alias"] == bad

            # promoting the version surgflow holds there puts MLflow's alias back
            run_cli("models", "promote", f"{NAME}@{good}", json=True)
            assert int(reg.client.get_registered_model(NAME).aliases["production"]) == good
            service.pool.refresh()
            assert c.get("/v1/models").json()["cholecystectomy"]["rejected"] is None
            assert run_cli("models", "verify", NAME, json=True).data["ok"] is True
    finally:
        service.close()
