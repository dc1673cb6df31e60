"""The options every report writer takes, and the command-line options that set them: apart
from the writers, so a command can declare them without importing the writers."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class ReportOptions:
    baseline: Sequence[Path] = ()  # BASE run directories or results.json files
    known_issues: Path | None = None  # None: known-issues.yaml beside the matrix, if any
    kcidb_origin: str = "kmatrix"
    artifacts_url: str | None = None  # where the reports directory will be published
    # Check kcidb.json against kcidb-io's schema when kcidb-io is installed. `kmatrix report`
    # does; a pytest run does not (importing the schema validator costs ~0.1 s at the end of
    # every run, and the exporter's output is checked by kmatrix's own tests).
    validate_kcidb: bool = True

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> ReportOptions:
        """From the options add_report_arguments gave a command."""
        return cls(
            baseline=args.baseline,
            known_issues=args.known_issues,
            kcidb_origin=args.kcidb_origin,
            artifacts_url=args.artifacts_url,
        )


def add_report_arguments(parser: argparse.ArgumentParser, published: str) -> None:
    """The report options of `kmatrix report` and `kmatrix merge`; published names what
    --artifacts-url points at."""
    parser.add_argument(
        "--baseline", action="append", type=Path, default=[], help="earlier run; repeatable"
    )
    parser.add_argument("--known-issues", type=Path, help="known-issues YAML")
    parser.add_argument("--kcidb-origin", default="kmatrix", help="KCIDB origin (kmatrix)")
    parser.add_argument("--artifacts-url", help=f"where the {published} is published")
