"""Deterministic sharding of whole cells across CI jobs, balanced by recorded durations.

Every shard computes the same assignment from the same inputs (cell ids, weights), so N jobs
running `--kmatrix-shard I/N` cover each cell exactly once with no coordination.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from kmatrix.errors import InputError

_SPEC = re.compile(r"^(\d+)/(\d+)$")


def parse_spec(spec: str) -> tuple[int, int]:
    """'2/3' -> (2, 3); shards are numbered from 1."""
    m = _SPEC.match(spec.strip())
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


def durations_from(path: Path) -> dict[str, float]:
    """Per-cell durations from an earlier results.json (sum of its tests' durations)."""
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read durations: {e}") from None
    out: dict[str, float] = {}
    for r in doc.get("results", []):
        out[r["cell"]] = out.get(r["cell"], 0.0) + float(r.get("duration", 0.0))
    return out
