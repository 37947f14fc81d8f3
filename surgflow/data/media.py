"""Media for people: the one place a registered video is prepared for a person to see.

Annotators (Label Studio tasks) watch a video through its people media, never its original
file: an H.264 copy whose short side is at most :data:`PEOPLE_SHORT_SIDE`, every frame kept
(so media frame ``k`` is source frame ``k``), written once per content under
``SURGFLOW_HOME/proxies`` like the training proxies (:mod:`surgflow.data.proxies`). Everything
that hands a video to a person goes through :func:`prepare_for_people`, so a rule about what a
person may see is made here, once.
"""

from __future__ import annotations

from pathlib import Path

from surgflow.data.proxies import Proxy, ProxySpec, ProxyStore
from surgflow.data.registry import VideoRecord

PEOPLE_SHORT_SIDE = 480
#: one key frame a second at 25 fps: a browser seeks on the timeline without long decodes
PEOPLE_SPEC = ProxySpec(step=1, short_side=PEOPLE_SHORT_SIDE, gop=25, crf=23)


def prepare_for_people(home: Path, video: VideoRecord) -> Proxy:
    """The people media of ``video`` (written first if missing)."""
    return ProxyStore(home).ensure(video.path, video.sha256, PEOPLE_SPEC)
