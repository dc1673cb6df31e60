"""matrix/bisect.yaml for real: a run attributes the red cells of the kmx-bisect series against
their vanilla baseline, and `kmatrix bisect` names the bad patches.

Kernel builds take minutes on 2 cores, too long for the project's test run, so these tests
use what the build cache already has and skip, saying what to run, unless the builds are
cached (`kmatrix build -m matrix/bisect.yaml`, or one `kmatrix bisect` of each kernel) or
KMATRIX_TEST_BUILDS=1 asks for them. The bisection of kmx-bisect-build also needs the
failures of its failing prefixes on record (builds/failed/), which a first bisection leaves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import ROOT, child_env, run_kmatrix_pytest
from kmatrix.build.builder import cached_build, recorded_failure
from kmatrix.build.patches import load_series
from kmatrix.build.prefixes import applicable, prefix_spec
from kmatrix.errors import KmatrixError
from kmatrix.kernels import load_matrix
from kmatrix.results import bisect as search

pytestmark = pytest.mark.boot

MATRIX = ROOT / "matrix" / "bisect.yaml"
BUILD_ON_DEMAND = os.environ.get("KMATRIX_TEST_BUILDS") == "1"
TEST_CELL = "kmx-bisect-test/Haswell/virtio"
BUILD_CELL = "kmx-bisect-build/Haswell/virtio"


def prefixes_needed(kernel: str, first_bad: int) -> list[int]:
    """The prefixes a bisection of kernel visits when the first bad patch is first_bad."""
    k = load_matrix(MATRIX).cell(f"{kernel}/Haswell/virtio").kernel
    assert k.build is not None and k.build.patches is not None
    n = len(applicable(k.build, load_series(k.build.patches)))
    asked: list[int] = []

    def probe(i: int, sought: str) -> search.Outcome:
        asked.append(i)
        return search.Outcome(
            built=True, booted=True, runs=("fail",) if i >= first_bad else ("pass",)
        )

    search.bisect(n, probe)
    return asked


def require_builds(kernel: str, prefixes: list[int]) -> None:
    k = load_matrix(MATRIX).cell(f"{kernel}/Haswell/virtio").kernel
    assert k.build is not None and k.build.patches is not None
    series = load_series(k.build.patches)
    try:
        missing = [i for i in prefixes if cached_build(prefix_spec(k.build, series, i)) is None]
    except KmatrixError as e:
        pytest.skip(f"cannot look the builds up: {e}")
    if missing and not BUILD_ON_DEMAND:
        pytest.skip(
            f"{kernel}: no cached build of series prefixes {missing} (minutes each on 2 "
            f"cores): run `kmatrix bisect -m matrix/bisect.yaml {kernel}/Haswell/virtio -k "
            "test_thp_modes` once, or set KMATRIX_TEST_BUILDS=1"
        )


def test_run_attributes_the_series(tmp_path: Path, private_tmp: Path) -> None:
    require_builds("kmx-bisect-test", [0, 5])
    reports = tmp_path / "r"
    run = run_kmatrix_pytest(
        [ROOT / "testcases" / "test_memory.py", ROOT / "testcases" / "test_boot.py"],
        reports, "-k", f"{TEST_CELL} and (test_thp_modes or test_userspace_reached)",
        "--kmatrix-gate=series", matrix=MATRIX, tmpdir=private_tmp, timeout=3600,
    )  # fmt: skip
    res = run.results()
    got = {
        (r["cell"], r["nodeid"].split("::")[1].split("[")[0]): (
            r["outcome"], (r.get("attribution") or {}).get("verdict"))
        for r in res["results"]
    }  # fmt: skip
    base = "kmx-bisect-test+baseline/Haswell/virtio"
    assert got == {
        (TEST_CELL, "test_thp_modes"): ("failed", "series"),
        (TEST_CELL, "test_userspace_reached"): ("passed", "pass"),
        (base, "test_thp_modes"): ("passed", None),
        (base, "test_userspace_reached"): ("passed", None),
    }, run.log
    assert run.proc.returncode == 1, "the series caused a failure: the series gate is red"
    cell = next(c for c in res["cells"] if c["id"] == TEST_CELL)
    assert cell["attribution"]["verdict"] == "series" and cell["baseline_cell"] == base
    assert (reports / "cells" / "kmx-bisect-test__Haswell__virtio" / "reproduce.sh").is_file()
    assert "caused by the series" in (reports / "summary.md").read_text()


def bisect(tmp_path: Path, cell: str, *args: str) -> tuple[subprocess.CompletedProcess[str], Any]:
    out = tmp_path / "bisect.json"
    p = subprocess.run(
        [sys.executable, "-m", "kmatrix.cli", "bisect", "-m", str(MATRIX), cell,
         "--reports", str(tmp_path / "r"), "--json", str(out), *args],
        capture_output=True, text=True, timeout=7200, cwd=ROOT, env=child_env(tmp_path),
    )  # fmt: skip
    doc = json.loads(out.read_text()) if out.is_file() else {}
    return p, doc


def test_bisect_names_the_patch_that_breaks_a_test(tmp_path: Path) -> None:
    require_builds("kmx-bisect-test", prefixes_needed("kmx-bisect-test", 3))
    p, doc = bisect(tmp_path, TEST_CELL, "-k", "test_thp_modes", "--runs", "2")
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    first = doc["first_bad_patch"]
    assert (
        first["name"]
        == "0003-mm-huge-memory-share-the-kswapd-wake-up-between-the-defer-modes.patch"
    )
    assert "defrag=defer" in " ".join(first["evidence"])
    assert doc["status"] == "found" and doc["bisection_steps"] <= doc["expected_steps"]
    assert "first bad patch: 0003-" in p.stdout and "subject: mm/huge_memory" in p.stdout


def test_bisect_names_the_patch_that_breaks_the_build(tmp_path: Path) -> None:
    # Prefixes 0, 3 and 4 build; the whole series (6) and prefix 5 do not, and their
    # failures must be on record (builds/failed/) for this to compile nothing.
    k = load_matrix(MATRIX).cell(BUILD_CELL).kernel
    assert k.build is not None and k.build.patches is not None
    series = load_series(k.build.patches)
    unrecorded = [i for i in (5, 6) if recorded_failure(prefix_spec(k.build, series, i)) is None]
    if unrecorded and not BUILD_ON_DEMAND:
        pytest.skip(
            f"the failures of prefixes {unrecorded} are not on record: run `kmatrix bisect -m "
            f"matrix/bisect.yaml {BUILD_CELL}` once, or set KMATRIX_TEST_BUILDS=1"
        )
    require_builds("kmx-bisect-build", [0, 3, 4])
    p, doc = bisect(tmp_path, BUILD_CELL)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    first = doc["first_bad_patch"]
    assert first["name"].startswith("0005-")
    assert doc["sought"] == "build"
    assert all(s["outcome"]["booted"] is None for s in doc["steps"]), "builds only, no boot"


@pytest.mark.parametrize(("gate", "status"), [("series", 0), ("all", 1)])
def test_series_gate_passes_pre_existing_failures(
    tmp_path: Path, private_tmp: Path, gate: str, status: int
) -> None:
    # test_ostype_is_plan9 fails on every Linux: pre-existing, so the series gate stays green.
    require_builds("kmx-bisect-test", [0, 5])
    run = run_kmatrix_pytest(
        [ROOT / "tests" / "data" / "reprocases" / "test_repro_guest.py"], tmp_path / "r",
        "-k", f"{TEST_CELL} and plan9", f"--kmatrix-gate={gate}", matrix=MATRIX,
        tmpdir=private_tmp, timeout=1800,
    )  # fmt: skip
    verdicts = {
        r["cell"]: (r["outcome"], (r.get("attribution") or {}).get("verdict"))
        for r in run.results()["results"]
    }
    assert verdicts == {
        TEST_CELL: ("failed", "pre-existing"),
        "kmx-bisect-test+baseline/Haswell/virtio": ("failed", None),
    }, run.log
    assert run.proc.returncode == status, run.log
