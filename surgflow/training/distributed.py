"""Everything distributed in one place: rank set-up, is_main, reductions, sampler epochs, unwrap.

Every rank of a job runs the same code; only rank 0 writes checkpoints and run records
(:attr:`RankContext.is_main`). A single process started without a launcher runs without a
process group, so the same training code works with and without DDP; a launched job of one
rank still joins a group of one (a 1-GPU job then runs its reductions through NCCL).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class RankContext:
    """Where this process sits in its job."""

    rank: int
    world_size: int
    device: torch.device
    backend: str | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(
    rank: int,
    world_size: int,
    *,
    master_addr: str = "127.0.0.1",
    master_port: int = 0,
    gpu: bool = False,
    local_rank: int = 0,
    timeout_s: float = 120.0,
) -> RankContext:
    """Join the job's process group (``nccl`` on GPU, ``gloo`` on CPU) and pick the device.

    An empty ``master_addr`` rendezvouses through the ``MASTER_ADDR``/``MASTER_PORT``
    environment a launcher such as ``torchrun`` sets (``env://``).
    """
    device = torch.device("cpu")
    if gpu:
        if not torch.cuda.is_available():
            raise RuntimeError(f"rank {rank} on {socket.gethostname()}: GPU asked, none visible")
        # A worker that sees one GPU (dask-cuda, CUDA_VISIBLE_DEVICES) uses it; one that sees
        # all of its host's GPUs takes the one matching its place among the host's ranks.
        device = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(device)
    if world_size == 1 and not master_addr and "MASTER_ADDR" not in os.environ:
        return RankContext(0, 1, device, None)  # a plain single process: no group to join
    backend = "nccl" if gpu else "gloo"
    if dist.is_initialized():  # left over from a failed attempt in this worker process
        dist.destroy_process_group()
    if (master_addr or os.environ.get("MASTER_ADDR")) in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", _loopback_name())
    dist.init_process_group(
        backend,
        init_method=f"tcp://{master_addr}:{master_port}" if master_addr else "env://",
        rank=rank,
        world_size=world_size,
        timeout=timedelta(seconds=timeout_s),
    )
    return RankContext(rank, world_size, device, backend)


def _loopback_name() -> str:
    for _, name in socket.if_nameindex():
        if name.startswith("lo"):
            return name
    return "lo"


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def wrap(model: nn.Module, ctx: RankContext) -> nn.Module:
    """Move to the rank's device and wrap in DDP when there is more than one rank."""
    model = model.to(ctx.device)
    if ctx.world_size == 1:
        return model
    ids = [ctx.device.index] if ctx.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model, without its DDP wrapper: what is saved and exported."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm running statistics), as DDP does at the start
    of each forward: after an epoch each rank's buffers last saw its own batches. Call before
    evaluating or saving the bare model, so every rank holds the same model."""
    if not dist.is_initialized():
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf.data, src=0)


def reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of numbers over all ranks."""
    if not dist.is_initialized():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_flag(flag: bool, device: torch.device) -> bool:
    """Rank 0's ``flag`` on every rank (what the others pass is ignored): a decision only rank
    0 can make, such as stopping a pruned trial, taken by all ranks after the same step."""
    if not dist.is_initialized():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.broadcast(t, src=0)
    return bool(t.item())


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def set_epoch(sampler: Any, epoch: int) -> None:
    """Reshuffle a (distributed) sampler for ``epoch``; a no-op for samplers without epochs."""
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
