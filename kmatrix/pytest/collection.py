"""Parametrization over the matrix's cells, ordering cell by cell, declared expectations as
strict xfail markers, shard selection, the snapshot plan and the data disks each cell gets."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from kmatrix.errors import (
    InputError,
)
from kmatrix.guest.datadisk import registered
from kmatrix.pytest import applicability
from kmatrix.pytest.outcomes import _EXPECT_RAISES
from kmatrix.pytest.stash import MATRIX_KEY, POOL_KEY, SHARD_EMPTY_KEY, cell_of
from kmatrix.results import shard


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" not in metafunc.fixturenames:
        return
    matrix = metafunc.config.stash.get(MATRIX_KEY, None)
    if matrix is None:
        raise pytest.UsageError(
            "kmatrix: no matrix (pass --kmatrix-matrix PATH or create matrix/default.yaml)"
        )
    ids = metafunc.config.stash.get(_CELL_IDS, None)
    if ids is None:  # once per run, not once per test function
        ids = metafunc.config.stash[_CELL_IDS] = [c.id for c in matrix.cells]
    metafunc.parametrize("cell", matrix.cells, ids=ids)


_CELL_IDS = pytest.StashKey[list[str]]()


class _Marks:
    """The markers on an item: its own plus its parents' (module, class). A parent's are
    gathered once, not once per item as item.iter_markers does: a 1,000-cell matrix has
    tens of thousands of items under a handful of modules."""

    def __init__(self) -> None:
        self._parents: dict[int, tuple[pytest.Item | pytest.Collector, list[pytest.Mark]]] = {}

    def iter(self, item: pytest.Item, name: str) -> Iterator[pytest.Mark]:
        for m in item.own_markers:
            if m.name == name:
                yield m
        parent = item.parent
        if parent is None:
            return
        hit = self._parents.get(id(parent))
        if hit is None or hit[0] is not parent:
            marks = [m for node in reversed(parent.listchain()) for m in node.own_markers]
            hit = self._parents[id(parent)] = (parent, marks)
        for m in hit[1]:
            if m.name == name:
                yield m

    def has(self, item: pytest.Item, name: str) -> bool:
        return next(self.iter(item, name), None) is not None


def pytest_itemcollected(item: pytest.Item) -> None:
    """A baseline cell's test is selected with its patched twin: `-k` matches it by the
    twin's name too (`-k kmx/Haswell` runs kmx+baseline/Haswell beside kmx/Haswell), and
    by `baseline` (its marker `kmatrix_baseline`), so `-k "not baseline"` leaves it out."""
    c = cell_of(item)
    if c is not None and c.baseline_of:
        item.add_marker("kmatrix_baseline")
        item.extra_keyword_matches.add(item.name.replace(c.id, c.baseline_of))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    matrix = config.stash.get(MATRIX_KEY, None)
    if matrix is None:
        return
    order = {c.id: i for i, c in enumerate(matrix.cells)}
    marks = _Marks()
    keys = {}
    for i, it in enumerate(items):
        c = cell_of(it)
        final = 1 if marks.has(it, "kmatrix_final") else 0
        keys[id(it)] = (order[c.id] if c is not None else -1, final, i)
    items.sort(key=lambda it: keys[id(it)])
    _mark_expected(items)
    applicability.mark_collected(items)
    spec = config.getoption("kmatrix_shard")
    if spec:
        _select_shard(config, items, spec)
    _plan_cells(config, items, marks)


def disks_of(item: pytest.Item, marks: _Marks | None = None) -> list[str]:
    """The data disks a test declares with @pytest.mark.kmatrix_disk("tools", ...)."""
    found = marks.iter(item, "kmatrix_disk") if marks else item.iter_markers("kmatrix_disk")
    names: list[str] = []
    for m in found:
        names += [str(a) for a in m.args]
    return list(dict.fromkeys(names))


def _plan_snapshots(config: pytest.Config, items: list[pytest.Item]) -> None:
    _plan_cells(config, items, None)


def _plan_cells(config: pytest.Config, items: list[pytest.Item], marks: _Marks | None) -> None:
    """What each cell's boot needs, from its selected tests (one pass over the items):

    * the snapshot: cells whose first boot is saved for restores are those with a
      kmatrix_clean test that is not the cell's first (the first one gets the fresh boot);
    * the read-only data disks its tests declare, so tests that need none boot the small
      image only.
    """
    pool = config.stash.get(POOL_KEY, None)
    if pool is None:
        return
    known = registered()
    seen: set[str] = set()
    for it in items:
        c = cell_of(it)
        if c is None:
            continue
        cid = c.id
        if marks is None:
            clean = it.get_closest_marker("kmatrix_clean") is not None
            names = []
        else:
            clean = marks.has(it, "kmatrix_clean")
            names = disks_of(it, marks)
        if clean and cid in seen:
            pool.plan_snapshot(c)
        seen.add(cid)
        if names:
            unknown = [n for n in names if n not in known]
            if unknown:
                raise pytest.UsageError(
                    f"kmatrix: {it.nodeid}: kmatrix_disk names unknown data disk(s) "
                    f"{', '.join(map(repr, unknown))} (known: {', '.join(sorted(known))})"
                )
            pool.cell_disks.setdefault(cid, set()).update(names)


def _mark_expected(items: list[pytest.Item]) -> None:
    """The matrix's `expect:` rules as strict xfail markers: a cell expected not to boot is
    xfailed only by its boot failure; if it boots, its tests XPASS(strict), i.e. fail."""
    for it in items:
        c = cell_of(it)
        exp = c.expected(getattr(it, "originalname", it.name)) if c is not None else None
        if exp is None:
            continue
        reason = f"expected {exp.outcome}" + (f": {exp.reason}" if exp.reason else "")
        it.add_marker(
            pytest.mark.xfail(reason=reason, strict=True, raises=_EXPECT_RAISES[exp.outcome])
        )


def _select_shard(config: pytest.Config, items: list[pytest.Item], spec: str) -> None:
    try:
        index, total = shard.parse_spec(spec)
        dpath = config.getoption("kmatrix_durations")
        weights = shard.durations_from(Path(dpath)) if dpath else {}
    except InputError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None
    cells = list(dict.fromkeys(c.id for it in items if (c := cell_of(it)) is not None))
    if not weights:
        # Without history, a cell weighs as many tests as it has selected.
        for it in items:
            c = cell_of(it)
            if c is not None:
                weights[c.id] = weights.get(c.id, 0.0) + 1.0
    # A baseline cell goes with its patched twin, so each shard attributes its own cells.
    unit = {c.id: c.baseline_of or c.id for it in items if (c := cell_of(it)) is not None}
    unit_weights: dict[str, float] = {}
    for cid, u in unit.items():
        if cid in weights:
            unit_weights[u] = unit_weights.get(u, 0.0) + weights[cid]
    owner = shard.assign(list(dict.fromkeys(unit[c] for c in cells)), unit_weights, total)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for it in items:
        c = cell_of(it)
        (keep if c is None or owner[unit[c.id]] == index else drop).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if cells and not keep:
        config.stash[SHARD_EMPTY_KEY] = f"{index}/{total}"
