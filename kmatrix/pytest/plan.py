"""What this run will do, as known on the process that sees every report.

A single process learns its tests from collection; the xdist controller never collects, so it
reads a worker's collection report (its node ids, after -k and sharding) instead. From that:
how many tests each cell has (progress knows when a cell is done) and which cells this run,
or this shard, is meant to cover (`kmatrix merge` tells a cell that never ran from one that
was never planned). The plan's facts go into results.json's "run" section.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pytest

from kmatrix.config.matrix import matrix_digest
from kmatrix.config.specs import Cell, Matrix


class CellIds:
    """Finds the cell in a node id: the cell id is the parametrization id, possibly joined
    with other parameters' ids, so the longest matching cell id inside [...] wins."""

    def __init__(self, cells: Iterable[Cell]) -> None:
        self.ids = sorted((c.id for c in cells), key=len, reverse=True)
        # params -> cell id: a cell's tests share their params, and the scan is over every
        # cell (a 1,000-cell matrix has 42,000 node ids).
        self._memo: dict[str, str | None] = {f"[{cid}]": cid for cid in self.ids}

    def of(self, nodeid: str) -> str | None:
        params = nodeid[nodeid.find("[") :] if "[" in nodeid else ""
        if params not in self._memo:
            self._memo[params] = next((cid for cid in self.ids if cid in params), None)
        return self._memo[params]


class RunPlan:
    """Registered on the controller (or the only process) by the plugin."""

    def __init__(self, matrix: Matrix, shard: str | None) -> None:
        self.matrix = matrix
        self.cell_ids = CellIds(matrix.cells)
        self.tests: dict[str, int] = {}  # cell id -> number of selected tests, in run order
        self.known = False
        self.digest = matrix_digest(matrix)
        self.matrix_cells = [c.id for c in matrix.cells]
        self.shard = shard

    def set_nodeids(self, nodeids: Sequence[str]) -> None:
        tests: dict[str, int] = {}
        for n in nodeids:
            cid = self.cell_ids.of(n)
            if cid is not None:
                tests[cid] = tests.get(cid, 0) + 1
        self.tests = tests
        self.known = True

    # --- hooks ------------------------------------------------------------------------------

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if not hasattr(session.config, "workerinput"):
            self.set_nodeids([it.nodeid for it in session.items])

    @pytest.hookimpl(optionalhook=True, tryfirst=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: Sequence[str]) -> None:
        # Every worker collects the same items; the first report is the plan.
        if not self.known:
            self.set_nodeids(list(ids))
