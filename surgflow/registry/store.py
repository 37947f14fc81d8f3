"""The model registry on MLflow: chain versions, stage pointers, history and seals.

MLflow holds the versions (registered model ``<procedure>-phase``, versions 1, 2, 3, …), their
artifacts (the chain bundle, logged to the training run under ``chain/``) and the stage
pointers (aliases ``candidate``, ``approved``, ``production``). surgflow keeps what MLflow does
not, under ``SURGFLOW_HOME/registry/<name>/``: the append-only pointer history, the lock that
makes every pointer move a compare-and-set, and the seals.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from surgflow.config import Settings, get_settings
from surgflow.errors import BadInput, ConflictError, NotFound, SurgflowError
from surgflow.registry import artifacts, history
from surgflow.registry import model as M
from surgflow.registry import seals as S
from surgflow.registry.model import ModelVersion

log = logging.getLogger(__name__)

ARTIFACT_PATH = "chain"
RECIPE_FILE = "recipe.json"
LOCK_TIMEOUT_S = 120.0


class ModelRegistry:
    """Registered chains of every procedure, on the configured MLflow store."""

    def __init__(self, settings: Settings | None = None):
        self.settings = settings or get_settings()
        self._client = None

    # -- MLflow ---------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        if self._client is None:
            from surgflow import tracking

            self._client = tracking.client(self.settings)
        return self._client

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

    def _names(self) -> list[str]:
        return sorted(m.name for m in self.client.search_registered_models(max_results=1000))

    def _require_model(self, name: str) -> Any:
        from mlflow.exceptions import MlflowException

        M.check_name(name)
        try:
            return self.client.get_registered_model(name)
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            known = self._names()
            raise NotFound(f"unknown model {name!r}; registered models: "
                           f"{', '.join(known) or '(none)'}") from e

    def _versions(self, name: str) -> list[Any]:
        found = self.client.search_model_versions(f"name='{name}'")
        return sorted(found, key=lambda mv: int(mv.version))

    def _mlflow_version(self, name: str, ref: int | str) -> Any:
        from mlflow.exceptions import MlflowException

        ref = M.parse_version_ref(ref, f"{name}@{ref}")
        rm = self._require_model(name)
        if isinstance(ref, str):
            version = rm.aliases.get(ref)
            if version is None:
                have = ", ".join(f"{s}@{v}" for s, v in sorted(rm.aliases.items()))
                raise NotFound(f"{name}@{ref}: no version is {ref} yet"
                               + (f" (pointers: {have})" if have else ""))
            ref = int(version)
        try:
            return self.client.get_model_version(name, str(ref))
        except MlflowException as e:
            if e.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            have = ", ".join(str(mv.version) for mv in self._versions(name))
            raise NotFound(f"{name}@{ref}: no such version; versions: {have or '(none)'}") from e

    def _alias(self, name: str, stage: str) -> int | None:
        return self.pointers(name).get(stage)

    def pointers(self, name: str) -> dict[str, int]:
        """Stage -> version of every pointer that is set."""
        rm = self._require_model(name)
        return {s: int(v) for s, v in rm.aliases.items() if s in M.STAGES}

    # -- reading --------------------------------------------------------------------------

    def get(self, name: str, ref: int | str) -> ModelVersion:
        """Version ``ref`` (a number or a stage name) of model ``name``."""
        mv = self._mlflow_version(name, ref)
        return M.from_mlflow(mv, self.seal(name, int(mv.version)), self.pointers(name))

    def list(self, name: str | None = None) -> list[ModelVersion]:
        """Every version of ``name`` (or of every model), by name then version."""
        names = [self._require_model(name).name] if name else self._names()
        out = []
        for n in names:
            pointers = self.pointers(n)
            for mv in self._versions(n):
                out.append(M.from_mlflow(mv, self.seal(n, int(mv.version)), pointers))
        return out

    def production(self, name: str) -> int | None:
        """The version ``production`` points at (None: unset, or no such model). Cheap."""
        from mlflow.exceptions import MlflowException

        try:
            rm = self.client.get_registered_model(M.check_name(name))
        except MlflowException as e:
            if e.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise
        v = rm.aliases.get("production")
        return int(v) if v is not None else None

    def history(self, name: str) -> list[dict]:
        """Every pointer move of ``name``, oldest first."""
        self._require_model(name)
        with self._locked(name):
            self._reconcile(name)
        return history.read(self._history_path(name))

    def recipe(self, name: str, version: int) -> dict:
        """The recipe (as a dict) version ``version`` was trained from, from its artifacts."""
        path = self.bundle(name, version) / RECIPE_FILE
        return json.loads(path.read_text())

    # -- artifacts ------------------------------------------------------------------------

    def bundle(self, name: str, version: int | str, verify: bool = True) -> Path:
        """A local directory holding the version's chain bundle; with ``verify``, every file's
        sha256 is checked against the registry first (:class:`ArtifactMismatch` if not)."""
        mv = self._mlflow_version(name, version)
        ref = f"{name}@{mv.version}"
        expected = M.hashes_from_tags(mv.tags)
        run = self.client.get_run(mv.run_id)
        uri = f"{run.info.artifact_uri.rstrip('/')}/{ARTIFACT_PATH}"
        local = artifacts.local_path(uri)
        if local is not None:
            if verify:
                artifacts.verify(local, expected, ref)
            return local
        cached = self.settings.home / "registry" / "cache" / name / str(mv.version)
        return artifacts.download(self.client, mv.run_id, ARTIFACT_PATH, cached,
                                  expected if verify else None, ref)

    def verify(self, name: str, version: int) -> Any:
        """Re-hash the version's artifacts and re-run its ONNX parity on the golden clips;
        BadInput naming what differs. Returns the :class:`~surgflow.export.Parity`."""
        from surgflow.export import check_parity

        path = self.bundle(name, version, verify=True)
        parity = check_parity(path)
        if not parity.passed:
            raise BadInput(f"{name}@{version}: ONNX parity on the golden clips fails now: "
                           f"{parity.reason or f'max |Δlogit| {parity.max_abs_diff}'}")
        return parity

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
                current = self._reconcile(name, "candidate")
                self._move_locked(name, "candidate", version, by="registry",
                                  reason=f"registered from run {run_id} (recipe {recipe_name})",
                                  expected=current, current=current)
        log.info("registered %s@%d from run %s", name, version, run_id)
        return self.get(name, version)

    def _version_of_run(self, name: str, run_id: str) -> Any | None:
        found = self.client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        return found[0] if found else None

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

    def _reconcile(self, name: str, stage: str | None = None) -> int | None:
        """Record in the history any pointer that moved without it (a crash between the alias
        and the history line, or a change made in MLflow directly); returns ``stage``'s value.
        Call with the model's lock held."""
        path = self._history_path(name)
        moves = history.read(path)
        now = self.pointers(name)
        for s in M.STAGES:
            recorded = history.last_to(moves, s)
            if now.get(s) != recorded:
                history.append(path, {"stage": s, "from": recorded, "to": now.get(s),
                                      "at": M.now_iso(), "by": "mlflow",
                                      "reason": "pointer changed outside surgflow's history"})
        return now.get(stage) if stage else None

    def move(self, name: str, stage: str, version: int, *, by: str, reason: str,
             expected: int | None) -> dict:
        """Point ``stage`` at ``version`` if it still points at ``expected`` (the version the
        caller saw; None: unset), else ConflictError. Appends the move to the history.
        ``approved`` needs an approving seal against the current production; a version whose
        parity failed at registration is never moved to ``approved`` or ``production``."""
        if stage not in M.STAGES:
            raise BadInput(f"stage {stage!r}: expected one of {', '.join(M.STAGES)}")
        if not isinstance(by, str) or not by.strip():
            raise BadInput("a pointer move needs `by`: who moves it")
        if not isinstance(reason, str) or not reason.strip():
            raise BadInput("a pointer move needs a reason")
        mv = self.get(name, version)
        if stage in M.PROMOTE_TARGETS and mv.unpromotable_reason:
            raise BadInput(f"{mv.ref} can never be {stage}: {mv.unpromotable_reason}")
        if stage == "approved":
            blocker = self._seal_blocker(name, mv.version, self.production(name))
            if blocker:
                raise BadInput(f"{mv.ref}: only an approving seal against the current "
                               f"production moves approved: {blocker}; gate it with "
                               f"`surgflow models gate {mv.ref}`")
        with self._locked(name):
            current = self._reconcile(name, stage)
            return self._move_locked(name, stage, mv.version, by=by, reason=reason,
                                     expected=expected, current=current)

    def _move_locked(self, name: str, stage: str, version: int, *, by: str, reason: str,
                     expected: int | None, current: int | None) -> dict:
        """The compare-and-set itself; ``current`` as :meth:`_reconcile` found it, under the
        lock the caller holds. The alias moves first, then the history line: a crash between
        the two leaves a move that :meth:`_reconcile` records next time."""
        if current != expected:
            raise ConflictError(
                f"{name}: {stage} points at {_v(current)} now, not {_v(expected)}: another "
                "move happened meanwhile; look again and retry")
        result = {"name": name, "stage": stage, "from": current, "to": version}
        if current == version:
            return result
        self.client.set_registered_model_alias(name, stage, str(version))
        history.append(self._history_path(name), {
            "stage": stage, "from": current, "to": version, "at": M.now_iso(),
            "by": by, "reason": reason})
        log.info("%s: %s %s -> %s by %s (%s)", name, stage, _v(current), version, by, reason)
        return result

    def promote(self, name: str, version: int | str, *, to: str = "production",
                force: bool = False, reason: str | None = None, by: str) -> dict:
        """Move ``to`` (production or approved) to ``version`` after re-hashing its artifacts
        and re-running ONNX parity. Needs an approving seal against the current production,
        or (production only) ``force`` with a reason, which the history keeps."""
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
        if expected == mv.version:
            return {"name": name, "stage": to, "from": expected, "to": mv.version}
        baseline = pointers.get("production")
        blocker = self._seal_blocker(name, mv.version, baseline)
        if blocker and not force:
            hint = (f"gate it with `surgflow models gate {mv.ref}`"
                    + (", or pass --force --reason TEXT" if to == "production" else ""))
            raise BadInput(f"{mv.ref} cannot be promoted to {to}: {blocker}; {hint}")
        self.verify(name, mv.version)
        if blocker:
            why = f"forced past '{blocker}': {reason}"
        else:
            why = reason or f"approved by its seal against {_ref(name, baseline)}"
        return self.move(name, to, mv.version, by=by, reason=why, expected=expected)

    def _seal_blocker(self, name: str, version: int, production: int | None) -> str | None:
        """Why ``version`` has no approving seal against ``production`` (None: it has)."""
        return S.blocker(self.seals(name, version), _ref(name, production))

    def rollback(self, name: str, *, by: str) -> dict:
        """Point production back at the version it held before the current one, after the
        same artifact and parity checks as a promotion."""
        self._require_model(name)
        with self._locked(name):
            current = self._reconcile(name, "production")
            moves = history.read(self._history_path(name))
        target = history.previous_production(moves)
        if target is None:
            raise BadInput(f"{name}: no earlier production version to roll back to "
                           f"(production is {_v(current)})")
        self.verify(name, target)
        return self.move(name, "production", target, by=by,
                         reason=f"rollback from {name}@{current}", expected=current)

    # -- seals ----------------------------------------------------------------------------

    def put_seal(self, name: str, version: int, seal: dict) -> dict:
        """Store the gate's seal for ``version`` (immutable: the same version, baseline and
        field suite again returns the stored seal unchanged) and tag the version's verdict."""
        mv = self._mlflow_version(name, version)
        ref = f"{name}@{mv.version}"
        S.validate(seal, ref)
        stored = self._seals(name).put(int(mv.version), seal)
        latest = self.seal(name, int(mv.version)) or stored
        self.client.set_model_version_tag(name, mv.version, M.TAG_VERDICT, latest["verdict"])
        return stored

    def seal(self, name: str, version: int) -> dict | None:
        """The latest seal of ``version`` (None: never gated)."""
        return self._seals(name).latest(int(version))

    def seals(self, name: str, version: int) -> list[dict]:
        """Every seal of ``version``, oldest first."""
        return self._seals(name).all(int(version))


def _v(version: int | None) -> str:
    return "(unset)" if version is None else f"@{version}"


def _ref(name: str, version: int | None) -> str | None:
    return None if version is None else f"{name}@{version}"
