"""DDP on Dask: N ranks as N tasks pinned to N distinct Dask workers.

Each attempt picks ``world_size`` distinct live workers (with a ``GPU`` resource when GPUs are
asked for), finds a free port on the host of the rank-0 worker, and submits one task per rank
pinned to its worker (``workers=[addr], allow_other_workers=False``, ``resources={"GPU": 1}``).
Ranks rendezvous over TCP at that host and port (``nccl`` on GPU, ``gloo`` on CPU) within the
recipe's timeout.

If any rank fails or its worker disappears, the whole group is torn down — the surviving workers
are restarted, because a rank blocked in a collective cannot be cancelled otherwise — and the
group starts again from the last checkpoint, up to ``max_attempts`` times. An error that says
the input is bad (:class:`~surgflow.errors.BadInput`) is not retried.

Several groups may share one cluster at once (a sweep's concurrent trials): each then takes its
workers from one :class:`WorkerLease`, which never hands a worker to two groups at a time.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from surgflow.errors import BadInput, SurgflowError
from surgflow.processes import free_port

log = logging.getLogger(__name__)


class ClusterTooSmall(SurgflowError):
    """The cluster has fewer suitable workers than the job's world size."""


class GroupFailed(SurgflowError):
    """Every attempt of a DDP group failed."""


@dataclass
class Attempt:
    number: int
    workers: list[str]
    master: str
    started: float
    ended: float | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"attempt": self.number, "workers": self.workers, "master": self.master,
                "started": self.started, "ended": self.ended, "error": self.error}


@dataclass
class LaunchResult:
    results: list[Any]
    attempts: list[Attempt] = field(default_factory=list)


def suitable_workers(workers: dict[str, dict[str, Any]], gpus_per_rank: int) -> list[str]:
    """Addresses of workers that can hold one rank, in a stable order."""
    ok = [a for a, w in workers.items()
          if not gpus_per_rank or (w.get("resources") or {}).get("GPU", 0) >= gpus_per_rank]
    return sorted(ok)


def local_ranks(workers: list[str]) -> list[int]:
    """For each worker, how many workers before it share its host."""
    hosts = [urlparse(w).hostname for w in workers]
    return [hosts[:i].count(h) for i, h in enumerate(hosts)]


def live_workers(client: Any) -> dict[str, dict[str, Any]]:
    """Every worker the scheduler knows now, asked directly (``client.scheduler_info()`` may
    return a cache that a background refresh leaves without per-worker entries)."""
    return client.sync(client.scheduler.identity, n_workers=-1)["workers"]


def pick_workers(client: Any, world_size: int, gpus_per_rank: int, wait_s: float) -> list[str]:
    """``world_size`` distinct suitable workers, waiting up to ``wait_s`` for them to appear."""
    deadline = time.monotonic() + wait_s
    while True:
        workers = live_workers(client)
        ok = suitable_workers(workers, gpus_per_rank)
        if len(ok) >= world_size:
            return ok[:world_size]
        if time.monotonic() >= deadline:
            need = f" with a GPU resource ≥ {gpus_per_rank}" if gpus_per_rank else ""
            raise ClusterTooSmall(
                f"world size {world_size} needs {world_size} Dask workers{need}; the cluster at "
                f"{client.scheduler.address} has {len(ok)} suitable of {len(workers)} "
                f"({', '.join(sorted(workers)) or 'none'})"
            )
        time.sleep(0.5)


class WorkerLease:
    """Distinct workers for the DDP groups that share one cluster: :meth:`acquire` waits for
    ``world_size`` suitable workers that no other group holds, :meth:`release` gives them back.
    Thread-safe; one lease per cluster client."""

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._cond = threading.Condition()

    def acquire(self, client: Any, world_size: int, gpus_per_rank: int,
                wait_s: float) -> list[str]:
        """Hold ``world_size`` free workers. Waits as long as other groups hold the ones
        missing; ClusterTooSmall when the cluster itself has fewer than ``world_size`` suitable
        workers for ``wait_s``."""
        deadline = time.monotonic() + wait_s
        while True:
            ok = suitable_workers(live_workers(client), gpus_per_rank)
            with self._cond:
                free = [w for w in ok if w not in self._held]
                if len(free) >= world_size:
                    chosen = free[:world_size]
                    self._held.update(chosen)
                    return chosen
                if len(ok) < world_size and time.monotonic() >= deadline:
                    break
                self._cond.wait(timeout=0.5)
        return pick_workers(client, world_size, gpus_per_rank, 0.0)  # raises ClusterTooSmall

    def release(self, workers: list[str]) -> None:
        with self._cond:
            self._held.difference_update(workers)
            self._cond.notify_all()


