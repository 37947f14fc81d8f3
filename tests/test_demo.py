"""`surgflow demo --size small` end to end: the loop closes by itself.

Real embedded broker, Prefect server with served deployments and triggers, Dask cluster,
MLflow registry, ONNX export and gate, the inference service in fleet mode, hot swap.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli_helpers import run_cli
from tests.process_helpers import stop_processes_of


@pytest.mark.slow
@pytest.mark.integration
def test_small_demo_closes_the_loop_and_v2_beats_v1_on_the_new_hospital(tmp_path: Path) -> None:
    home = tmp_path / "home"
    try:
        r = run_cli("demo", "--size", "small", home=home, clean=True, json=True, check=False,
                    cwd=tmp_path, timeout=1800, env={"SURGFLOW_PRIVACY_SCREENING": "required"})
    finally:  # a demo killed at the timeout leaves its services; they must not outlive it
        left = stop_processes_of(home)
    assert r.returncode == 0, r.stderr[-3000:] + _tail(home / "logs" / "deployments.log")
    out = r.data

    versions = [v["version"] for v in out["versions"]]
    assert versions == list(range(1, len(versions) + 1)) and len(versions) >= 3
    assert "hospital-c" in out["versions"][-1]["sources"]
    v1, v2, detector = out["models"]
    assert (v1["version"], v1["verdict"]) == (1, "approved")
    assert v2["version"] == 2 and v2["verdict"] in ("approved", "rejected")
    assert (detector["name"], detector["verdict"]) == ("privacy-outofbody", "approved")
    assert "production" in detector["stages"]
    # each trigger crossing started exactly one pipeline: v1 on the first version (new
    # sources A and B), v2 on the version that brought hospital C's human labels, and the
    # detector once, on the privacy track's first version
    by_recipe = {}
    for f in out["firings"]:
        by_recipe.setdefault(f["recipe"], []).append(f)
    assert [f["cause"] for f in by_recipe["privacy-demo"]] == ["privacy@1"], out["firings"]
    # hospital C drifted from v1's training view before any label of theirs (its firing's
    # pipeline trained nothing); A and B, compared with their own training videos, did not
    drifts = [f for f in by_recipe["cholec-demo"] if f["reasons"] == ["drift"]]
    assert [f["drift"]["source"] for f in drifts] == ["hospital-c"], drifts
    assert out["drift"]["retrain"].startswith("nothing new to train from since "), out["drift"]
    firings = [f for f in by_recipe["cholec-demo"] if f["reasons"] != ["drift"]]
    assert len(firings) == 2 and all("new_source" in f["reasons"] for f in firings), firings
    assert [f["cause"] for f in firings] == ["cholecystectomy@1", f"cholecystectomy@{versions[-1]}"]
    assert "hospital-c" in firings[1]["why"] and "hospital-c" not in firings[0]["why"]
    c = out["field_by_source"]["hospital-c"]
    assert c["candidate"] > c["baseline"], f"v2 should beat v1 on the new hospital: {c}"
    if v2["verdict"] == "approved":
        assert out["served"]["cholecystectomy"]["version"] == 2, out["served"]
    # the annotators worked in Label Studio: every task sent was answered there and merged
    a = out["annotation"]
    assert a["sent"] > 0 and a["answered"] == a["sent"] and a["merged"] == a["answered"], a
    assert Path(out["highlights"]).stat().st_size > 0
    # every out-of-body frame of C's videos (never seen in the detector's training) is black
    # in the media people see, decoded frame by frame
    p = out["privacy"]
    assert p["out_of_body_frames"] > 0 and p["out_of_body_black"] == p["out_of_body_frames"], p
    assert p["screened_s"] > 0 and p["blacked_out_s"] > 0
    assert out["report_path"] and Path(out["report_path"]).is_file()
    assert left == [], f"the demo stops everything it started; left: {left}"


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text()[-n:] if path.is_file() else ""
