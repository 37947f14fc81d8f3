"""Every deployment, declared once: schedules, triggers, parameters.

- ``nightly``: :func:`~surgflow_flows.nightly.nightly_build` over the recipes directory, on a cron;
- ``triggers``: :func:`~surgflow_flows.triggers.check_triggers`, run by every
  ``surgflow.dataset.version.created`` event with the event's dataset and version;
- ``annotation-sync``: :func:`~surgflow_flows.annotation.annotation_sync` every minute, on
  every ``surgflow.dataset.version.created`` event and on every ``surgflow.privacy.screened``
  event (feedback tasks out to Label Studio once their videos are cleared, corrections back);
- ``privacy-screen``: :func:`~surgflow_flows.privacy.privacy_screen` every 30 s and on every
  ``surgflow.dataset.version.created`` event (new videos screened by the production out-of-body
  detector; every video again once a new one is promoted);
- ``drift-watch``: :func:`~surgflow_flows.drift.drift_watch` every minute (the inference
  stream against each production version's training view; a recipe with ``triggers.drift``
  whose procedure's source drifted gets ``surgflow.recipe.retrain``, once per crossing);
- ``recipe-<name>``: one per recipe file, :func:`~surgflow_flows.pipeline.recipe_pipeline` on the
  recipe's own cron (if any) and on ``surgflow.recipe.retrain`` for its resource
  ``surgflow.recipe.<name>`` — the event its data and drift triggers emit.

Each recipe's periodic run has one owner (:func:`surgflow.registry.periodic.periodic_owner`):
its own deployment when it declares a cron, else ``nightly``. Each declaration names the recipes
whose periodic runs it owns (``periodic_runs_of``) and says so in its description; each recipe
deployment carries the tag ``periodic-owner:<deployment>``, both shown by the Prefect UI. A
periodic run skips a recipe unchanged since its latest model; a data trigger's run never does.

:func:`deployments` builds them; :func:`serve` runs them in this process (``surgflow up``, the
demo), :func:`deploy` registers them with a work pool (a process pool here, a Kubernetes GPU
pool in production: see ``deployments/``) on a self-hosted server or Prefect Cloud.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.events.schemas.deployment_triggers import DeploymentEventTrigger

from surgflow.feedback.events import EVENT as VERSION_EVENT
from surgflow.registry.periodic import NIGHTLY, periodic_owner, recipe_deployment
from surgflow.training.recipe import load_recipe
from surgflow_flows.annotation import SYNC_EVERY_S, annotation_sync
from surgflow_flows.drift import WATCH_EVERY_S, drift_watch
from surgflow_flows.nightly import nightly_build, recipe_files
from surgflow_flows.pipeline import recipe_pipeline
from surgflow_flows.privacy import RESOURCE as SCREENED_RESOURCE
from surgflow_flows.privacy import SCREEN_EVERY_S, SCREENED_EVENT, privacy_screen
from surgflow_flows.triggers import RETRAIN_EVENT, check_triggers, recipe_resource

NIGHTLY_CRON = "0 2 * * *"


def declarations(recipes_dir: str | Path) -> list[dict[str, Any]]:
    """The deployments as plain data: ``{"flow", "name", "cron", "interval", "triggers",
    "parameters", "description", "periodic_runs_of", "tags"}``."""
    recipes_dir = str(Path(recipes_dir).resolve())
    recipes = [(path.resolve(), load_recipe(path)) for path in recipe_files(recipes_dir)]
    nightly = [r.name for _, r in recipes if periodic_owner(r) == NIGHTLY]
    out: list[dict[str, Any]] = [
        {"flow": nightly_build, "name": NIGHTLY, "cron": NIGHTLY_CRON, "triggers": [],
         "parameters": {"recipes_dir": recipes_dir, "promote": True, "force": False},
         "description": ("train and release every recipe without a cron of its own ("
                         f"{', '.join(nightly) or 'none'}), skipping those unchanged since "
                         "their latest model; promote the best approved"),
         "periodic_runs_of": nightly, "tags": []},
        {"flow": check_triggers, "name": "triggers", "cron": None,
         "triggers": [DeploymentEventTrigger(
             name="on-dataset-version", expect={VERSION_EVENT},
             match={"prefect.resource.id": "surgflow.dataset.*"},
             parameters={"dataset": "{{ event.payload.dataset }}",
                         "version": "{{ event.payload.version }}",
                         "recipes_dir": recipes_dir})],
         "parameters": {"recipes_dir": recipes_dir},
         "description": "decide which recipes a new dataset version retrains",
         "periodic_runs_of": [], "tags": []},
        {"flow": annotation_sync, "name": "annotation-sync", "cron": None,
         "interval": SYNC_EVERY_S,
         "triggers": [DeploymentEventTrigger(
             name="annotation-sync-on-version", expect={VERSION_EVENT},
             match={"prefect.resource.id": "surgflow.dataset.*"},
             parameters={"dataset": "{{ event.payload.dataset }}",
                         "version": "{{ event.payload.version }}"}),
             # videos just cleared for people: their waiting tasks can go out
             DeploymentEventTrigger(
                 name="annotation-sync-on-screening", expect={SCREENED_EVENT},
                 match={"prefect.resource.id": SCREENED_RESOURCE})],
         "parameters": {},
         "description": "send open feedback tasks to Label Studio and annotators' "
                        "corrections back to the annotations topic",
         "periodic_runs_of": [], "tags": []},
        {"flow": privacy_screen, "name": "privacy-screen", "cron": None,
         "interval": SCREEN_EVERY_S,
         "triggers": [DeploymentEventTrigger(
             name="privacy-screen-on-version", expect={VERSION_EVENT},
             match={"prefect.resource.id": "surgflow.dataset.*"},
             parameters={"dataset": "{{ event.payload.dataset }}",
                         "version": "{{ event.payload.version }}"})],
         "parameters": {},
         "description": "screen new videos with the production out-of-body detector, so "
                        "that they may be shown to people, redacted",
         "periodic_runs_of": [], "tags": []},
        {"flow": drift_watch, "name": "drift-watch", "cron": None, "interval": WATCH_EVERY_S,
         # a version that merged the fleet's outputs: new inference to look at now
         "triggers": [DeploymentEventTrigger(
             name="drift-watch-on-version", expect={VERSION_EVENT},
             match={"prefect.resource.id": "surgflow.dataset.*"},
             parameters={"recipes_dir": recipes_dir})],
         "parameters": {"recipes_dir": recipes_dir},
         "description": "compare each source's latest inference with the production model's "
                        "training view; retrain recipes with a drift trigger when one drifts",
         "periodic_runs_of": [], "tags": []},
    ]
    for path, recipe in recipes:
        cron, owner = recipe.triggers.cron, periodic_owner(recipe)
        owns = owner != NIGHTLY
        what = recipe.description or f"train and release {recipe.name}"
        out.append({
            "flow": recipe_pipeline, "name": recipe_deployment(recipe.name), "cron": cron,
            "triggers": [DeploymentEventTrigger(
                name=f"retrain-{recipe.name}", expect={RETRAIN_EVENT},
                match={"prefect.resource.id": recipe_resource(recipe.name)},
                parameters={"recipe_path": str(path), "promote": True,
                            "cause": "{{ event.payload.why }}", "skip_unchanged": False})],
            # what its cron runs with: a periodic run, skipped when nothing changed
            "parameters": {"recipe_path": str(path), "promote": True} | (
                {"cause": f"cron {cron}", "skip_unchanged": True} if owns else {}),
            "description": what + (f"; periodic run: this deployment, cron {cron}" if owns
                                   else f"; periodic run: the {NIGHTLY} deployment"),
            "periodic_runs_of": [recipe.name] if owns else [],
            # a deployment's tags pass to its runs: this one is true of every run of the recipe
            "tags": [f"periodic-owner:{owner}"],
        })
    return out


def trigger_names(recipes_dir: str | Path) -> set[str]:
    """The names of the automations the deployments' triggers become."""
    return {t.name for d in declarations(recipes_dir) for t in d["triggers"]}


