"""Where the feedback consumer resumes: stream positions that are safe to start from.

Design. The dataset manifests are the record of what was merged: every version stores the
positions (``topic:partition`` -> next offset) its batch consumed. A batch can touch several
datasets, and batches that only dead-letter or park create no version at all, so no single
manifest says where to resume. This checkpoint does: it is written (atomically, under a lock)
only after every version of a batch is durable, its dead letters are acknowledged and its parked
events are on disk. A crash before it is written replays the batch; replayed events are
deduplicated by ``event_id`` in the dataset store, re-parking is idempotent, so the result equals
an uninterrupted run. Kafka's group offsets are committed after it, for lag monitoring only.
Without a checkpoint (a new home, or one restored from its dataset versions alone) consumption
starts at the beginning of each partition, and everything already merged counts as duplicates.

Why not resume from the manifests' offsets alone: the maximum over datasets would skip the
events of a dataset whose version was not yet written when a multi-dataset batch crashed, and
the minimum would stall behind a dataset that receives no events for months.

Positions are kept per cluster id: the embedded broker keeps nothing across restarts and each of
its starts is a new cluster, so positions from an earlier one must not be applied to it. Updates
keep the maximum per partition, so two consumers of one group that briefly both held a
partition during a rebalance cannot move it backwards.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from surgflow.storage import json_bytes, locked, write_atomic


def position_key(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


class Checkpoint:
    """Resume positions under ``home/feedback/progress.json``."""

    def __init__(self, home: Path):
        self.path = Path(home) / "feedback" / "progress.json"

    def _read(self) -> dict:
        if not self.path.is_file():
            return {}
        return json.loads(self.path.read_text())

    def positions(self, cluster_id: str) -> dict[str, int]:
        return dict(self._read().get(cluster_id, {}))

    def _lock(self):
        return locked(self.path.with_name(".progress.lock"))

    def advance(self, cluster_id: str, positions: Mapping[str, int]) -> dict[str, int]:
        """Move positions forward (never back); return this cluster's positions after."""
        with self._lock():
            state = self._read()
            current = state.setdefault(cluster_id, {})
            for key, offset in positions.items():
                current[key] = max(int(offset), int(current.get(key, 0)))
            write_atomic(self.path, json_bytes(state))
            return dict(current)
