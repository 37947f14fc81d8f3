"""What leaves for people: blacked-out frames in proxies and reels, and no metadata in either."""

from __future__ import annotations

import re
import struct
from pathlib import Path

import av
import numpy as np
import pytest

from surgflow.data.privacy import blackout_ranges
from surgflow.data.proxies import HANDLER_NAME, ProxySpec, ProxyStore
from surgflow.data.ranges import check, contains
from surgflow.data.synthetic import generate_video
from surgflow.data.video import open_reader, probe, sha256_file
from surgflow.errors import BadInput
from surgflow.serving.highlights import Window, write_reel

#: what a camera or an editing tool leaves in a file: when, where, with what, of whom
SOURCE_TAGS = {
    "creation_time": "2019-03-04T05:06:07.000000Z",
    "location": "+48.8577+002.2950/",
    "com.apple.quicktime.make": "AcmeScope",
    "com.apple.quicktime.model": "Endo-9",
    "title": "OR 3 patient 42",
}
SOURCE_HANDLER = "AcmeScope Video"
#: the people proxy's settings (surgflow.data.media.PEOPLE_SPEC) with a blackout at the start,
#: a single frame, a run in the middle and one to the end of the 40-frame source
BLACKOUT = ((0, 3), (12, 13), (20, 27), (37, 40))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s at 10 fps, 96x64, in a QuickTime file carrying a camera's metadata."""
    folder = tmp_path_factory.mktemp("redaction")
    plain = generate_video(folder / "case-r.mp4", seed=21, duration_s=4, fps=10, width=96,
                           height=64, gop=20)
    tagged = folder / "case-r.mov"
    with av.open(str(plain.path)) as src, \
            av.open(str(tagged), "w", format="mov",
                    options={"movflags": "use_metadata_tags"}) as out:
        out.metadata.update(SOURCE_TAGS)
        stream = out.add_stream_from_template(src.streams.video[0])
        stream.metadata.update({"creation_time": SOURCE_TAGS["creation_time"],
                                "handler_name": SOURCE_HANDLER})
        for packet in src.demux(src.streams.video[0]):
            if packet.dts is not None:
                packet.stream = stream
                out.mux(packet)
    return tagged


def _rgb(path: str | Path) -> tuple[np.ndarray, list[float]]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
    return np.stack([f.to_ndarray(format="rgb24") for f in frames]), [f.time for f in frames]


_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"udta", b"edts", b"dinf", b"meta"}


def _boxes(data: bytes, start: int = 0, end: int | None = None):
    """``(type, body)`` of every ISO-BMFF box, depth first."""
    pos, end = start, len(data) if end is None else end
    while pos + 8 <= end:
        size, kind = struct.unpack(">I4s", data[pos:pos + 8])
        head = 8
        if size == 1:
            size, head = struct.unpack(">Q", data[pos + 8:pos + 16])[0], 16
        elif size == 0:
            size = end - pos
        body = pos + head + (4 if kind == b"meta" else 0)  # meta is a full box
        yield kind, data[body:pos + size]
        if kind in _CONTAINERS:
            yield from _boxes(data, body, pos + size)
        pos += size


def _times(data: bytes) -> dict[bytes, list[tuple[int, int]]]:
    """Creation and modification times of the movie, each track and each medium."""
    out: dict[bytes, list[tuple[int, int]]] = {}
    for kind, body in _boxes(data):
        if kind in (b"mvhd", b"tkhd", b"mdhd"):
            fmt = ">QQ" if body[0] == 1 else ">II"
            out.setdefault(kind, []).append(struct.unpack_from(fmt, body, 4))
    return out


def _nal_types(path: str | Path) -> set[int]:
    """The NAL unit types in every video sample (length-prefixed, as MP4 stores them)."""
    types: set[int] = set()
    with av.open(str(path)) as c:
        for packet in c.demux(video=0):
            data, pos = bytes(packet), 0
            while pos < len(data):
                (n,) = struct.unpack_from(">I", data, pos)
                types.add(data[pos + 4] & 0x1F)
                pos += 4 + n
            assert pos == len(data)
    return types


