"""The child-run helpers of tests/conftest.py read what they claim to: a test that checks
"all passed" through them must be able to see a failure."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import TWO, junit_cases, kernel_args_61, kmatrix_pytest_argv, two_with

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest">
 <testcase classname="t" name="test_ok[c1]">
  <properties><property name="metric.x" value="1.5"/></properties>
 </testcase>
 <testcase classname="t" name="test_bad[c1]"><failure message="boom">trace</failure></testcase>
 <testcase classname="t" name="test_err[c1]"><error message="infra">why</error></testcase>
 <testcase classname="t" name="test_skip[c1]"><skipped message="no CONFIG_X"/></testcase>
 <testcase classname="t" name="test_xf[c1]"><skipped type="pytest.xfail" message="x"/></testcase>
</testsuite></testsuites>
"""


def test_junit_cases_sees_every_outcome(tmp_path: Path) -> None:
    junit = tmp_path / "junit.xml"
    junit.write_text(JUNIT)
    cases = junit_cases(junit)
    assert {k: c.outcome for k, c in cases.items()} == {
        "test_ok[c1]": "passed",
        "test_bad[c1]": "failure",
        "test_err[c1]": "error",
        "test_skip[c1]": "skipped",
        "test_xf[c1]": "xfailed",
    }
    assert cases["test_bad[c1]"].message == "boomtrace"
    assert cases["test_ok[c1]"].properties == {"metric.x": "1.5"}


def test_two_with_applies_kernel_args_and_refuses_a_stale_replacement(tmp_path: Path) -> None:
    doc = yaml.safe_load(two_with(tmp_path / "m.yaml", kernel_args_61("nr_cpus=1")).read_text())
    assert doc["kernels"][0]["kernel_args"] == "nr_cpus=1"
    assert "kernel_args" not in doc["kernels"][1]
    assert Path(doc["devices"][0]).is_file()  # usable from any directory
    with pytest.raises(AssertionError, match="no longer has"):
        two_with(tmp_path / "x.yaml", ("no such text", ""))


def test_argv_asks_for_junit_only_when_given(tmp_path: Path) -> None:
    plain = kmatrix_pytest_argv(["t.py"], tmp_path, "-q")
    assert f"--kmatrix-matrix={TWO}" in plain
    assert not [a for a in plain if a.startswith("--junitxml") or "junit_family" in a], plain
    with_junit = kmatrix_pytest_argv(["t.py"], tmp_path, junit=tmp_path / "j.xml")
    assert f"--junitxml={tmp_path / 'j.xml'}" in with_junit
    assert "junit_family=xunit1" in with_junit  # properties stay on each test case
