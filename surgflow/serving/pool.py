"""The production chains the service runs, one per procedure, and their hot swap.

A :class:`ModelPool` holds one :class:`Served` per procedure. :meth:`ModelPool.refresh` asks the
registry for every procedure's production version (local files: surgflow's pointer history,
never an MLflow alias); where it moved, it fetches the new version's bundle with every sha256
re-checked (parity was re-run when it was promoted), builds and warms a new runner, and only
then swaps the reference. A request holds the :class:`Served` it started with, so requests in
flight finish on the old chain while new ones get the new one. A version whose bundle fails its
check is never swapped in; it is logged and reported under ``rejected`` on ``/v1/models``
until the pointer moves again, and so is a production alias moved outside surgflow (the
version surgflow promoted goes on being served). A watcher thread calls :meth:`refresh` every
``SURGFLOW_SERVE_POLL_S`` seconds, off the request path.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from surgflow.config import Settings
from surgflow.data.taxonomy import ProcedureCatalog
from surgflow.errors import SurgflowError

log = logging.getLogger(__name__)


class NotServed(SurgflowError):
    """A known procedure has no production chain loaded (HTTP 409)."""


@dataclass(frozen=True)
class Served:
    """One loaded production chain."""

    procedure: str
    name: str
    version: int
    runner: Any
    loaded_at: datetime

    @property
    def labels(self) -> list[str]:
        return list(self.runner.spec.labels)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version,
                "loaded_at": self.loaded_at.isoformat().replace("+00:00", "Z")}


@dataclass(frozen=True)
class Rejection:
    name: str
    version: int
    reason: str
    at: datetime

    def describe(self) -> dict[str, Any]:
        return {"version": self.version, "reason": self.reason,
                "at": self.at.isoformat().replace("+00:00", "Z")}


def load_chain(registry, name: str, version: int, *, threads: int | None = None):
    """A warmed runner of ``name@version``. Its files must hash to the registered sha256
    (:meth:`~surgflow.registry.ModelRegistry.verify` without parity: parity was re-run when the
    version was promoted, and files that match their hashes are the files it passed on)."""
    from surgflow.inference import ChainRunner

    bundle: Path = registry.verify(name, version, parity=False).path
    runner = ChainRunner.load(bundle, intra_op_threads=threads)
    runner.warm()
    return runner


class ModelPool:
    """The served chain of every procedure; thread-safe; see the module docstring."""

    def __init__(self, settings: Settings, models=None, *,
                 loader: Callable[[Any, str, int], Any] | None = None):
        if models is None:
            from surgflow.registry import ModelRegistry

            models = ModelRegistry(settings)
        self.settings = settings
        self.models = models  # the model registry (not the video registry)
        self.catalog = ProcedureCatalog(settings.home)
        self._loader = loader or load_chain
        self._served: dict[str, Served] = {}
        self._rejected: dict[str, Rejection] = {}
        self._drift: dict[str, Rejection] = {}
        self._lock = threading.Lock()
        self._refresh_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- what requests use -------------------------------------------------------------

    def get(self, procedure: str) -> Served:
        """The chain serving ``procedure``: UnknownName (404) or NotServed (409) otherwise."""
        self.catalog.get(procedure)  # raises UnknownName naming the known procedures
        with self._lock:
            served = self._served.get(procedure)
            rejected = self._rejected.get(procedure)
        if served is None:
            name = self._model_name(procedure)
            why = (f"; version {rejected.version} was rejected: {rejected.reason}"
                   if rejected else "")
            raise NotServed(f"procedure {procedure!r} has no production model ({name}){why}")
        return served

    def status(self) -> dict[str, dict[str, Any]]:
        """``/v1/models``: every served procedure's name, version, loaded_at (and rejections)."""
        with self._lock:
            out: dict[str, dict[str, Any]] = {p: s.describe() for p, s in self._served.items()}
            # a drifted alias is reported first: it is what an operator must put back
            for p, r in {**self._rejected, **self._drift}.items():
                entry = out.setdefault(p, {"name": r.name, "version": None, "loaded_at": None})
                entry["rejected"] = r.describe()
        return dict(sorted(out.items()))

    # ---- hot swap ----------------------------------------------------------------------

    def _model_name(self, procedure: str) -> str:
        from surgflow.registry import model_name

        return model_name(procedure)

    def refresh(self) -> list[str]:
        """Poll every procedure's production pointer once and swap what moved; returns
        ``procedure@version`` for each swap made."""
        swapped = []
        with self._refresh_lock:
            for proc in self.catalog.list():
                try:
                    if self._refresh_one(proc.name):
                        swapped.append(f"{proc.name}@{self._served[proc.name].version}")
                except Exception:
                    # one procedure's broken registry entry must not stop the others' swaps
                    log.exception("checking the production model of %s failed", proc.name)
        return swapped

    def _refresh_one(self, procedure: str) -> bool:
        name = self._model_name(procedure)
        version = self.models.production(name)
        self._note_drift(procedure, name)
        with self._lock:
            current = self._served.get(procedure)
            rejected = self._rejected.get(procedure)
        if version is None:
            if current is not None:
                log.warning("%s has no production version any more; no longer serving %s@%d",
                            name, name, current.version)
                with self._lock:
                    self._served.pop(procedure, None)
            return False
        if current is not None and current.version == version:
            if rejected is not None:  # the pointer came back to what is served
                with self._lock:
                    self._rejected.pop(procedure, None)
            return False
        if rejected is not None and rejected.version == version:
            return False
        log.info("loading %s@%d for %s", name, version, procedure)
        try:
            runner = self._loader(self.models, name, version)
        except Exception as e:  # any failure to load (hashes, parity, onnxruntime) rejects it
            reason = " ".join(str(e).split())
            log.error("not serving %s@%d: %s; %s", name, version, reason,
                      f"still serving version {current.version}" if current else "nothing served")
            with self._lock:
                self._rejected[procedure] = Rejection(name, version, reason, datetime.now(UTC))
            return False
        served = Served(procedure, name, version, runner, datetime.now(UTC))
        with self._lock:
            self._served[procedure] = served
            self._rejected.pop(procedure, None)
        log.info("now serving %s@%d for %s%s", name, version, procedure,
                 f" (was version {current.version})" if current else "")
        return True

    def _note_drift(self, procedure: str, name: str) -> None:
        """Remember (and log once) a production alias that disagrees with the registry's
        history; the version the history names goes on being served."""
        drift = next((d for d in self.models.alias_drift(name)
                      if d["stage"] == "production"), None) if self._registered(name) else None
        with self._lock:
            known = self._drift.get(procedure)
            if drift is None:
                self._drift.pop(procedure, None)
                return
            if known is not None and known.version == drift["alias"]:
                return
            self._drift[procedure] = Rejection(name, drift["alias"], drift["reason"],
                                               datetime.now(UTC))
        log.warning("%s: %s; serving %s@%s, the version surgflow promoted", name,
                    drift["reason"], name, drift["history"])

    def _registered(self, name: str) -> bool:
        return self.models.reader.exists(name)

    def start(self, interval_s: float | None = None) -> None:
        """Start the watcher thread (a first :meth:`refresh` should have run already)."""
        interval = interval_s if interval_s is not None else self.settings.serve_poll_s
        if self._thread is not None:
            return
        self._stop.clear()

        def watch() -> None:
            while not self._stop.wait(interval):
                try:
                    self.refresh()
                except Exception:  # e.g. the procedures folder unreadable for a moment
                    log.exception("polling the registry's production pointers failed")

        self._thread = threading.Thread(target=watch, name="surgflow-model-watcher", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
