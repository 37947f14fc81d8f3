"""The library runs without an orchestrator: nothing under surgflow/ but surgflow/cli/ imports
Prefect or the flows, at import time or inside a function (STYLE: imports flow one way)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import surgflow

ROOT = Path(surgflow.__file__).parent
BANNED = ("prefect", "surgflow_flows")


def library_modules() -> dict[str, Path]:
    """Every module of the library by dotted name: surgflow/ but cli/ and ``__main__``."""
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        if parts[:2] == ("surgflow", "cli") or parts[-1] == "__main__":
            continue
        out[".".join(parts)] = path
    return out


def _banned(name: str) -> bool:
    return name.split(".")[0] in BANNED


def test_importing_every_library_module_imports_no_prefect():
    modules = list(library_modules())
    assert len(modules) > 50 and "surgflow.feedback.events" in modules
    script = textwrap.dedent("""
        import importlib, json, sys
        first = {}
        for name in json.loads(sys.argv[1]):
            importlib.import_module(name)
            for banned in json.loads(sys.argv[2]):
                if banned in sys.modules:
                    first.setdefault(banned, name)
        print(json.dumps(first))
    """)
    done = subprocess.run([sys.executable, "-c", script, json.dumps(modules), json.dumps(BANNED)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    first = json.loads(done.stdout.strip().splitlines()[-1])
    assert first == {}, f"imported by (the first module that brought it in): {first}"


def test_no_library_module_imports_prefect_even_inside_a_function():
    found = []
    for name, path in library_modules().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(name, node.lineno, a.name) for a in node.names if _banned(a.name)]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and _banned(node.module):
                found.append((name, node.lineno, node.module))
    assert found == [], f"library modules importing Prefect or the flows: {found}"
