"""Run directories and the `latest` link (no QEMU; the plugin's side is in test_plugin.py)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from kmatrix.results import rundirs
from kmatrix.results.schema import RunDocument
from kmatrix.results.shard import durations_history


def run_doc(
    tests: list[str], interrupted: bool = False, planned: int | None = None, digest: str = "d1"
) -> dict[str, Any]:
    return {
        "schema": "kmatrix-results/1",
        "run": {
            "interrupted": interrupted,
            "matrix_digest": digest,
            "planned_cells": {"c": len(tests) if planned is None else planned},
        },
        "cells": [{"id": "c", "kernel": "k", "cpu": "x", "device": "d"}],
        "results": [{"cell": "c", "nodeid": f"t.py::{t}[c]", "outcome": "passed",
                     "duration": 1.0 + i} for i, t in enumerate(tests)],
    }  # fmt: skip


def typed(doc: dict[str, Any]) -> RunDocument:
    return RunDocument.from_json(doc, "results.json")


def make_run(root: Path, name: str, doc: dict[str, Any]) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(doc))
    return d


def test_run_names_follow_the_start_time_and_never_collide(tmp_path: Path) -> None:
    t = dt.datetime(2026, 11, 30, 3, 50, 41, tzinfo=dt.UTC)
    first = rundirs.choose_run_dir(tmp_path, t)
    assert first.name == "20261130-035041" and not first.exists()  # made by the run, lazily
    first.mkdir()
    assert rundirs.choose_run_dir(tmp_path, t).name == "20261130-035041-2"


def test_completeness() -> None:
    assert rundirs.completeness(typed(run_doc(["a", "b"]))).complete
    assert rundirs.completeness(typed(run_doc([]))).why == "no test ran"
    assert (
        rundirs.completeness(typed(run_doc(["a"], interrupted=True))).why
        == "the run was interrupted"
    )
    why = rundirs.completeness(typed(run_doc(["a"], planned=3))).why
    assert "c: 1 of 3" in why


def test_latest_follows_complete_runs_but_not_a_part_of_a_fuller_one(tmp_path: Path) -> None:
    full = run_doc(["a", "b", "c"])
    one = make_run(tmp_path, "20261130-010000", full)
    assert rundirs.update_latest(tmp_path, one, typed(full)) == (True, "")
    assert rundirs.latest(tmp_path) == one.resolve()
    assert (tmp_path / "latest").is_symlink() and not Path(
        (tmp_path / "latest").readlink()
    ).is_absolute()  # relative: the root can be moved or published as it is
    part = run_doc(["a"])
    two = make_run(tmp_path, "20261130-020000", part)
    moved, why = rundirs.update_latest(tmp_path, two, typed(part))
    assert not moved and why == "it ran 1 of the 3 tests of 20261130-010000, a fuller run"
    broken = run_doc(["a", "b", "c"], interrupted=True)
    three = make_run(tmp_path, "20261130-030000", broken)
    assert rundirs.update_latest(tmp_path, three, typed(broken)) == (
        False,
        "the run was interrupted",
    )
    assert rundirs.latest(tmp_path) == one.resolve()
    # Another matrix, or other tests than latest ran: a run of its own, so it moves latest.
    other = run_doc(["a"], digest="d2")
    four = make_run(tmp_path, "20261130-040000", other)
    assert rundirs.update_latest(tmp_path, four, typed(other))[0]
    assert rundirs.latest(tmp_path) == four.resolve()


def test_readers_take_run_dirs_files_and_roots(tmp_path: Path) -> None:
    a = make_run(tmp_path, "20261130-010000", run_doc(["a"]))
    b = make_run(tmp_path, "20261130-020000", run_doc(["a"]))
    rundirs.point(tmp_path / "latest", b)
    assert rundirs.resolve_run(a) == a / "results.json"
    assert rundirs.resolve_run(a / "results.json") == a / "results.json"
    assert rundirs.resolve_run(tmp_path) == b.resolve() / "results.json"
    # Several runs welcome (compare): each run once, `latest` being only a second name.
    assert rundirs.expand_runs(tmp_path) == [a / "results.json", b / "results.json"]
    assert rundirs.run_dirs(tmp_path) == [a, b]


def test_durations_history_keeps_each_tests_newest_measurement(tmp_path: Path) -> None:
    make_run(tmp_path, "20261130-010000", run_doc(["a", "b"]))  # a: 1 s, b: 2 s
    newer = run_doc(["b"])  # a -k re-run of b alone
    newer["results"][0]["duration"] = 7.0
    make_run(tmp_path, "20261130-020000", newer)
    (tmp_path / "20261130-030000").mkdir()  # a run that is still starting: no results yet
    assert durations_history(tmp_path) == {"t.py::a[c]": 1.0, "t.py::b[c]": 7.0}
