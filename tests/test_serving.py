"""The inference service over real HTTP on loopback: a trained chain from the real registry
(embedded MLflow), real ONNX sessions, real decoded synthetic videos, the real broker."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from surgflow.data.synthetic import generate_video
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.data.versions import DatasetStore
from surgflow.feedback.client import Publisher
from surgflow.feedback.consumer import run_feedback
from surgflow.feedback.schemas import InferenceEvent, decode
from surgflow.inference import ChainRunner
from surgflow.registry import ModelRegistry
from surgflow.serving.server import BackgroundServer, Service, build_service
from tests.cli_helpers import run_cli, start_cli
from tests.feedback_helpers import video_event
from tests.serving_helpers import (
    NAME,
    TOKEN,
    frames_of,
    http,
    promote,
    read_topic,
    register_bundle,
    serving_settings,
    truth,
)

pytestmark = pytest.mark.integration


@dataclass
class Env:
    settings: object
    url: str
    service: Service
    root: Path
    videos: Path
    heldout: object
    bundle: object
    base: int  # the version registered first: what each test starts with in production


@pytest.fixture(scope="module")
def running(tmp_path_factory, tiny_chain_bundle, embedded_broker):
    """One service for the module (home, registry, ONNX sessions, HTTP server, producer)."""
    root = tmp_path_factory.mktemp("serving")
    videos = root / "videos"
    heldout = generate_video(videos / "held-out-0001.mp4", seed=901, duration_s=20, fps=10,
                             width=64, height=64, gop=10)
    settings = serving_settings(root, embedded_broker.bootstrap, [videos], serve_poll_s=0.3)
    base = register_bundle(settings, tiny_chain_bundle.bundle_dir)
    promote(settings, base)
    service = build_service(settings, token=TOKEN)
    try:
        with BackgroundServer(service) as server:
            yield Env(settings, server.url, service, root, videos, heldout, tiny_chain_bundle,
                      base)
    finally:
        service.close()


@pytest.fixture
def env(running):
    """The module's service with its first version in production, served and nothing
    rejected, whatever an earlier test promoted or spoilt: each test starts from there."""
    if ModelRegistry(running.settings).production(NAME) != running.base:
        promote(running.settings, running.base)
    running.service.pool.refresh()  # the watcher may be a poll behind; this swaps now
    status = running.service.pool.status()["cholecystectomy"]
    assert status["version"] == running.base and "rejected" not in status, status
    return running


def _body(env: Env, uri: str, **over) -> dict:
    return {"video_id": "case-x", "uri": uri, "procedure": "cholecystectomy"} | over


def _accuracy(runner: ChainRunner, path: Path) -> float:
    a = runner.analyze(path)
    return float((np.asarray(a.timeline.labels) == truth(path)).mean())


def _files(env: Env) -> set[Path]:
    """Image, array and video files under the service's root (home and video roots)."""
    return {p for p in env.root.rglob("*")
            if p.is_file() and p.suffix in {".png", ".jpg", ".jpeg", ".npy", ".npz", ".mp4",
                                             ".raw", ".bmp", ".avi"}}


def test_events_go_out_through_an_idempotent_acks_all_producer(env):
    config = env.service.sink.publisher._producer.config
    assert config["enable_idempotence"] is True and config["acks"] == -1


def test_health_needs_no_token_and_models_lists_production(env):
    with http(env.url, token=None) as c:
        r = c.get("/healthz")
        assert r.status_code == 200 and r.json() == {"status": "ok"}
    with http(env.url) as c:
        models = c.get("/v1/models").json()
    assert models["cholecystectomy"]["name"] == NAME
    assert models["cholecystectomy"]["version"] == env.base
    assert models["cholecystectomy"]["loaded_at"].endswith("Z")


@pytest.mark.parametrize("token", [None, "wrong-token", TOKEN + "x", TOKEN[:-1]])
def test_missing_or_wrong_token_is_401_everywhere(env, token):
    with http(env.url, token=token) as c:
        for method, path in [("GET", "/v1/models"), ("POST", "/v1/analyze"),
                             ("GET", "/openapi.json"), ("GET", "/no-such-route")]:
            r = c.request(method, path, json=_body(env, env.heldout.path.as_uri()))
            assert r.status_code == 401, (method, path, r.text)
            assert "bearer token" in r.json()["error"]
    with http(env.url, token=None) as c:
        r = c.get("/v1/models", headers={"Authorization": f"Basic {TOKEN}"})
        assert r.status_code == 401


