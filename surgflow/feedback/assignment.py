"""Partition assignment by backlog for the feedback consumer group.

Events are keyed by ``video_id``, so a few busy videos can make one partition hold several
times as many records as another. Kafka's range assignor gives every member the same number of
partitions, so on a long backlog the member that drew the big partitions works alone long
after the others are done, and adding consumers adds little (measured on 240k events: 110k,
70k and 60k records for three members). :class:`BacklogAssignor` instead balances the records
still to be merged.

- A unit of assignment is a partition number with the partitions of that number of every
  input topic: a video's events have the same key on every topic, so its video event and its
  labels stay with one member (another member would park the labels until the video is
  registered).
- A unit weighs the records between the stored resume positions (the checkpoint every
  consumer of a home shares) and the end offsets read when the consumer started; units are
  dealt heaviest first to the member with the least weight so far (then the fewest units).
  With no backlog every weight is zero and units are dealt round robin.

The leader computes the assignment inside a broker response handler, where it may not block
on the broker, so the end offsets are read before the consumer joins; the checkpoint is a local
file, read when assigning. Members also offer the range assignor, so a group that mixes in a
consumer without this one still agrees on a protocol.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

from kafka.coordinator.assignors.abstract import (
    AbstractPartitionAssignor,
    ConsumerProtocolAssignment,
    ConsumerProtocolSubscription,
)
from kafka.coordinator.assignors.range import RangePartitionAssignor

log = logging.getLogger(__name__)

#: ``{(topic, partition): records still to be merged}``
Backlog = Callable[[], dict[tuple[str, int], int]]


def deal(units: dict[int, int], members: list[str]) -> dict[str, list[int]]:
    """Units (``{unit: weight}``) to members: heaviest first, each to the member with the
    least weight so far, then the fewest units, then the earliest in ``members``."""
    load = {m: [0, 0, i] for i, m in enumerate(members)}
    out: dict[str, list[int]] = {m: [] for m in members}
    for unit, weight in sorted(units.items(), key=lambda kv: (-kv[1], kv[0])):
        member = min(members, key=lambda m: load[m])
        out[member].append(unit)
        load[member][0] += weight
        load[member][1] += 1
    return {m: sorted(u) for m, u in out.items()}


class BacklogAssignor(AbstractPartitionAssignor):
    """Assigns partition numbers to the group's members by records still to merge."""

    name = "surgflow-backlog"
    version = 0

    def __init__(self, backlog: Backlog):
        self.backlog = backlog

    def assign(self, cluster, members):
        topics = {frozenset(m.metadata.topics) for m in members}
        if len(topics) != 1:  # members on different topics: units do not line up
            return RangePartitionAssignor.assign(cluster, members)
        (subscribed,) = topics
        partitions = {t: sorted(cluster.partitions_for_topic(t) or ()) for t in subscribed}
        try:
            behind = self.backlog()
        except Exception as e:  # advisory: a count-balanced assignment is still correct
            log.warning("backlog unknown (%s); assigning partitions by count", e)
            behind = {}
        units: dict[int, int] = defaultdict(int)
        for topic, parts in partitions.items():
            for p in parts:
                units[p] += max(0, behind.get((topic, p), 0))
        # static members first, then by member id, as the range assignor orders them
        order = sorted(members, key=lambda m: (m.group_instance_id is None,
                                               m.group_instance_id or "", m.member_id))
        dealt = {m: set(u) for m, u in deal(dict(units), [m.member_id for m in order]).items()}
        log.debug("backlog assignment: %s (weights %s)", dealt, dict(units))
        return {
            m.member_id: ConsumerProtocolAssignment(
                self.version,
                sorted((t, [p for p in parts if p in dealt[m.member_id]])
                       for t, parts in partitions.items()),
                b"")
            for m in members
        }

    def metadata(self, topics):
        return ConsumerProtocolSubscription(self.version, list(topics), b"")

    def on_assignment(self, assignment, generation):
        pass
