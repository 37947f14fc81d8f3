"""When a flow's task is retried: only for errors that may pass (STYLE: explicit retries only
for transient errors)."""

from __future__ import annotations

from collections.abc import Callable


def transient(*errors: type[BaseException]) -> Callable[..., bool]:
    """A ``retry_condition_fn`` that retries a task run failed with one of ``errors``."""

    def condition(task_, task_run, state) -> bool:
        try:
            state.result()
        except errors:
            return True
        except Exception:
            return False
        return False

    return condition
