"""Reports of real runs: a good two-cell run and the same matrix with a deliberately broken
kernel command line (nr_cpus=1), run once for the module; the HTML is driven in Chromium."""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import kcidb_io
import pytest
from cdp import Browser, chromium_path

from conftest import ROOT, kernel_args_61, run_kmatrix_pytest, two_with
from kmatrix.cli.main import main

pytestmark = pytest.mark.boot  # every test here starts QEMU

BROKEN_CELL = "deb-6.1-cloud/Nehalem/virtio"
GOOD_CELL = "deb-6.12-cloud/Haswell/virtio"
# nr_cpus=1 leaves one of the cell's two vCPUs online: exactly these two tests notice.
EXPECTED_NEW_FAILURES = {
    (BROKEN_CELL, "test_online_cpus"),
    (BROKEN_CELL, "test_cpu_model_flags"),
}
REPORTS = ("results.json", "junit-cells.xml", "index.html", "summary.md", "kcidb.json")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reports-e2e")
    good, broken = tmp / "good", tmp / "broken"
    boot = [ROOT / "testcases" / "test_boot.py"]
    run = run_kmatrix_pytest(boot, good, "-q")
    assert run.proc.returncode == 0, "the good run must pass:\n" + run.log
    matrix = two_with(tmp / "broken.yaml", kernel_args_61("nr_cpus=1"))
    run = run_kmatrix_pytest(boot, broken, "-q", f"--kmatrix-baseline={good}", matrix=matrix)
    assert run.proc.returncode == 1, run.log
    assert "kmatrix: against the baseline: 2 regression(s)" in run.proc.stdout, run.log
    return good, broken


def test_broken_kernel_against_good_run_is_exactly_the_new_failures(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, broken = runs
    out = tmp_path / "cmp.json"
    assert main(["compare", str(good), str(broken), "--json", str(out)]) == 1
    data = json.loads(out.read_text())
    changed = {(t["cell"], t["name"]): t["verdict"] for t in data["tests"]}
    assert changed == {k: "new_failure" for k in EXPECTED_NEW_FAILURES}
    # Boot times differ between the runs, but one run a side never makes a verdict.
    assert {m["verdict"] for m in data["metrics"]} == {"unchanged"}
    total = len(json.loads((good / "results.json").read_text())["results"])
    assert data["counts"]["unchanged"] == total - len(EXPECTED_NEW_FAILURES)
    text = capsys.readouterr().out
    assert "online CPUs '0', want 2" in text
    # The plugin's own comparison (--kmatrix-baseline) says the same.
    plugin_cmp = json.loads((broken / "compare.json").read_text())
    assert {(t["cell"], t["name"]): t["verdict"] for t in plugin_cmp["tests"]} == changed
    # And a run against itself has nothing to say.
    assert main(["compare", str(good), str(good)]) == 0


def test_every_report_is_written(runs: tuple[Path, Path]) -> None:
    _, broken = runs
    for run in runs:
        for name in REPORTS:
            assert (run / name).is_file(), (run, name)
    root = ET.parse(broken / "junit-cells.xml").getroot()
    assert [s.get("name") for s in root.iter("testsuite")] == [BROKEN_CELL, GOOD_CELL]
    failed = {
        (s.get("name"), tc.get("name", "").split("[")[0])
        for s in root.iter("testsuite")
        for tc in s.iter("testcase")
        if tc.find("failure") is not None or tc.find("error") is not None
    }
    assert failed == EXPECTED_NEW_FAILURES
    props = {p.get("name"): p.get("value") for p in next(root.iter("testsuite")).iter("property")}
    assert props["kmatrix.kernel_release"] == "6.1.0-57-cloud-amd64"
    boot_seconds = props["kmatrix.boot_seconds"]
    assert boot_seconds is not None and float(boot_seconds) > 0
    kcidb_io.schema.V5_3.validate(json.loads((broken / "kcidb.json").read_text()))
    summary = (broken / "summary.md").read_text()
    assert "**REGRESSION: 2 regression(s)**" in summary
    assert "AssertionError: online CPUs '0', want 2" in summary


def test_report_command_regenerates_the_same_page(runs: tuple[Path, Path], tmp_path: Path) -> None:
    copy = tmp_path / "good"
    shutil.copytree(runs[0], copy)
    original = (copy / "index.html").read_text()
    for name in REPORTS[1:]:
        (copy / name).unlink()
    assert main(["report", str(copy)]) == 0
    assert (copy / "index.html").read_text() == original
    for name in REPORTS:
        assert (copy / name).is_file(), name


@pytest.fixture
def browser() -> Iterator[Browser]:
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (kmatrix setup --tests installs it)")
        pytest.skip("chromium is not installed (kmatrix setup --tests)")
    with Browser() as b:
        yield b


def test_html_report_in_chromium(runs: tuple[Path, Path], browser: Browser) -> None:
    _, broken = runs
    b = browser
    b.open((broken / "index.html").as_uri())
    assert b.evaluate("document.documentElement.getAttribute('data-ready')") == "1"
    cells = b.evaluate(
        "[...document.querySelectorAll('td.cell')].map(td => "
        "[td.dataset.cell, td.className, td.querySelector('.counts').textContent])"
    )
    results = json.loads((broken / "results.json").read_text())["results"]
    n_broken = sum(1 for r in results if r["cell"] == BROKEN_CELL)
    n_good = sum(1 for r in results if r["cell"] == GOOD_CELL)
    assert cells == [
        [BROKEN_CELL, "cell st-fail", f"{n_broken - 2}✓ 2✗"],
        [GOOD_CELL, "cell st-pass", f"{n_good}✓"],
    ]
    assert b.evaluate("document.getElementById('detail').hidden") is True

    b.click(f'td.cell[data-cell="{BROKEN_CELL}"]')  # a real mouse click
    assert b.evaluate("document.getElementById('detail').hidden") is False
    assert b.evaluate("document.getElementById('detail-title').textContent") == (
        f"{BROKEN_CELL} — FAIL"
    )
    rows = b.evaluate(
        "[...document.querySelectorAll('#detail tr.test')].map(tr => "
        "[tr.cells[0].textContent, tr.cells[1].textContent, tr.cells[3].textContent])"
    )
    assert len(rows) == n_broken
    failed = {(r[1], r[2].split("full report")[0]) for r in rows if r[0] == "failed"}
    assert failed == {
        ("test_online_cpus", "AssertionError: online CPUs '0', want 2"),
        ("test_cpu_model_flags", "AssertionError: 1 flags lines for 2 vCPUs"),
    }
    diff = b.evaluate(
        "[...document.querySelectorAll('#detail table.diff tr')].map(tr => tr.textContent)"
    )
    assert len(diff) == 2 and all(d.startswith("new failure") for d in diff), diff
    console = b.evaluate(
        "[...document.querySelectorAll('#detail details')]"
        ".find(d => d.querySelector('summary').textContent === 'console log')"
        ".querySelector('pre').textContent"
    )
    assert "userspace reached" in console
    assert b.evaluate("location.hash") == "#cell=" + BROKEN_CELL.replace("/", "%2F")

    b.click(f'td.cell[data-cell="{GOOD_CELL}"]')
    assert b.evaluate("document.getElementById('detail').dataset.cell") == GOOD_CELL
    assert b.evaluate("document.querySelectorAll('td.cell.selected').length") == 1
    assert b.evaluate("document.querySelectorAll('#plots svg circle').length") >= 4
    assert b.console_errors() == []
