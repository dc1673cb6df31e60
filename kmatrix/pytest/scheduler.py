"""Under xdist: every test of a cell on one worker, the longest cells handed out first.

kmatrix extends xdist only through its documented interface: the `pytest_xdist_make_scheduler`
hook returns a CellScheduling, a scheduler of its own that implements xdist's scheduling
protocol (xdist.scheduler.protocol.Scheduling). It uses of a worker only what every xdist
scheduler does (`send_runtest_some`, `shutdown`, `shutting_down`); no xdist class is
subclassed and nothing private is overridden, so an xdist upgrade cannot change it silently.

How it hands out work: a work unit is one cell (tests outside the matrix: one module or
class, as xdist's loadscope does). Units are ordered longest expected run first (recorded
durations; without them, the most tests first), and a worker gets its next unit when fewer
than three of its tests are pending. An xdist worker holds its last test back until it knows
the next one (pytest's teardown needs `nextitem`), so a worker always either has two pending
tests or has been told to shut down; otherwise it would wait forever.
"""

from __future__ import annotations

import difflib
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest

from kmatrix.errors import InputError
from kmatrix.pytest.plan import CellIds
from kmatrix.pytest.rundir import RUN_DIRS_KEY
from kmatrix.pytest.stash import MATRIX_KEY
from kmatrix.results import shard

LOW_WATER = 2  # a worker with this many pending tests or fewer gets its next unit


class Worker(Protocol):
    """What the scheduler uses of xdist's WorkerController."""

    @property
    def shutting_down(self) -> bool: ...

    def send_runtest_some(self, indices: Sequence[int]) -> None: ...

    def shutdown(self) -> None: ...


Unit = dict[str, bool]  # node id -> done, in collection order


class CellScheduling:
    """xdist's Scheduling protocol with whole cells as the unit of work.

    numnodes: how many workers will report a collection before scheduling starts.
    scope: the unit a node id belongs to. order: the units' names, first to hand out, given
    {unit: node ids}. report_diff: told when workers collected different tests.
    """

    def __init__(
        self,
        numnodes: int,
        scope: Callable[[str], str],
        order: Callable[[Mapping[str, Sequence[str]]], list[str]],
        log: Callable[..., object] = lambda *a: None,
        report_diff: Callable[[str, str], object] = lambda node, msg: None,
    ) -> None:
        self.numnodes = numnodes
        self.scope = scope
        self.order = order
        self.log = log
        self.report_diff = report_diff
        self.collection: list[str] | None = None
        self.queue: OrderedDict[str, Unit] = OrderedDict()  # units not handed out yet
        self.assigned: dict[Worker, dict[str, Unit]] = {}  # per worker, its units
        self.collections: dict[Worker, list[str]] = {}
        self.index: dict[Worker, dict[str, int]] = {}  # per worker, node id -> its index

    # --- the protocol's state -----------------------------------------------------------------

    @property
    def nodes(self) -> list[Worker]:
        return list(self.assigned)

    @property
    def collection_is_completed(self) -> bool:
        return len(self.collections) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        if not self.collection_is_completed or self.queue:
            return False
        # One pending test is the one a worker holds until it is told to shut down.
        return all(self._pending(w) < 2 for w in self.assigned.values())

    @property
    def has_pending(self) -> bool:
        return bool(self.queue) or any(self._pending(w) for w in self.assigned.values())

    # --- events from xdist's session ----------------------------------------------------------

    def add_node(self, node: Worker) -> None:
        assert node not in self.assigned
        self.assigned[node] = {}

    def add_node_collection(self, node: Worker, collection: Sequence[str]) -> None:
        assert node in self.assigned
        # A worker started after scheduling (one replacing a crashed worker) must agree.
        if self.collection is not None and list(collection) != self.collection:
            self.report_diff(_name(node), _diff(self.collection, collection, node))
            return
        self.collections[node] = list(collection)
        self.index[node] = {nodeid: i for i, nodeid in enumerate(collection)}

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:
            # Scheduled before: a worker was added; put it to work.
            for node in self.nodes:
                self._reschedule(node)
            return
        (first, col), *others = self.collections.items()
        differs = False
        for node, other in others:
            if other != col:
                differs = True
                self.report_diff(_name(node), _diff(col, other, node, first))
        if differs:
            self.log("different tests collected; not scheduling")
            return
        self.collection = list(col)
        if not self.collection:
            return
        units: dict[str, list[str]] = {}
        for nodeid in self.collection:
            units.setdefault(self.scope(nodeid), []).append(nodeid)
        for name in self.order(units):
            self.queue[name] = dict.fromkeys(units[name], False)
        # More workers than units: the spare ones stop now.
        for node in self.nodes[len(self.queue) :]:
            del self.assigned[node]
            node.shutdown()
        for node in self.nodes:
            self._assign_unit(node)
        for node in self.nodes:
            self._reschedule(node)

    def mark_test_complete(self, node: Worker, item_index: int, duration: float = 0) -> None:
        nodeid = self.collections[node][item_index]
        units = self.assigned[node]
        scope = self.scope(nodeid)
        units[scope][nodeid] = True
        if all(units[scope].values()):
            del units[scope]
        self._reschedule(node)

    def mark_test_pending(self, item: str) -> None:
        """Runs `item` again (a plugin such as a rerun plugin asks after a worker crash)."""
        scope = self.scope(item)
        unit = self.queue.setdefault(scope, {})
        unit[item] = False
        self.queue.move_to_end(scope, last=False)
        for node in self.nodes:
            self._reschedule(node)

    def remove_pending_tests_from_node(self, node: Worker, indices: Sequence[int]) -> None:
        raise NotImplementedError("kmatrix's scheduler never asks a worker to give tests back")

    def remove_node(self, node: Worker) -> str | None:
        """A worker finished or died; after a crash its test that was running is returned
        (xdist reports it) and the rest of its cells go to the front of the queue."""
        units = self.assigned.pop(node)
        pending = [(s, n) for s, unit in units.items() for n, done in unit.items() if not done]
        if not pending:
            return None
        crash_scope, crashed = pending[0]
        units[crash_scope][crashed] = True
        rest = [(s, u) for s, u in units.items() if not all(u.values())]
        for scope, unit in reversed(rest):
            self.queue[scope] = {n: d for n, d in unit.items() if not d}
            self.queue.move_to_end(scope, last=False)
        for other in self.nodes:
            self._reschedule(other)
        return crashed

    # --- internals ------------------------------------------------------------------------------

    @staticmethod
    def _pending(units: Mapping[str, Unit]) -> int:
        return sum(not done for unit in units.values() for done in unit.values())

    def _assign_unit(self, node: Worker) -> None:
        scope, unit = self.queue.popitem(last=False)
        self.assigned[node][scope] = unit
        index = self.index[node]
        node.send_runtest_some([index[n] for n, done in unit.items() if not done])

    def _reschedule(self, node: Worker) -> None:
        if node.shutting_down:
            return
        if not self.queue:
            node.shutdown()  # it finishes what it has, then stops
            return
        if self._pending(self.assigned[node]) <= LOW_WATER:
            self._assign_unit(node)


