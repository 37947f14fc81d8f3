"""The nightly build: every recipe under a directory, trained and released concurrently.

:func:`nightly_build` gathers one :func:`~surgflow_flows.pipeline.recipe_pipeline` subflow per
recipe file; the ``gpu`` global concurrency limit bounds how many train at once. A recipe that fails
(bad file, no data, a crashed group) is reported in the summary and does not stop the others.
Candidates of one procedure compete for one production slot: after every pipeline ends, the
approved candidate with the best field macro-F1 of each procedure is promoted. The build ends
with a summary artifact: recipe, dataset versions, candidate, verdict, promoted or not.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import acreate_table_artifact

from surgflow_flows.pipeline import recipe_pipeline


def recipe_files(recipes_dir: str | Path) -> list[Path]:
    return sorted(p for p in Path(recipes_dir).iterdir() if p.suffix in (".yaml", ".yml"))


def field_macro_f1(seal: dict[str, Any]) -> float:
    """The candidate's field macro-F1 recorded in its seal (-1 when it has none)."""
    for check in seal.get("checks", []):
        if check["name"].startswith("macro_f1") and isinstance(check.get("value"), float):
            return float(check["value"])
    return -1.0


def winners(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per model name, the approved row with the best field macro-F1."""
    best: dict[str, dict[str, Any]] = {}
    for row in rows:
        if row.get("verdict") != "approved":
            continue
        name = row["model"].split("@")[0]
        if name not in best or row["field_macro_f1"] > best[name]["field_macro_f1"]:
            best[name] = row
    return best


@task(name="promote-best")
def promote_best(row: dict[str, Any]) -> dict[str, Any]:
    from surgflow.registry import ModelRegistry

    name, version = row["model"].split("@")
    return ModelRegistry().promote(name, int(version), to="production", by="surgflow-nightly",
                                   reason=f"nightly: best approved candidate ({row['recipe']})")


async def _isolated(path: Path) -> dict[str, Any]:
    try:
        return await recipe_pipeline(str(path), promote=False, cause="nightly")
    except Exception as e:  # one recipe's failure is a row of the summary, not the build's
        return {"recipe": path.stem, "recipe_path": str(path), "run_id": None,
                "dataset_versions": None, "model": None, "verdict": None, "promoted": False,
                "error": f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"}


@flow(name="surgflow-nightly", validate_parameters=True)
async def nightly_build(recipes_dir: str = "recipes", promote: bool = True) -> list[dict]:
    """Train and release every recipe under ``recipes_dir``; returns the summary rows."""
    log = get_run_logger()
    paths = recipe_files(recipes_dir)
    log.info("nightly build of %d recipes under %s", len(paths), recipes_dir)
    rows = list(await asyncio.gather(*[_isolated(p) for p in paths]))
    for row in rows:
        row["field_macro_f1"] = field_macro_f1(row.get("seal") or {}) if row["model"] else None
        row.pop("seal", None)
    if promote:
        for row in winners(rows).values():
            await asyncio.to_thread(promote_best, row)
            row["promoted"] = True
    await acreate_table_artifact(
        [{k: _cell(row.get(k)) for k in ("recipe", "dataset_versions", "model", "verdict",
                                         "field_macro_f1", "promoted", "error")} for row in rows],
        key="nightly-build", description="nightly build: one row per recipe")
    return rows


def _cell(v: Any) -> Any:
    if isinstance(v, list):
        return ", ".join(map(str, v))
    return round(v, 3) if isinstance(v, float) else v