def test_analyze_a_held_out_video_publishes_the_same_timeline_and_the_feedback_flow_merges_it(
        env):
    v = env.heldout
    with Publisher.from_settings(env.settings) as pub:  # the hospital registers the video
        pub.video(video_event(v, uri=v.path.as_uri()))
    before = _files(env)
    with http(env.url) as c:
        r = c.post("/v1/analyze", json=_body(env, v.path.as_uri(), video_id=v.video_id))
    written = _files(env) - before
    assert not written, f"an analysis wrote {sorted(written)}"  # no frames, no copies, nothing
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": NAME, "version": env.base}
    assert body["num_frames"] == v.num_frames and body["fps"] == pytest.approx(v.fps)
    got = frames_of(body["segments"], v.num_frames)
    accuracy = float((got == truth(v.path)).mean())
    # the served chain is as good on a new video as on the validation videos it was exported with
    runner = ChainRunner.load(env.bundle.bundle_dir)
    val = np.mean([_accuracy(runner, p) for p in env.bundle.val_videos])
    assert accuracy >= 0.6 and accuracy >= val - 0.15, (accuracy, val)
    # key moments are exactly the transitions between segments
    starts = [s["start_frame"] for s in body["segments"][1:]]
    assert [m["frame"] for m in body["key_moments"]] == starts
    for m, (a, b) in zip(body["key_moments"], zip(body["segments"], body["segments"][1:],
                                                  strict=False), strict=True):
        assert (m["from_label"], m["to_label"]) == (a["label"], b["label"])
        assert m["time_s"] == pytest.approx(m["frame"] / v.fps, abs=1e-3)

    records = read_topic(env.settings.kafka_bootstrap, env.settings.topic("inference"))
    mine = [m for m in records if m.key == v.video_id.encode()]
    assert len(mine) == 1
    event = decode("inference", mine[0].value)
    assert isinstance(event, InferenceEvent)
    assert [s.model_dump() for s in event.segments] == body["segments"]
    assert event.model.version == env.base and event.procedure == "cholecystectomy"
    raw = json.loads(mine[0].value)
    assert set(raw) == {"schema", "event_id", "video_id", "procedure", "model", "produced_at",
                        "segments"}  # ids and the timeline, nothing from the file

    report = run_feedback(env.settings, once=True)
    assert report.applied >= 2 and report.dead_lettered == 0, report
    table = DatasetStore(env.settings.home).segments_table("cholecystectomy").to_pylist()
    merged = [s for s in table if s["video_id"] == v.video_id]
    assert {s["provenance"] for s in merged} == {"model"}
    assert sum(s["end_frame"] - s["start_frame"] for s in merged) == v.num_frames


def test_uris_outside_the_roots_or_of_other_schemes_are_403_without_being_opened(env):
    outside = env.root / "outside"
    outside.mkdir(exist_ok=True)
    secret = outside / "secret.mp4"
    secret.write_bytes(env.heldout.path.read_bytes())
    link = env.videos / "escape.mp4"
    if not link.is_symlink():
        link.symlink_to(secret)
    traversal = f"{env.videos}/../outside/secret.mp4"
    cases = [traversal, "file://" + traversal, str(link), link.as_uri(), str(secret),
             "s3://bucket/case.mp4", "http://example.org/case.mp4", "ftp://h/x.mp4",
             "file://other-host" + str(env.heldout.path)]
    with http(env.url) as c:
        for uri in cases:
            r = c.post("/v1/analyze", json=_body(env, uri))
            assert r.status_code == 403, (uri, r.text)
            assert r.json()["error"]
    assert os.stat(secret).st_atime  # still there; nothing opened it for writing


def test_missing_undecodable_and_unknown_procedure(env):
    garbage = env.videos / "garbage.mp4"
    garbage.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4000))
    (env.videos / "adir.mp4").mkdir(exist_ok=True)
    with http(env.url) as c:
        r = c.post("/v1/analyze", json=_body(env, str(env.videos / "nope.mp4")))
        assert r.status_code == 404 and "no such file" in r.json()["error"]
        r = c.post("/v1/analyze", json=_body(env, str(env.videos / "adir.mp4")))
        assert r.status_code == 404
        r = c.post("/v1/analyze", json=_body(env, garbage.as_uri()))
        assert r.status_code == 422 and "decode" in r.json()["error"]
        r = c.post("/v1/analyze", json=_body(env, env.heldout.path.as_uri(),
                                             procedure="appendectomy-x"))
        assert r.status_code == 404 and "unknown procedure" in r.json()["error"]


