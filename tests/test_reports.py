"""The report writers on synthetic runs: JUnit per cell, HTML, Markdown, KCIDB, robustness."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import kcidb_io
import pytest
from synthetic import CELLS, TESTS, cell_id, make_run, warn_finding

from kmatrix.cli.main import main
from kmatrix.errors import InputError
from kmatrix.reports import html as report_html
from kmatrix.reports import junit as junit_cells
from kmatrix.reports import kcidb
from kmatrix.reports import markdown as report_md
from kmatrix.reports import writer as reports
from kmatrix.results.compare import compare_runs
from kmatrix.results.known_issues import load_known_issues
from kmatrix.results.runs import cap_text, load_run

A = cell_id("deb-6.1-cloud", "Nehalem", "virtio")
B = cell_id("deb-6.1-cloud", "Haswell", "virtio")
C = cell_id("deb-6.12-cloud", "Haswell", "gpu-virtio")


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    return make_run(
        tmp_path / "run",
        outcomes={
            (A, "test_online_cpus"): "failed",
            (B, "test_kernel_log_clean"): "error",
            (C, "test_userspace_reached"): "skipped",
        },
        findings={A: [warn_finding()]},
        test_findings={(A, "test_online_cpus"): [("warning", "WARNING in drm_atomic_commit")]},
        metrics={(C, "test_online_cpus"): {"hackbench_seconds": 1.5}},
        console={A: "booting\x1b[0m \x00 bell\x07 done\n"},  # bytes XML 1.0 cannot carry
    )


# --- JUnit ---------------------------------------------------------------------------------


def test_junit_one_suite_per_cell_with_properties(mixed: Path) -> None:
    path = junit_cells.write(load_run(mixed), mixed)
    root = ET.parse(path).getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert list(suites) == [A, B, C]
    a = suites[A]
    assert (a.get("tests"), a.get("failures"), a.get("errors")) == ("3", "1", "0")
    assert suites[B].get("errors") == "1"
    assert suites[C].get("skipped") == "1"
    props = {p.get("name"): p.get("value") for p in a.iter("property")}
    assert props["kmatrix.kernel_release"] == "6.1.0-57-cloud-amd64"
    assert props["kmatrix.cpu_model"] == "Nehalem-v1"
    assert props["kmatrix.device_profile"] == "virtio"
    assert props["kmatrix.accelerator"] == "tcg"
    assert props["kmatrix.boot_seconds"] == "3.000"
    assert props["kmatrix.findings"] == "1"
    failure = next(a.iter("failure"))
    assert failure.get("message") == f"AssertionError: test_online_cpus broke in {A}"
    names = [tc.get("name") for tc in a.iter("testcase")]
    assert names[1] == f"test_online_cpus[{A}]"
    assert {tc.get("classname") for tc in root.iter("testcase")} == {"testcases.test_boot"}
    assert "booting" in (a.findtext("system-out") or "")


# The attributes the JUnit schema strict readers use (Jenkins xunit's junit-10.xsd) allows.
JUNIT_ATTRS = {
    "testsuites": {"name", "time", "tests", "failures", "errors"},
    "testsuite": {
        "name",
        "tests",
        "failures",
        "errors",
        "group",
        "time",
        "skipped",
        "timestamp",
        "hostname",
        "id",
        "package",
        "file",
        "log",
        "url",
    },
    "testcase": {"name", "time", "classname", "group"},
    "failure": {"type", "message"},
    "error": {"type", "message"},
    "skipped": {"type", "message"},
    "properties": set(),
    "property": {"name", "value"},
    "system-out": set(),
    "system-err": set(),
}


def test_junit_elements_and_attributes_follow_the_schema(mixed: Path) -> None:
    root = ET.fromstring(junit_cells.render(load_run(mixed)))
    for el in root.iter():
        assert el.tag in JUNIT_ATTRS, el.tag
        extra = set(el.attrib) - JUNIT_ATTRS[el.tag]
        assert not extra, (el.tag, extra)
        if "time" in el.attrib:
            assert re.fullmatch(r"[0-9]*(\.[0-9]*)?", el.attrib["time"]), el.attrib["time"]
    for suite in root.iter("testsuite"):
        assert {"name", "tests", "failures", "errors"} <= set(suite.attrib)


def test_junit_from_an_interrupted_run_is_well_formed(tmp_path: Path) -> None:
    # As results.json is after a kill in the middle of the second cell.
    run = make_run(
        tmp_path / "r",
        cells=(("deb-6.1-cloud", "Nehalem", "virtio"), ("deb-6.1-cloud", "Haswell", "virtio")),
        outcomes={(B, "test_online_cpus"): "absent", (B, "test_kernel_log_clean"): "absent"},
        interrupted=True,
    )
    assert main(["report", str(run)]) == 0
    root = ET.parse(run / "junit-cells.xml").getroot()
    assert [s.get("tests") for s in root.iter("testsuite")] == ["3", "1"]
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["kmatrix.run_interrupted"] == "true"
    assert "interrupted" in (run / "summary.md").read_text()


# --- Markdown ------------------------------------------------------------------------------


def test_markdown_summary(mixed: Path, tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    run = load_run(mixed)
    text = report_md.render(run, comparison=compare_runs([load_run(base)], [run]))
    lines = text.splitlines()
    assert lines[0].startswith("## ❌ kmatrix: synthetic — 3 cells, 9 tests")
    header = next(ln for ln in lines if ln.startswith("| kernel |"))
    assert header == "| kernel | Nehalem / virtio | Haswell / virtio | Haswell / gpu-virtio |"
    row61 = next(ln for ln in lines if ln.startswith("| **deb-6.1-cloud**"))
    assert row61 == "| **deb-6.1-cloud** | ❌ 1 failed, 2 passed | ⚠️ 1 error, 2 passed |  |"
    assert "**REGRESSION: 2 regression(s)**" in text
    assert f"- 🔴 new failure: `{A}` test_online_cpus" in text
    assert f"| {A} | test_online_cpus | failed | AssertionError: test_online_cpus" in text
    assert f"- `{A}` warning: WARNING in drm_atomic_commit" in text


def test_markdown_escapes_table_breakers(tmp_path: Path) -> None:
    run = make_run(
        tmp_path / "r",
        outcomes={(A, "test_online_cpus"): "failed"},
        messages={(A, "test_online_cpus"): "a | b <b>\nsecond line"},
    )
    text = report_md.render(load_run(run))
    row = next(ln for ln in text.splitlines() if "test_online_cpus | failed" in ln)
    assert row.endswith("| failed | a \\| b &lt;b> |")


# --- HTML (structure; the browser test is in test_reports_e2e.py) -----------------------------


class Scripts(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[str] = []
        self.cells: list[str] = []
        self.links: list[str] = []  # every src= and href= of the page
        self._in = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        self.links += [str(v) for k, v in attrs if k in ("src", "href")]
        if tag == "script":
            self.scripts.append("")
            self._in = True
        if tag == "td" and "data-cell" in a:
            self.cells.append(f"{a['data-cell']} {a.get('class')}")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in = False

    def handle_data(self, data: str) -> None:
        if self._in:
            self.scripts[-1] += data


def test_html_is_self_contained_and_log_text_cannot_escape(tmp_path: Path) -> None:
    hostile = "</script><script>alert(1)</script><!-- \u2028 <img src=http://x/>\n"
    run = make_run(
        tmp_path / "r", outcomes={(A, "test_online_cpus"): "failed"}, console={A: hostile}
    )
    page = report_html.render(load_run(run))
    p = Scripts()
    p.feed(page)
    assert len(p.scripts) == 2  # the data block and the page's own script
    data = json.loads(p.scripts[0])
    assert data["cells"][A]["console"] == hostile
    assert p.cells == [f"{A} cell st-fail", f"{B} cell st-pass", f"{C} cell st-pass"]
    assert "<img" not in page and "alert(1)</script>" not in page
    # Nothing is fetched: no URL in any src/href but relative log paths and data:, and a
    # content security policy that forbids any fetch anyway.
    assert "default-src 'none'" in page
    assert p.links == ["data:,"]


def test_html_layout_kernels_rows_cpu_device_columns(tmp_path: Path) -> None:
    run = make_run(tmp_path / "r")
    page = report_html.render(load_run(run))
    table = page[page.index('<table id="matrix">') : page.index("</table>")]
    assert table.count("<tr><th>deb-") == 2  # two kernels, two rows
    assert '<th colspan="1" title="QEMU -cpu Nehalem-v1">Nehalem' in table
    assert '<th colspan="2" title="QEMU -cpu Haswell-v1">Haswell' in table
    assert table.count('class="missing"') == 3  # 2 x 3 grid, 3 cells present


def test_html_baseline_view_known_status_and_plots(tmp_path: Path) -> None:
    known_file = tmp_path / "known.yaml"
    known_file.write_text("issues:\n  - id: drm-warn\n    title: '^WARNING in drm_'\n")
    base = make_run(tmp_path / "base", boot={A: 3.0, B: 4.0, C: 5.0})
    msg = "kernel log reports:\nwarning: WARNING in drm_atomic_commit (line 12)"
    run = make_run(
        tmp_path / "new",
        outcomes={(A, "test_kernel_log_clean"): "failed", (B, "test_online_cpus"): "failed"},
        findings={A: [warn_finding()]},
        messages={(A, "test_kernel_log_clean"): msg},
        test_findings={(A, "test_kernel_log_clean"): [("warning", "WARNING in drm_atomic_commit")]},
        boot={A: 3.5, B: 4.5, C: 5.5},
        metrics={(C, "test_online_cpus"): {"latency_us": 42.0}},
    )
    known = load_known_issues(known_file)
    b, n = load_run(base), load_run(run)
    page = report_html.render(n, known, compare_runs([b], [n], known), b)
    p = Scripts()
    p.feed(page)
    assert p.cells == [f"{A} cell st-known", f"{B} cell st-fail", f"{C} cell st-pass"]
    diff = page[page.index('id="baseline-diff"') :]
    diff = diff[: diff.index("</table>")]
    assert diff.count("<tr class='v-") == 2
    assert "<td>known</td>" in diff and "<td>new failure</td>" in diff
    data = json.loads(p.scripts[0])
    assert data["cells"][A]["findings"][0]["known"] == "drm-warn"
    assert [t["known"] for t in data["cells"][A]["tests"]] == ["", "", "drm-warn"]
    assert data["cells"][A]["metrics"] == [{"label": "boot_seconds", "value": 3.5, "baseline": 3.0}]
    plots = page[page.index('<section id="plots">') :]
    assert plots.count("<svg") == 2  # boot time, test_online_cpus.latency_us
    assert "boot time per kernel" in plots and "test_online_cpus.latency_us" in plots
    assert plots.count('fill="#fff"') == 3  # hollow baseline dots, one per cell


def test_console_is_capped_with_a_marker(tmp_path: Path) -> None:
    big = "".join(f"line {i}\n" for i in range(100_000))
    run = make_run(tmp_path / "r", console={A: big})
    data = report_html.cell_data(
        load_run(run), load_run(run).cells[0], load_known_issues(None), None, None
    )
    console = data["console"]
    assert len(console) < report_html.CONSOLE_LIMIT + 200
    assert "characters truncated ...]" in console
    assert console.startswith("line 0\n") and console.endswith("line 99999\n")
    assert cap_text("short", 10) == "short"


# --- KCIDB ---------------------------------------------------------------------------------


def test_kcidb_export_validates_and_maps_outcomes(mixed: Path, tmp_path: Path) -> None:
    known_file = tmp_path / "known.yaml"
    known_file.write_text(
        "issues:\n  - id: drm-warn\n    kind: warning\n    title: '^WARNING in drm_'\n"
        "    url: https://bugs.example.org/2\n"
    )
    doc = kcidb.export(
        load_run(mixed),
        origin="kmatrix_ci",
        known=load_known_issues(known_file),
        artifacts_url="https://ci.example.org/job/1/reports",
    )
    kcidb_io.schema.V5_3.validate(doc)
    assert kcidb.validate(doc) is True
    assert doc["version"] == {"major": 5, "minor": 3}
    assert [c["id"] for c in doc["checkouts"]] == [
        "kmatrix_ci:checkout:deb-6.1-cloud:6.1.0-57-cloud-amd64",
        "kmatrix_ci:checkout:deb-6.12-cloud:6.12.117+deb12",
    ]
    by_path: dict[tuple[str, str], dict[str, object]] = {
        (t["environment"]["misc"]["cell"], t["path"]): t for t in doc["tests"]
    }
    assert by_path[(A, "kmatrix.boot.online_cpus")]["status"] == "FAIL"
    assert by_path[(B, "kmatrix.boot.kernel_log_clean")]["status"] == "ERROR"
    assert by_path[(C, "kmatrix.boot.userspace_reached")]["status"] == "SKIP"
    assert by_path[(C, "kmatrix.boot.online_cpus.hackbench_seconds")]["number"] == {"value": 1.5}
    assert by_path[(A, "boot")]["number"] == {"value": 3.0, "unit": "s", "prefix": "metric"}
    assert str(by_path[(A, "boot")]["log_url"]).endswith("/console.log")
    assert len({t["id"] for t in doc["tests"]}) == len(doc["tests"])
    assert [i["id"] for i in doc["issues"]] == ["kmatrix_ci:drm-warn"]
    assert [x["test_id"] for x in doc["incidents"]] == [
        by_path[(A, "kmatrix.boot.online_cpus")]["id"]
    ]


def test_kcidb_rejects_a_bad_origin(mixed: Path) -> None:
    with pytest.raises(InputError, match="must match"):
        kcidb.export(load_run(mixed), origin="Bad-Origin")


# --- all writers together --------------------------------------------------------------------


def test_one_failing_writer_loses_nothing_else(
    mixed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = (mixed / "results.json").read_bytes()

    def broken(*args: object, **kw: object) -> Path:
        raise RuntimeError("html writer exploded")

    monkeypatch.setattr(report_html, "write", broken)
    result = reports.write_reports(mixed, quiet=True)
    assert result.errors == {"html": "RuntimeError: html writer exploded"}
    assert sorted(p.name for p in result.written.values()) == [
        "junit-cells.xml",
        "kcidb.json",
        "summary.md",
    ]
    assert (mixed / "results.json").read_bytes() == before
    assert not (mixed / "index.html").exists()


def test_report_command_with_baseline_and_bad_known_issues(
    mixed: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = make_run(tmp_path / "base")
    bad = tmp_path / "known.yaml"
    bad.write_text("issues:\n  - id: x\n")
    rc = main(["report", str(mixed), "--baseline", str(base), "--known-issues", str(bad)])
    assert rc == 1  # the known-issues file is bad: said, and every report still written
    err = capsys.readouterr().err
    assert f"{bad}:2: issues[0].title: required key is missing" in err
    for name in ("index.html", "summary.md", "junit-cells.xml", "kcidb.json", "compare.json"):
        assert (mixed / name).is_file(), name
    assert json.loads((mixed / "compare.json").read_text())["regression"] is True


# --- outcomes decided during the run ----------------------------------------------------------


def with_properties(run: Path, props: dict[tuple[str, str], dict[str, str]]) -> Path:
    doc = json.loads((run / "results.json").read_text())
    for r in doc["results"]:
        r["properties"].update(props.get((r["cell"], r["test"].split("::")[-1]), {}))
    (run / "results.json").write_text(json.dumps(doc))
    return run


def test_flaky_known_and_not_applicable_in_every_report(tmp_path: Path) -> None:
    drm = {"kind": "warning", "title": "WARNING in drm_mm_takedown"}
    run = with_properties(
        make_run(
            tmp_path / "r",
            outcomes={
                (A, "test_online_cpus"): "flaky",
                (B, "test_online_cpus"): "known",
                (C, "test_userspace_reached"): "not_applicable",
            },
        ),
        {
            (A, "test_online_cpus"): {
                "kmatrix.attempts": "2",
                "kmatrix.flaky": json.dumps([{"message": "assert 1 == 2", "clean": "restored"}]),
            },
            (B, "test_online_cpus"): {
                "kmatrix.known": json.dumps([{"id": "drm-mm", "url": "", **drm}]),
                "kmatrix.findings": json.dumps([{**drm, "known": "drm-mm", "url": ""}]),
            },
            (C, "test_userspace_reached"): {"kmatrix.not_applicable": "no IOMMU"},
        },
    )
    known_file = tmp_path / "known.yaml"
    known_file.write_text("issues:\n  - {id: drm-mm, kind: warning, title: '^WARNING in drm_mm'}\n")
    known = load_known_issues(known_file)
    r = load_run(run)
    text = report_md.render(r, known)
    assert text.startswith("## 🔁 kmatrix")  # nothing failed; a test was flaky
    assert "### Flaky and known (2)" in text
    assert "flaky: failed 1 of 2 attempts, then passed; assert 1 == 2" in text
    assert "known: drm-mm (warning: WARNING in drm_mm_takedown)" in text
    cases = {
        (tc.get("name"), s.get("name")): tc
        for s in ET.fromstring(junit_cells.render(r, known)).iter("testsuite")
        for tc in s.iter("testcase")
    }
    flaky = cases[(f"test_online_cpus[{A}]", A)]
    assert flaky.find("failure") is None and "flaky:" in str(flaky.findtext("system-out"))
    skipped = cases[(f"test_online_cpus[{B}]", B)].find("skipped")
    assert skipped is not None and skipped.get("message", "").startswith("known: drm-mm")
    na = cases[(f"test_userspace_reached[{C}]", C)].find("skipped")
    assert na is not None and na.get("message") == "not applicable: no IOMMU"
    doc = kcidb.export(r, origin="kmatrix_ci", known=known)
    status = {(t["misc"]["cell"], t["misc"]["outcome"]): t["status"]
              for t in doc["tests"] if "outcome" in t.get("misc", {})}  # fmt: skip
    assert status[(A, "flaky")] == "PASS" and status[(B, "known")] == "FAIL"
    assert status[(C, "not_applicable")] == "SKIP"
    assert [i["id"] for i in doc["issues"]] == ["kmatrix_ci:drm-mm"]


def test_a_run_that_measured_nothing_is_not_green(tmp_path: Path) -> None:
    everything = {(cell_id(*c), t): "not_applicable" for c in CELLS for t in TESTS}
    everything[(A, "test_online_cpus")] = "skipped"
    r = load_run(make_run(tmp_path / "r", outcomes=everything))
    text = report_md.render(r)
    assert text.startswith("## ⚠️ kmatrix") and "No test measured anything" in text
    assert "No test measured anything" in report_html.render(r)
