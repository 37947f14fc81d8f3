"""One epoch of training and of validation, with loss, accuracy and macro F1 over all ranks.

The loop is the same for a clip model and for the temporal network; a *step* function turns a
batch into ``(loss, predictions, targets)``. Metrics are exact over the whole epoch: every rank
sums its loss and its confusion matrix and the sums are all-reduced. AMP is used on GPU only.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from typing import Any

import torch
from torch import nn

from surgflow.data.clips import normalise
from surgflow.training import distributed as D
from surgflow.training.models import temporal_loss

Step = Callable[[nn.Module, Any, Any], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


def clip_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    logits = model(x)
    return nn.functional.cross_entropy(logits, y), logits.argmax(1), y


def temporal_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor):
    """``x`` is ``B×D×L`` features, ``y`` is ``B×L`` labels (-1 unlabelled)."""
    logits = model(x)
    preds = logits[-1].argmax(1)
    keep = y >= 0
    return temporal_loss(logits, y), preds[keep], y[keep]


def confusion(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``num_classes²`` counts; row = true class, column = predicted class."""
    idx = targets.long() * num_classes + preds.long()  # stays on the inputs' device
    return torch.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, -1)


def scores(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy and macro F1 from a confusion matrix; F1 averages the classes that occur
    (as truth or as prediction), so an absent class neither helps nor hurts."""
    cm = cm.double()
    total = cm.sum().item()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    present = (support + predicted) > 0
    f1 = torch.where(present, 2 * tp / (support + predicted).clamp(min=1), torch.zeros_like(tp))
    return {
        "accuracy": tp.sum().item() / total if total else 0.0,
        "macro_f1": f1[present].mean().item() if present.any() else 0.0,
    }


def _reduce(loss_sum: torch.Tensor, n: int, cm: torch.Tensor,
            device: torch.device) -> dict[str, float]:
    # the per-step sums stayed on the device; this is the epoch's one copy to the host
    flat = [float(loss_sum), float(n), *cm.flatten().tolist()]
    total = D.reduce_sum(flat, device)
    k = cm.shape[0]
    cm_all = torch.tensor(total[2:], dtype=torch.float64).reshape(k, k)
    out = {"loss": total[0] / max(total[1], 1.0), "samples": int(total[1])}
    return out | scores(cm_all)


def _sums(num_classes: int, device: torch.device) -> tuple[torch.Tensor, int, torch.Tensor]:
    """Zeroed loss sum, sample count and confusion matrix, kept on ``device`` so that adding a
    step's results never waits for the device to finish."""
    return (torch.zeros((), dtype=torch.float64, device=device), 0,
            torch.zeros(num_classes, num_classes, dtype=torch.long, device=device))


def as_input(x: torch.Tensor) -> torch.Tensor:
    """Model input from a batch: uint8 clips ``(B, C, T, H, W)`` are normalised here, on the
    device they were moved to; float batches (already normalised, or features) pass through."""
    return normalise(x) if x.dtype == torch.uint8 else x


def train_epoch(
    model: nn.Module,
    batches: Iterable,
    optimizer: torch.optim.Optimizer,
    *,
    step: Step,
    num_classes: int,
    device: torch.device,
    amp: bool = False,
    scaler: Any = None,
    on_wait: Callable[[float], None] | None = None,
    on_first_step: Callable[[], None] | None = None,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict[str, float]:
    """Train over ``batches`` once; returns metrics reduced over all ranks. ``prepare`` turns a
    batch on the device into model input (default :func:`as_input`; training augmentation)."""
    prepare = prepare or as_input
    model.train()
    loss_sum, n, cm = _sums(num_classes, device)
    started = time.perf_counter()
    waited = 0.0
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        try:
            x, y = next(it)
        except StopIteration:
            break
        dt = time.perf_counter() - t0
        waited += dt
        if on_wait:
            on_wait(dt)
        x, y = prepare(x.to(device, non_blocking=True)), y.to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with _autocast(device, amp):
            loss, preds, targets = step(model, x, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if on_first_step is not None:
            on_first_step()
            on_first_step = None
        k = int(targets.numel())
        loss_sum += loss.detach().double() * k
        n += k
        cm += confusion(preds.detach(), targets.detach(), num_classes)
    elapsed = time.perf_counter() - started
    out = _reduce(loss_sum, n, cm, device)
    waits = D.reduce_sum([waited, elapsed], device)
    ws = D.world_size()
    return out | {
        "seconds": waits[1] / ws,
        "loader_wait_s": waits[0] / ws,
        "samples_per_s": out["samples"] / max(waits[1] / ws, 1e-9),
    }


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterable, *, step: Step, num_classes: int, device: torch.device,
    amp: bool = False,
) -> dict[str, float]:
    """Evaluate over ``batches`` (each rank its own share); metrics reduced over all ranks."""
    model.eval()
    loss_sum, n, cm = _sums(num_classes, device)
    for x, y in batches:
        x, y = as_input(x.to(device)), y.to(device)
        with _autocast(device, amp):
            loss, preds, targets = step(model, x, y)
        k = int(targets.numel())
        loss_sum += loss.double() * k
        n += k
        cm += confusion(preds, targets, num_classes)
    return _reduce(loss_sum, n, cm, device)


def _autocast(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return nullcontext()


def make_optimizer(params: Iterable, spec: Any) -> torch.optim.Optimizer:
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=spec.momentum,
                               weight_decay=spec.weight_decay)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=spec.lr, weight_decay=spec.weight_decay)
    return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)


def make_scheduler(optimizer: torch.optim.Optimizer, spec: Any):
    """Stepped once per epoch."""
    if spec.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=spec.epochs)
    if spec.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=spec.step_size, gamma=0.1)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


def make_scaler(device: torch.device, amp: bool):
    if amp and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and Python's RNG; CPU results then repeat exactly."""
    import random

    random.seed(seed)
    torch.manual_seed(seed)
