"""Sharding: every cell on exactly one shard, deterministic, balanced by durations."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import write_results

from kmatrix.errors import InputError
from kmatrix.results.shard import (
    assign,
    durations_by_test,
    durations_from,
    longest_first,
    parse_spec,
)

CELLS = [f"k{k}/cpu{c}/dev" for k in range(3) for c in range(5)]


def test_parse_spec() -> None:
    assert parse_spec("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "x", "1/0", "1-3"):
        with pytest.raises(InputError, match="kmatrix-shard"):
            parse_spec(bad)


@pytest.mark.parametrize("total", [1, 2, 3, 7, 20])
def test_partition(total: int) -> None:
    owner = assign(CELLS, {}, total)
    assert set(owner) == set(CELLS)
    assert all(1 <= s <= total for s in owner.values())
    sizes = [list(owner.values()).count(s) for s in range(1, total + 1)]
    assert max(sizes) - min(sizes) <= 1, sizes


def test_deterministic_and_order_free() -> None:
    w = {c: float(i % 4 + 1) for i, c in enumerate(CELLS)}
    assert assign(CELLS, w, 3) == assign(list(reversed(CELLS)), w, 3)


def test_balanced_by_duration() -> None:
    w = {"a": 100.0, "b": 10.0, "c": 10.0, "d": 10.0, "e": 70.0}
    owner = assign(list(w), w, 2)
    loads = [sum(w[c] for c, s in owner.items() if s == k) for k in (1, 2)]
    assert sorted(loads) == [100.0, 100.0], loads


def test_durations_from_results(tmp_path: Path) -> None:
    p = write_results(
        tmp_path / "results.json", [("a", "t[a]", 1.5), ("a", "u[a]", 2.0), ("b", "t[b]", 3)]
    )
    assert durations_from(p) == {"a": 3.5, "b": 3.0}
    with pytest.raises(InputError, match="cannot read durations"):
        durations_from(tmp_path / "missing.json")


def test_longest_first_by_recorded_test_durations(tmp_path: Path) -> None:
    results = [
        ("a", "t.py::x[a]", 3.0),
        ("a", "t.py::y[a]", 1.0),
        ("b", "t.py::x[b]", 6.0),
        ("c", "t.py::x[c]", 2.0),
    ]
    durations = durations_by_test(write_results(tmp_path / "results.json", results))
    assert durations == {"t.py::x[a]": 3.0, "t.py::y[a]": 1.0, "t.py::x[b]": 6.0, "t.py::x[c]": 2.0}
    units = {"a": ["t.py::x[a]", "t.py::y[a]"], "b": ["t.py::x[b]"], "c": ["t.py::x[c]"]}
    assert longest_first(units, durations) == ["b", "a", "c"]
    # Only the selected tests count; an unrecorded test weighs the mean (3.0).
    units = {"a": ["t.py::y[a]"], "b": ["t.py::x[b]"], "c": ["t.py::x[c]", "t.py::new[c]"]}
    assert longest_first(units, durations) == ["b", "c", "a"]
    assert longest_first(units, {}) == ["c", "a", "b"]  # by test count, then given order
