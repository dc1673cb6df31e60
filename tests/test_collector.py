"""The results collector (kmatrix.pytest.collector): how often results.json is rewritten as a
run goes. Reports are fed as pytest would; the clock and the write are stand-ins, so the
pacing is checked exactly (the whole collector runs in every plugin test)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from conftest import TWO
from kmatrix.kernels import load_matrix
from kmatrix.pytest import collector as collector_mod
from kmatrix.pytest.collector import WRITE_SHARE, ResultsCollector
from kmatrix.pytest.plan import RunPlan


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def feed(c: ResultsCollector, clock: Clock, nodeid: str, cell: str, seconds: float) -> None:
    for when in ("setup", "call", "teardown"):
        clock.now += seconds / 3
        c.pytest_runtest_logreport(
            pytest.TestReport(
                nodeid,
                ("t.py", 1, "t"),
                {},
                "passed",
                None,
                when,
                user_properties=[("kmatrix.cell", cell)],
            )
        )


def test_rewrites_after_each_cell_and_paced_by_their_cost(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two cells of 300 one-second tests; a write costs 1 ms per result so far. Every cell's
    last test is followed by a write; between those, the writing stays near WRITE_SHARE of
    the time, and no stretch between two writes is longer than the last write's cost allows
    (plus the test that ends it). Rewriting after every test (600 writes, 180 s of 600) made
    a run quadratic in its tests."""
    matrix = load_matrix(TWO)
    a, b = (cell.id for cell in matrix.cells)
    clock = Clock()
    monkeypatch.setattr(collector_mod, "_clock", clock)
    c = ResultsCollector(matrix, tmp_path, [])
    c.plan = RunPlan(matrix, None)
    nodeids = {cid: [f"t.py::test_{i}[{cid}]" for i in range(300)] for cid in (a, b)}
    c.plan.set_nodeids(nodeids[a] + nodeids[b])
    writes: list[tuple[float, float, int]] = []  # (start, cost, results written)

    def write() -> None:
        cost = 0.001 * len(c.records)
        writes.append((clock.now, cost, len(c.records)))
        clock.now += cost

    monkeypatch.setattr(c, "_write", write)
    start = clock.now
    for cid in (a, b):
        for n in nodeids[cid]:
            feed(c, clock, n, cid, 1.0)
    assert 300 in {w[2] for w in writes}  # after cell a's last test
    assert writes[-1][2] == 600  # and after b's
    spent = sum(w[1] for w in writes)
    assert spent <= 2 * WRITE_SHARE * (clock.now - start), (spent, len(writes))
    for (t0, cost, _), (t1, _, _) in itertools.pairwise(writes):
        assert t1 - (t0 + cost) <= cost / WRITE_SHARE + 1.0 + 1e-9


def test_without_a_plan_every_write_is_paced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No plan (no collection report yet): the first test is written at once, later ones as
    the pacing allows."""
    matrix = load_matrix(TWO)
    cid = matrix.cells[0].id
    clock = Clock()
    monkeypatch.setattr(collector_mod, "_clock", clock)
    c = ResultsCollector(matrix, tmp_path, [])
    count: list[int] = []

    def write() -> None:
        count.append(len(c.records))
        clock.now += 0.5

    monkeypatch.setattr(c, "_write", write)
    for i in range(20):
        feed(c, clock, f"t.py::test_{i}[{cid}]", cid, 1.0)
    assert count[0] == 1 and 1 < len(count) < 20, count


def test_a_cells_end_is_written_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A rerun's reports for a cell that already ended do not each rewrite the file."""
    matrix = load_matrix(TWO)
    cid = matrix.cells[0].id
    clock = Clock()
    monkeypatch.setattr(collector_mod, "_clock", clock)
    c = ResultsCollector(matrix, tmp_path, [])
    c.plan = RunPlan(matrix, None)
    nodeids = [f"t.py::test_{i}[{cid}]" for i in range(2)]
    c.plan.set_nodeids(nodeids)
    written: list[int] = []

    def write() -> None:
        written.append(len(c.records))
        clock.now += 100.0  # so costly that pacing allows no other write here

    monkeypatch.setattr(c, "_write", write)
    for n in [*nodeids, nodeids[1]]:
        feed(c, clock, n, cid, 1.0)
    assert written == [1, 2]  # the first test (nothing written yet), then the cell's end