def launch(
    client: Any,
    fn: Callable[..., Any],
    job: dict[str, Any],
    *,
    world_size: int,
    gpus_per_rank: int = 0,
    max_attempts: int = 3,
    worker_wait_s: float = 60.0,
    poll_s: float = 0.5,
    on_tick: Callable[[], None] | None = None,
    on_attempt: Callable[[Attempt], None] | None = None,
    lease: WorkerLease | None = None,
) -> LaunchResult:
    """Run ``fn(job, rank, world_size, master_host, master_port, local_rank)`` on
    ``world_size`` workers; ``local_rank`` numbers the ranks that share a host (GPU choice).
    With ``lease``, each attempt holds its workers from it (other groups share the cluster)."""
    attempts: list[Attempt] = []
    for number in range(1, max_attempts + 1):
        wait_s = worker_wait_s if number > 1 else min(worker_wait_s, 10.0)
        if lease is None:
            workers = pick_workers(client, world_size, gpus_per_rank, wait_s)
        else:
            workers = lease.acquire(client, world_size, gpus_per_rank, wait_s)
        try:
            result = _attempt(client, fn, job, number, workers, gpus_per_rank, attempts,
                              poll_s, on_tick, on_attempt)
        finally:
            if lease is not None:
                lease.release(workers)
        if result is not None:
            return result
    raise GroupFailed(
        f"DDP group of {world_size} failed {max_attempts} times; last error: {attempts[-1].error}"
    )


def _attempt(client: Any, fn: Callable[..., Any], job: dict[str, Any], number: int,
             workers: list[str], gpus_per_rank: int, attempts: list[Attempt], poll_s: float,
             on_tick: Callable[[], None] | None,
             on_attempt: Callable[[Attempt], None] | None) -> LaunchResult | None:
    """Attempt ``number`` of the group on ``workers``: its result, or None after a failure
    that may be retried (the group torn down first); a rank's BadInput is raised."""
    world_size = len(workers)
    host = urlparse(workers[0]).hostname or "127.0.0.1"
    port = client.run(free_port, "", workers=[workers[0]])[workers[0]]
    attempt = Attempt(number, workers, f"{host}:{port}", time.time())
    attempts.append(attempt)
    if on_attempt:
        on_attempt(attempt)
    log.info("attempt %d: %d ranks on %s, master %s:%s", number, world_size, workers, host, port)
    token = secrets.token_hex(4)
    local = local_ranks(workers)
    futures = [
        client.submit(
            fn, job, rank, world_size, host, port, local[rank],
            key=f"surgflow-rank{rank}-{token}",
            workers=[addr], allow_other_workers=False, pure=False, retries=0,
            resources={"GPU": gpus_per_rank} if gpus_per_rank else None,
        )
        for rank, addr in enumerate(workers)
    ]
    error = _watch(client, futures, workers, poll_s, on_tick)
    attempt.ended = time.time()
    if error is None:
        results = client.gather(futures)
        if on_attempt:
            on_attempt(attempt)
        return LaunchResult(results, attempts)
    attempt.error = error[1]
    if on_attempt:
        on_attempt(attempt)
    _tear_down(client, futures, workers)
    if isinstance(error[0], BadInput):
        raise error[0]
    log.warning("attempt %d failed: %s", number, error[1])
    return None


def _watch(client: Any, futures: list[Any], workers: list[str], poll_s: float,
           on_tick: Callable[[], None] | None) -> tuple[BaseException | None, str] | None:
    """Wait for all ranks; on the first failure or lost worker return (exception, reason).

    A lost worker is the reason whenever there is one: its peers' collectives then fail too
    (gloo's "Connection reset by peer"), and which of the two the client hears of first is a
    race. The ranks' states are read before the workers are asked for, so a worker whose death
    made a rank fail is already missing from the answer.
    """
    from distributed import wait

    while True:
        pending = [f for f in futures if not f.done()]
        if pending:
            with contextlib.suppress(TimeoutError):
                wait(pending, timeout=poll_s, return_when="FIRST_COMPLETED")
        states = [f.status for f in futures]
        if all(state == "finished" for state in states):
            return None
        alive = set(live_workers(client))
        lost = [w for w in workers if w not in alive]
        if lost:
            ranks = [workers.index(w) for w in lost]
            return None, f"worker {', '.join(lost)} (rank {ranks}) died"
        for rank, (f, state) in enumerate(zip(futures, states, strict=True)):
            if state == "error":
                exc = f.exception()
                return exc, f"rank {rank} on {workers[rank]}: {type(exc).__name__}: {exc}"
            if state == "cancelled":
                return None, f"rank {rank} on {workers[rank]} was cancelled"
        if on_tick:
            on_tick()


def _tear_down(client: Any, futures: list[Any], workers: list[str]) -> None:
    client.cancel(futures, force=True)
    alive = set(live_workers(client))
    survivors = [w for w in workers if w in alive]
    if not survivors:
        return
    try:
        client.restart_workers(survivors, timeout=60, raise_for_error=False)
    except Exception as e:  # workers without a nanny cannot be restarted; they time out instead
        log.warning("could not restart workers %s: %s", survivors, e)