def deployments(recipes_dir: str | Path) -> list[Any]:
    """Runner deployments for :func:`serve`."""
    return [d["flow"].to_deployment(name=d["name"], cron=d["cron"],
                                    interval=d.get("interval"), triggers=d["triggers"],
                                    parameters=d["parameters"], description=d["description"],
                                    tags=d["tags"])
            for d in declarations(recipes_dir)]


def serve(recipes_dir: str | Path) -> None:
    """Serve every deployment from this process until it is stopped (SIGTERM/SIGINT)."""
    from prefect import serve as prefect_serve

    prefect_serve(*deployments(recipes_dir), print_starting_message=False)


def deploy(recipes_dir: str | Path, work_pool: str, *, image: str | None = None,
           source: str | None = None) -> list[str]:
    """Register every deployment with ``work_pool``; returns their ids.

    Code comes from ``source`` (a git URL or a directory the workers see; default this
    repository) or, for a container pool, from ``image``.
    """
    from prefect import Flow

    root = str(Path(__file__).resolve().parent.parent)
    ids = []
    for d in declarations(recipes_dir):
        flow: Flow = d["flow"]
        module = Path(flow.fn.__code__.co_filename).name
        # the folder is flows/ in the repository and surgflow_flows/ when installed
        entry = f"{Path(__file__).resolve().parent.name}/{module}:{flow.fn.__name__}"
        target = flow if image else flow.from_source(source=source or root, entrypoint=entry)
        ids.append(str(target.deploy(
            name=d["name"], work_pool_name=work_pool, cron=d["cron"],
            interval=d.get("interval"), triggers=d["triggers"],
            parameters=d["parameters"], description=d["description"], tags=d["tags"],
            image=image, build=False, push=False, print_next_steps=False)))
    return ids
