"""Deterministic sharding of whole cells across CI jobs, balanced by recorded durations.

Every shard computes the same assignment from the same inputs (cell ids, weights), so N jobs
running `--kmatrix-shard I/N` cover each cell exactly once with no coordination.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from kmatrix.errors import InputError
from kmatrix.results import rundirs
from kmatrix.results.runs import load_run
from kmatrix.results.schema import SHARD_SPEC, TestResult


def parse_spec(spec: str) -> tuple[int, int]:
    """'2/3' -> (2, 3); shards are numbered from 1."""
    m = SHARD_SPEC.match(spec.strip())
    if not m:
        raise InputError(f"--kmatrix-shard {spec!r}: expected I/N, e.g. 1/3")
    index, total = int(m.group(1)), int(m.group(2))
    if total < 1 or not 1 <= index <= total:
        raise InputError(f"--kmatrix-shard {spec!r}: I must be between 1 and N (N >= 1)")
    return index, total


def assign(cells: Sequence[str], weights: Mapping[str, float], total: int) -> dict[str, int]:
    """cell id -> shard (1-based). Longest-processing-time-first greedy; ties by id and index."""
    default = sum(weights.values()) / len(weights) if weights else 1.0
    order = sorted(cells, key=lambda c: (-weights.get(c, default), c))
    load = [0.0] * total
    out: dict[str, int] = {}
    for c in order:
        i = min(range(total), key=lambda k: (load[k], k))
        load[i] += weights.get(c, default)
        out[c] = i + 1
    return out


def _results(path: Path) -> list[TestResult]:
    """The results of an earlier run (results.json, run directory, or a reports root's
    latest)."""
    try:
        return load_run(path).results
    except InputError as e:
        raise InputError(f"cannot read durations: {e}") from None


def durations_from(path: Path) -> dict[str, float]:
    """Per-cell durations from an earlier results.json (sum of its tests' durations)."""
    out: dict[str, float] = {}
    for r in _results(path):
        out[r.cell] = out.get(r.cell, 0.0) + r.duration
    return out


def durations_by_test(path: Path) -> dict[str, float]:
    """Per-test durations (node id -> seconds, set-up to teardown, so a cell's boot counts in
    its first test and its poweroff in its last) from an earlier results.json."""
    return {r.nodeid: r.duration for r in _results(path) if r.nodeid}


def durations_history(root: Path, runs: int = 5) -> dict[str, float]:
    """Per-test durations from the newest `runs` run directories under a reports root: each
    test's newest measurement, so a partial (-k) run updates only the tests it ran and
    never erases the others' history. Damaged runs are passed over."""
    out: dict[str, float] = {}
    for d in reversed(rundirs.run_dirs(root)[-runs:]):
        try:
            got = durations_by_test(d)
        except InputError:
            continue
        for nodeid, seconds in got.items():
            out.setdefault(nodeid, seconds)
    return out


def longest_first(units: Mapping[str, Sequence[str]], durations: Mapping[str, float]) -> list[str]:
    """Unit names (cells, each with its selected node ids), longest expected run first.

    Handed out in this order to whichever worker is free, the longest cells start first and
    the shortest fill the end (LPT), so the workers finish close together instead of one
    running a long cell alone. A test without a record weighs the mean of those with one;
    ties keep the given order.
    """
    known = [d for d in durations.values() if d > 0]
    default = sum(known) / len(known) if known else 1.0
    weight = {u: sum(durations.get(n, default) for n in ids) for u, ids in units.items()}
    return sorted(units, key=lambda u: -weight[u])
