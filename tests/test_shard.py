"""Sharding: every cell on exactly one shard, deterministic, balanced by durations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kmatrix.errors import InputError
from kmatrix.shard import assign, durations_from, parse_spec

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
    p = tmp_path / "results.json"
    rows = [{"cell": "a", "duration": 1.5}, {"cell": "a", "duration": 2.0}]
    rows.append({"cell": "b", "duration": 3})
    p.write_text(json.dumps({"results": rows}))
    assert durations_from(p) == {"a": 3.5, "b": 3.0}
    with pytest.raises(InputError, match="cannot read durations"):
        durations_from(tmp_path / "missing.json")
