"""The Dask cluster that training runs on.

``SURGFLOW_DASK_ADDRESS`` points at an existing scheduler (dask-cuda, dask-kubernetes and
dask-jobqueue clusters all expose one); unset, a local cluster of worker processes is started
for the duration of the ``with`` block. Local workers are not daemonic (DataLoader workers are
child processes of a Dask worker) and get the surgflow and Prefect settings in their environment.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from surgflow.config import Settings, env_for_subprocesses, get_settings
from surgflow.errors import ConfigError

log = logging.getLogger(__name__)

_PASSED = ("PREFECT_API_URL", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_HOME", "DO_NOT_TRACK")


def worker_env(settings: Settings) -> dict[str, str]:
    """The environment local Dask workers start with."""
    env = {k: v for k, v in env_for_subprocesses(settings).items()
           if k.startswith("SURGFLOW_") or k in _PASSED}
    env["DASK_DISTRIBUTED__WORKER__DAEMON"] = "False"
    # A worker holds one rank, which sets its own torch thread count; stray BLAS/OpenMP pools
    # and the worker's stack-sampling profiler would otherwise compete with it for cores.
    env["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] = "False"
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.setdefault(var, "1")
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return env


def _check_local_gpus(wanted: int) -> None:
    import torch

    have = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if have < wanted:
        raise ConfigError(
            f"resources: the recipe asks for {wanted} GPU ranks but this machine has {have} "
            "GPUs; set resources.gpus_per_rank: 0, lower resources.world_size, or point "
            "SURGFLOW_DASK_ADDRESS at a cluster with GPU workers"
        )


@contextmanager
def connect(
    n_workers: int = 2,
    *,
    gpus_per_worker: int = 0,
    settings: Settings | None = None,
) -> Iterator[object]:
    """A ``distributed.Client`` to the configured cluster, or to a new local one.

    ``n_workers`` and ``gpus_per_worker`` size a local cluster (one thread per worker; one
    worker per rank); they are ignored when connecting to an existing scheduler.
    """
    import dask
    from distributed import Client, LocalCluster

    settings = settings or get_settings()
    if settings.dask_address:
        try:
            client = Client(settings.dask_address, timeout="20s")
        except (OSError, TimeoutError) as e:
            raise ConfigError(
                f"SURGFLOW_DASK_ADDRESS: cannot reach the Dask scheduler at "
                f"{settings.dask_address}: {e}"
            ) from e
        try:
            yield client
        finally:
            client.close()
        return
    if gpus_per_worker:
        _check_local_gpus(n_workers * gpus_per_worker)
    env = worker_env(settings)
    resources = {"GPU": gpus_per_worker} if gpus_per_worker else None
    with dask.config.set({"distributed.worker.daemon": False,
                          "distributed.worker.profile.enabled": False}):
        cluster = LocalCluster(
            n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            resources=resources, env=env, silence_logs=logging.WARNING,
            worker_class="distributed.Nanny",
        )
    client = Client(cluster)
    log.info("local Dask cluster %s with %d workers (pid %d)", cluster.scheduler_address,
             n_workers, os.getpid())
    try:
        yield client
    finally:
        client.close()
        cluster.close()
