"""kmatrix's xdist scheduler: xdist's protocol, whole cells per worker, longest cells first.

The scheduler is driven here the way xdist's session drives it, with stand-in workers that
behave as xdist's do (a worker runs a test only once it knows the next one, or has been told
to shut down). Real two-worker runs are in test_plugin.py (test_xdist_same_outcomes) and
test_merge.py (a shard under -n 2).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import cast

import pytest
from synthetic import write_results

from conftest import DATA
from kmatrix.guest.lifecycle import CellPool
from kmatrix.kernels import load_matrix
from kmatrix.pytest.rundir import RUN_DIRS_KEY, RunDirs
from kmatrix.pytest.scheduler import CellScheduling, expected_workers, pytest_xdist_make_scheduler
from kmatrix.pytest.stash import MATRIX_KEY, POOL_KEY
from kmatrix.results.shard import longest_first


class Node:
    """A stand-in xdist worker: what the scheduler sent it, and a queue it runs like one."""

    def __init__(self, name: str) -> None:
        self.gateway = SimpleNamespace(id=name)
        self.shutting_down = False
        self.sent: list[list[int]] = []
        self.queue: list[int] = []
        self.ran: list[int] = []

    def send_runtest_some(self, indices: Sequence[int]) -> None:
        assert not self.shutting_down, "work sent after shutdown"
        self.sent.append(list(indices))
        self.queue += indices

    def shutdown(self) -> None:
        self.shutting_down = True

    def runnable(self) -> bool:
        # xdist's worker keeps its last test until it learns the next one or must stop.
        return len(self.queue) >= 2 or (bool(self.queue) and self.shutting_down)


def cell_of(nodeid: str) -> str:
    return nodeid.split("[", 1)[1].rstrip("]")


def make(numnodes: int, durations: dict[str, float] | None = None) -> CellScheduling:
    return CellScheduling(
        numnodes,
        scope=cell_of,
        order=lambda units: longest_first(units, durations or {}),
    )


def drive(
    sched: CellScheduling, nodes: list[Node], collection: list[str], seed: int,
    crash_after: int | None = None,
) -> list[Node]:  # fmt: skip
    """Runs the collection through the scheduler as xdist's session would, workers picked
    at random; a worker dies after `crash_after` tests when given (a replacement joins).
    Returns every worker that took part."""
    rng = random.Random(seed)
    for n in nodes:
        sched.add_node(n)
        sched.add_node_collection(n, collection)
    sched.schedule()
    everyone = list(nodes)
    done = 0
    for _ in range(10 * len(collection) + 10):
        active = [n for n in everyone if n in sched.nodes]
        if sched.tests_finished:
            for n in active:  # xdist's session then shuts every worker down
                n.shutdown()
        live = [n for n in active if n.runnable()]
        if not live:
            break
        n = rng.choice(live)
        if crash_after is not None and done == crash_after:
            crash_after = None
            crashed = sched.remove_node(n)
            assert crashed == collection[n.queue[0]]
            n.queue.clear()
            spare = Node(f"gw{len(everyone)}")
            everyone.append(spare)
            sched.add_node(spare)
            sched.add_node_collection(spare, collection)
            sched.schedule()
            continue
        i = n.queue.pop(0)
        n.ran.append(i)
        done += 1
        sched.mark_test_complete(n, i)
    assert sched.tests_finished, "stalled: no worker can run a test and the run is not finished"
    assert not sched.has_pending
    return everyone


CELLS = [f"k{k}/cpu{c}/dev" for k in range(3) for c in range(3)]


def collection_of(tests: dict[str, int]) -> list[str]:
    return [f"t.py::test_{t}[{c}]" for c, n in tests.items() for t in range(n)]


def test_implements_xdists_scheduling_protocol() -> None:
    protocol = pytest.importorskip("xdist.scheduler.protocol").Scheduling
    for name, member in inspect.getmembers(protocol):
        if name.startswith("_"):
            continue
        ours = getattr(CellScheduling, name, None)
        assert ours is not None, f"CellScheduling lacks {name}"
        if isinstance(member, property):
            assert isinstance(ours, property), name
        else:
            theirs = list(inspect.signature(member).parameters)
            assert list(inspect.signature(ours).parameters) == theirs, name


@pytest.mark.parametrize("workers", [1, 2, 3])
@pytest.mark.parametrize("seed", range(4))
def test_every_test_once_and_each_cell_on_one_worker(workers: int, seed: int) -> None:
    rng = random.Random(seed)
    collection = collection_of({c: rng.randint(1, 5) for c in CELLS})
    nodes = drive(make(workers), [Node(f"gw{i}") for i in range(workers)], collection, seed)
    ran = [i for n in nodes for i in n.ran]
    assert sorted(ran) == list(range(len(collection)))
    for n in nodes:
        # Each cell's tests in collection order, one cell after the other.
        cells = [cell_of(collection[i]) for i in n.ran]
        assert n.ran == sorted(n.ran, key=lambda i: (cells.index(cell_of(collection[i])), i))
    owner = {cell_of(collection[i]): n.gateway.id for n in nodes for i in n.ran}
    for n in nodes:
        assert all(owner[cell_of(collection[i])] == n.gateway.id for i in n.ran)


def test_single_test_cells_do_not_stall() -> None:
    """`-k "boot and userspace"`: one test per cell; each worker must learn a next test or
    be told to stop, else it waits forever."""
    collection = collection_of(dict.fromkeys(CELLS, 1))
    for workers in (2, 5, 12):
        nodes = drive(make(workers), [Node(f"gw{i}") for i in range(workers)], collection, 0)
        assert sorted(i for n in nodes for i in n.ran) == list(range(len(CELLS)))


def test_spare_workers_stop_at_once() -> None:
    sched = make(3)
    nodes = [Node(f"gw{i}") for i in range(3)]
    drive(sched, nodes, collection_of({CELLS[0]: 3}), 0)
    assert sum(bool(n.sent) for n in nodes) == 1
    assert all(n.shutting_down for n in nodes)


def test_crashed_worker_rest_of_its_cell_runs_elsewhere() -> None:
    collection = collection_of(dict.fromkeys(CELLS[:4], 4))
    nodes = drive(make(2), [Node("gw0"), Node("gw1")], collection, 1, crash_after=5)
    ran = sorted(i for n in nodes for i in n.ran)
    # Everything ran once except the test that was running when its worker died.
    assert len(ran) == len(collection) - 1 and len(set(ran)) == len(ran)


def test_longest_cells_first() -> None:
    durations = {f"t.py::test_0[{c}]": float(i) for i, c in enumerate(CELLS)}
    sched = make(2, durations)
    nodes = [Node("gw0"), Node("gw1")]
    collection = collection_of(dict.fromkeys(CELLS, 3))
    drive(sched, nodes, collection, 0)
    firsts = [cell_of(collection[n.sent[0][0]]) for n in nodes]
    assert firsts == [CELLS[-1], CELLS[-2]]


def test_different_collections_are_reported_not_scheduled() -> None:
    reported: list[tuple[str, str]] = []
    sched = CellScheduling(
        2, cell_of, list, report_diff=lambda node, msg: reported.append((node, msg))
    )
    a, b = Node("gw0"), Node("gw1")
    for n, col in ((a, ["t.py::x[c1]"]), (b, ["t.py::y[c1]"])):
        sched.add_node(n)
        sched.add_node_collection(n, col)
    sched.schedule()
    assert not a.sent and not b.sent
    assert [node for node, _ in reported] == ["gw1"]
    assert "-t.py::x[c1]" in reported[0][1] and "+t.py::y[c1]" in reported[0][1]


def test_expected_workers_from_tx_specs() -> None:
    def config(tx: list[str]) -> pytest.Config:
        return SimpleNamespace(getvalue={"tx": tx}.__getitem__)  # type: ignore[return-value]

    assert expected_workers(config(["2*popen"])) == 2
    assert expected_workers(config(["popen", "3*popen//python=python3", "ssh=host"])) == 5


# --- through the plugin's hook -----------------------------------------------------------------


def hook_scheduler(tmp_path: Path, results: list[tuple[str, str, float]] | None) -> CellScheduling:
    """The scheduler the plugin's hook makes for two workers on the two-cell matrix, with
    `results` as an earlier run's results.json under the reports root."""
    root = tmp_path / "reports"
    earlier = root / "20261130-010000"
    earlier.mkdir(parents=True, exist_ok=True)
    if results is not None:
        write_results(earlier / "results.json", results)
    opts = {"dist": "loadscope", "kmatrix_durations": None, "tx": ["2*popen"]}
    config = SimpleNamespace(
        stash=pytest.Stash(),
        option=SimpleNamespace(loadscopereorder=True),
        getoption=opts.__getitem__,
        getvalue=opts.__getitem__,
    )
    config.stash[MATRIX_KEY] = TWO
    config.stash[POOL_KEY] = CellPool(root / "20261130-020000", None, True)
    config.stash[RUN_DIRS_KEY] = RunDirs(root, root / "20261130-020000")
    sched = pytest_xdist_make_scheduler(cast(pytest.Config, config), None)
    assert sched is not None
    return sched


