"""`kmatrix merge OUT_DIR SHARD_DIR...`: the shards' results merged, then every report."""

from __future__ import annotations

import argparse
from pathlib import Path

from kmatrix.cli.values import directory
from kmatrix.reports.options import ReportOptions, add_report_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sp = sub.add_parser(
        "merge",
        help="join the reports of --kmatrix-shard runs into one run",
        description="Checks the shards are of one matrix, that no cell ran twice and none is "
        "missing, writes OUT_DIR/results.json (with the cells' logs) and every report "
        "(junit-cells.xml, index.html, summary.md, kcidb.json). Exit status: 0 complete and "
        "all passed, 1 a test failed or cells or shards are missing, 2 refused.",
    )
    sp.add_argument("out", type=directory, metavar="OUT_DIR", help="where the merged run goes")
    sp.add_argument(
        "shards",
        type=Path,
        nargs="+",
        metavar="SHARD_DIR",
        help="a shard's reports directory or results.json (a directory of them counts as all)",
    )
    add_report_arguments(sp, "merged directory")


def command(args: argparse.Namespace) -> int:
    from kmatrix.reports.writer import write_reports
    from kmatrix.results.merge import merge_runs, summary

    res = merge_runs(Path(args.out), args.shards)
    written = write_reports(args.out, ReportOptions.from_args(args))
    res.report_errors = dict(written.errors)
    print(summary(res))
    for path in written.written.values():
        print(path)
    return 0 if res.complete and not res.failing else 1
