"""`kmatrix merge`: shards of one matrix join into one run; different matrices, cells run
twice and missing shards or cells are refused or named. The real case: three shards run as
separate pytest processes give the same results as the unsharded run."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from synthetic import CELLS, TESTS, cell_id, make_run
from vt import render

from conftest import DATA, ROOT, kmatrix_pytest_argv
from kmatrix.cli.main import main
from kmatrix.errors import InputError
from kmatrix.results.merge import _exitstatus, merge_runs

ALL = [cell_id(*c) for c in CELLS]
Capture = pytest.CaptureFixture[str]


Cells = tuple[tuple[str, str, str], ...]


def shard(
    root: Path, index: int, total: int, cells: Cells, digest: str = "d1",
    planned: dict[str, int] | None = None, **kw: Any,
) -> Path:  # fmt: skip
    """A synthetic shard: make_run's results plus the facts the plugin records for merging."""
    return make_run(
        root,
        cells=cells,
        shard=f"{index}/{total}",
        matrix_digest=digest,
        matrix_cells=ALL,
        planned_cells=planned if planned is not None else {cell_id(*c): 3 for c in cells},
        **kw,
    )


def three_shards(tmp: Path) -> list[Path]:
    return [shard(tmp / f"s{i + 1}", i + 1, 3, (CELLS[i],)) for i in range(3)]


def test_three_synthetic_shards_merge_into_one_complete_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shards = three_shards(tmp_path)
    out = tmp_path / "merged"
    # Given in reverse: the merged run still follows the matrix's cell order.
    assert main(["merge", str(out), *map(str, reversed(shards))]) == 0
    text = capsys.readouterr().out
    assert "complete: every planned cell has all its results" in text, text
    doc = json.loads((out / "results.json").read_text())
    assert [c["id"] for c in doc["cells"]] == ALL
    assert [(r["cell"], r["nodeid"].split("::")[1].split("[")[0]) for r in doc["results"]] == [
        (c, t) for c in ALL for t in TESTS
    ]
    assert doc["run"]["merge"] == {
        "missing_cells": [], "incomplete_cells": {}, "missing_shards": [], "unassigned_cells": [],
    }  # fmt: skip
    assert sorted(s["shard"] for s in doc["run"]["shards"]) == ["1/3", "2/3", "3/3"]
    # Logs come along, so the merged reports link to files that exist.
    for c in doc["cells"]:
        assert (out / c["artifacts"]["console"]).read_text() == f"console of {c['id']}\n"
    for name in ("junit-cells.xml", "index.html", "summary.md", "kcidb.json"):
        assert (out / name).is_file(), name
    suites = ET.parse(out / "junit-cells.xml").getroot().findall("testsuite")
    assert [s.get("name") for s in suites] == ALL