def test_a_procedure_without_a_production_model_is_409(env):
    ProcedureCatalog(env.settings.home).add("hernia", ["Access", "Repair", "Closure"])
    with http(env.url) as c:
        r = c.post("/v1/analyze", json=_body(env, env.heldout.path.as_uri(), procedure="hernia"))
    assert r.status_code == 409 and "no production model" in r.json()["error"]


@pytest.mark.parametrize(("body", "what"), [
    (b"{not json", "not valid JSON"), (b"[]", "body: "), (b'{"video_id": "a"}', "uri is required"),
    (b'{"video_id": "../x", "uri": "/a", "procedure": "p"}', "video_id: "),
    (b'{"video_id": "../x", "uri": "/a", "procedure": "p"}', "(got '../x')"),
    (b'{"video_id": "a", "uri": "", "procedure": "p"}', "uri: "),
    (b'{"video_id": 7, "uri": "/a", "procedure": "p"}', "video_id: "),
])
def test_bodies_failing_the_schema_are_422_with_a_reason(env, body, what):
    with http(env.url) as c:
        r = c.post("/v1/analyze", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert what.lower() in r.json()["error"].lower()


def test_errors_of_the_framework_are_json_too(env):
    with http(env.url) as c:
        r = c.get("/no/such/route")
        assert r.status_code == 404 and r.json() == {"error": "no route GET /no/such/route"}
        r = c.get("/v1/analyze")
        assert r.status_code == 405 and r.json()["error"]
        r = c.post("/v1/analyze", content=b"x" * (env.settings.serve_max_body_bytes + 1),
                   headers={"content-type": "application/json"})
        assert r.status_code == 413 and "SURGFLOW_SERVE_MAX_BODY_BYTES" in r.json()["error"]


def test_video_duration_and_analysis_time_limits_refuse_with_a_reason(env):
    for over, needle in [({"serve_max_video_s": 5.0}, "SURGFLOW_SERVE_MAX_VIDEO_S"),
                         ({"serve_max_analysis_s": 1e-4}, "deadline")]:
        settings = env.settings.model_copy(update=over)
        service = Service(settings, pool=env.service.pool, sink=env.service.sink, token=TOKEN)
        with BackgroundServer(service) as server, http(server.url) as c:
            r = c.post("/v1/analyze", json=_body(env, env.heldout.path.as_uri()))
        assert r.status_code == 422 and needle in r.json()["error"], r.text


def test_openapi_schema_is_served_and_schemathesis_finds_no_server_error(env):
    import schemathesis
    from hypothesis import HealthCheck, settings
    from schemathesis.checks import (
        content_type_conformance,
        not_a_server_error,
        response_schema_conformance,
        status_code_conformance,
    )

    with http(env.url) as c:
        spec = c.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/healthz", "/v1/models", "/v1/analyze"}
    schema = schemathesis.openapi.from_dict(spec)
    failures = []
    checks = [not_a_server_error, status_code_conformance, content_type_conformance,
              response_schema_conformance]
    for result in schema.get_all_operations():
        operation = result.ok()

        @settings(max_examples=25, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case):
            try:
                case.call_and_validate(base_url=env.url, checks=checks,
                                       headers={"Authorization": f"Bearer {TOKEN}"})
            except Exception as e:  # collect, report all at the end
                failures.append(f"{case.method} {case.path}: {e}")
                raise

        from hypothesis import given

        given(case=operation.as_strategy())(run)()
    assert not failures


def test_requests_in_flight_across_a_promotion_finish_on_the_old_version(env, monkeypatch):
    """Requests analysing when the production pointer moves answer with the chain they started
    on; the swap does not wait for them; requests after it get the new chain."""
    new = register_bundle(env.settings, env.bundle.bundle_dir, recipe_name="tiny-again")
    old = env.service.pool.get("cholecystectomy")
    assert old.version == env.base and new != env.base
    slots = env.settings.serve_max_concurrent
    # the old chain's analyses start, then wait until the test lets them go: they are in
    # flight for as long as the test needs, however slow the machine
    entered, release = threading.Semaphore(0), threading.Event()
    real = old.runner.analyze

    def held(*args, **kw):
        entered.release()
        assert release.wait(120), "the test never released the old chain's analyses"
        return real(*args, **kw)

    monkeypatch.setattr(old.runner, "analyze", held)
    uri = env.heldout.path.as_uri()

    def one(i: int):
        with http(env.url) as c:
            r = c.post("/v1/analyze", json=_body(env, uri, video_id=f"load-{i:03d}"))
            return r.status_code, r.json().get("model", {}).get("version"), r.text

    before, after = 3 * slots, slots
    with ThreadPoolExecutor(before + after) as pool:
        try:
            first = [pool.submit(one, i) for i in range(before)]
            for n in range(slots):  # every analysis slot holds a request on the old chain
                assert entered.acquire(timeout=60), f"only {n} of {slots} analyses started"
            assert not any(f.done() for f in first)
            promote(env.settings, new)
            deadline = time.monotonic() + 60
            with http(env.url) as c:
                while c.get("/v1/models").json()["cholecystectomy"]["version"] != new:
                    assert time.monotonic() < deadline, f"version {new} was never swapped in"
                    time.sleep(0.1)
            # swapped while the old chain's requests were still analysing
            assert not any(f.done() for f in first)
            later = [pool.submit(one, before + i) for i in range(after)]
        finally:
            release.set()
        results = [f.result() for f in first + later]
    assert [s for s, _, _ in results] == [200] * len(results), results
    versions = [v for _, v, _ in results]
    # the requests in flight at the swap finished on the old chain; the queued ones and those
    # sent after it were analysed by the new one
    assert Counter(versions) == {env.base: slots, new: before + after - slots}, versions
    assert all(v == new for v in versions[before:])
    # and each published event names the version that answered
    records = read_topic(env.settings.kafka_bootstrap, env.settings.topic("inference"),
                         expect=len(results))
    sent = {m.key.decode(): decode("inference", m.value).model.version for m in records
            if m.key.startswith(b"load-")}
    assert sent == {f"load-{i:03d}": v for i, v in enumerate(versions)}
    with http(env.url) as c:
        r = c.post("/v1/analyze", json=_body(env, uri, video_id="after-promotion"))
    assert r.status_code == 200 and r.json()["model"]["version"] == new


def test_a_version_whose_files_no_longer_match_their_hashes_is_never_swapped_in(env):
    """The service swaps on the registered hashes (parity was re-run at promotion): a file
    changed after the promotion keeps the version out."""
    env.service.pool.stop()  # promote and spoil a version before the service looks at it
    try:
        registry = ModelRegistry(env.settings)
        bad = register_bundle(env.settings, env.bundle.bundle_dir, recipe_name="tiny-spoilt")
        promote(env.settings, bad)
        with open(registry.bundle(NAME, bad, verify=False) / "encoder.onnx", "ab") as f:
            f.write(b"\x00spoilt")
        assert env.service.pool.refresh() == []
    finally:
        env.service.pool.start()
    with http(env.url) as c:
        models = c.get("/v1/models").json()["cholecystectomy"]
        assert models["version"] == env.base
        assert models["rejected"]["version"] == bad
        assert "encoder.onnx has sha256" in models["rejected"]["reason"]
        r = c.post("/v1/analyze", json=_body(env, env.heldout.path.as_uri()))
    assert r.status_code == 200 and r.json()["model"]["version"] == env.base


def test_serve_refuses_to_start_without_a_token_or_off_loopback_when_insecure(env):
    kw = {"home": env.settings.home, "unset": ["SURGFLOW_API_TOKEN"], "check": False,
          "env": {"SURGFLOW_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap}, "timeout": 60}
    for args, reason in [(["--port", "1"], "SURGFLOW_API_TOKEN is not set"),
                         (["--insecure-local", "--host", "0.0.0.0"], "loopback only")]:
        p = run_cli("serve", *args, **kw)
        assert p.returncode == 2 and reason in p.stderr, p.stderr
        assert p.stderr.startswith("error: ")


def test_serve_insecure_local_answers_on_loopback(env):
    import subprocess

    import httpx

    from surgflow.processes import free_port, terminate

    port = free_port()
    e = {"SURGFLOW_TOPIC_PREFIX": env.settings.topic_prefix,
         "SURGFLOW_KAFKA_BOOTSTRAP": env.settings.kafka_bootstrap}
    proc = start_cli("serve", "--insecure-local", "--port", str(port), home=env.settings.home,
                     env=e, unset=["SURGFLOW_API_TOKEN"], stdout=subprocess.DEVNULL,
                     stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "surgflow serve did not answer"
                time.sleep(0.3)
        assert r.status_code == 200 and r.json()["cholecystectomy"]["name"] == NAME
    finally:
        terminate(proc.pid, 20)
        proc.wait(10)
