"""--kmatrix-rerun and --kmatrix-strict end to end: a real cell, tests that fail once, always,
or with a kernel report (tests/data/rerunscases)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, ROOT, KmatrixRun, qemu_pids, run_kmatrix_pytest

pytestmark = pytest.mark.boot

CASES = DATA / "rerunscases" / "test_rerun_guest.py"
CELL = "deb-6.1-cloud/Nehalem/virtio"


def run(
    tmp_path: Path, private_tmp: Path, select: str, *args: str
) -> tuple[KmatrixRun, dict[str, Any]]:
    (tmp_path / "attempts").mkdir()
    r = run_kmatrix_pytest(
        [CASES], tmp_path / "reports", "-k", select, "--rootdir", str(ROOT),
        "--kmatrix-rerun", "2", *args, junit=tmp_path / "junit.xml", tmpdir=private_tmp,
        timeout=600, env={"KMX_ATTEMPTS": str(tmp_path / "attempts")},
    )  # fmt: skip
    doc = json.loads((r.reports / "results.json").read_text())
    results = {x["nodeid"].split("::")[1].split("[")[0]: x for x in doc["results"]}
    return r, results


def test_rerun_marks_flaky_and_keeps_real_failures(tmp_path: Path, private_tmp: Path) -> None:
    r, results = run(tmp_path, private_tmp, "Nehalem")
    assert r.proc.returncode == 1, r.log  # test_fails_always still fails the run
    flaky = results["test_flaky_once"]
    assert flaky["outcome"] == "flaky", flaky
    assert flaky["properties"]["kmatrix.attempts"] == "2"
    (first,) = json.loads(flaky["properties"]["kmatrix.flaky"])
    assert "the first attempt fails" in first["message"]
    assert first["clean"].startswith(("restored (", "rebooted (")), first
    # A failure every time: still a failure, after 1 + 2 attempts.
    always = results["test_fails_always"]
    assert always["outcome"] == "failed" and always["properties"]["kmatrix.attempts"] == "3"
    # A kernel crash report is never rerun into a pass.
    report = results["test_quotes_a_kernel_report"]
    assert report["outcome"] == "failed" and "kmatrix.attempts" not in report["properties"]
    assert (tmp_path / "attempts" / "deb-6.1-cloud__Nehalem__virtio-report").read_text() == "1"
    case = r.cases()[f"test_flaky_once[{CELL}]"]
    assert case.outcome == "passed" and "kmatrix.flaky" in case.properties  # pytest's JUnit
    assert "1 flaky" in r.proc.stdout, r.log
    assert qemu_pids(str(private_tmp)) == []


def test_strict_fails_the_run_on_a_flaky_test(tmp_path: Path, private_tmp: Path) -> None:
    r, results = run(tmp_path, private_tmp, "Nehalem and flaky", "--kmatrix-strict")
    assert r.proc.returncode == 1, r.log
    assert results["test_flaky_once"]["outcome"] == "flaky"
    assert "--kmatrix-strict fails it" in results["test_flaky_once"]["longrepr"]
