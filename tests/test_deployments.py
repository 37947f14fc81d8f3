"""Every deployment declared once: names, schedules and the triggers that start them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_each_recipe_gets_a_pipeline_triggered_by_its_own_resource() -> None:
    from surgflow.recipes import recipes_dir
    from surgflow_flows.deployments import declarations

    by_name = {d["name"]: d for d in declarations(recipes_dir())}
    assert {"nightly", "triggers", "recipe-cholec-tiny", "recipe-cholec-resnet18-mstcn"} <= set(
        by_name)
    assert by_name["nightly"]["cron"] == "0 2 * * *"
    (on_version,) = by_name["triggers"]["triggers"]
    assert on_version.expect == {"surgflow.dataset.version.created"}
    assert on_version.parameters["version"] == "{{ event.payload.version }}"
    (retrain,) = by_name["recipe-cholec-tiny"]["triggers"]
    assert retrain.expect == {"surgflow.recipe.retrain"}
    assert retrain.match.model_dump() == {"prefect.resource.id": "surgflow.recipe.cholec-tiny"}
    # the default recipe keeps its own nightly cron
    assert by_name["recipe-cholec-resnet18-mstcn"]["cron"] == "0 2 * * *"
    # the annotation sync: every minute, and on every new dataset version (tasks are raised
    # in a version's batch)
    sync = by_name["annotation-sync"]
    assert sync["interval"] == 60
    on_tasks, on_screened = sync["triggers"]
    assert on_tasks.expect == {"surgflow.dataset.version.created"}
    # ...and when screening cleared videos for people (their tasks waited)
    assert on_screened.expect == {"surgflow.privacy.screened"}
    # privacy screening: new videos on every version, every video again after a promotion
    screen = by_name["privacy-screen"]
    assert screen["interval"] == 30
    (on_version,) = screen["triggers"]
    assert on_version.expect == {"surgflow.dataset.version.created"}
    # the drift watch: every minute and on every version (one that merged the fleet's
    # outputs) over the recipes; its firings are recipe.retrain events, which the recipes' own
    # deployments above already trigger on
    drift = by_name["drift-watch"]
    assert (drift["interval"], drift["cron"]) == (60, None)
    (on_version,) = drift["triggers"]
    assert on_version.expect == {"surgflow.dataset.version.created"}
    assert drift["parameters"] == {"recipes_dir": str(Path(recipes_dir()).resolve())}
    assert drift["flow"].name == "drift-watch"


def test_each_recipes_periodic_run_has_one_owner_and_says_so() -> None:
    from surgflow.recipes import recipes_dir, shipped
    from surgflow.training.recipe import load_recipe
    from surgflow_flows.deployments import declarations

    decl = declarations(recipes_dir())
    by_name = {d["name"]: d for d in decl}
    owners = [(recipe, d["name"]) for d in decl for recipe in d["periodic_runs_of"]]
    recipes = {load_recipe(p).name for p in shipped()}
    assert sorted(r for r, _ in owners) == sorted(recipes), f"not one owner each: {owners}"
    # the default recipe declares its own cron: its deployment runs it, the nightly does not
    own = by_name["recipe-cholec-resnet18-mstcn"]
    assert own["periodic_runs_of"] == ["cholec-resnet18-mstcn"]
    assert "cholec-resnet18-mstcn" not in by_name["nightly"]["periodic_runs_of"]
    assert "cholec-tiny" in by_name["nightly"]["periodic_runs_of"]
    assert own["tags"] == ["periodic-owner:recipe-cholec-resnet18-mstcn"]
    assert by_name["recipe-cholec-tiny"]["tags"] == ["periodic-owner:nightly"]
    assert "periodic run: this deployment, cron 0 2 * * *" in own["description"]
    assert "periodic run: the nightly deployment" in by_name["recipe-cholec-tiny"]["description"]
    assert "cholec-tiny" in by_name["nightly"]["description"]
    # its cron run skips an unchanged recipe; the run its data trigger starts never does
    assert own["parameters"]["skip_unchanged"] is True
    (retrain,) = own["triggers"]
    assert retrain.parameters["skip_unchanged"] is False
    assert "skip_unchanged" not in by_name["recipe-cholec-tiny"]["parameters"]
    assert by_name["nightly"]["parameters"]["force"] is False


def test_deployments_list_command_starts_nothing(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "surgflow", "deployments", "list", "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120,
                         env={"PATH": "/usr/bin:/bin", "SURGFLOW_HOME": str(tmp_path / "h")})
    assert out.returncode == 0, out.stderr
    listed = {d["name"]: d for d in json.loads(out.stdout)}
    assert list(listed)[:2] == ["nightly", "triggers"]
    assert listed["recipe-cholec-resnet18-mstcn"]["periodic_runs_of"] == ["cholec-resnet18-mstcn"]
    assert "cholec-resnet18-mstcn" not in listed["nightly"]["periodic_runs_of"]
    assert not (tmp_path / "h" / "prefect").exists(), "listing starts no server"


def test_kubernetes_gpu_pool_template_requests_a_gpu_and_shared_memory() -> None:
    template = json.loads((REPO / "deployments" / "kubernetes-gpu-pool.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert {"name": "shm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    assert set(template["variables"]["properties"]) >= {"image", "gpus", "env", "command"}