def assert_clean(path: str | Path) -> None:
    """No creation time, no tool's name or settings, nothing of the source's metadata."""
    data = Path(path).read_bytes()
    for needle in (b"x264", b"Lavf", b"Lavc", b"creation_time", b"VideoHandler",
                   SOURCE_HANDLER.encode(), *(v.encode() for v in SOURCE_TAGS.values())):
        assert needle not in data, f"{path} holds {needle!r}"
    times = _times(data)
    assert set(times) == {b"mvhd", b"tkhd", b"mdhd"}
    assert all(t == (0, 0) for ts in times.values() for t in ts), times
    ilst = [body for kind, body in _boxes(data) if kind == b"ilst"]
    assert all(body == b"" for body in ilst), ilst
    with av.open(str(path)) as c:
        assert set(c.metadata) <= {"major_brand", "minor_version", "compatible_brands"}, \
            c.metadata
        assert c.streams.video[0].metadata == {"language": "und", "handler_name": HANDLER_NAME}
    assert 6 not in _nal_types(path)  # no SEI, x264's settings string among them


def test_the_tagged_source_carries_what_must_not_leave(source: Path) -> None:
    # the metadata assertions below can fail only if the source really holds it
    data = source.read_bytes()
    assert all(t != (0, 0) for t in _times(data)[b"mvhd"])
    assert b"x264" in data and 6 in _nal_types(source)
    with av.open(str(source)) as c:
        assert {k: c.metadata.get(k) for k in SOURCE_TAGS} == SOURCE_TAGS
        assert c.streams.video[0].metadata["handler_name"] == SOURCE_HANDLER


def test_blacked_out_frames_are_black_and_the_rest_are_the_proxys(tmp_path: Path,
                                                                  source: Path) -> None:
    store, sha = ProxyStore(tmp_path), sha256_file(source)
    spec = ProxySpec(step=1, short_side=480, gop=25, crf=23)
    plain = store.ensure(source, sha, spec)
    # as media.py makes it: model_copy does not validate, the store does
    redacted = store.ensure(source, sha, spec.model_copy(update={"blackout": list(BLACKOUT)}))
    assert redacted.spec.blackout == BLACKOUT and redacted.path != plain.path
    assert redacted.num_frames == plain.num_frames == probe(source).num_frames == 40
    assert (redacted.width, redacted.height, redacted.fps) == (96, 64, 10.0)

    got, got_t = _rgb(redacted.path)
    want, want_t = _rgb(plain.path)
    assert got.shape == want.shape == (40, 64, 96, 3)
    assert got_t == want_t  # same timing
    black = np.array([contains(BLACKOUT, i) for i in range(40)])
    assert black.sum() == 3 + 1 + 7 + 3
    assert got[black].max() == 0  # every pixel of every blacked-out frame
    shown, plain_shown = got[~black].astype(int), want[~black].astype(int)
    assert shown.reshape(len(shown), -1).mean(axis=1).min() > 20
    original = _rgb(source)[0][~black].astype(int)

    def err(a, b):
        return np.abs(a - b).mean(axis=(1, 2, 3))

    # two encodes of the same noisy frames differ by about what each differs from the source
    assert err(shown, plain_shown).max() < 4
    assert np.all(err(shown, original) < err(plain_shown, original) + 1)


def test_a_stepped_proxy_blacks_out_the_source_frames_it_keeps(tmp_path: Path,
                                                               source: Path) -> None:
    spec = ProxySpec(step=3, short_side=32, gop=4, blackout=((4, 10), (30, 31)))
    proxy = ProxyStore(tmp_path).ensure(source, sha256_file(source), spec)
    frames, _ = _rgb(proxy.path)
    assert len(frames) == proxy.num_frames == 14
    black = [k for k in range(14) if frames[k].max() == 0]
    assert black == [2, 3, 10]  # source frames 6, 9 and 30
    assert not proxy.serves([0, 3], 32)  # its frames are not the source's


