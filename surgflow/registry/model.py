"""What a registered chain version is (:class:`ModelVersion`), its names and references, and
how its facts are written as MLflow model-version tags. Pure: no MLflow calls here."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

from pydantic import BaseModel

from surgflow.data.privacy import PRIVACY, PRIVACY_MODEL
from surgflow.errors import BadInput

STAGES = ("candidate", "approved", "production")
PROMOTE_TARGETS = ("approved", "production")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# MLflow model-version tag keys
SHA256_PREFIX = "sha256/"
TAG_PROCEDURE = "procedure"
TAG_RECIPE = "recipe"
TAG_RECIPE_PATH = "recipe_path"
TAG_DATASETS = "dataset_versions"
TAG_CODE = "code_version"
TAG_METRICS = "metrics"
TAG_PARITY = "parity"
TAG_UNPROMOTABLE = "unpromotable_reason"


def model_name(procedure: str) -> str:
    """The registered model name of a procedure's chain (the name inference events carry); the
    privacy track's chain is the out-of-body detector."""
    return PRIVACY_MODEL if procedure == PRIVACY else f"{procedure}-phase"


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise BadInput(f"model name {name!r}: expected letters, digits, '.', '_' or '-' "
                       "(e.g. cholecystectomy-phase)")
    return name


def parse_ref(text: str) -> tuple[str, int | str]:
    """``NAME@VERSION`` or ``NAME@candidate|approved|production`` -> (name, int or stage)."""
    name, sep, ref = text.partition("@")
    if not sep or not name or not ref:
        raise BadInput(f"model reference {text!r}: expected NAME@VERSION or NAME@STAGE "
                       f"(stages: {', '.join(STAGES)}), e.g. cholecystectomy-phase@3")
    check_name(name)
    return name, parse_version_ref(ref, text)


def parse_version_ref(ref: int | str, where: str | None = None) -> int | str:
    if isinstance(ref, int) and not isinstance(ref, bool):
        if ref < 1:
            raise BadInput(f"model version {ref}: versions start at 1")
        return ref
    s = str(ref).strip()
    if s in STAGES:
        return s
    if s.isdigit() and int(s) >= 1:
        return int(s)
    raise BadInput(f"{where or 'model version'}: version {ref!r} is neither a number >= 1 nor "
                   f"a stage ({', '.join(STAGES)})")


class Artifact(BaseModel, frozen=True):
    """One registered file: ``name`` inside the bundle, ``path`` where it opens (an absolute
    path, or a URI with its scheme on a remote artifact store) and its ``sha256``."""

    name: str
    path: str
    sha256: str


class ModelVersion(BaseModel, frozen=True):
    """One registered version of a chain: SPEC §7's ``models show`` fields, plus its
    procedure, its registration parity and why it may never be promoted (if so)."""

    name: str
    version: int
    created_at: datetime
    run_id: str | None
    recipe: str | None
    stages: list[str]
    verdict: str | None
    dataset_versions: list[str]
    metrics: dict[str, Any]
    artifacts: list[Artifact]
    seal: dict | None = None
    procedure: str | None = None
    parity: dict | None = None
    unpromotable_reason: str | None = None

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def hashes(self) -> dict[str, str]:
        return {a.name: a.sha256 for a in self.artifacts}

    def summary(self) -> dict:
        """The ``models list`` entry (SPEC §7)."""
        return {"name": self.name, "version": self.version,
                "created_at": iso(self.created_at), "run_id": self.run_id,
                "recipe": self.recipe, "stages": list(self.stages), "verdict": self.verdict}

    def show(self) -> dict:
        """The ``models show`` document (SPEC §7): the list entry and the version's record."""
        return {**self.summary(), "dataset_versions": list(self.dataset_versions),
                "metrics": dict(self.metrics),
                "artifacts": [a.model_dump() for a in self.artifacts], "seal": self.seal}


def iso(t: datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    return iso(datetime.now(UTC))


def version_tags(*, procedure: str, hashes: dict[str, str], recipe_name: str,
                 recipe_path: str | None, dataset_versions: list[str], code_version: str,
                 metrics: dict, parity: dict | None, unpromotable_reason: str | None
                 ) -> dict[str, str]:
    """The MLflow tags that record a version's immutable facts."""
    tags = {f"{SHA256_PREFIX}{path}": sha for path, sha in sorted(hashes.items())}
    tags |= {TAG_PROCEDURE: procedure, TAG_RECIPE: recipe_name,
             TAG_DATASETS: json.dumps(list(dataset_versions)), TAG_CODE: code_version,
             TAG_METRICS: json.dumps(metrics, sort_keys=True, default=float)}
    if recipe_path:
        tags[TAG_RECIPE_PATH] = str(recipe_path)
    if parity is not None:
        tags[TAG_PARITY] = json.dumps(parity, sort_keys=True)
    if unpromotable_reason:
        tags[TAG_UNPROMOTABLE] = unpromotable_reason
    return tags


def hashes_from_tags(tags: dict[str, str]) -> dict[str, str]:
    return {k.removeprefix(SHA256_PREFIX): v for k, v in sorted(tags.items())
            if k.startswith(SHA256_PREFIX)}


def _json_tag(tags: dict[str, str], key: str, default: Any) -> Any:
    raw = tags.get(key)
    if raw is None:
        return default
    try:
        return json.loads(raw)
    except ValueError:
        return default


def artifact_location(source: str | None, name: str) -> str:
    """Where the bundle file ``name`` of a version whose artifacts are at ``source`` opens."""
    if not source:
        return name
    parsed = urlparse(source)
    if parsed.scheme == "file" or (not parsed.scheme and source.startswith("/")):
        return str(Path(url2pathname(unquote(parsed.path))) / name)
    return f"{source.rstrip('/')}/{name}"


def from_mlflow(mv: Any, seal: dict | None, pointers: dict[str, int]) -> ModelVersion:
    """A :class:`ModelVersion` from an MLflow model version record (its tags and artifact
    ``source``), its latest seal (the verdict's one record) and the model's stage pointers."""
    tags = dict(mv.tags or {})
    source = getattr(mv, "source", None)
    return ModelVersion(
        name=mv.name, version=int(mv.version),
        created_at=datetime.fromtimestamp(mv.creation_timestamp / 1000, UTC),
        run_id=mv.run_id or None, recipe=tags.get(TAG_RECIPE),
        stages=[s for s in STAGES if pointers.get(s) == int(mv.version)],
        verdict=(seal or {}).get("verdict"),
        dataset_versions=_json_tag(tags, TAG_DATASETS, []),
        metrics=_json_tag(tags, TAG_METRICS, {}),
        artifacts=[Artifact(name=p, path=artifact_location(source, p), sha256=h)
                   for p, h in hashes_from_tags(tags).items()],
        seal=seal, procedure=tags.get(TAG_PROCEDURE), parity=_json_tag(tags, TAG_PARITY, None),
        unpromotable_reason=tags.get(TAG_UNPROMOTABLE) or None,
    )


def unpromotable(parity: dict | None) -> str | None:
    """Why a version with this registration parity can never be promoted (None: it can)."""
    if parity is None:
        return "no ONNX parity record (parity.json) in the bundle"
    if not parity.get("passed"):
        why = parity.get("reason") or (f"max |Δlogit| {parity.get('max_abs_diff')}, top-1 "
                                       f"agreement {parity.get('top1_agreement')}")
        return f"ONNX parity failed at registration: {why}"
    return None

