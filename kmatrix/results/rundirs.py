"""Run directories: every run keeps its own record, and `latest` names the one to read.

A reports root (``reports/`` by default) holds one directory per run, named for when it
started (``20261130-035041``), each with its results.json, cell logs and reports, and a
``latest`` symbolic link to the newest *complete* run. A run directory is made only when a
test runs (``pytest --collect-only`` writes nothing); a run that executed no test leaves
nothing behind. ``latest`` moves to a run when it finished uninterrupted with a result for
every test it planned, unless it selected only part of what the current ``latest`` ran (a
``-k`` re-run of some tests never replaces the record of a fuller run; its own directory
keeps it). Readers (`kmatrix report`, `compare`, `merge`, the durations history) take a run
directory, a results.json, or a root (meaning its ``latest``, or for compare all its runs).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kmatrix.results.schema import RunDocument

LATEST = "latest"
RESULTS = "results.json"
RUN_NAME = re.compile(r"^\d{8}-\d{6}(?:-\d+)?$")


def run_name(started: dt.datetime) -> str:
    return started.astimezone(dt.UTC).strftime("%Y%m%d-%H%M%S")


def choose_run_dir(root: Path, started: dt.datetime) -> Path:
    """A run directory under root that no other run has taken (not created here: it
    appears with the run's first file)."""
    base = run_name(started)
    candidate, n = root / base, 1
    while candidate.exists():
        n += 1
        candidate = root / f"{base}-{n}"
    return candidate


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and not path.is_symlink() and (path / RESULTS).is_file()


def run_dirs(root: Path) -> list[Path]:
    """The run directories under a reports root, oldest first (by name: the start time)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return []
    return sorted((p for p in entries if RUN_NAME.match(p.name) and is_run_dir(p)),
                  key=lambda p: p.name)  # fmt: skip


def latest(root: Path) -> Path | None:
    """The run `latest` points at, if it is a run directory."""
    link = root / LATEST
    return link.resolve() if link.is_symlink() and is_run_dir(link.resolve()) else None


def resolve_run(path: Path) -> Path:
    """The results.json a path means: the file itself, a run directory's, or a reports
    root's latest run's (unchanged when none of these exists, for the reader's error)."""
    path = Path(path)
    if path.is_dir():
        if (path / RESULTS).is_file():
            return path / RESULTS
        last = latest(path)
        if last is not None:
            return last / RESULTS
        return path / RESULTS
    return path


def expand_runs(path: Path) -> list[Path]:
    """The results.json files a path stands for, when several runs are welcome (compare):
    a file or run directory is one run; a directory of run directories is all of them
    (each once: `latest` is only a second name for one)."""
    path = Path(path)
    if path.is_dir() and not (path / RESULTS).is_file():
        found = sorted({p.parent.resolve() for p in path.glob(f"*/{RESULTS}")})
        if found:
            return [p / RESULTS for p in found]
    return [resolve_run(path)]


@dataclass(frozen=True)
class Completeness:
    complete: bool
    why: str  # when not complete


def completeness(doc: RunDocument) -> Completeness:
    """A run is complete when it was not interrupted and every test it planned has a result."""
    if doc.run.interrupted:
        return Completeness(False, "the run was interrupted")
    if not doc.results:
        return Completeness(False, "no test ran")
    planned = doc.run.planned_cells
    if planned:
        got: dict[str, int] = {}
        for r in doc.results:
            got[r.cell] = got.get(r.cell, 0) + 1
        short = {c: n for c, n in planned.items() if got.get(c, 0) < n}
        if short:
            c, n = next(iter(short.items()))
            return Completeness(
                False, f"{len(short)} cell(s) without all their results ({c}: "
                f"{got.get(c, 0)} of {n})"
            )  # fmt: skip
    return Completeness(True, "")


def _nodeids(results_json: Path) -> set[str] | None:
    try:
        doc = json.loads(results_json.read_text())
        return {str(r.get("nodeid")) for r in doc.get("results") or []}
    except (OSError, ValueError, AttributeError):
        return None


def update_latest(root: Path, run_dir: Path, doc: RunDocument) -> tuple[bool, str]:
    """Points root/latest at run_dir if the run is complete and not a part of what the
    current latest ran; returns (moved, why not)."""
    c = completeness(doc)
    if not c.complete:
        return False, c.why
    current = latest(root)
    if current is not None and current != run_dir.resolve():
        mine = {r.nodeid for r in doc.results}
        theirs = _nodeids(current / RESULTS)
        same_matrix = _matrix_digest(current / RESULTS) == doc.run.matrix_digest
        if theirs is not None and same_matrix and mine < theirs:
            return False, (
                f"it ran {len(mine)} of the {len(theirs)} tests of {current.name}, a fuller run"
            )
    point(root / LATEST, run_dir)
    return True, ""


def _matrix_digest(results_json: Path) -> object:
    try:
        return (json.loads(results_json.read_text()).get("run") or {}).get("matrix_digest")
    except (OSError, ValueError, AttributeError):
        return None


def point(link: Path, target: Path) -> None:
    """Makes link a relative symbolic link to target, atomically (a reader sees the old
    or the new target, never none)."""
    tmp = link.with_name(f".{link.name}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(os.path.relpath(target, link.parent), tmp)
    os.replace(tmp, link)