TWO = load_matrix(DATA / "matrices" / "two.yaml")
FIRST, SECOND = (c.id for c in TWO.cells)


def boot_tests(*names: str) -> list[str]:
    return [f"testcases/test_boot.py::test_{t}[{c}]" for c in (FIRST, SECOND) for t in names]


def test_hook_keeps_each_cell_on_one_worker(tmp_path: Path) -> None:
    collection = boot_tests("a", "b", "c", "d")
    nodes = drive(hook_scheduler(tmp_path, None), [Node("gw0"), Node("gw1")], collection, 0)
    assert [{cell_of(collection[i]) for i in n.ran} for n in nodes] == [{FIRST}, {SECOND}]


def test_xdist_hands_out_the_longest_cells_first(tmp_path: Path) -> None:
    def first_cells(results: list[tuple[str, str, float]] | None) -> list[str]:
        collection = boot_tests("a", "b")
        nodes = [Node("gw0"), Node("gw1")]
        sched = hook_scheduler(tmp_path, results)
        for n in nodes:
            sched.add_node(n)
            sched.add_node_collection(n, collection)
        sched.schedule()
        return [cell_of(collection[n.sent[0][0]]) for n in nodes]

    assert first_cells(None) == [FIRST, SECOND]  # no record: collection order
    # The history of the runs in the reports root says the second cell is longer.
    recorded = [
        (c, f"testcases/test_boot.py::test_{t}[{c}]", d)
        for c, d in ((FIRST, 2.0), (SECOND, 5.0))
        for t in ("a", "b")
    ]
    assert first_cells(recorded) == [SECOND, FIRST]
