"""The production-like stack (compose.yaml, Dockerfile) read as data: no Docker engine needed.

What is checked is what would stop the stack from running or from surviving a restart: health
checks, one GPU per Dask worker, persisted Kafka logs, a worker for the deployments' pool,
MLflow on the shared Postgres, videos where SURGFLOW_VIDEO_ROOTS says, one pinned image, and a
Dockerfile whose dependency layer does not depend on the source.
"""

from __future__ import annotations

import base64
import re
import shlex
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose) -> dict[str, dict]:
    return compose["services"]


def command(service: dict) -> str:
    """A service's command as one shell-like string (list forms joined)."""
    cmd = service.get("command") or ""
    return cmd if isinstance(cmd, str) else " ".join(cmd)


def argv(service: dict) -> list[str]:
    """The words of the command that actually runs (inside `sh -c` when there is one)."""
    cmd = service.get("command") or []
    if isinstance(cmd, list) and cmd[:2] == ["sh", "-c"]:
        cmd = cmd[2]
    words = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    return words


def option(words: list[str], name: str) -> str | None:
    for i, w in enumerate(words):
        if w == name and i + 1 < len(words):
            return words[i + 1]
        if w.startswith(name + "="):
            return w.split("=", 1)[1]
    return None


def mounts(service: dict) -> dict[str, str]:
    """Container path -> source (volume name or host path) of a service's mounts."""
    out = {}
    for v in service.get("volumes", []):
        parts = v.split(":") if isinstance(v, str) else [v["source"], v["target"]]
        # a source like ${VAR:-./dir} holds a colon of its own
        if isinstance(v, str) and v.startswith("${"):
            source, rest = v.split("}", 1)
            parts = [source + "}", *rest.lstrip(":").split(":")]
        out[parts[1]] = parts[0]
    return out


def python_services(services) -> dict[str, dict]:
    return {n: s for n, s in services.items() if "build" in s}


def gpu_devices(service: dict) -> list[dict]:
    res = service.get("deploy", {}).get("resources", {}).get("reservations", {})
    return [d for d in res.get("devices", []) if "gpu" in d.get("capabilities", [])]


# ---- every service ---------------------------------------------------------------------------


def test_every_long_running_service_has_a_health_check_and_one_shots_say_so(services):
    for name, s in services.items():
        check = s.get("healthcheck")
        assert check, f"service {name!r} has no healthcheck"
        if check.get("disable"):
            # only a job that exits may go without one
            assert s.get("restart") in ("no", "on-failure"), (
                f"service {name!r} disables its healthcheck but restart is {s.get('restart')!r}")
            continue
        test = check.get("test")
        assert isinstance(test, list) and test[0] in ("CMD", "CMD-SHELL") and len(test) > 1, (
            f"service {name!r}: healthcheck test {test!r}")
        assert check.get("interval") and check.get("retries"), name


def test_http_health_checks_ask_the_port_the_service_listens_on(services):
    for name, s in services.items():
        test = " ".join(s.get("healthcheck", {}).get("test", []))
        m = re.search(r"http://localhost:(\d+)/", test)
        if not m:
            continue
        port = m.group(1)
        env = s.get("environment") or {}
        listens = port in command(s) or port in {str(v) for v in env.values()}
        assert listens, f"service {name!r} checks port {port} but does not listen there"


def test_references_between_services_volumes_secrets_and_configs_resolve(compose, services):
    for name, s in services.items():
        for dep in s.get("depends_on", {}):
            assert dep in services, f"{name!r} depends on unknown service {dep!r}"
        for source in mounts(s).values():
            if not source.startswith(("/", ".", "${")):
                assert source in compose.get("volumes", {}), f"{name!r}: volume {source!r}"
        for secret in s.get("secrets", []):
            assert secret in compose.get("secrets", {}), f"{name!r}: secret {secret!r}"
        for config in s.get("configs", []):
            assert config["source"] in compose.get("configs", {}), name


def test_a_one_shot_job_is_awaited_by_what_needs_it(services):
    jobs = {n for n, s in services.items() if s.get("healthcheck", {}).get("disable")}
    for name, s in services.items():
        for dep, cond in s.get("depends_on", {}).items():
            if dep in jobs:
                assert cond == {"condition": "service_completed_successfully"}, (name, dep)
            else:
                assert cond == {"condition": "service_healthy"}, (
                    f"{name!r} should wait for {dep!r} to be healthy, not {cond!r}")


# ---- images ----------------------------------------------------------------------------------


def test_images_are_pinned_and_every_python_service_runs_the_one_surgflow_image(services):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, s in services.items():
        image = s.get("image")
        assert image, f"service {name!r} names no image"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), (
            f"service {name!r}: image {image!r} is not pinned to a version")
    built = python_services(services)
    assert {s["image"] for s in built.values()} == {f"surgflow:{version}"}
    # Prefect and MLflow servers run from the surgflow image: the same versions as their clients
    for server in ("prefect", "mlflow"):
        assert server in built, f"the {server} server must run the surgflow image"


