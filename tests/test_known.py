"""Known issues applied during the run, end to end (tests/data/knowncases on a real cell)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DATA, ROOT, run_kmatrix_pytest
from kmatrix.results.logparse import parse_kernel_log

CASES = DATA / "knowncases"
CELL = "deb-6.1-cloud/Nehalem/virtio"
KNOWN = """\
issues:
  - id: drm-mm
    kind: warning
    title: '^WARNING in drm_mm_takedown$'
    kernels: [deb-6.1-*]
    url: https://bugs.example.org/42
"""


def test_the_cases_titles() -> None:
    """The titles the cases rely on, as the parser gives them."""
    import sys

    sys.path.insert(0, str(CASES))
    from test_known_guest import report

    (w,) = parse_kernel_log(report("drm_mm_takedown"))
    assert (w.kind, w.title) == ("warning", "WARNING in drm_mm_takedown")
    (b,) = parse_kernel_log(report("drm_mm_takedown", "BUG"))
    assert b.kind != "warning"


@pytest.mark.boot
def test_known_reports_do_not_fail_the_run(tmp_path: Path, private_tmp: Path) -> None:
    known = tmp_path / "known.yaml"
    known.write_text(KNOWN)
    run = run_kmatrix_pytest(
        [CASES / "test_known_guest.py"], tmp_path / "reports", "-k", "Nehalem", "-rA",
        "--rootdir", str(ROOT), f"--kmatrix-known-issues={known}",
        junit=tmp_path / "junit.xml", tmpdir=private_tmp, timeout=600,
    )  # fmt: skip
    doc = json.loads((run.reports / "results.json").read_text())
    res = {r["nodeid"].split("::")[1].split("[")[0]: r for r in doc["results"]}
    only = res["test_only_known_reports"]
    assert only["outcome"] == "known", only
    (issue,) = json.loads(only["properties"]["kmatrix.known"])
    assert issue == {
        "id": "drm-mm", "url": "https://bugs.example.org/42", "kind": "warning",
        "title": "WARNING in drm_mm_takedown",
    }  # fmt: skip
    # The log guard's failure is matched the same way.
    assert res["test_the_log_guard_finds_only_known_reports"]["outcome"] == "known"
    mixed = res["test_a_known_and_an_unknown_report"]
    assert mixed["outcome"] == "failed"
    assert "not in the known issues: warning: WARNING in kmx_probe" in mixed["longrepr"]
    refs = json.loads(mixed["properties"]["kmatrix.findings"])
    assert [r["known"] for r in refs] == ["drm-mm", ""]
    # The issue names a kind: a BUG in the same function is not it; a message is not a report.
    assert res["test_known_title_but_another_kind"]["outcome"] == "failed"
    assert res["test_a_plain_failure_naming_the_title"]["outcome"] == "failed"
    assert "2 known" in run.proc.stdout and "3 failed" in run.proc.stdout, run.log
