"""Where follow mode's time goes: the phases and counts of ``feedback run --json``.

Kept apart from :mod:`surgflow.feedback.merge` so that a follow-mode consumer can count its
group join before it loads the merge machinery.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: where a run's time goes (``time_s`` of follow mode's JSON), in seconds:
#: ``join`` from the start until the first partition assignment; ``poll`` in the consumer's
#: polls after it (fetching and unpacking records, waiting for more, rebalances); ``decode``
#: wire decoding and validation, video registration and parking; ``merge`` building the new
#: versions (parent reads, resolving events, writing data files); ``races`` carrying versions
#: onto, or rebuilding them on, the versions of writers that published first; ``commit``
#: publishing manifests, dead letters, tasks, the checkpoint and the group offsets;
#: ``rebalances`` from a revocation to the next assignment (inside ``poll``).
PHASES = ("join", "poll", "decode", "merge", "races", "commit", "rebalances")
#: follow mode's counts: batches merged, races lost to other writers (each then ``carried``
#: or ``rebuilt``), rebalances, and records dropped at a revocation for their next owner
COUNTS = ("batches", "lost_races", "carried", "rebuilt", "rebalances", "revoked_records")


@dataclass
class Tally:
    """Seconds per phase (:data:`PHASES`) and counts (:data:`COUNTS`) of one or more batches."""

    time_s: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))

    def add_tally(self, other: Tally) -> None:
        for k, v in other.time_s.items():
            self.time_s[k] += v
        for k, n in other.counts.items():
            self.counts[k] += n

    def clear(self) -> None:
        self.time_s, self.counts = dict.fromkeys(PHASES, 0.0), dict.fromkeys(COUNTS, 0)
