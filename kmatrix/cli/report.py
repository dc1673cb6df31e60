"""The `kmatrix report` and `kmatrix compare` subcommands. Their parsers import no writer
and no statistics: every `kmatrix` command (`list`, `run`) builds them."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kmatrix.cli.values import non_negative, output_file, probability
from kmatrix.errors import InputError
from kmatrix.reports.options import ReportOptions, add_report_arguments

if TYPE_CHECKING:
    from kmatrix.results.compare import Comparison

COMMANDS = ("report", "compare")


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser(
        "report",
        help="(re)generate the reports of a run from its results.json",
        description="Writes junit-cells.xml, index.html, summary.md, kcidb.json (and "
        "compare.json with --baseline) beside the run's results.json.",
    )
    sp.add_argument(
        "results", type=Path, help="run directory, results.json, or reports root (its latest)"
    )
    add_report_arguments(sp, "reports directory")

    sp = sub.add_parser(
        "compare",
        help="regression verdicts of NEW runs against BASE runs (exit 1 on regression)",
        description="Each (cell, test): new failure, fixed, still failing, new, gone; each "
        "metric: regressed, improved, unchanged by an exact Mann-Whitney U test over "
        "repeated runs. A run is a run directory, a results.json, or a reports root's "
        "latest run; a directory whose subdirectories are runs (a reports root, repeated "
        "runs) counts as each of them once. Exit status: 0 no regression, 1 regression, "
        "2 bad input.",
    )
    sp.add_argument("runs", nargs="*", type=Path, metavar="BASE NEW", help="two runs")
    sp.add_argument("--base", action="append", type=Path, default=[], help="a BASE run")
    sp.add_argument("--new", action="append", type=Path, default=[], help="a NEW run")
    sp.add_argument("--known-issues", type=Path, help="known-issues YAML")
    # Defaults are kmatrix.results.compare's ALPHA and MIN_CHANGE (tests/test_cli.py).
    sp.add_argument("--alpha", type=probability, help="significance (default 0.05)")
    sp.add_argument(
        "--min-change",
        type=non_negative,
        help="smallest relative change of the median that counts (default 0.05)",
    )
    sp.add_argument("--json", type=output_file, help="also write the verdicts as JSON")
    sp.add_argument(
        "--series",
        action="store_true",
        help="compare within the given runs: each patched cell (BASE and NEW both count as "
        "runs) against its baseline twin, tests and metrics, by the same rules",
    )


def cmd_report(args: argparse.Namespace) -> int:
    from kmatrix.reports.writer import write_reports

    result = write_reports(args.results, ReportOptions.from_args(args))
    for path in result.written.values():
        print(path)
    if result.comparison is not None:
        n = len(result.comparison.regressions)
        print(f"against the baseline: {n} regression(s)")
    return 1 if result.errors else 0


def cmd_compare(args: argparse.Namespace) -> int:
    if args.series:
        return _compare_series([*args.runs, *args.base, *args.new], args)
    from kmatrix.results.compare import ALPHA, MIN_CHANGE, compare_runs, render_text
    from kmatrix.results.known_issues import load_known_issues
    from kmatrix.results.runs import load_runs

    alpha = ALPHA if args.alpha is None else args.alpha
    min_change = MIN_CHANGE if args.min_change is None else args.min_change
    base, new = list(args.base), list(args.new)
    if args.runs:
        if len(args.runs) != 2:
            raise InputError("compare: give BASE and NEW (or --base/--new, repeatable)")
        base.append(args.runs[0])
        new.append(args.runs[1])
    if not base or not new:
        raise InputError("compare: need at least one BASE and one NEW run")
    base_runs, new_runs = load_runs(base), load_runs(new)
    known_path = args.known_issues
    known = load_known_issues(known_path) if known_path else None
    c = compare_runs(base_runs, new_runs, known, alpha, min_change)
    sys.stdout.write(render_text(c))
    if args.json:
        args.json.write_text(json.dumps(c.to_dict(), indent=1) + "\n")
    return 1 if c.regressions else 0


def series_comparison(
    paths: list[Path], alpha: float | None = None, min_change: float | None = None
) -> Comparison:
    """Each patched cell of the runs against its baseline twin (tests and metrics); alpha and
    min_change default to kmatrix.results.compare's ALPHA and MIN_CHANGE."""
    from kmatrix.results.compare import ALPHA, MIN_CHANGE, compare_runs, series_view
    from kmatrix.results.runs import load_runs

    if not paths:
        raise InputError("compare --series: give one or more runs")
    runs = load_runs(paths)
    if not any(c.baseline_cell for r in runs for c in r.cells):
        raise InputError("compare --series: no cell of these runs has a baseline")
    base = [series_view(r, "baseline") for r in runs]
    new = [series_view(r, "patched") for r in runs]
    return compare_runs(
        base,
        new,
        None,
        ALPHA if alpha is None else alpha,
        MIN_CHANGE if min_change is None else min_change,
    )


def _compare_series(paths: list[Path], args: argparse.Namespace) -> int:
    from kmatrix.results.compare import render_text

    c = series_comparison(paths, args.alpha, args.min_change)
    sys.stdout.write("patched cells against their baselines\n" + render_text(c))
    if args.json:
        args.json.write_text(json.dumps(c.to_dict(), indent=1) + "\n")
    return 1 if c.regressions else 0


def dispatch(args: argparse.Namespace) -> int:
    if args.command == "report":
        return cmd_report(args)
    return cmd_compare(args)