def test_refuses_runs_of_different_matrices(tmp_path: Path, capsys: Capture) -> None:
    a = shard(tmp_path / "a", 1, 2, CELLS[:1], digest="aaaa")
    b = shard(tmp_path / "b", 2, 2, CELLS[1:2], digest="bbbb")
    out = tmp_path / "merged"
    assert main(["merge", str(out), str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert "refusing to merge runs of different matrices" in err
    assert "digest aaaa" in err and "digest bbbb" in err
    assert not out.exists()


@pytest.mark.parametrize("case", ["same shard twice", "cell in two shards", "same dir twice"])
def test_refuses_a_cell_run_twice(tmp_path: Path, case: str) -> None:
    s1 = shard(tmp_path / "s1", 1, 3, CELLS[:1])
    if case == "same shard twice":
        other = shard(tmp_path / "copy", 1, 3, CELLS[:1])
        match = r"shard 1/3 given twice"
    elif case == "cell in two shards":
        other = shard(tmp_path / "s2", 2, 3, CELLS[:2])
        match = rf"1 cell\(s\) ran in more than one input.*\n  {re.escape(ALL[0])}: in .*s1.*s2"
    else:
        other, match = s1, "is given twice"
    with pytest.raises(InputError, match=re.compile(match, re.S)):
        merge_runs(tmp_path / "merged", [s1, other])
    assert not (tmp_path / "merged").exists()


def test_names_missing_shard_and_its_cells(tmp_path: Path, capsys: Capture) -> None:
    s1, _, s3 = three_shards(tmp_path)
    out = tmp_path / "merged"
    assert main(["merge", str(out), str(s1), str(s3)]) == 1
    text = capsys.readouterr().out
    assert f"MISSING shards: 2/3; cells in no present shard: {ALL[1]}" in text, text
    doc = json.loads((out / "results.json").read_text())
    assert doc["run"]["merge"]["missing_shards"] == [2]
    assert [c["id"] for c in doc["cells"]] == [ALL[0], ALL[2]]


def test_names_planned_cells_without_results(tmp_path: Path, capsys: Capture) -> None:
    # Shard 2 was cancelled: it planned two cells, finished one test of the first.
    s1 = shard(tmp_path / "s1", 1, 2, CELLS[:1])
    s2 = shard(
        tmp_path / "s2", 2, 2, CELLS[1:2], interrupted=True,
        planned={ALL[1]: 3, ALL[2]: 3},
        outcomes={(ALL[1], TESTS[1]): "absent", (ALL[1], TESTS[2]): "absent"},
    )  # fmt: skip
    assert main(["merge", str(tmp_path / "m"), str(s1), str(s2)]) == 1
    text = capsys.readouterr().out
    assert f"MISSING cells (planned by a shard, no result): {ALL[2]}" in text, text
    assert f"INCOMPLETE cell {ALL[1]}: 1 of 3 tests have results" in text
    assert "INTERRUPTED:" in text and "complete:" not in text


def test_failed_tests_make_the_merge_exit_1(tmp_path: Path, capsys: Capture) -> None:
    s1, s2, s3 = three_shards(tmp_path)
    shard(s2, 2, 3, (CELLS[1],), outcomes={(ALL[1], TESTS[0]): "failed"})
    assert main(["merge", str(tmp_path / "m"), str(s1), str(s2), str(s3)]) == 1
    text = capsys.readouterr().out
    assert "1 failed, 8 passed" in text and "complete:" in text, text


@pytest.mark.parametrize("command", ["merge", "report"])
def test_report_options_reach_the_reports(tmp_path: Path, command: str) -> None:
    """merge and report share their report options; each must hand them to the writers."""
    shards = three_shards(tmp_path)
    out = tmp_path / "merged" if command == "merge" else shards[0]
    inputs = [str(out), *map(str, shards)] if command == "merge" else [str(out)]
    opts = ["--kcidb-origin", "ci_x", "--artifacts-url", "https://ci.example/run"]
    assert main([command, *inputs, *opts]) in (0, 1)  # a synthetic test fails on purpose
    doc = json.loads((out / "kcidb.json").read_text())
    origins = {x["origin"] for kind in ("checkouts", "builds", "tests") for x in doc[kind]}
    assert origins == {"ci_x"}
    urls = [t["log_url"] for t in doc["tests"] if "log_url" in t]  # the boot tests
    assert urls and all(u.startswith("https://ci.example/run/cells/") for u in urls), urls


def test_merged_exit_status() -> None:
    assert _exitstatus([0, 0, 0]) == 0
    assert _exitstatus([0, 1, 5]) == 1
    assert _exitstatus([5, 5]) == 5
    assert _exitstatus([0, 5]) == 0
    assert _exitstatus([1, 2, 0]) == 2
    assert _exitstatus([None]) is None


# --- three real shards against the unsharded run ------------------------------------------------

THREE = DATA / "matrices" / "three.yaml"
SELECT = "userspace or release"


def suite(reports: Path, *args: str) -> list[str]:
    tests = [ROOT / "testcases" / "test_boot.py"]
    return kmatrix_pytest_argv(tests, reports, "-k", SELECT, *args, matrix=THREE)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Path], str]]:
    """The unsharded run (on a pseudo-terminal, with live progress) and three shard
    processes, all at once: three small cells, two tests each."""
    tmp = tmp_path_factory.mktemp("shards")
    env = {**os.environ, "COLUMNS": "150"}
    whole = tmp / "whole"
    # `script` gives the run a terminal, so the live status line is exercised for real.
    cmd = shlex.join(suite(whole, "-v", "--kmatrix-progress=tty"))
    typescript = tmp / "tty.log"
    term = ["script", "-qfec", f"stty cols 150; {cmd}", str(typescript)]
    quiet = {"stdout": subprocess.DEVNULL, "stdin": subprocess.DEVNULL}
    procs = [subprocess.Popen(term, cwd=ROOT, env=env, **quiet)]  # type: ignore[call-overload]
    dirs = [tmp / f"shard-{i}" for i in (1, 2, 3)]
    logs = []
    for i, d in enumerate(dirs, 1):
        log = (tmp / f"shard-{i}.log").open("w")
        logs.append(log)
        argv = suite(d, "-q", f"--kmatrix-shard={i}/3", "--kmatrix-progress=plain")
        if i == 1:
            argv += ["-n", "2"]  # progress and the plan on an xdist controller
        procs.append(subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=log))
    codes = [p.wait(timeout=600) for p in procs]
    for log in logs:
        log.close()
    outputs = [(tmp / f"shard-{i}.log").read_text() for i in (1, 2, 3)]
    screen = typescript.read_bytes().decode(errors="replace")
    assert codes == [0, 0, 0, 0], "\n\n".join(outputs) + screen
    yield whole, dirs, screen
    shutil.rmtree(tmp, ignore_errors=True)


def outcomes(results: Path) -> dict[tuple[str, str], str]:
    doc = json.loads((results / "results.json").read_text())
    return {(r["cell"], r["nodeid"]): r["outcome"] for r in doc["results"]}