@pytest.mark.parametrize(("ranges", "bad"), [
    (((3, 3),), "(3, 3)"),
    (((-2, 4),), "(-2, 4)"),
    (((5, 9), (1, 3)), "(1, 3)"),
    (((0, 5), (4, 8)), "(4, 8)"),
])
def test_bad_blackout_ranges_are_refused_by_name(tmp_path: Path, source: Path, ranges,
                                                  bad: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"blackout range {bad}")):
        ProxySpec(step=1, short_side=64, blackout=ranges)
    with pytest.raises(ValueError, match=re.escape(f"blackout range {bad}")):
        check(ranges, "blackout range")
    unchecked = ProxySpec(step=1, short_side=64).model_copy(update={"blackout": ranges})
    with pytest.raises(ValueError, match=re.escape(f"blackout range {bad}")):
        ProxyStore(tmp_path).ensure(source, sha256_file(source), unchecked)
    assert not list(tmp_path.rglob("*.mp4"))


def test_blackouts_name_their_proxies_and_an_empty_one_keeps_the_old_name() -> None:
    sha = "ab" * 32
    # names computed for these specs before ProxySpec had a blackout: proxies already on disk
    assert ProxyStore.key(sha, ProxySpec(step=25, short_side=64)) == \
        "63f6af84dd09b649619264073a0cde5d50c4a3c47ff8431d6c0216d8315a481f"
    people = ProxySpec(step=1, short_side=480, gop=25, crf=23)
    assert ProxyStore.key("0" * 64, people) == \
        "bc02908363097eb67fcce3d24de5f158f8e9624bc5fe2b99f1c277d6167e5d64"
    assert ProxyStore.key("0" * 64, people.model_copy(update={"blackout": ()})) == \
        ProxyStore.key("0" * 64, people)
    ranges = blackout_ranges([(np.int64(30), np.int64(60))], num_frames=500, fps=25.0)
    a = ProxyStore.key(sha, people.model_copy(update={"blackout": ranges}))
    b = ProxyStore.key(sha, people.model_copy(update={"blackout": ((5, 86),)}))
    assert a == ProxyStore.key(sha, ProxySpec(step=1, short_side=480, gop=25, crf=23,
                                              blackout=((5, 85),)))
    assert len({a, b, ProxyStore.key(sha, people)}) == 3


def test_proxies_carry_no_metadata_blacked_out_or_not(tmp_path: Path, source: Path) -> None:
    store, sha = ProxyStore(tmp_path), sha256_file(source)
    for blackout in ((), BLACKOUT):
        assert_clean(store.ensure(source, sha, ProxySpec(step=1, short_side=64, gop=10,
                                                         blackout=blackout)).path)


def test_a_reel_blacks_out_exactly_its_source_frames_and_carries_no_metadata(
        tmp_path: Path, source: Path) -> None:
    windows = [Window(2, 6, ()), Window(8, 25, ()), Window(30, 40, ())]  # the first all black
    blackout = ((0, 8), (20, 32), (38, 39))
    out = tmp_path / "reel.mp4"
    written = write_reel(source, out, frame_labels=np.zeros(40, dtype=np.int64),
                         label_names=["Preparation"], windows=windows, fps=10.0,
                         blackout=blackout)
    assert written == 31
    assert_clean(out)
    reel, times = _rgb(out)
    assert len(reel) == 31 and times == pytest.approx([k / 10 for k in range(31)])
    shown_from = [i for w in windows for i in range(w.start, w.end)]
    black = [i for i, img in zip(shown_from, reel, strict=True) if img.max() == 0]
    assert black == [i for i in shown_from if contains(blackout, i)]
    src = open_reader(source)
    band = reel.shape[1] // 5
    for img, i in zip(reel, shown_from, strict=True):
        if not contains(blackout, i):  # the picture below the caption is the source's
            want = src[i].asnumpy().astype(int)
            assert np.abs(img[band * 2:-4].astype(int) - want[band * 2:-4]).mean() < 12
    with pytest.raises(BadInput, match=re.escape("blackout range (1, 3)")):
        write_reel(source, tmp_path / "bad.mp4", frame_labels=np.zeros(40, dtype=np.int64),
                   label_names=["Preparation"], windows=windows, fps=10.0,
                   blackout=((5, 9), (1, 3)))
