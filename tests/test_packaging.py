"""The wheel: what a non-editable ``pip install .`` puts on a machine, and that it runs the demo.

The fast tests build the wheel from a copy of the checkout (a stale ``build/`` in the tree could
otherwise leak files into it) and read its file list; the slow one installs it into a fresh
virtual environment and runs ``surgflow demo --size small`` there, far from the repository.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from tests.process_helpers import clean_env

REPO = Path(__file__).resolve().parents[1]
#: what may sit at the top level of site-packages once surgflow is installed
TOP_LEVEL = {"surgflow", "surgflow_flows"}
_NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", ".surgflow", "build", "dist", "*.egg-info",
                                     "__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache",
                                     ".hypothesis", "out")


def build_wheel(out: Path) -> Path:
    """Build the checkout's wheel into ``out`` (offline: the running environment's setuptools)."""
    src = out / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=_NOT_SOURCE)
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(out), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (wheel,) = out.glob("surgflow-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


def _names(wheel: Path) -> list[PurePosixPath]:
    with zipfile.ZipFile(wheel) as z:
        return [PurePosixPath(n) for n in z.namelist()]


def _top_level(names: list[PurePosixPath]) -> set[str]:
    return {n.parts[0] for n in names if not n.parts[0].endswith(".dist-info")}


def test_wheel_ships_every_recipe_and_every_library_package(wheel):
    names = set(_names(wheel))
    recipes = sorted((REPO / "recipes").glob("*.yaml"))
    assert recipes, "the repository's recipes/ holds the shipped recipes"
    missing = [p.name for p in recipes if PurePosixPath("surgflow/recipes", p.name) not in names]
    assert not missing, f"recipes not in the wheel: {missing}"
    # the package list in pyproject.toml is explicit: a new package under surgflow/ must be
    # added there, or the installed product would lack it
    packages = sorted(p.parent.relative_to(REPO).as_posix()
                      for p in (REPO / "surgflow").rglob("__init__.py")
                      if "__pycache__" not in p.parts)
    absent = [p for p in packages if PurePosixPath(p, "__init__.py") not in names]
    assert not absent, f"packages missing from the wheel (add them to pyproject.toml): {absent}"


def test_wheel_ships_the_flows_as_surgflow_flows_and_nothing_generic(wheel):
    names = _names(wheel)
    assert _top_level(names) == TOP_LEVEL
    flows = sorted(p.name for p in (REPO / "flows").glob("*.py"))
    shipped = sorted(n.name for n in names if n.parts[0] == "surgflow_flows" and len(n.parts) == 2)
    assert shipped == flows


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_a_non_editable_install_runs_the_small_demo(tmp_path: Path):
    wheel = build_wheel(tmp_path / "wheel")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    py, surgflow = venv / "bin" / "python", venv / "bin" / "surgflow"
    # the heavy dependencies come from the machine's package index or wheel cache, as a
    # user's `pip install` would take them
    install = subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)],
                             capture_output=True, text=True, timeout=1800)
    assert install.returncode == 0, install.stderr[-3000:]

    work = tmp_path / "elsewhere"  # far from the checkout: nothing found through the cwd
    work.mkdir()
    env = clean_env(work / "home", also_drop=("VIRTUAL_ENV", "PYTHONPATH"))
    probe = subprocess.run(
        [str(py), "-c", "import surgflow, surgflow.recipes as r; "
         "from surgflow.training.recipe import load_recipe; "
         "print(surgflow.__file__); print(*[load_recipe(p).name for p in r.shipped()])"],
        cwd=work, env=env, capture_output=True, text=True, timeout=120, check=True,
    )
    where, names = probe.stdout.splitlines()
    assert Path(where).is_relative_to(venv) and "cholec-tiny" in names.split()

    try:
        demo = subprocess.run([str(surgflow), "demo", "--size", "small", "--json"], cwd=work,
                              env=env, capture_output=True, text=True, timeout=1500)
        assert demo.returncode == 0, demo.stderr[-5000:]
        json.loads(demo.stdout)  # exactly one JSON document
    finally:
        subprocess.run([str(surgflow), "broker", "stop", "--json"], cwd=work, env=env,
                       capture_output=True, timeout=120)
