"""`kmatrix patches check`: the series x source-version table."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from kmatrix.build.patches import SeriesResult, check_series, load_series, table, to_json
from kmatrix.build.sources import resolve_source


def check_command(
    series_path: str, sources: Sequence[str], json_out: str | None, skip: Sequence[str] = ()
) -> int:
    """`kmatrix patches check`: prints the table; 0 when the series fits every source."""
    series = load_series(series_path)
    results = []
    for spec in sources:
        # A git checkout at a ref: /path/to/linux@v6.6
        path, _, ref = spec.rpartition("@")
        if path and Path(path).expanduser().is_dir():
            src = resolve_source(path, ref)
        else:
            src = resolve_source(spec)
        results.append(check_series(series, src.root, src.label, spec, skip))
    labels = [r.source for r in results]
    if len(set(labels)) != len(labels):  # two sources of one version: tell them apart
        results = [SeriesResult(f"{r.source} ({r.spec})", r.spec, r.results) for r in results]
    print(f"# {series.path} ({series.kind}, {len(series.patches)} patches)")
    print(table(series, results))
    if json_out:
        Path(json_out).write_text(json.dumps(to_json(series, results), indent=1) + "\n")
    return 0 if all(r.ok for r in results) else 1
