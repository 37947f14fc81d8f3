"""The model registry on MLflow: chain versions, stage pointers, history and seals.

MLflow holds the versions (registered model ``<procedure>-phase``, versions 1, 2, 3, …) and
their artifacts (the chain bundle, logged to the training run under ``chain/``). surgflow
keeps, under ``SURGFLOW_HOME/registry/<name>/``, what decides: the append-only pointer history
(the authority on where ``candidate``, ``approved`` and ``production`` point), the lock that
makes every pointer move a compare-and-set, and the seals. MLflow's aliases of the same names
mirror the history for MLflow's UI and clients; an alias moved any other way is a drift that
is reported (:meth:`ModelRegistry.alias_drift`) and never served, and the next surgflow move
of that stage puts it back.

Reads go through :mod:`surgflow.registry.reader` (no MLflow import); writes through MLflow's
client.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from surgflow.config import Settings, get_settings
from surgflow.errors import BadInput, ConflictError, NotFound, SurgflowError
from surgflow.registry import artifacts, history
from surgflow.registry import model as M
from surgflow.registry import seals as S
from surgflow.registry.model import ModelVersion
from surgflow.registry.reader import Reader, VersionRecord, reader_for

log = logging.getLogger(__name__)

ARTIFACT_PATH = "chain"
RECIPE_FILE = "recipe.json"
LOCK_TIMEOUT_S = 120.0


class ModelRegistry:
    """Registered chains of every procedure: versions on the configured MLflow store, pointers
    decided by surgflow's history (an MLflow alias is a mirror of it, and a disagreement is a
    drift to report, never an order)."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._client = None
        self._reader = None

    # -- MLflow ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """MLflow's client, for writes (importing it costs seconds: reads use :attr:`reader`)."""
        if self._client is None:
            from surgflow import tracking

            self._client = tracking.client(self.settings)
        return self._client

    @property
    def reader(self) -> Reader:
        if self._reader is None:
            from surgflow import tracking

            self._reader = reader_for(tracking.tracking_uri(self.settings))
        return self._reader

    def _dir(self, name: str) -> Path:
        return self.settings.home / "registry" / M.check_name(name)

    def _history_path(self, name: str) -> Path:
        return self._dir(name) / "history.jsonl"

    def _seals(self, name: str) -> S.SealStore:
        return S.SealStore(self._dir(name) / "seals")

    @contextmanager
    def _locked(self, name: str) -> Iterator[None]:
        from filelock import FileLock, Timeout

        path = self._dir(name) / "pointers.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with FileLock(path, timeout=LOCK_TIMEOUT_S, thread_local=False):
                yield
        except Timeout as e:
            raise SurgflowError(f"{name}: the pointer lock {path} was held for over "
                                f"{LOCK_TIMEOUT_S:.0f} s by another process") from e

    def _require_model(self, name: str) -> str:
        M.check_name(name)
        if not self.reader.exists(name):
            known = self.reader.names()
            raise NotFound(f"unknown model {name!r}; registered models: "
                           f"{', '.join(known) or '(none)'}")
        return name

    def _record(self, name: str, ref: int | str) -> VersionRecord:
        ref = M.parse_version_ref(ref, f"{name}@{ref}")
        self._require_model(name)
        if isinstance(ref, str):
            pointers = self.pointers(name)
            if ref not in pointers:
                have = ", ".join(f"{s}@{v}" for s, v in sorted(pointers.items()))
                raise NotFound(f"{name}@{ref}: no version is {ref} yet"
                               + (f" (pointers: {have})" if have else ""))
            ref = pointers[ref]
        versions = self.reader.versions(name)
        for record in versions:
            if record.version == ref:
                return record
        have = ", ".join(str(r.version) for r in versions)
        raise NotFound(f"{name}@{ref}: no such version; versions: {have or '(none)'}")

    def _moves(self, name: str) -> list[dict]:
        return history.read(self._history_path(name))

    def pointers(self, name: str) -> dict[str, int]:
        """Stage -> version of every pointer that is set, as surgflow's history has it."""
        return history.pointers(self._moves(name))

    def alias_drift(self, name: str) -> list[dict]:
        """Every stage whose MLflow alias disagrees with surgflow's history, each with the
        ``alias`` (None: removed), the ``history`` version (what counts) and a ``reason``."""
        return history.drift(self.pointers(name), self.reader.aliases(name))

    # -- reading --------------------------------------------------------------------------

    def get(self, name: str, ref: int | str) -> ModelVersion:
        """Version ``ref`` (a number or a stage name) of model ``name``."""
        record = self._record(name, ref)
        return M.from_mlflow(record, self.seal(name, record.version), self.pointers(name))

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """Every version of ``name`` (or of every model), by name then version."""
        names = [self._require_model(name)] if name else self.reader.names()
        out = []
        for n in names:
            pointers = self.pointers(n)
            for record in self.reader.versions(n):
                out.append(M.from_mlflow(record, self.seal(n, record.version), pointers))
        return out

    def production(self, name: str) -> int | None:
        """The version surgflow's history put in production, if that move is one a version
        may be served by (None: unset, never registered, or not servable). Reads local files
        only: the service polls it."""
        return self.servable(name)[0]

    def servable(self, name: str) -> tuple[int | None, str | None]:
        """(version, why not the latest move): the version of the last production move that
        may be served, and why a later move may not (None when the last one may). A move
        without a promote's approving seal, a forced promote's reason or a rollback's earlier
        production is treated as not made."""
        moves = self._moves(M.check_name(name))
        production = [m for m in history.moves_of(moves) if m.get("stage") == "production"]
        why = None
        for move in reversed(production):
            if move.get("to") is None:
                return None, why
            problem = self._unservable(name, moves, move)
            if problem is None:
                return int(move["to"]), why
            why = why or problem
        return None, why

    def _unservable(self, name: str, moves: list[dict], move: dict) -> str | None:
        """Why the production ``move`` does not make its version servable (None: it does)."""
        via, to = history.via(move), move["to"]
        if via == "force":
            return None if str(move.get("reason") or "").strip() else (
                f"{name}@{to}: forced into production without a reason")
        if via == "rollback":
            earlier = history.production_lineage(moves[:moves.index(move)])
            return None if to in earlier else (
                f"{name}@{to}: a rollback to a version that was never in production")
        if via == "seal":
            blocker = self._seal_blocker(name, to, move.get("from"))
            return None if blocker is None else f"{name}@{to}: {blocker}"
        return f"{name}@{to}: moved into production by {via!r}, not a promote or rollback"

    def history(self, name: str) -> list[dict]:
        """Every pointer move of ``name``, oldest first."""
        self._require_model(name)
        return self._moves(name)

    def recipe(self, name: str, version: int) -> dict:
        """The recipe (as a dict) version ``version`` was trained from, from its artifacts."""
        path = self.bundle(name, version) / RECIPE_FILE
        return json.loads(path.read_text())

    # -- artifacts ------------------------------------------------------------------------

    def bundle(self, name: str, version: int | str, verify: bool = True) -> Path:
        """A local directory holding the version's chain bundle; with ``verify``, every file's
        sha256 is checked against the registry first (:class:`ArtifactMismatch` if not)."""
        record = self._record(name, version)
        ref = f"{name}@{record.version}"
        expected = M.hashes_from_tags(record.tags)
        local = artifacts.local_path(record.source or "")
        if local is not None:
            if verify:
                artifacts.verify(local, expected, ref)
            return local
        cached = self.settings.home / "registry" / "cache" / name / str(record.version)
        return artifacts.download(self.client, record.run_id, ARTIFACT_PATH, cached,
                                  expected if verify else None, ref)

    def verify(self, name: str, version: int, *, parity: bool = True) -> Verified:
        """The one check a version passes before it is moved or served: its artifacts
        re-hashed against the registry and (with ``parity``) its ONNX parity re-run on the
        golden clips. BadInput naming what differs."""
        path = self.bundle(name, version, verify=True)
        if not parity:
            return Verified(path, None)
        from surgflow.export import check_parity

        result = check_parity(path)
        if not result.passed:
            raise BadInput(parity_failure(f"{name}@{version}", result))
        return Verified(path, result)

    def audit(self, name: str) -> dict:
        """``models verify``: every alias drift, the production move's servability, and every
        servable version (production, approved and what a rollback reaches) re-hashed with its
        parity re-run. ``ok`` is false on any drift or failure."""
        self._require_model(name)
        moves = self._moves(name)
        pointers = history.pointers(moves)
        drift = self.alias_drift(name)
        _, unservable = self.servable(name)
        wanted = dict.fromkeys([*history.production_lineage(moves),
                                *([pointers["approved"]] if "approved" in pointers else [])])
        checked = []
        for v in sorted(wanted):
            try:
                result = self.verify(name, v)
                checked.append({"version": v, "passed": True,
                                "max_abs_diff": result.parity.max_abs_diff})
            except BadInput as e:
                checked.append({"version": v, "passed": False, "reason": str(e)})
        ok = not drift and unservable is None and all(c["passed"] for c in checked)
        return {"name": name, "ok": ok, "pointers": pointers, "alias_drift": drift,
                "production_unservable": unservable, "versions": checked}

    # -- registration ---------------------------------------------------------------------

    def register(self, *, procedure: str, bundle_dir: Path, run_id: str, recipe_name: str,
                 recipe: dict, recipe_path: str | Path | None, dataset_versions: list[str],
                 code_version: str, metrics: dict) -> ModelVersion:
        """Register the chain bundle ``bundle_dir`` of training run ``run_id`` as the next
        version of ``<procedure>-phase`` and point ``candidate`` at it.

        The bundle and the recipe are logged as artifacts of the run under ``chain/``; the
        version's tags hold every artifact's sha256, the recipe name, dataset versions, code
        version, metrics and the bundle's parity. A bundle whose parity failed is registered
        but can never be promoted. Registering the same run again with the same bundle returns
        the version it already made; with a different bundle it is a ConflictError.
        """
        from mlflow.exceptions import MlflowException

        from surgflow.export import read_spec

        bundle_dir = Path(bundle_dir)
        name = M.model_name(procedure)
        M.check_name(name)
        spec = read_spec(bundle_dir)
        if spec.procedure != procedure:
            raise BadInput(f"chain bundle {bundle_dir} is for procedure {spec.procedure!r}, "
                           f"not {procedure!r}")
        parity_path = bundle_dir / "parity.json"
        parity = json.loads(parity_path.read_text()) if parity_path.is_file() else None
        try:
            run = self.client.get_run(run_id)
        except MlflowException as e:
            raise NotFound(f"MLflow run {run_id!r} not found at "
                           f"{self.client.tracking_uri}") from e
        with tempfile.TemporaryDirectory(prefix="surgflow-register-") as tmp:
            staged = Path(tmp) / ARTIFACT_PATH
            shutil.copytree(bundle_dir, staged)
            if (staged / RECIPE_FILE).exists():
                raise BadInput(f"chain bundle {bundle_dir} already holds a {RECIPE_FILE}")
            (staged / RECIPE_FILE).write_text(json.dumps(recipe, sort_keys=True, indent=1,
                                                         default=str) + "\n")
            hashes = artifacts.file_hashes(staged)
            with self._locked(name):
                existing = self._version_of_run(name, run_id)
                if existing is not None:
                    if M.hashes_from_tags(existing.tags) == hashes:
                        return self.get(name, int(existing.version))
                    raise ConflictError(
                        f"MLflow run {run_id} already registered {name}@{existing.version} "
                        "with other artifacts; a run registers one chain")
                self._ensure_model(name, procedure)
                self.client.log_artifacts(run_id, str(staged), ARTIFACT_PATH)
                tags = M.version_tags(
                    procedure=procedure, hashes=hashes, recipe_name=recipe_name,
                    recipe_path=str(recipe_path) if recipe_path else None,
                    dataset_versions=list(dataset_versions), code_version=code_version,
                    metrics=metrics, parity=parity, unpromotable_reason=M.unpromotable(parity))
                source = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
                mv = self.client.create_model_version(name, source=source, run_id=run_id,
                                                      tags=tags)
                version = int(mv.version)
                current = self.pointers(name).get("candidate")
                self._move_locked(name, "candidate", version, by="registry", via="register",
                                  reason=f"registered from run {run_id} (recipe {recipe_name})",
                                  expected=current, current=current)
        log.info("registered %s@%d from run %s", name, version, run_id)
        return self.get(name, version)

    def _version_of_run(self, name: str, run_id: str) -> VersionRecord | None:
        return next((r for r in self.reader.versions(name) if r.run_id == run_id), None)

    def _ensure_model(self, name: str, procedure: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            self.client.create_registered_model(
                name, tags={M.TAG_PROCEDURE: procedure},
                description=f"Phase-recognition chains for {procedure} (surgflow)")

    # -- pointers -------------------------------------------------------------------------

    def move(self, name: str, stage: str, version: int, *, by: str, reason: str,
             expected: int | None, via: str | None = None) -> dict:
        """Point ``stage`` at ``version`` if it still points at ``expected`` (the version the
        caller saw; None: unset), else ConflictError. Appends the move to the history.

        ``via`` says what allows the move, and the history keeps it: ``register``
        (``candidate``, the default there), ``seal`` (``approved`` and ``production``, the
        default there: an approving seal against the current production), ``force``
        (production only, with a reason) or ``rollback`` (production only, to a version it
        held before). A version whose parity failed at registration is never moved to
        ``approved`` or ``production``."""
        if stage not in M.STAGES:
            raise BadInput(f"stage {stage!r}: expected one of {', '.join(M.STAGES)}")
        via = via or ("register" if stage == "candidate" else "seal")
        allowed = history.ALLOWED_VIA[stage]
        if via not in allowed:
            raise BadInput(f"{stage} moves by {' or '.join(allowed)}, not by {via!r}")
        if not isinstance(by, str) or not by.strip():
            raise BadInput("a pointer move needs `by`: who moves it")
        if not isinstance(reason, str) or not reason.strip():
            raise BadInput("a pointer move needs a reason")
        mv = self.get(name, version)
        if stage in M.PROMOTE_TARGETS and mv.unpromotable_reason:
            raise BadInput(f"{mv.ref} can never be {stage}: {mv.unpromotable_reason}")
        with self._locked(name):
            moves = self._moves(name)
            pointers = history.pointers(moves)
            current = pointers.get(stage)
            if current != expected:
                raise _conflict(name, stage, current, expected)
            if stage in M.PROMOTE_TARGETS and via == "seal":
                blocker = self._seal_blocker(name, mv.version, pointers.get("production"))
                if blocker:
                    raise BadInput(f"{mv.ref}: only an approving seal against the current "
                                   f"production moves {stage}: {blocker}; gate it with "
                                   f"`surgflow models gate {mv.ref}`")
            if via == "rollback" and mv.version not in history.production_lineage(moves):
                raise BadInput(f"{mv.ref} was never in production: nothing to roll back to")
            return self._move_locked(name, stage, mv.version, by=by, reason=reason, via=via,
                                     expected=expected, current=current)

    def _move_locked(self, name: str, stage: str, version: int, *, by: str, reason: str,
                     via: str, expected: int | None, current: int | None) -> dict:
        """The compare-and-set itself, under the lock the caller holds. The history line is
        the move; the MLflow alias follows it. A crash between the two leaves an alias that
        lags, which :meth:`alias_drift` reports and the next move of that stage repairs."""
        if current != expected:
            raise _conflict(name, stage, current, expected)
        result = {"name": name, "stage": stage, "from": current, "to": version}
        if current != version:
            history.append(self._history_path(name), {
                "stage": stage, "from": current, "to": version, "at": M.now_iso(),
                "by": by, "via": via, "reason": reason})
            log.info("%s: %s %s -> %s by %s (%s)", name, stage, _v(current), version, by,
                     reason)
        self._repair_alias(name, stage, version)
        return result

    def _repair_alias(self, name: str, stage: str, version: int) -> None:
        """Point MLflow's ``stage`` alias where the history says, if it is elsewhere."""
        if self.reader.aliases(name).get(stage) != version:
            self.client.set_registered_model_alias(name, stage, str(version))

    def promote(self, name: str, version: int | str, *, to: str = "production",
                force: bool = False, reason: str | None = None, by: str) -> dict:
        """Move ``to`` (production or approved) to ``version`` after re-hashing its artifacts
        and re-running ONNX parity. Needs an approving seal against the current production,
        or (production only) ``force`` with a reason, which the history keeps. Promoting the
        version already there repairs an MLflow alias moved outside surgflow."""
        if to not in M.PROMOTE_TARGETS:
            raise BadInput(f"--to {to!r}: expected one of {', '.join(M.PROMOTE_TARGETS)}")
        reason = (reason or "").strip() or None
        if force and reason is None:
            raise BadInput("--force needs --reason TEXT: why the seal is overridden (the "
                           "history keeps it)")
        if force and to == "approved":
            raise BadInput("approved is set only by a passing seal; --force applies to "
                           "--to production")
        mv = self.get(name, version)
        if mv.unpromotable_reason:
            raise BadInput(f"{mv.ref} can never be promoted, not even with --force: "
                           f"{mv.unpromotable_reason}")
        pointers = self.pointers(name)
        expected = pointers.get(to)
        baseline = pointers.get("production")
        blocker = None if expected == mv.version else self._seal_blocker(name, mv.version,
                                                                        baseline)
        if blocker and not force:
            hint = (f"gate it with `surgflow models gate {mv.ref}`"
                    + (", or pass --force --reason TEXT" if to == "production" else ""))
            raise BadInput(f"{mv.ref} cannot be promoted to {to}: {blocker}; {hint}")
        self.verify(name, mv.version)
        if expected == mv.version:
            with self._locked(name):
                self._repair_alias(name, to, mv.version)
            return {"name": name, "stage": to, "from": expected, "to": mv.version}
        if blocker:
            why = f"forced past '{blocker}': {reason}"
        else:
            why = reason or f"approved by its seal against {_ref(name, baseline)}"
        return self.move(name, to, mv.version, by=by, reason=why, expected=expected,
                         via="force" if blocker else "seal")

    def _seal_blocker(self, name: str, version: int, production: int | None) -> str | None:
        """Why ``version`` has no approving seal against ``production`` (None: it has)."""
        return S.blocker(self.seals(name, version), _ref(name, production))

    def rollback(self, name: str, *, by: str) -> dict:
        """Point production back at the version it held before the current one, after the
        same artifact and parity checks as a promotion."""
        self._require_model(name)
        moves = self._moves(name)
        current = history.pointers(moves).get("production")
        target = history.previous_production(moves)
        if target is None:
            raise BadInput(f"{name}: no earlier production version to roll back to "
                           f"(production is {_v(current)})")
        self.verify(name, target)
        return self.move(name, "production", target, by=by, via="rollback",
                         reason=f"rollback from {name}@{current}", expected=current)

    # -- seals and reports ----------------------------------------------------------------

    def put_seal(self, name: str, version: int, seal: dict) -> dict:
        """Store the gate's seal for ``version`` (immutable: the same version, baseline and
        field suite again returns the stored seal unchanged). The seal file is the verdict's
        one record."""
        record = self._record(name, version)
        S.validate(seal, f"{name}@{record.version}")
        return self._seals(name).put(record.version, seal)

    def seal(self, name: str, version: int) -> dict | None:
        """The latest seal of ``version`` (None: never gated)."""
        return self._seals(name).latest(int(version))

    def seals(self, name: str, version: int) -> list[dict]:
        """Every seal of ``version``, oldest first."""
        return self._seals(name).all(int(version))

    def report_path(self, name: str, version: int, baseline: str | None,
                    field_suite: str) -> Path:
        """Where the gate's comparison report of this seal's inputs lives (beside the seal)."""
        return self._seals(name).report_path(int(version), baseline, field_suite)

    def drift_reference_path(self, name: str, version: int) -> Path:
        """Where the drift reference of ``version`` (its training view summarised at release,
        :mod:`surgflow.drift.reference`) lives, beside its seals."""
        return self._dir(name) / "drift" / f"{int(version)}.json"

    def attach(self, run_id: str | None, path: Path, folder: str = "gate") -> None:
        """Log ``path`` to MLflow run ``run_id`` under ``folder`` (a warning if it fails: the
        file beside the seal, not the attachment, is the record)."""
        if not run_id:
            return
        try:
            self.client.log_artifact(run_id, str(path), folder)
        except Exception as e:  # MLflow store errors have no common base worth naming
            log.warning("could not attach %s to MLflow run %s: %s", path.name, run_id, e)


@dataclass(frozen=True)
class Verified:
    """A version that passed :meth:`ModelRegistry.verify`: its local bundle and, when parity
    was re-run, the :class:`~surgflow.export.Parity`."""

    path: Path
    parity: Any | None


def parity_failure(ref: str, parity: Any) -> str:
    """The one sentence that says a version's ONNX parity fails now."""
    detail = getattr(parity, "reason", None) or (
        f"max |Δlogit| {getattr(parity, 'max_abs_diff', None)}, top-1 agreement "
        f"{getattr(parity, 'top1_agreement', None)}")
    return f"{ref}: ONNX parity on the golden clips fails now: {detail}"


def _conflict(name: str, stage: str, current: int | None, expected: int | None) -> ConflictError:
    return ConflictError(f"{name}: {stage} points at {_v(current)} now, not {_v(expected)}: "
                         "another move happened meanwhile; look again and retry")


def _v(version: int | None) -> str:
    return "(unset)" if version is None else f"@{version}"


def _ref(name: str, version: int | None) -> str | None:
    return None if version is None else f"{name}@{version}"