@pytest.mark.boot
def test_three_shards_merge_to_the_unsharded_run(
    sharded: tuple[Path, list[Path], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    whole, dirs, _ = sharded
    expected = outcomes(whole)
    assert len(expected) == 6 and set(expected.values()) == {"passed"}, expected
    per_shard = [outcomes(d) for d in dirs]
    # Whole cells: each of the three shards ran exactly one cell, both of its tests.
    assert [len({c for c, _ in o}) for o in per_shard] == [1, 1, 1]
    out = tmp_path / "merged"
    assert main(["merge", str(out), *map(str, dirs)]) == 0
    assert "complete: every planned cell has all its results" in capsys.readouterr().out
    merged = outcomes(out)
    assert merged == expected  # the same tests, same outcomes: nothing missing
    doc = json.loads((out / "results.json").read_text())
    nodeids = [r["nodeid"] for r in doc["results"]]
    assert len(nodeids) == len(set(nodeids)) == 6  # nothing doubled
    assert [c["id"] for c in doc["cells"]] == json.loads((whole / "results.json").read_text())[
        "run"
    ]["matrix_cells"]
    for c in doc["cells"]:
        assert c["boot"]["boot_seconds"] > 0 and (out / c["artifacts"]["console"]).is_file()

    # The same JUnit test cases as the unsharded run's per-cell JUnit.
    def cases(p: Path) -> set[tuple[str | None, str | None, bool]]:
        root = ET.parse(p / "junit-cells.xml").getroot()
        return {(s.get("name"), t.get("name"), t.find("failure") is None)
                for s in root.iter("testsuite") for t in s.iter("testcase")}  # fmt: skip

    assert cases(out) == cases(whole)
    # Shards recorded their split, the matrix digest and their planned cells.
    metas = [json.loads((d / "results.json").read_text())["run"] for d in dirs]
    assert [m["shard"] for m in metas] == ["1/3", "2/3", "3/3"]
    assert len({m["matrix_digest"] for m in metas}) == 1
    assert sorted(c for m in metas for c in m["planned_cells"]) == sorted({c for c, _ in expected})


@pytest.mark.boot
def test_plain_progress_lines_in_a_shard_log_under_xdist(
    sharded: tuple[Path, list[Path], str],
) -> None:
    _, dirs, _ = sharded
    log = (dirs[0].parent / "shard-1.log").read_text()
    cell = next(iter({c for c, _ in outcomes(dirs[0])}))
    lines = [ln for ln in log.splitlines() if ln.startswith("kmatrix: ")]
    assert lines[0].startswith(f"kmatrix: {cell}: booting (cell 1/1, "), lines
    c = re.escape(cell)
    assert re.fullmatch(rf"kmatrix: {c}: booted in [0-9.]+s; running test_boot.py", lines[1])
    done = rf"kmatrix: {c}: done in [0-9.]+s, boot [0-9.]+s: 2 passed \(1/1 cells done, "
    assert re.match(done, lines[2]), lines


@pytest.mark.boot
def test_live_progress_on_a_terminal_leaves_pytest_output_intact(
    sharded: tuple[Path, list[Path], str],
) -> None:
    whole, _, typescript = sharded
    assert "kmatrix [0/3 cells done" in typescript  # the status line was drawn...
    screen = render(typescript)
    assert not [ln for ln in screen if ln.startswith("kmatrix [")], screen  # ...and erased
    for cell, nodeid in outcomes(whole):
        test = nodeid.split("::")[1].split("[")[0]
        line = re.compile(
            rf"testcases/test_boot.py::{test}\[{re.escape(cell)}\] PASSED +\[ *\d+%\]"
        )
        assert [ln for ln in screen if line.fullmatch(ln)], (nodeid, screen)
    done = [ln for ln in screen if re.match(r"kmatrix: \S+: done in .*: 2 passed", ln)]
    assert len(done) == 3, screen


def collect(reports: Path, *args: str) -> subprocess.CompletedProcess[str]:
    argv = suite(reports, "--co", "-q", *args)
    return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_shards_split_what_k_selected_and_an_empty_shard_passes(tmp_path: Path) -> None:
    # -k leaves the two Haswell cells; three shards get one, one and none.
    sel = ("-k", "Haswell and userspace")
    runs = [collect(tmp_path / f"s{i}", *sel, f"--kmatrix-shard={i}/3") for i in (1, 2, 3)]
    got = [sorted(ln for ln in p.stdout.splitlines() if "::" in ln) for p in runs]
    assert [len(g) for g in got] == [1, 1, 0], got
    assert all("Haswell" in g[0] for g in got[:2]) and got[0] != got[1]
    assert [p.returncode for p in runs] == [0, 0, 0], runs[2].stdout  # not "no tests" (5)
    # A selection that is empty everywhere still says so.
    assert collect(tmp_path / "x", "-k", "nothing", "--kmatrix-shard=1/3").returncode == 5
