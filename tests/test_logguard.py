"""The kernel-log guard end to end: a WARNING provoked in the middle of a suite fails exactly
the test that provoked it, also on a kernel booted with printk.time=0.

One child pytest runs tests/data/guardcases on the 6.1 cloud cell and on the 6.12 cloud cell
booted with printk.time=0 (so no console or dmesg line carries a timestamp): kmx_crash
(images/crash) is built for each kernel and provokes the reports.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, ROOT, JunitCase, KmatrixRun, run_kmatrix_pytest, two_with

CASES = DATA / "guardcases" / "test_guard_guest.py"
CELLS = ("deb-6.1-cloud/Nehalem/virtio", "deb-6.12-cloud/Haswell/virtio")
NO_TIME = "deb-6.12-cloud/Haswell/virtio"  # booted with printk.time=0
PASSING = (
    "test_a_quiet_before", "test_c_quiet_after", "test_d_allowed_warning",
    "test_d_kernel_test_runner_warns", "test_e_teardown_warns", "test_f_quiet_last",
)  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> KmatrixRun:
    tmp = tmp_path_factory.mktemp("guard")
    deb = "deb: linux-image-6.12.117+deb12-cloud-amd64-unsigned"
    matrix = two_with(tmp / "m.yaml", (deb, f"{deb}\n    kernel_args: printk.time=0"))
    return run_kmatrix_pytest(
        [CASES], tmp / "reports", "--rootdir", str(ROOT), matrix=matrix,
        junit=tmp / "junit.xml", timeout=900,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cases(run: KmatrixRun) -> dict[str, JunitCase]:
    return run.cases()


def cell_findings(run: KmatrixRun, cell: str) -> list[dict[str, Any]]:
    """The cell's findings but those of its console log: an oops is on the console and in
    dmesg.log, both charged; one is enough here."""
    (entry,) = [c for c in run.results()["cells"] if c["id"] == cell]
    return [f for f in entry["findings"] if not f["source"].startswith("console")]


@pytest.mark.boot
@pytest.mark.parametrize("cell", CELLS)
def test_the_warning_fails_exactly_the_test_that_provoked_it(
    cases: dict[str, JunitCase], cell: str
) -> None:
    kind, text, props = cases[f"test_b_warns[{cell}]"]
    assert kind == "failure", (kind, text[:2000])
    assert "the kernel reported 1 problem during this test" in text, text[:2000]
    assert "warning: WARNING in kmx_crash_warn" in text
    assert "------------[ cut here ]------------" in text  # the excerpt
    assert props["kmatrix.kernel_log"] == "warning: WARNING in kmx_crash_warn"
    for test in PASSING:
        kind, text, _ = cases[f"{test}[{cell}]"]
        assert kind == "passed", (test, kind, text[:2000])


@pytest.mark.boot
def test_printk_time_0_took_effect(cases: dict[str, JunitCase]) -> None:
    assert cases[f"test_a_quiet_before[{NO_TIME}]"].properties["printk_time"] == "N"
    assert cases[f"test_a_quiet_before[{CELLS[0]}]"].properties["printk_time"] == "Y"


@pytest.mark.boot
@pytest.mark.parametrize("cell", CELLS)
def test_allowed_report_is_recorded_not_failed(cases: dict[str, JunitCase], cell: str) -> None:
    props = cases[f"test_d_allowed_warning[{cell}]"].properties
    assert props["kmatrix.kernel_log"] == "warning: WARNING in kmx_crash_warn (allowed)"


@pytest.mark.boot
@pytest.mark.parametrize("cell", CELLS)
def test_a_kernel_test_runners_report_is_not_recorded_as_allowed(
    cases: dict[str, JunitCase], cell: str
) -> None:
    """An item that runs a whole kernel-test target leaves its reports to the cases that
    printed them: it passes, and neither its properties nor the record call them allowed."""
    kind, text, props = cases[f"test_d_kernel_test_runner_warns[{cell}]"]
    assert kind == "passed", (kind, text[:2000])
    assert props["kmatrix.kernel_log"] == (
        "warning: WARNING in kmx_crash_warn (failed the case that printed it)"
    )


@pytest.mark.boot
@pytest.mark.parametrize("cell", CELLS)
def test_a_failed_test_gets_the_reports_with_its_own_failure(
    cases: dict[str, JunitCase], cell: str
) -> None:
    kind, text, _ = cases[f"test_g_fails_and_oopses[{cell}]"]
    assert kind == "failure", (kind, text[:2000])
    assert "the test's own failure" in text
    assert "divide_error: divide error in kmx_crash_div" in text, text[-3000:]


@pytest.mark.boot
@pytest.mark.parametrize("cell", CELLS)
def test_every_report_is_charged_in_results(run: KmatrixRun, cell: str) -> None:
    findings = cell_findings(run, cell)
    charged = [
        (f["kind"], f["title"], f.get("test", "").split("::")[-1].split("[")[0], f.get("phase"))
        for f in findings
        if f["phase"]
    ]
    assert charged == [
        ("warning", "WARNING in kmx_crash_warn", "test_b_warns", "test"),
        ("warning", "WARNING in kmx_crash_warn", "test_d_allowed_warning", "test"),
        ("warning", "WARNING in kmx_crash_warn", "test_d_kernel_test_runner_warns", "test"),
        # The teardown of test_e: charged to the cell, after test_e, when test_f set up.
        ("refcount", "WARNING: refcount bug in kmx_crash_refcount", "", "between"),
        ("divide_error", "divide error in kmx_crash_div", "test_g_fails_and_oopses", "test"),
        # The teardown of the cell's last test: charged to the cell before its VM stopped.
        ("warning", "WARNING in kmx_crash_warn", "", "teardown"),
    ], findings
    between = next(f for f in findings if f.get("phase") == "between")
    assert between["after"].endswith(f"test_e_teardown_warns[{cell}]")
    assert findings[-1]["after"].endswith(f"test_g_fails_and_oopses[{cell}]")
    allowed = [f["allowed"] for f in findings if f["phase"]]
    assert allowed == [False, True, False, False, False, False]


@pytest.mark.boot
def test_without_timestamps_the_cell_dmesg_has_the_reports(run: KmatrixRun) -> None:
    """With printk.time=0 no console line has a timestamp: the guard reads by sequence
    number, and the cell's dmesg.log (rendered from the /dev/kmsg records, whose timestamps
    are there whatever printk.time says) has each report the guard charged, with the charge."""
    findings = cell_findings(run, NO_TIME)
    assert {f["source"] for f in findings} == {"dmesg.log"}, findings
    assert len(findings) == 6 and all(f["phase"] and f["seq"] is not None for f in findings)


@pytest.mark.boot
def test_run_fails_on_the_reports(run: KmatrixRun) -> None:
    assert run.proc.returncode == 1, run.log
    failed = {
        r["test"].split("::")[-1] for r in run.results()["results"] if r["outcome"] == "failed"
    }
    assert failed == {"test_b_warns", "test_g_fails_and_oopses"}


def test_an_unknown_kind_in_the_marker_is_a_usage_error(tmp_path: Path) -> None:
    case = tmp_path / "test_bad_marker.py"
    case.write_text(
        "import pytest\n\n@pytest.mark.kmatrix_allow('warnings')\ndef test_x(cell):\n    pass\n"
    )
    run = run_kmatrix_pytest([case], tmp_path / "reports", "--collect-only", "-q")
    assert run.proc.returncode == 4, run.log
    assert "kmatrix_allow('warnings',): unknown kind 'warnings' (kinds: panic, oops" in run.log