def test_constraints_pin_every_dependency_within_pyproject_ranges():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, ver = line.partition("==")
            assert ver, f"constraints.txt: {line!r} is not an exact pin"
            pins[name.lower().replace("_", "-")] = ver
    for spec in project["dependencies"] + project["optional-dependencies"]["stack"]:
        req = Requirement(spec)
        name = req.name.lower().replace("_", "-")
        assert name in pins, f"constraints.txt does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req.specifier}")


# ---- GPUs ------------------------------------------------------------------------------------


def test_each_dask_gpu_worker_owns_a_distinct_gpu(services):
    workers = {n: s for n, s in services.items() if gpu_devices(s)}
    assert len(workers) >= 2
    seen: dict[str, str] = {}
    for name, s in workers.items():
        (device,) = gpu_devices(s)
        assert "count" not in device, f"{name!r}: `count` lets Docker hand every replica GPU 0"
        assert s.get("deploy", {}).get("replicas", 1) == 1, f"{name!r}: replicas share a device"
        ids = device.get("device_ids")
        assert isinstance(ids, list) and len(ids) == 1, f"{name!r}: device_ids {ids!r}"
        assert ids[0] not in seen, f"{name!r} and {seen.get(ids[0])!r} both get GPU {ids[0]}"
        seen[ids[0]] = name
        words = argv(s)
        assert words[:2] == ["dask", "worker"] and option(words, "--nworkers") == "1"
        assert option(words, "--resources") == "GPU=1", name
        assert option(words, "--name") not in {option(argv(w), "--name")
                                               for n, w in workers.items() if n != name}


def test_gpu_workers_have_shared_memory_for_dataloader_workers(services):
    for name, s in services.items():
        if gpu_devices(s):
            size = str(s.get("shm_size", ""))
            m = re.fullmatch(r"(\d+)\s*([gm])b?", size.lower())
            assert m, f"{name!r}: shm_size {size!r}"
            gib = int(m.group(1)) / (1024 if m.group(2) == "m" else 1)
            assert gib >= 1, f"{name!r}: shm_size {size} is too small for DataLoader workers"


def test_the_gpu_concurrency_limit_matches_the_gpu_workers(services):
    workers = [n for n, s in services.items() if gpu_devices(s)]
    m = re.search(r"global-concurrency-limit create gpu --limit (\d+)", command(services["deploy"]))
    assert m and int(m.group(1)) == len(workers)


# ---- Kafka -----------------------------------------------------------------------------------


def test_kafka_is_kraft_with_a_fixed_cluster_id_and_its_logs_on_a_volume(compose, services):
    kafka = services["kafka"]
    env = kafka["environment"]
    assert "controller" in env["KAFKA_PROCESS_ROLES"] and "zookeeper" not in str(compose)
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID is a UUID"
    log_dirs = env["KAFKA_LOG_DIRS"].split(",")
    for d in log_dirs:
        source = mounts(kafka).get(d)
        assert source in compose["volumes"], f"Kafka log dir {d} is not on a named volume"


