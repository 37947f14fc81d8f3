"""Light things import light things: what reads a bundle or runs ONNX imports no torch and no
training code, and the layers below import nothing above them.

Each import is checked in a fresh interpreter, since this test process has torch loaded
already; the import direction is read off the source (function-level imports included), so a
lazy import that breaks it fails here too.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.models import TrainedBundle

SURGFLOW = Path(__file__).resolve().parents[1] / "surgflow"

LIGHT = ["surgflow.inference", "surgflow.serving.pool", "surgflow.serving.app",
         "surgflow.serving.server", "surgflow.serving.fleet", "surgflow.serving.analysis",
         "surgflow.serving.highlights", "surgflow.registry", "surgflow.export",
         "surgflow.export.sessions", "surgflow.data.chain_bundle", "surgflow.data.frames",
         "surgflow.data.seconds", "surgflow.data.clip_sampling", "surgflow.data.views",
         "surgflow.evaluation.thresholds"]


def loaded_after(code: str) -> list[str]:
    """The modules loaded in a fresh interpreter after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.splitlines()[-1])


def heavy(modules: list[str]) -> list[str]:
    return [m for m in modules
            if m == "torch" or m.startswith(("torch.", "surgflow.training"))]


@pytest.mark.parametrize("module", LIGHT)
def test_importing_imports_no_torch_and_no_training(module):
    assert heavy(loaded_after(f"import {module}")) == []


def test_importing_the_package_itself_resolves_nothing_heavy():
    # surgflow.export's names resolve on first use: reading a bundle stays light
    modules = loaded_after("from surgflow.export import ChainSpec, file_hashes, read_spec")
    assert heavy(modules) == [] and "surgflow.export.bundle" not in modules


def test_the_gate_thresholds_are_a_leaf():
    modules = loaded_after("import surgflow.evaluation.thresholds")
    ours = {m for m in modules if m.startswith("surgflow")}
    assert ours == {"surgflow", "surgflow.errors", "surgflow.evaluation",
                    "surgflow.evaluation.thresholds"}


def test_the_runner_analyses_a_video_without_torch(tiny_chain_bundle: TrainedBundle):
    video = tiny_chain_bundle.val_videos[0]
    modules = loaded_after(
        "from surgflow.inference import ChainRunner\n"
        f"runner = ChainRunner.load({str(tiny_chain_bundle.bundle_dir)!r})\n"
        f"assert runner.analyze({str(video)!r}).num_frames > 0")
    assert heavy(modules) == []


# what each layer may not import, at module level or inside a function
ABOVE = {
    "data": ("training", "feedback", "evaluation", "export", "registry", "inference",
             "serving", "cli"),
    "training": ("feedback", "evaluation", "export", "registry", "inference", "serving", "cli",
                 "sweeps"),
    "feedback": ("training", "evaluation", "export", "registry", "inference", "serving", "cli"),
    "drift": ("serving", "cli"),
    # a sweep trains runs the way `surgflow train` does; releasing its best is the flow's call
    "sweeps": ("feedback", "evaluation", "export", "registry", "inference", "serving", "cli",
               "drift"),
}


def _imports(path: Path) -> list[tuple[int, str]]:
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


@pytest.mark.parametrize("layer", sorted(ABOVE))
def test_a_layer_imports_nothing_above_it(layer):
    banned = {f"surgflow.{p}" for p in ABOVE[layer]}
    bad = [f"{path.relative_to(SURGFLOW.parent)}:{line} imports {name}"
           for path in sorted((SURGFLOW / layer).rglob("*.py"))
           for line, name in _imports(path)
           if ".".join(name.split(".")[:2]) in banned]
    assert bad == []