def _name(node: Any) -> str:
    gateway = getattr(node, "gateway", None)
    return str(getattr(gateway, "id", node))


def _diff(a: Sequence[str], b: Sequence[str], node: Any, other: Any = None) -> str:
    lines = difflib.unified_diff(
        list(a), list(b), fromfile=_name(other) if other else "scheduled", tofile=_name(node)
    )
    return "workers collected different tests:\n" + "\n".join(ln.rstrip() for ln in lines)


def expected_workers(config: pytest.Config) -> int:
    """How many workers xdist starts: its --tx specs, each `N*spec` or one `spec`."""
    count = 0
    for spec in config.getvalue("tx") or ():
        n, star, _ = str(spec).partition("*")
        count += int(n) if star and n.isdigit() else 1
    return max(count, 1)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> CellScheduling | None:
    """The scheduler for a matrix run under -n (the plugin turns `--dist load` into
    loadscope; other distribution modes are left to xdist)."""
    matrix = config.stash.get(MATRIX_KEY, None)
    if config.getoption("dist") != "loadscope" or matrix is None:
        return None
    cells = CellIds(matrix.cells)
    durations = _recorded_durations(config)
    # xdist's --no-loadscope-reorder keeps the collection order when nothing is recorded.
    reorder = bool(durations) or getattr(config.option, "loadscopereorder", True)

    def scope(nodeid: str) -> str:
        return cells.of(nodeid) or nodeid.rsplit("::", 1)[0]

    def order(units: Mapping[str, Sequence[str]]) -> list[str]:
        return shard.longest_first(units, durations) if reorder else list(units)

    def report_diff(node: str, msg: str) -> None:
        rep = pytest.CollectReport(nodeid=node, outcome="failed", longrepr=msg, result=[])
        config.hook.pytest_collectreport(report=rep)

    return CellScheduling(
        expected_workers(config),
        scope,
        order,
        log=log.cellsched if log is not None else lambda *a: None,
        report_diff=report_diff,
    )


def _recorded_durations(config: pytest.Config) -> dict[str, float]:
    """Per-test durations from --kmatrix-durations, else the history of the runs in the
    reports root (each test's newest measurement); {} when there is none."""
    given = config.getoption("kmatrix_durations")
    if given:
        try:
            return shard.durations_by_test(Path(given))
        except InputError as e:
            raise pytest.UsageError(f"kmatrix: {e}") from None
    dirs = config.stash.get(RUN_DIRS_KEY, None)
    return shard.durations_history(dirs.root) if dirs is not None and dirs.root else {}
