"""Probing, hashing, registering and quarantining videos."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from surgflow.data.registry import VideoRegistry
from surgflow.data.synthetic import SyntheticVideo, generate_video
from surgflow.data.video import VideoInfo, probe, resolve_video_uri, sha256_file
from surgflow.errors import ConflictError, UnknownName, UnsafeURI, VideoError


@pytest.fixture
def registry(surgflow_home: Path, tmp_path: Path) -> VideoRegistry:
    return VideoRegistry(surgflow_home, [tmp_path.resolve()])


def test_probe_matches_what_was_written(synthetic_corpus: list[SyntheticVideo]) -> None:
    seen = set()
    for v in synthetic_corpus:
        info = probe(v.path)
        assert (info.num_frames, info.width, info.height) == (v.num_frames, v.width, v.height)
        assert info.fps == pytest.approx(v.fps)
        assert info.duration_s == pytest.approx(12, abs=0.1)
        seen.add((info.width, info.height, v.fps))
    assert len(seen) == 3, "the corpus covers three resolutions and two frame rates"


def test_sha256_streams_the_bytes(tmp_path: Path) -> None:
    import hashlib

    data = os.urandom(3 * (1 << 20) + 17)
    (tmp_path / "blob").write_bytes(data)
    assert sha256_file(tmp_path / "blob") == hashlib.sha256(data).hexdigest()


def _bad_files(tmp_path: Path, good: Path) -> dict[str, Path]:
    data = good.read_bytes()
    files = {
        "missing": tmp_path / "missing.mp4",
        "empty": tmp_path / "empty.mp4",
        "truncated": tmp_path / "truncated.mp4",
        "not-a-video": tmp_path / "notes.mp4",
        "undecodable": tmp_path / "noise.mp4",
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["not-a-video"].write_text("operating notes\n" * 50)
    files["undecodable"].write_bytes(os.urandom(40_000))
    return files


def test_bad_files_are_quarantined_and_good_ones_still_ingested(
    registry: VideoRegistry, synthetic_corpus: list[SyntheticVideo], tmp_path: Path
) -> None:
    good = [shutil.copy(v.path, tmp_path / v.path.name) for v in synthetic_corpus[:2]]
    bad = _bad_files(tmp_path, Path(good[0]))
    paths = [good[0], *bad.values(), good[1]]
    report = registry.ingest(paths, procedure="cholecystectomy", source="hospital-a")
    assert sorted(r["video_id"] for r in report["registered"]) == sorted(Path(g).stem for g in good)
    reasons = {Path(q["uri"]).name: q["reason"] for q in report["quarantined"]}
    assert set(reasons) == {p.name for p in bad.values()}
    assert "does not exist" in reasons["missing.mp4"]
    assert "empty" in reasons["empty.mp4"]
    for name in ("truncated.mp4", "notes.mp4", "noise.mp4"):
        assert "cannot be decoded" in reasons[name] or "truncated" in reasons[name]
        assert name in reasons[name], "the reason names the file"
    assert {Path(e.uri).name for e in registry.quarantined()} == set(reasons)
    rec = registry.get(Path(good[0]).stem)
    assert rec.sha256 == sha256_file(good[0]) and rec.source == "hospital-a"


def test_reingest_is_a_noop_and_changed_content_names_both_hashes(
    registry: VideoRegistry, tmp_path: Path
) -> None:
    v = generate_video(tmp_path / "case-1.mp4", seed=1, duration_s=2, width=64, height=64)
    first = registry.ingest([v.path], procedure="cholecystectomy", source="a")
    again = registry.ingest([v.path], procedure="cholecystectomy", source="a")
    assert len(first["registered"]) == 1 and len(again["duplicates"]) == 1
    old_hash = first["registered"][0]["sha256"]
    generate_video(tmp_path / "other" / "case-1.mp4", seed=2, duration_s=2, width=64, height=64)
    new_hash = sha256_file(tmp_path / "other" / "case-1.mp4")
    with pytest.raises(ConflictError) as e:
        registry.register(str(tmp_path / "other" / "case-1.mp4"), "cholecystectomy", "a")
    assert old_hash in str(e.value) and new_hash in str(e.value)
    assert registry.get("case-1").sha256 == old_hash


def test_unknown_procedure_rejects_the_call(registry: VideoRegistry, tmp_path: Path) -> None:
    with pytest.raises(UnknownName, match="procedure"):
        registry.ingest([tmp_path / "x.mp4"], procedure="nephrectomy", source="a")


def test_uris_outside_the_roots_are_refused_without_opening(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (root / "ok" / "v.mp4").write_bytes(b"x")
    outside = tmp_path / "secret.mp4"
    outside.write_bytes(b"x")
    (root / "link.mp4").symlink_to(outside)
    assert resolve_video_uri(f"file://{root}/ok/v.mp4", [root]) == (root / "ok" / "v.mp4").resolve()
    assert resolve_video_uri(str(root / "ok" / "v.mp4"), [root]).name == "v.mp4"
    for uri in (
        str(outside),
        f"file://{root}/../secret.mp4",
        str(root / "link.mp4"),
        "s3://bucket/v.mp4",
        "http://host/v.mp4",
        "file://otherhost/x.mp4",
        "",
    ):
        with pytest.raises(UnsafeURI):
            resolve_video_uri(uri, [root])


def test_probe_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(VideoError, match=r"nothing\.mp4: file does not exist"):
        probe(tmp_path / "nothing.mp4")
    (tmp_path / "dir.mp4").mkdir()
    with pytest.raises(VideoError, match="not a regular file"):
        probe(tmp_path / "dir.mp4")


def test_a_record_is_the_probed_facts_plus_the_registration_and_old_records_load(
    registry: VideoRegistry, tmp_path: Path
) -> None:
    v = generate_video(tmp_path / "case-9.mp4", seed=3, duration_s=2, width=64, height=64)
    rec = registry.register(str(v.path), procedure="cholecystectomy", source="s").record
    assert isinstance(rec, VideoInfo) and rec.size_bytes == v.path.stat().st_size
    info = probe(v.path)
    assert {k: getattr(rec, k) for k in VideoInfo.model_fields} == dict(info)
    stored = json.loads((registry.root / "case-9.json").read_text())
    assert stored["duration_s"] == info.duration_s  # the file keeps the layout it always had
    # a record as registries wrote it before (duration_s stored, fields in this order)
    old = {"video_id": "case-8", "uri": "/v/case-8.mp4", "path": "/v/case-8.mp4",
           "sha256": "ab" * 32, "size_bytes": 10, "procedure": "cholecystectomy", "source": "s",
           "recorded_at": None, "num_frames": 50, "fps": 25.0, "width": 64, "height": 48,
           "duration_s": 2.0, "registered_at": "2026-11-20T10:00:00Z"}
    (registry.root / "case-8.json").write_text(json.dumps(old))
    got = registry.get("case-8")
    assert got.model_dump(mode="json") | {"registered_at": old["registered_at"]} == old


def test_a_dataset_snapshot_wraps_the_record_and_reads_back_from_its_data_file(
    registry: VideoRegistry, tmp_path: Path
) -> None:
    from surgflow.data.datafiles import DatasetVideo, table_videos, videos_table

    v = generate_video(tmp_path / "case-7.mp4", seed=4, duration_s=2, width=64, height=64)
    rec = registry.register(str(v.path), procedure="cholecystectomy", source="s").record
    snap = DatasetVideo(record=rec, split="val", content_hash="c0")
    assert (snap.video_id, snap.num_frames, snap.split) == (rec.video_id, rec.num_frames, "val")
    (back,) = table_videos(videos_table([snap])).values()
    kept = rec.model_dump(exclude={"size_bytes", "registered_at"})
    assert back.record.model_dump(exclude={"size_bytes", "registered_at"}) == kept
    assert (back.split, back.content_hash, back.record.registered_at) == ("val", "c0", None)
    assert DatasetVideo(**back.__dict__) == back
