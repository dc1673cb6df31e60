"""Parametrization over the matrix's cells, ordering cell by cell, declared expectations as
strict xfail markers, shard selection and the snapshot plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmatrix.errors import (
    InputError,
)
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
    metafunc.parametrize("cell", matrix.cells, ids=[c.id for c in matrix.cells])


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
    position = {id(it): i for i, it in enumerate(items)}

    def key(it: pytest.Item) -> tuple[int, int, int]:
        c = cell_of(it)
        final = 1 if it.get_closest_marker("kmatrix_final") else 0
        return (order[c.id] if c else -1, final, position[id(it)])

    items.sort(key=key)
    _mark_expected(items)
    spec = config.getoption("kmatrix_shard")
    if spec:
        _select_shard(config, items, spec)
    _plan_snapshots(config, items)


def _plan_snapshots(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cells whose first boot is saved for restores: those with a kmatrix_clean test that is
    not the cell's first (the first one gets the fresh boot anyway)."""
    pool = config.stash.get(POOL_KEY, None)
    if pool is None:
        return
    seen: set[str] = set()
    for it in items:
        c = cell_of(it)
        if c is None:
            continue
        if c.id in seen and it.get_closest_marker("kmatrix_clean"):
            pool.snapshot_cells.add(c.id)
        seen.add(c.id)


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
