"""matrix/kselftest.yaml on real source-built kernels: kselftest targets and KUnit suites
run in the guests, each case its own test; the series of deliberate bugs
(patches/kmx-ksft-break) fails exactly the two cases it breaks; a kernel without the cgroup
options gets the cgroup target reported not applicable, naming them, and never boots.

Cold kernel builds take many minutes on 2 cores, so these tests use what the cache has:
they skip, saying what to run, unless `kmatrix build -m matrix/kselftest.yaml` has built
the kernels (or KMATRIX_TEST_BUILDS=1 asks for the builds)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, JunitCase, run_kmatrix_pytest
from kmatrix.build.builder import cached_build
from kmatrix.errors import KmatrixError
from kmatrix.kernels import load_matrix

pytestmark = pytest.mark.boot

MATRIX = ROOT / "matrix" / "kselftest.yaml"
TESTS = [ROOT / "testcases" / "test_kselftest.py"]
BROKEN = "kmx-ksft-6.12-broken/Haswell/virtio"
CLEAN = "kmx-ksft-6.12/Haswell/virtio"
TINY = "kmx-6.1-tiny/Haswell/virtio"
# What patches/kmx-ksft-break breaks, one case each.
BROKEN_CASES = {
    "kselftest/cgroup/test_core/test_cgcore_lesser_euid_open",
    "kunit/cmdline/cmdline_test_range",
}


@pytest.fixture(scope="module")
def built() -> None:
    m = load_matrix(MATRIX)
    try:
        missing = [k.name for k in m.kernels if k.build and cached_build(k.build) is None]
    except KmatrixError as e:
        pytest.skip(f"cannot look the builds up: {e}")
    if missing and os.environ.get("KMATRIX_TEST_BUILDS") != "1":
        pytest.skip(
            f"no cached build of {', '.join(missing)} (several minutes each cold on 2 "
            "cores): run `kmatrix build -m matrix/kselftest.yaml` once, or set "
            "KMATRIX_TEST_BUILDS=1"
        )
    if missing:
        r = subprocess.run(
            [sys.executable, "-m", "kmatrix.cli", "build", "-m", str(MATRIX)],
            capture_output=True, text=True, timeout=7200,
        )  # fmt: skip
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def by_cell(cases: dict[str, JunitCase]) -> dict[str, dict[str, JunitCase]]:
    out: dict[str, dict[str, JunitCase]] = {}
    for name, case in cases.items():
        test, _, cell = name.partition("[")
        out.setdefault(cell.rstrip("]"), {})[test] = case
    return out


def bad(tests: dict[str, JunitCase]) -> dict[str, str]:
    return {t: c.outcome for t, c in tests.items() if c.outcome in ("failure", "error")}


def test_example_matrix(built: None, tmp_path: Path) -> None:
    os.environ["KMATRIX_CASE_INDEX"] = str(tmp_path / "cases")  # a first run, then a second
    try:
        first = run_kmatrix_pytest(
            TESTS, tmp_path / "r1", matrix=MATRIX, junit=tmp_path / "1.xml", timeout=3600
        )
        cells = by_cell(first.cases())
        # Not applicable before boot, naming the options; the cell never booted.
        tiny = cells.pop(TINY)
        assert tiny and all(c.outcome == "not_applicable" for c in tiny.values()), first.log
        assert all(
            "kselftest target cgroup needs CONFIG_" in c.message and "CONFIG_MEMCG" in c.message
            for t, c in tiny.items()
            if t.startswith("kselftest/")
        ), tiny
        assert "kernel kmx-6.1-tiny has no CONFIG_KUNIT=y" in tiny["kunit"].message
        assert not (tmp_path / "r1" / "cells" / TINY.replace("/", "__") / "console.log").exists()
        # First run of each build: programs and the KUnit root carry their cases.
        broken = cells.pop(BROKEN)
        assert bad(broken) == {
            "kselftest/cgroup/test_core": "failure", "kunit": "failure",
        }, (broken, first.log)  # fmt: skip
        assert (
            "test_core/test_cgcore_lesser_euid_open: fail"
            in broken["kselftest/cgroup/test_core"].message
        )
        assert "cmdline/cmdline_test_range: fail" in broken["kunit"].message
        for cell, tests in cells.items():
            assert not bad(tests), (cell, bad(tests), first.log)
        # The second run knows the cases: each is a test, and exactly the two fail.
        second = run_kmatrix_pytest(
            TESTS, tmp_path / "r2", "-k", "kmx-ksft-6.12", matrix=MATRIX,
            junit=tmp_path / "2.xml", timeout=3600,
        )  # fmt: skip
    finally:
        del os.environ["KMATRIX_CASE_INDEX"]
    cells = by_cell(second.cases())
    assert set(bad(cells[BROKEN])) == BROKEN_CASES, (bad(cells[BROKEN]), second.log)
    assert not bad(cells[CLEAN]), second.log
    clean = {t: c.outcome for t, c in cells[CLEAN].items()}
    after = {t: c.outcome for t, c in cells[BROKEN].items()}
    assert len(clean) > 40 and set(clean) == set(after)
    assert {t for t in clean if clean[t] != after[t]} == BROKEN_CASES
    # A program whose case failed passes, saying where; nested KUnit parameters are tests.
    core = cells[BROKEN]["kselftest/cgroup/test_core"]
    assert core.outcome == "passed" and "lesser_euid_open" in core.properties["ktap.note"]
    assert any(t.startswith("kunit/example/example_params_test/") for t in clean)


def test_build_command_builds_the_targets_too(built: None) -> None:
    """`kmatrix build` also builds (or finds) the kselftest targets the cells run."""
    r = subprocess.run(
        [sys.executable, "-m", "kmatrix.cli", "build", "-m", str(MATRIX)],
        capture_output=True, text=True, timeout=3600,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    lines = [ln for ln in r.stdout.splitlines() if ": kselftest " in ln]
    # One build per source, series and target: 6.12, 6.12 + series (cgroup and timers);
    # the tiny 6.1 kernel's cgroup is not applicable: not built.
    assert len(lines) == 5, r.stdout
    assert sum("programs, cached, nothing compiled" in ln for ln in lines) == 4, r.stdout
    tiny = next(ln for ln in lines if ln.startswith("kmx-6.1-tiny"))
    assert "not applicable, needs CONFIG_" in tiny and "CONFIG_MEMCG" in tiny, tiny
