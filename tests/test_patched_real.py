"""The kmx-demo example on real kernel sources: the patch table against Debian's 6.1 and 6.12
sources, and matrix/patched.yaml booted and tested.

Cold kernel builds take ~5 minutes each on 2 cores, too long for the project's test run, so
these tests use what the cache already has: they skip, saying what to run, unless the
sources are unpacked / the kernels built (`kmatrix build -m matrix/patched.yaml`), or
KMATRIX_TEST_BUILDS=1 asks for the builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, junit_cases
from kmatrix.build.builder import cached_build
from kmatrix.build.sources import cached_source
from kmatrix.cli.patches import check_command
from kmatrix.errors import KmatrixError
from kmatrix.kernels import load_matrix

MATRIX = ROOT / "matrix" / "patched.yaml"
SERIES = ROOT / "patches" / "kmx-demo"
BUILD_ON_DEMAND = os.environ.get("KMATRIX_TEST_BUILDS") == "1"


def test_patch_table_on_debian_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    specs = ["linux-source-6.1", "linux-source-6.12"]
    if not BUILD_ON_DEMAND and any(cached_source(s) is None for s in specs):
        pytest.skip(
            "linux-source-6.1/6.12 are not unpacked in the cache (~300 MB download, ~1 min "
            "each to unpack): run `kmatrix patches check patches/kmx-demo --source "
            "linux-source-6.1 --source linux-source-6.12` once, or set KMATRIX_TEST_BUILDS=1"
        )
    out = tmp_path / "check.json"
    assert check_command(str(SERIES), specs, str(out)) == 1  # 0004 conflicts with 6.1
    printed = capsys.readouterr().out
    data = json.loads(out.read_text())
    v61, v612 = data["sources"]
    assert v61["source"].startswith("6.1.") and v612["source"].startswith("6.12.")
    s61 = {r["patch"][:4]: r for r in v61["results"]}
    s612 = {r["patch"][:4]: r for r in v612["results"]}
    assert [s61[n]["status"] for n in ("0001", "0002", "0003")] == ["clean"] * 3
    assert s61["0004"]["status"] == "conflict" and v61["stopped_at"].startswith("0004-")
    assert s61["0004"]["problems"][0].startswith("kernel/sched/fair.c: hunk #1 FAILED at 71: @@")
    assert s612["0001"]["status"] == "offset" and s612["0001"]["hunks"][0]["offset"] < 0
    assert s612["0003"]["status"] == "already-applied"
    assert s612["0004"]["status"] == "clean"
    assert "kernel/sched/fair.c: hunk #1 FAILED" in printed


@pytest.fixture(scope="module")
def built() -> None:
    m = load_matrix(MATRIX)
    try:
        missing = [k.name for k in m.kernels if k.build and cached_build(k.build) is None]
    except KmatrixError as e:
        pytest.skip(f"cannot look the builds up: {e}")
    if missing and not BUILD_ON_DEMAND:
        pytest.skip(
            f"no cached build of {', '.join(missing)} (~5 min each cold on 2 cores): run "
            "`kmatrix build -m matrix/patched.yaml` once, or set KMATRIX_TEST_BUILDS=1"
        )
    if missing:
        r = subprocess.run(
            [sys.executable, "-m", "kmatrix.cli", "build", "-m", str(MATRIX)],
            capture_output=True,
            text=True,
            timeout=7200,
        )
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]


def test_second_build_compiles_nothing(built: None) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "kmatrix.cli", "build", "-m", str(MATRIX)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith("kmx-")]
    assert len(lines) == 3 and all("cached, nothing compiled" in ln for ln in lines), r.stdout
    assert "building" not in r.stderr


@pytest.mark.boot
def test_patched_matrix_boots_and_passes(built: None, tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    argv = [
        sys.executable, "-m", "pytest", str(ROOT / "testcases/test_boot.py"),
        str(ROOT / "testcases/test_patched.py"), "-p", "kmatrix",
        f"--kmatrix-matrix={MATRIX}", f"--kmatrix-run-dir={tmp_path / 'reports'}",
        "--kmatrix-accel=tcg", f"--junitxml={junit}", "-p", "no:cacheprovider", "-rA",
    ]  # fmt: skip
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=1200)
    cells: dict[str, dict[str, str]] = {}
    for name, case in junit_cases(junit).items():
        cells.setdefault(name.split("[", 1)[1].rstrip("]"), {})[name.split("[")[0]] = case.outcome
    log = p.stdout[-6000:] + p.stderr[-2000:]
    assert set(cells) == {
        f"{k}/{c}/virtio"
        for k in ("kmx-6.1", "kmx-6.12", "kmx-6.12-v3")
        for c in ("Nehalem", "Haswell")
    }, log
    v3_nehalem = cells.pop("kmx-6.12-v3/Nehalem/virtio")
    assert set(v3_nehalem.values()) == {"xfailed"}, (v3_nehalem, log)
    for cell, tests in cells.items():
        bad = {t: k for t, k in tests.items() if k in ("failure", "error", "xfailed")}
        assert not bad, (cell, bad, log)
        # Every patch of the build shows in the guest: nothing of test_patched is skipped or
        # not applicable on the kernels that carry it (6.1 leaves 0004 out: its base-slice
        # test is not applicable there).
        want_na = {"test_base_slice_default"} if cell.startswith("kmx-6.1/") else set()
        patch_tests = ("test_banner", "test_new_sysctl", "test_kthread", "test_base_slice")
        not_run = {t: k for t, k in tests.items() if t.startswith(patch_tests) and k != "passed"}
        assert not_run == dict.fromkeys(want_na, "not_applicable"), (cell, tests)
