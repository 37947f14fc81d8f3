"""What one rank runs: every stage of a run, resuming each from its last checkpoint.

:func:`run_rank` is what the launcher ships to each Dask worker (and what ``torchrun`` runs in
the benchmark). It receives only the run directory and its place in the group; it reads the
recipe (its sources pinned to ``dataset@N``) from the run directory, resolves the dataset views
itself and builds its own datasets. Stages:

1. ``clip`` — the clip/frame model (the only stage of a non-chained recipe);
2. ``features`` — chains only: stage-1 features of every video into the feature cache;
3. ``temporal`` — chains only: the temporal network over whole-video feature sequences.

A restarted group finds finished stages by their last checkpoint and skips them. A run that is
a trial of a sweep (``job["trial"]``) reports each epoch's validation metric to its trial and
stops early, on every rank, when the trial is pruned (:mod:`surgflow.training.pruning`); its
summary then says where (``"pruned"``).
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, DistributedSampler

from surgflow.data.seconds import per_second_clip
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.errors import BadInput, ConfigError
from surgflow.training import checkpoints, data, mlflow_run
from surgflow.training import distributed as D
from surgflow.training.augment import augment
from surgflow.training.chain import (
    HeadOverTime,
    SequenceDataset,
    chain_version,
    collate_sequences,
    extract_features,
)
from surgflow.training.features import FeatureCache
from surgflow.training.loop import (
    clip_step,
    evaluate,
    make_optimizer,
    make_scaler,
    make_scheduler,
    seed_everything,
    temporal_step,
    train_epoch,
)
from surgflow.training.models import build_clip_model, build_temporal_model
from surgflow.training.pruning import Pruned, TrialReporter
from surgflow.training.recipe import Recipe, parse_recipe
from surgflow.training.runs import now_iso
from surgflow.training.utilisation import UtilisationSampler


def run_rank(job: dict[str, Any], rank: int, world_size: int, master_addr: str,
             master_port: int, local_rank: int = 0) -> dict[str, Any]:
    """Join the group, run every stage of the run in ``job["run_dir"]``, return a summary."""
    if job.get("threads"):
        torch.set_num_threads(int(job["threads"]))
    ctx = D.setup(rank, world_size, master_addr=master_addr, master_port=master_port,
                  gpu=bool(job.get("gpu")), local_rank=local_rank,
                  timeout_s=float(job.get("rendezvous_timeout_s", 120)))
    gpu_index = ctx.device.index if ctx.device.type == "cuda" else None
    live = _live_log(job)
    sampler = UtilisationSampler(rank, float(job.get("sample_interval_s", 1.0)), gpu_index,
                                 on_sample=live.add_sample if live else None).start()
    try:
        return _run(Path(job["run_dir"]), Path(job["home"]), ctx, sampler, job, live)
    finally:
        sampler.stop()
        if live is not None:
            live.close()
        D.teardown()


def _live_log(job: dict[str, Any]) -> mlflow_run.LiveLog | None:
    """This rank's live log into the run's MLflow run (none for a job without one)."""
    if not job.get("mlflow_run_id"):
        return None
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=job["mlflow_tracking_uri"])
    return mlflow_run.LiveLog(client, job["mlflow_run_id"],
                           float(job.get("log_interval_s", 2.0))).start()


def _run(run_dir: Path, home: Path, ctx: D.RankContext, util: UtilisationSampler,
         job: dict[str, Any], live: mlflow_run.LiveLog | None) -> dict[str, Any]:
    recipe = parse_recipe(json.loads((run_dir / "recipe.json").read_text()))
    if recipe.optim.num_workers and multiprocessing.current_process().daemon:
        raise ConfigError(
            f"rank {ctx.rank} on {socket.gethostname()}: optim.num_workers = "
            f"{recipe.optim.num_workers} needs DataLoader child processes, but this Dask worker is "
            "daemonic; start workers with DASK_DISTRIBUTED__WORKER__DAEMON=False or set "
            "optim.num_workers: 0"
        )
    out: dict[str, Any] = {"host": socket.gethostname(), "pid": os.getpid(), "rank": ctx.rank,
                           "stages": {}}
    trainer = _StageTrainer(run_dir, home, recipe, ctx, util, job, live)
    model, clip_result = trainer.clip_stage()
    out["stages"]["clip"] = clip_result
    if "pruned" in clip_result:
        out["pruned"] = clip_result["pruned"]
    if recipe.temporal is None or "pruned" in clip_result:
        out["model_version"] = clip_result["version"]
        return out
    out["stages"]["features"], labels = trainer.feature_stage(model, clip_result["version"])
    temporal = trainer.temporal_stage(clip_result["version"], model, labels)
    out["stages"]["temporal"] = temporal
    if "pruned" in temporal:
        out["pruned"] = temporal["pruned"]
    out["model_version"] = chain_version([clip_result["version"], temporal["version"]])
    return out


class _StageTrainer:
    def __init__(self, run_dir: Path, home: Path, recipe: Recipe, ctx: D.RankContext,
                 util: UtilisationSampler, job: dict[str, Any], live: mlflow_run.LiveLog | None):
        self.run_dir, self.home, self.recipe, self.ctx, self.util = run_dir, home, recipe, ctx, util
        self.job, self.live = job, live
        self.sources = recipe.data.sources  # pinned to dataset@N by the driver
        self.labels = list(ProcedureCatalog(home).get(recipe.procedure).labels)
        self.classes = len(self.labels)
        self.reuse: dict[str, str] = job.get("reuse") or {}
        self.cuda = ctx.device.type == "cuda"
        # a sweep's trial: every rank takes part in the stop decision, rank 0 makes it
        self.trial = bool(job.get("trial"))
        self.reporter = TrialReporter(job["trial"]) if self.trial and ctx.is_main else None

    def clip_stage(self) -> tuple[torch.nn.Module, dict[str, Any]]:
        r, ctx = self.recipe, self.ctx
        if "encoder" in self.reuse:
            model = self._reused("encoder").to(ctx.device)
            return model, self._reused_result(model, "encoder")
        seed_everything(r.optim.seed)
        model = build_clip_model(r.model.architecture, self.classes,
                                 pretrained=r.model.pretrained, dropout=r.model.dropout)
        train_view = data.resolve(r, self.sources, "train", self.home)
        val_view = data.resolve(r, self.sources, "val", self.home)
        self._check_classes(train_view.classes)
        train, sampler = data.train_loader(train_view, r.optim, ctx.rank, ctx.world_size,
                                           self.cuda, home=self.home)
        val = data.val_loader(val_view, r.optim, ctx.rank, ctx.world_size, self.cuda,
                              home=self.home)
        augmented = (functools.partial(augment, spec=r.augment) if r.augment.enabled else None)
        result = self._train("clip", model, r.optim, train, val, sampler, clip_step,
                             prepare=augmented)
        result["clips"] = {"train": len(train_view), "val": len(val_view)}
        return model, result

    def feature_stage(self, model: torch.nn.Module,
                      version: str) -> tuple[dict[str, Any], dict[str, dict]]:
        """Per-second labels of both splits, and stage-1 features of their videos in the cache
        (each rank computes its share of the videos)."""
        started = time.time()
        per_second = per_second_clip(self.recipe.clip.size)
        views = {s: data.resolve(self.recipe, self.sources, s, self.home, per_second)
                 for s in data.SPLITS}
        videos = {v.sha256: v for s in data.SPLITS for v in views[s].videos}
        mine = sorted(videos)[self.ctx.rank :: self.ctx.world_size]
        counts = extract_features(
            model, version, [videos[h] for h in mine], FeatureCache(self.home),
            clip=self.recipe.clip, device=self.ctx.device,
        )
        D.barrier()
        total = D.reduce_sum([counts["computed"], counts["cached"]], self.ctx.device)
        labels = {s: {"videos": views[s].videos, "labels": data.second_labels(views[s])}
                  for s in data.SPLITS}
        return ({"computed": int(total[0]), "cached": int(total[1]),
                 "seconds": time.time() - started}, labels)

    def temporal_stage(self, stage1_version: str, encoder: torch.nn.Module,
                       labels: dict[str, dict]) -> dict[str, Any]:
        spec = self.recipe.temporal
        assert spec is not None
        cache = FeatureCache(self.home)
        in_dim = encoder.feature_dim
        baseline = self._encoder_alone(encoder, stage1_version, labels, cache)
        if "temporal" in self.reuse:
            return self._reused_temporal(stage1_version, in_dim, labels, cache) | baseline
        seed_everything(spec.optim.seed)
        model = build_temporal_model(spec, in_dim, self.classes)
        if model.refine:
            model.set_prior(encoder.head)
        train_set = SequenceDataset(labels["train"]["videos"], labels["train"]["labels"], cache,
                                    stage1_version)
        val_videos = labels["val"]["videos"][self.ctx.rank :: self.ctx.world_size]
        val_set = SequenceDataset(val_videos, labels["val"]["labels"], cache, stage1_version)
        sampler = DistributedSampler(train_set, num_replicas=self.ctx.world_size,
                                     rank=self.ctx.rank, shuffle=True, seed=spec.optim.seed)
        train = DataLoader(train_set, batch_size=spec.optim.batch_size, sampler=sampler,
                           collate_fn=collate_sequences)
        val = DataLoader(val_set, batch_size=1, collate_fn=collate_sequences)
        result = self._train("temporal", model, spec.optim, train, val, sampler, temporal_step,
                             extra={"stage1_version": stage1_version}, keep_best=spec.keep_best)
        return result | baseline | {
            "stage1_version": stage1_version,
            "videos": {"train": len(train_set), "val": len(labels["val"]["videos"])}}

    def _encoder_alone(self, encoder: torch.nn.Module, stage1_version: str,
                       labels: dict[str, dict], cache: FeatureCache) -> dict[str, Any]:
        """The encoder's own head on the validation seconds the chain is scored on: what the
        temporal stage has to beat (logged as ``temporal/encoder_val_*``)."""
        val_videos = labels["val"]["videos"][self.ctx.rank :: self.ctx.world_size]
        val = DataLoader(SequenceDataset(val_videos, labels["val"]["labels"], cache,
                                         stage1_version), batch_size=1,
                         collate_fn=collate_sequences)
        metrics = evaluate(HeadOverTime(encoder.head).to(self.ctx.device), val,
                           step=temporal_step, num_classes=self.classes, device=self.ctx.device)
        if self.ctx.is_main and self.live is not None:
            self.live.add(mlflow_run.named_metrics("temporal/encoder_val", metrics))
        return {"encoder_val": metrics}

    def _reused(self, stage: str) -> torch.nn.Module:
        from surgflow.training.reuse import load_stage

        return load_stage(self.reuse[stage], stage, labels=self.labels, clip=self.recipe.clip)

    def _reused_result(self, model: torch.nn.Module, stage: str) -> dict[str, Any]:
        return {"version": checkpoints.weights_digest(model), "epochs": 0,
                "resumed_from_epoch": None, "final": None, "reused": self.reuse[stage]}

    def _reused_temporal(self, stage1_version: str, in_dim: int, labels: dict[str, dict],
                         cache: FeatureCache) -> dict[str, Any]:
        """Production's temporal network over this run's features: nothing to train, so the
        stage reports how the chain it makes does on the validation videos."""
        model = self._reused("temporal").to(self.ctx.device)
        if model.in_dim != in_dim:
            raise BadInput(
                f"production chain {self.reuse['temporal']}: its temporal stage reads "
                f"{model.in_dim}-dim features but this run's encoder gives {in_dim}"
            )
        val_videos = labels["val"]["videos"][self.ctx.rank :: self.ctx.world_size]
        val_set = SequenceDataset(val_videos, labels["val"]["labels"], cache, stage1_version)
        val = DataLoader(val_set, batch_size=1, collate_fn=collate_sequences)
        m_val = evaluate(model, val, step=temporal_step, num_classes=self.classes,
                         device=self.ctx.device)
        return self._reused_result(model, "temporal") | {
            "final": {"epoch": 0, "val": m_val}, "stage1_version": stage1_version,
            "videos": {"train": 0, "val": len(labels["val"]["videos"])}}

    def _check_classes(self, classes: tuple[str, ...]) -> None:
        if len(classes) != self.classes:
            raise BadInput(
                f"recipe {self.recipe.name!r} is for procedure {self.recipe.procedure!r} "
                f"({self.classes} labels) but its data has {len(classes)} classes: {classes}"
            )

    def _train(self, stage: str, model: torch.nn.Module, optim: Any, train: DataLoader,
               val: DataLoader, sampler: Any, step: Callable,
               extra: dict[str, Any] | None = None,
               prepare: Callable | None = None, keep_best: bool = False) -> dict[str, Any]:
        """Train ``stage`` to ``optim.epochs``, resuming from its last checkpoint. With
        ``keep_best`` the stage ends with the weights of its epoch of best validation macro-F1,
        epoch 0 (the untrained network) included; the last checkpoint then holds those."""
        ctx = self.ctx
        model.to(ctx.device)
        optimizer = make_optimizer(model.parameters(), optim)
        scheduler = make_scheduler(optimizer, optim)
        scaler = make_scaler(ctx.device, optim.amp)
        done, resumed_from, saved_metrics = 0, None, {}
        last = checkpoints.latest(self.run_dir, stage)
        if last is not None:
            state = checkpoints.load(last, ctx.device)
            done = checkpoints.restore(state, model=model, optimizer=optimizer,
                                       scheduler=scheduler, scaler=scaler)
            resumed_from, saved_metrics = done, state["metrics"]
        ddp = D.wrap(model, ctx)
        amp = optim.amp and ctx.device.type == "cuda"
        best: dict[str, Any] | None = None
        if keep_best:
            best = state.get("best") if last is not None else None
            if best is None:
                m0 = evaluate(model, val, step=step, num_classes=self.classes,
                              device=ctx.device, amp=amp)
                best = {"epoch": 0, "val": m0, "model": _copy_state(model)}
        history = []
        launch: dict[str, float] = {}
        pruned: Pruned | None = None

        def mark_first_step() -> None:
            launch["first_step_at"] = time.time()

        for epoch in range(done + 1, optim.epochs + 1):
            # Per-epoch seeds make a resumed run repeat the epochs an uninterrupted one runs.
            seed_everything(optim.seed * 1_000 + epoch * 10 + ctx.rank)
            D.set_epoch(sampler, epoch)
            first_step = mark_first_step if epoch == done + 1 else None
            m_train = train_epoch(ddp, train, optimizer, step=step, num_classes=self.classes,
                                  device=ctx.device, amp=amp, scaler=scaler,
                                  on_wait=self.util.add_wait, on_first_step=first_step,
                                  prepare=prepare)
            # each rank evaluates its own share on the bare model (DDP's forward is for
            # training: it expects a backward), holding rank 0's buffers like the saved model
            D.sync_buffers(ddp)
            m_val = evaluate(D.unwrap(ddp), val, step=step, num_classes=self.classes,
                             device=ctx.device, amp=amp)
            lr = optimizer.param_groups[0]["lr"]
            scheduler.step()
            self.util.sample()  # every epoch has a sample per rank, however short it was
            # first_step_at (first epoch of an attempt): launch overhead, measured on rank 0
            metrics = {"train": m_train, "val": m_val, "lr": lr, "finished_at": now_iso(),
                       **(launch if epoch == done + 1 else {})}
            logged, selected = metrics, None
            if best is not None:
                if m_val["macro_f1"] > best["val"]["macro_f1"]:
                    best = {"epoch": epoch, "val": m_val, "model": _copy_state(D.unwrap(ddp))}
                extra = (extra or {}) | {"best": best}
                if epoch == optim.epochs:
                    # every rank holds the same best weights (ranks' models are identical)
                    D.unwrap(ddp).load_state_dict(best["model"])
                    selected = {"epoch": best["epoch"], **best["val"]}
                    metrics = metrics | {"selected_epoch": best["epoch"], "last_val": m_val,
                                         "val": best["val"]}
            history.append({"epoch": epoch, **metrics})
            if ctx.is_main:
                if self.live is not None:
                    self.live.add(mlflow_run.epoch_metrics(stage, epoch, logged))
                    if selected is not None:
                        self.live.add(mlflow_run.named_metrics(f"{stage}/selected", selected))
                    self.live.flush()
                checkpoints.save(
                    self.run_dir, stage, epoch, model=D.unwrap(ddp), optimizer=optimizer,
                    scheduler=scheduler, scaler=scaler, recipe=self.recipe.model_dump(mode="json"),
                    dataset_versions=list(self.sources), metrics=metrics, extra=extra,
                )
            if self.trial:
                pruned = self._judge(stage, epoch, m_val)
            D.barrier()
            if pruned is not None:
                break
        # a stage already complete on resume reports what its last checkpoint recorded
        final = history[-1] if history else {"epoch": done, **saved_metrics}
        out = {"version": checkpoints.weights_digest(D.unwrap(ddp)), "epochs": optim.epochs,
               "resumed_from_epoch": resumed_from, "final": final}
        return out | ({"pruned": pruned.as_dict()} if pruned is not None else {})

    def _judge(self, stage: str, epoch: int, m_val: dict[str, float]) -> Pruned | None:
        """Report this epoch to the trial (rank 0) and agree on every rank whether it stops."""
        step = self._step(stage, epoch)
        stop = self.reporter.report(step, m_val) if self.reporter is not None else False
        if not D.broadcast_flag(stop, self.ctx.device):
            return None
        metric = str(self.job["trial"]["metric"])
        return Pruned(stage, epoch, step, float(m_val[metric]))

    def _step(self, stage: str, epoch: int) -> int:
        """The trial's step of ``stage``'s ``epoch``: epochs counted across the run's stages."""
        if stage != "temporal" or "encoder" in self.reuse:
            return epoch
        return self.recipe.optim.epochs + epoch


def _copy_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
