"""The `surgflow` command: --json, exit codes, ingest/quarantine, procedures."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from surgflow.data.synthetic import SyntheticVideo
from tests.cli_helpers import run_cli

GROUPS = ["data", "feedback", "procedures", "models", "broker"]


@pytest.mark.parametrize("group", [None, *GROUPS])
def test_every_group_has_help(group: str | None) -> None:
    r = run_cli(*([group] if group else []), "--help", check=False)
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout


def test_procedures_json_and_exit_codes(surgflow_home: Path) -> None:
    r = run_cli("procedures", "add", "appendectomy", "--labels", "Access,Dissection,Closure",
                json=True)
    assert r.data == {
        "name": "appendectomy",
        "labels": ["Access", "Dissection", "Closure"],
        "changed": True,
    }
    listed = run_cli("procedures", "list", json=True).data
    assert [p["name"] for p in listed] == ["appendectomy", "cholecystectomy", "privacy"]

    bad = run_cli("procedures", "add", "appendectomy", "--labels", "Closure", json=True,
                  check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.startswith("error:") and len(bad.stderr.strip().splitlines()) == 1


def test_ingest_and_quarantine_json(
    surgflow_home: Path, synthetic_corpus: list[SyntheticVideo], tmp_path: Path
) -> None:
    good = shutil.copy(synthetic_corpus[0].path, tmp_path / "case-a.mp4")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 1000)
    r = run_cli(
        "data",
        "ingest",
        str(good),
        str(tmp_path / "broken.mp4"),
        "--procedure",
        "cholecystectomy",
        "--source",
        "hospital-a",
        json=True,
        check=False,
    )
    assert r.returncode == 2, "a quarantined file makes the call exit 2"
    report = r.data
    assert [x["video_id"] for x in report["registered"]] == ["case-a"]
    assert report["quarantined"][0]["uri"].endswith("broken.mp4")
    assert "broken.mp4" in r.stderr

    again = run_cli(
        "data",
        "ingest",
        str(good),
        "--procedure",
        "cholecystectomy",
        "--source",
        "hospital-a",
        json=True,
    )
    assert again.data["duplicates"][0]["video_id"] == "case-a"

    q = run_cli("data", "quarantine", json=True)
    assert [Path(e["uri"]).name for e in q.data] == ["broken.mp4"]


def test_bad_input_and_bad_config_exit_2(surgflow_home: Path, tmp_path: Path) -> None:
    r = run_cli(
        "data", "ingest", str(tmp_path / "x.mp4"), "--procedure", "nope", "--source", "s",
        json=True, check=False,
    )
    assert r.returncode == 2 and "unknown procedure 'nope'" in r.stderr and r.stdout == ""
    r = run_cli("procedures", "list", json=True, env={"SURGFLOW_TOPIC_PARTITIONS": "-1"},
                check=False)
    assert r.returncode == 2 and "SURGFLOW_TOPIC_PARTITIONS" in r.stderr
    r = run_cli("data", "ingest", json=True, check=False)
    assert r.returncode == 2, "a usage error exits 2"
