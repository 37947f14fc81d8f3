"""The `surgflow` command: --json, exit codes, ingest/quarantine, procedures."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from surgflow.data.synthetic import SyntheticVideo

GROUPS = ["data", "feedback", "procedures", "models", "broker"]


def run(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "surgflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=300,
    )


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_every_group_has_help(group: str | None) -> None:
    r = run(*([group] if group else []), "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_procedures_json_and_exit_codes(surgflow_home: Path) -> None:
    r = run("procedures", "add", "appendectomy", "--labels", "Access,Dissection,Closure", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {
        "name": "appendectomy",
        "labels": ["Access", "Dissection", "Closure"],
        "changed": True,
    }
    listed = json.loads(run("procedures", "list", "--json").stdout)
    assert [p["name"] for p in listed] == ["appendectomy", "cholecystectomy"]

    bad = run("procedures", "add", "appendectomy", "--labels", "Closure", "--json")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_ingest_and_quarantine_json(
    surgflow_home: Path, synthetic_corpus: list[SyntheticVideo], tmp_path: Path
) -> None:
    good = shutil.copy(synthetic_corpus[0].path, tmp_path / "case-a.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    r = run(
        "data",
        "ingest",
        str(good),
        str(tmp_path / "broken.mp4"),
        "--procedure",
        "cholecystectomy",
        "--source",
        "hospital-a",
        "--json",
    )
    assert r.returncode == 2, "a quarantined file makes the call exit 2"
    report = json.loads(r.stdout)
    assert [x["video_id"] for x in report["registered"]] == ["case-a"]
    assert report["quarantined"][0]["uri"].endswith("broken.mp4")
    assert "broken.mp4" in r.stderr

    again = run(
        "data",
        "ingest",
        str(good),
        "--procedure",
        "cholecystectomy",
        "--source",
        "hospital-a",
        "--json",
    )
    assert (
        again.returncode == 0 and json.loads(again.stdout)["duplicates"][0]["video_id"] == "case-a"
    )

    q = run("data", "quarantine", "--json")
    assert q.returncode == 0
    assert [Path(e["uri"]).name for e in json.loads(q.stdout)] == ["broken.mp4"]


def test_bad_input_and_bad_config_exit_2(surgflow_home: Path, tmp_path: Path) -> None:
    r = run(
        "data", "ingest", str(tmp_path / "x.mp4"), "--procedure", "nope", "--source", "s", "--json"
    )
    assert r.returncode == 2 and "unknown procedure 'nope'" in r.stderr and r.stdout == ""
    r = run("procedures", "list", "--json", env={"SURGFLOW_TOPIC_PARTITIONS": "-1"})
    assert r.returncode == 2 and "SURGFLOW_TOPIC_PARTITIONS" in r.stderr
    r = run("data", "ingest", "--json")
    assert r.returncode == 2, "a usage error exits 2"
