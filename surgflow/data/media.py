"""Media for people: the one place a registered video is prepared for a person to see.

Annotators (Label Studio tasks) watch a video through its people media, never its original
file: an H.264 copy whose short side is at most :data:`PEOPLE_SHORT_SIDE`, every frame kept
(so media frame ``k`` is source frame ``k``), written once per content and redaction under
``SURGFLOW_HOME/proxies`` like the training proxies (:mod:`surgflow.data.proxies`), without
the source's container metadata.

Privacy fails closed here (:mod:`surgflow.data.privacy`): a video the production out-of-body
detector has not cleared gets no media (:class:`~surgflow.data.privacy.PrivacyHold`), and in
a cleared one every frame within a second of an out-of-body range is black. Everything that
hands a video to a person goes through :func:`prepare_for_people`, so a rule about what a
person may see is made here, once.
"""

from __future__ import annotations

from pathlib import Path

from surgflow.data.privacy import Clearance, PrivacyPolicy, clearance
from surgflow.data.proxies import Proxy, ProxySpec, ProxyStore
from surgflow.data.registry import VideoRecord

PEOPLE_SHORT_SIDE = 480
#: one key frame a second at 25 fps: a browser seeks on the timeline without long decodes
PEOPLE_SPEC = ProxySpec(step=1, short_side=PEOPLE_SHORT_SIDE, gop=25, crf=23)


def people_spec(cleared: Clearance) -> ProxySpec:
    """The people-media spec of a cleared video: :data:`PEOPLE_SPEC` with its blackout."""
    return PEOPLE_SPEC.model_copy(update={"blackout": cleared.require().blackout})


def prepare_for_people(home: Path, video: VideoRecord, policy: PrivacyPolicy) -> Proxy:
    """The redacted people media of ``video`` (written first if missing) under ``policy``
    (:func:`surgflow.serving.screening.privacy_policy`). PrivacyHold, with the reason, if
    the video is not cleared for people."""
    spec = people_spec(clearance(home, video, policy))
    return ProxyStore(home).ensure(video.path, video.sha256, spec)