def test_kafka_listeners_are_consistent_and_one_is_reachable_from_outside(services):
    kafka = services["kafka"]
    env = kafka["environment"]

    def named(value: str) -> dict[str, str]:
        return dict(item.split("://", 1) for item in value.split(","))

    listeners, advertised = named(env["KAFKA_LISTENERS"]), named(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = dict(p.split(":") for p in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols) and set(advertised) <= set(listeners)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in advertised
    assert env["KAFKA_CONTROLLER_LISTENER_NAMES"] in listeners
    inside = advertised[env["KAFKA_INTER_BROKER_LISTENER_NAME"]]
    bootstrap = services["feedback"]["environment"]["SURGFLOW_KAFKA_BOOTSTRAP"]
    assert bootstrap == inside, "surgflow services bootstrap through the internal listener"
    published = {p.split(":")[-1] for p in kafka.get("ports", [])}
    external = [name for name, addr in advertised.items()
                if addr.rsplit(":", 1)[-1] in published and not addr.startswith("kafka:")]
    assert external, "no advertised listener is published for producers outside the network"


# ---- Prefect, MLflow, Postgres ---------------------------------------------------------------


def test_a_prefect_worker_polls_the_pool_the_deployments_are_registered_with(services):
    worker = [s for s in services.values() if argv(s)[:3] == ["prefect", "worker", "start"]]
    assert len(worker) == 1
    pool = option(argv(worker[0]), "--pool")
    deploy = command(services["deploy"])
    assert f"surgflow deployments deploy --work-pool {pool}" in deploy
    assert f"prefect work-pool create {pool}" in deploy
    assert "--with-healthcheck" in argv(worker[0])


def test_prefect_and_mlflow_keep_their_state_in_the_shared_postgres(compose, services):
    prefect = services["prefect"]["environment"]
    assert prefect["PREFECT_SERVER_DATABASE_HOST"] == "postgres"
    assert prefect["PREFECT_SERVER_DATABASE_DRIVER"] == "postgresql+asyncpg"
    pg = services["postgres"]["environment"]
    assert prefect["PREFECT_SERVER_DATABASE_NAME"] == pg["POSTGRES_DB"]

    mlflow = command(services["mlflow"])
    m = re.search(r"--backend-store-uri \"?postgresql\+psycopg://[^@]+@postgres:5432/(\w+)", mlflow)
    assert m, "MLflow's backend store is the shared Postgres"
    init = compose["configs"]["postgres-init"]["content"]
    assert f"CREATE DATABASE {m.group(1)}" in init
    # artifacts on a volume, served by the tracking server to every client
    dest = option(shlex.split(mlflow), "--artifacts-destination")
    assert mounts(services["mlflow"]).get(dest) in compose["volumes"]
    assert "--serve-artifacts" in mlflow
    for name, s in python_services(services).items():
        env = s.get("environment") or {}
        if "SURGFLOW_HOME" in env:
            assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name


# ---- surgflow services -----------------------------------------------------------------------


def test_videos_are_mounted_under_the_video_roots_wherever_they_are_opened(services):
    for name, s in python_services(services).items():
        env = s.get("environment") or {}
        if "SURGFLOW_HOME" not in env:
            continue  # the Prefect and MLflow servers open no videos
        roots = env["SURGFLOW_VIDEO_ROOTS"].split(":")
        assert env["SURGFLOW_HOME"] in roots
        assert mounts(s).get(env["SURGFLOW_HOME"]) == "surgflow-home", name
        if name != "deploy":
            assert any(r in mounts(s) and r != env["SURGFLOW_HOME"] for r in roots), (
                f"service {name!r} has no videos mounted at one of {roots}")
    assert argv(services["ingest"])[:3] == ["surgflow", "data", "ingest"]


def test_the_inference_service_consumes_videos_with_its_token_from_a_secret(services):
    s = services["inference"]
    words = argv(s)
    assert "surgflow serve" in " ".join(words) and "--consume" in words
    assert "--insecure-local" not in words
    assert "SURGFLOW_API_TOKEN" not in (s.get("environment") or {}), "no token in plain env"
    assert any("/run/secrets/surgflow_api_token" in w for w in words)
    assert "surgflow_api_token" in s["secrets"]
    assert option(words, "--host") == "0.0.0.0"
    assert any(p.endswith(":" + option(words, "--port")) for p in s["ports"])


def test_the_feedback_flow_runs_in_follow_mode(services):
    words = argv(services["feedback"])
    assert words[:3] == ["surgflow", "feedback", "run"] and "--once" not in words


# ---- Dockerfile ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", (REPO / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _index(steps, pred) -> int:
    for i, step in enumerate(steps):
        if pred(*step):
            return i
    raise AssertionError("no such Dockerfile step")


def test_dockerfile_installs_dependencies_before_copying_the_source(dockerfile):
    base = [rest for word, rest in dockerfile if word == "FROM"]
    assert base and re.search(r":\d+\.\d+\.\d+", base[0]), f"base image not pinned: {base}"
    copy_source = _index(dockerfile, lambda w, r: w == "COPY" and r.split()[0] in
                         ("surgflow", ".", "flows"))
    copy_meta = _index(dockerfile, lambda w, r: w == "COPY" and "pyproject.toml" in r)
    deps = _index(dockerfile, lambda w, r: w == "RUN" and "pip install" in r)
    assert copy_meta < deps < copy_source, "the dependency layer must not depend on the source"
    assert "constraints.txt" in dockerfile[copy_meta][1] and "-c constraints.txt" in \
        dockerfile[deps][1]
    copied_before = " ".join(r for w, r in dockerfile[:deps] if w == "COPY")
    assert set(copied_before.split()) <= {"pyproject.toml", "constraints.txt", "./"}


def test_dockerfile_installs_the_package_non_editable_without_its_dependencies(dockerfile):
    installs = [r for w, r in dockerfile if w == "RUN" and "pip install" in r]
    assert all(not re.search(r"(^|\s)(-e|--editable)(\s|$)", r) for r in installs)
    last = installs[-1]
    assert "--no-deps" in last and re.search(r"pip install --no-deps \.(\s|$)", last)


def test_dockerfile_runs_as_a_non_root_user(dockerfile):
    users = [r for w, r in dockerfile if w == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0")
    user_at = max(i for i, (w, _) in enumerate(dockerfile) if w == "USER")
    assert all(w != "RUN" for w, _ in dockerfile[user_at:]), "nothing runs as root after USER"


def test_the_build_context_leaves_out_environments_and_state():
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".git", ".venv", ".surgflow"} <= set(ignored)
