"""Under xdist: every test of a cell on one worker, the longest cells handed out first."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kmatrix.errors import (
    InputError,
)
from kmatrix.pytest.stash import MATRIX_KEY, POOL_KEY
from kmatrix.results import shard


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadscope" or config.stash.get(MATRIX_KEY, None) is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    ids = sorted((c.id for c in config.stash[MATRIX_KEY].cells), key=len, reverse=True)  # type: ignore[union-attr]
    durations = _recorded_durations(config)

    class CellScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Whole cells to a worker: the scope of a test is its cell id. With recorded
        durations, the longest cells are handed out first (see shard.longest_first)."""

        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            params = nodeid[nodeid.find("[") :] if "[" in nodeid else ""
            for cid in ids:
                if cid in params:
                    return cid
            return str(super()._split_scope(nodeid))

        def _assign_work_unit(self, node: Any) -> None:
            # The first call comes right after schedule() filled the queue: reorder it once.
            if durations and not self.ordered:
                self.ordered = True
                units = {scope: list(unit) for scope, unit in self.workqueue.items()}
                queue = [(s, self.workqueue[s]) for s in shard.longest_first(units, durations)]
                self.workqueue.clear()
                self.workqueue.update(queue)
            super()._assign_work_unit(node)

    return CellScheduling(config, log)


def _recorded_durations(config: pytest.Config) -> dict[str, float]:
    """Per-test durations from --kmatrix-durations, else from the last run's results.json in
    the reports directory (this run replaces it only at its end); {} when there are none."""
    given = config.getoption("kmatrix_durations")
    if given:
        try:
            return shard.durations_by_test(Path(given))
        except InputError as e:
            raise pytest.UsageError(f"kmatrix: {e}") from None
    last = config.stash[POOL_KEY].reports / "results.json"
    try:
        return shard.durations_by_test(last) if last.is_file() else {}
    except InputError:
        return {}  # a damaged leftover only costs the ordering


# --- the pool of booted cells ----------------------------------------------------------------
