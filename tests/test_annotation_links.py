"""Signed media links: only a people-media key, only with its signature, only until it
expires; an open task's link is renewed the day before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

from surgflow.annotation.links import TTL, MediaLinks
from surgflow.data.media import PEOPLE_SPEC
from surgflow.data.proxies import Proxy

NOW = datetime(2026, 12, 7, tzinfo=UTC)


def _proxy() -> Proxy:
    return Proxy(path="/x.mp4", source_sha256="ab" * 32, spec=PEOPLE_SPEC, fps=25.0, width=160,
                 height=128, num_frames=300)


def _parts(url: str) -> tuple[str, int, str]:
    u = urlsplit(url)
    q = parse_qs(u.query)
    return u.path.removeprefix("/media/").removesuffix(".mp4"), int(q["exp"][0]), q["sig"][0]


def test_a_link_is_served_only_with_its_signature_and_before_it_expires(tmp_path):
    links = MediaLinks.for_home(tmp_path, "http://127.0.0.1:9/")
    key, exp, sig = _parts(links.media_url(_proxy(), NOW))
    assert links.check(key, exp, sig, NOW) is None
    assert links.check(key, exp, sig, NOW + TTL + timedelta(seconds=1)) == "link expired"
    assert links.check(key, exp + 1, sig, NOW) == "bad signature"  # a longer life is forged
    assert links.check("../../etc/passwd", exp, sig, NOW) == "not a media key"
    other = MediaLinks.for_home(tmp_path / "other-home", "http://127.0.0.1:9")
    assert other.check(key, exp, sig, NOW) == "bad signature"
    # the key is made once per home and kept
    assert MediaLinks.for_home(tmp_path, "http://h").secret == links.secret


def test_a_link_is_renewed_only_in_its_last_day_and_only_if_it_is_ours(tmp_path):
    links = MediaLinks.for_home(tmp_path, "http://127.0.0.1:9")
    url = links.media_url(_proxy(), NOW)
    assert links.renewed(url, NOW + timedelta(days=5)) is None
    fresh = links.renewed(url, NOW + TTL - timedelta(hours=2))
    assert fresh is not None and fresh != url
    key, exp, sig = _parts(fresh)
    assert links.check(key, exp, sig, NOW + TTL + timedelta(days=3)) is None
    assert links.renewed("http://elsewhere/media/x.mp4?exp=1", NOW) is None
