"""Attribution of a patched kernel's (cell, test) against its baseline twin, from results.json
data alone (kmatrix.results.attribution), and how the reports show it."""

from __future__ import annotations

import dataclasses
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cdp import Browser, chromium_path

from kmatrix.reports import html as report_html
from kmatrix.reports import junit, markdown
from kmatrix.reports.writer import write_reports
from kmatrix.results import attribution as attr
from kmatrix.results.compare import compare_runs, series_view
from kmatrix.results.merge import merge_runs
from kmatrix.results.runs import Run, load_run
from kmatrix.results.schema import (
    SCHEMA,
    SCHEMA_V1,
    CellAttribution,
    Outcome,
    RunDocument,
    Verdict,
    dumps,
)

P, B = "k/Haswell/virtio", "k+baseline/Haswell/virtio"


@pytest.mark.parametrize(
    ("patched", "baseline", "want"),
    [
        (["failed"], ["passed"], attr.SERIES),
        (["failed"], ["failed"], attr.PRE_EXISTING),
        (["passed"], ["failed"], attr.FIXED),
        (["passed"], ["passed"], attr.PASS),
        (["xfailed"], ["passed"], attr.SERIES),  # failed as declared: still the series'
        (["xfailed"], ["xfailed"], attr.PRE_EXISTING),
        (["failed", "passed"], ["passed", "passed"], attr.FLAKY),
        (["failed", "failed"], ["passed", "failed"], attr.FLAKY),
        (["flaky"], ["passed"], attr.FLAKY),
        (["failed"], ["error"], attr.UNDETERMINED),
        (["failed"], ["skipped"], attr.UNDETERMINED),
        (["failed"], [], attr.UNDETERMINED),
        (["passed"], ["error"], attr.PASS),
        (["error"], ["passed"], attr.UNDETERMINED),
        (["skipped"], ["failed"], None),
    ],
)
def test_decide(patched: list[str], baseline: list[str], want: str | None) -> None:
    assert verdict(patched, baseline) == want


def verdict(*args: Any, **kwargs: Any) -> str | None:
    got = attr.decide(*args, **kwargs)
    return got[0] if got else None


def test_a_baseline_that_did_not_build_or_boot_is_never_a_patch_verdict() -> None:
    assert attr.decide(["failed"], ["failed"], baseline_stage="build") == (
        attr.UNDETERMINED,
        "the baseline did not build, so it cannot tell",
    )
    assert verdict(["failed"], ["failed"], baseline_stage="boot") == attr.UNDETERMINED
    assert verdict(["passed"], ["failed"], baseline_stage="boot") == attr.PASS
    # Neither builds (or neither boots): the series did not cause that.
    assert verdict(["failed"], ["failed"], "build", "build") == attr.PRE_EXISTING
    assert verdict(["failed"], ["failed"], "build", "boot") == attr.UNDETERMINED
    assert verdict(["failed"], None, baseline_ran=False) == attr.UNDETERMINED


def rec(cell: str, test: str, outcome: str, **extra: Any) -> dict[str, Any]:
    return {
        "cell": cell,
        "test": f"testcases/t.py::{test}",
        "nodeid": f"testcases/t.py::{test}[{cell}]",
        "outcome": outcome,
        "duration": 1.0,
        "message": extra.pop("message", ""),
        "longrepr": "",
        "metrics": extra.pop("metrics", {}),
        "properties": {},
    }


def cell(cid: str, status: str, **extra: Any) -> dict[str, Any]:
    kernel, cpu, device = cid.split("/")
    return {"id": cid, "kernel": kernel, "cpu": cpu, "cpu_model": cpu, "device": device,
            "status": status, "counts": {}, "boot": extra.pop("boot", {}), **extra}  # fmt: skip


def doc(cells: list[dict[str, Any]], results: list[dict[str, Any]]) -> dict[str, Any]:
    return {"schema": SCHEMA, "run": {"matrix_name": "m", "id": "r1"}, "cells": cells,
            "results": results}  # fmt: skip


def run_of(d: dict[str, Any], name: str = "r.json") -> Run:
    """A run of a results document written as JSON data, read through the schema."""
    return Run(Path(name), RunDocument.from_json(d, name))


def twin_doc(boot_b: dict[str, Any] | None = None) -> dict[str, Any]:
    return doc(
        [
            cell(P, "fail", baseline_cell=B, baseline_label="vanilla"),
            cell(B, "fail", baseline_of=P, baseline_label="vanilla", boot=boot_b or {}),
            cell("deb/Haswell/virtio", "fail"),
        ],
        [
            rec(P, "test_new", "failed", message="assert 1 == 2", metrics={"m_s": 2.0}),
            rec(P, "test_old", "failed"),
            rec(P, "test_fixed", "passed"),
            rec(P, "test_ok", "passed"),
            rec(P, "test_skip", "skipped"),
            rec(B, "test_new", "passed", metrics={"m_s": 1.0}),
            rec(B, "test_old", "failed"),
            rec(B, "test_fixed", "failed"),
            rec(B, "test_ok", "passed"),
            rec(B, "test_skip", "skipped"),
            rec("deb/Haswell/virtio", "test_new", "failed"),
        ],
    )


def test_attribute_pairs_twins_by_test() -> None:
    found = attr.attribute([run_of(twin_doc())])
    verdicts = {nodeid.split("::")[1].split("[")[0]: a.verdict for (_, nodeid), a in found.items()}
    assert verdicts == {
        "test_new": attr.SERIES,
        "test_old": attr.PRE_EXISTING,
        "test_fixed": attr.FIXED,
        "test_ok": attr.PASS,
    }, "skipped tests and cells without a baseline get no attribution"
    new = found[(P, f"testcases/t.py::test_new[{P}]")]
    assert new.baseline_nodeid == f"testcases/t.py::test_new[{B}]"
    assert new.metrics == {"m_s": [2.0, 1.0]}


def test_baseline_build_failure_makes_failures_undetermined() -> None:
    found = attr.attribute([run_of(twin_doc({"failure": "build"}))])
    verdicts = {a.nodeid: a.verdict for a in found.values()}
    assert set(verdicts.values()) == {attr.UNDETERMINED, attr.PASS}
    cv = attr.cell_verdicts([run_of(twin_doc({"failure": "build"}))])
    assert cv[P].verdict == attr.UNDETERMINED and cv[P].baseline_status == "did not build"


def test_baseline_not_in_the_run() -> None:
    d = twin_doc()
    d["cells"] = [c for c in d["cells"] if c["id"] != B]
    d["results"] = [r for r in d["results"] if r["cell"] != B]
    found = attr.attribute([run_of(d)])
    assert {a.verdict for a in found.values()} == {attr.UNDETERMINED, attr.PASS}
    assert all(B in a.reason for a in found.values())


def test_repeated_runs_that_disagree_are_flaky() -> None:
    one, two = twin_doc(), twin_doc()
    for r in two["results"]:
        if r["cell"] == P and r["nodeid"].endswith(f"test_new[{P}]"):
            r["outcome"] = "passed"
    found = attr.attribute([run_of(one, "1.json"), run_of(two, "2.json")])
    a = found[(P, f"testcases/t.py::test_new[{P}]")]
    assert a.verdict == attr.FLAKY and a.patched == ["failed", "passed"]


def test_attach_and_gate() -> None:
    d = attr.attach(run_of(twin_doc()).doc)
    by_test = {r.nodeid: r.attribution for r in d.results}
    new = by_test[f"testcases/t.py::test_new[{P}]"]
    assert new is not None and new.verdict is Verdict.SERIES
    assert new.baseline_outcome is Outcome.PASSED and new.metrics == {"m_s": [2.0, 1.0]}
    assert by_test[f"testcases/t.py::test_new[{B}]"] is None, "a baseline is the reference"
    cells = {c.id: c for c in d.cells}
    a = cells[P].attribution
    assert a is not None and a.verdict is Verdict.SERIES
    assert a.counts == {"series": 1, "pre-existing": 1, "fixed": 1, "pass": 1}
    assert cells[B].attribution is None
    again = RunDocument.from_json(json.loads(dumps(d)), "results.json")  # the schema keeps it
    assert again.to_json() == d.to_json()
    gating = attr.gating(d)
    assert sorted(r.nodeid for r in gating) == [
        "testcases/t.py::test_new[deb/Haswell/virtio]",  # no baseline: gates as always
        f"testcases/t.py::test_new[{P}]",  # caused by the series
    ]
    # Only pre-existing failures (and baseline failures) left: the gate opens.
    for r in d.results:
        if r.nodeid.split("::")[1] in (f"test_new[{P}]", "test_new[deb/Haswell/virtio]"):
            r.outcome = Outcome.PASSED
    assert attr.gating(attr.attach(d)) == []


def test_attach_leaves_its_input_alone() -> None:
    d = run_of(twin_doc()).doc
    before = d.to_json()
    attached = attr.attach(d)
    assert d.to_json() == before, "attach returns a new document; it edits none of doc's"
    assert all(r.attribution is None for r in d.results)
    assert any(r.attribution is not None for r in attached.results)
    assert attr.attach(attached).to_json() == attached.to_json()


def edited_doc() -> RunDocument:
    """A stored attribution that recomputation would not give (a file edited, or written by
    other rules): test_new fails patched and passes on the baseline, so it is computed as
    caused by the series, but stored as pre-existing."""
    d = attr.attach(run_of(twin_doc()).doc)
    new = f"testcases/t.py::test_new[{P}]"
    results = [
        dataclasses.replace(
            r,
            attribution=dataclasses.replace(
                r.attribution, verdict=Verdict.PRE_EXISTING, reason="stored, not recomputed"
            ),
        )
        if r.nodeid == new and r.attribution is not None
        else r
        for r in d.results
    ]
    stored = CellAttribution(
        verdict=Verdict.PRE_EXISTING,
        counts={"pre-existing": 2, "fixed": 1, "pass": 1},
        baseline_status="fail",
    )
    cells = [dataclasses.replace(c, attribution=stored) if c.id == P else c for c in d.cells]
    return dataclasses.replace(d, cells=cells, results=results)


def test_reports_show_the_stored_attribution_not_a_recomputed_one(tmp_path: Path) -> None:
    (tmp_path / "results.json").write_text(dumps(edited_doc()))
    run = load_run(tmp_path)
    recomputed = attr.attribute([run])[(P, f"testcases/t.py::test_new[{P}]")]
    assert recomputed.verdict is Verdict.SERIES, "the two sources disagree"
    result = write_reports(tmp_path, quiet=True)
    assert result.errors == {}
    page = (tmp_path / "index.html").read_text()
    assert "stored, not recomputed" in page
    assert 'data-attr="series"' not in page and "caused by the series" not in page
    md = (tmp_path / "summary.md").read_text()
    assert "🟠 **pre-existing**" in md and "stored, not recomputed" in md
    assert "caused by the series" not in md
    root = ET.fromstring((tmp_path / "junit-cells.xml").read_text())
    suite = next(s for s in root.iter("testsuite") if s.get("name") == P)
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["kmatrix.attribution"] == "pre-existing"
    assert props["kmatrix.attribution_counts"] == "2 pre-existing, 1 fixed, 1 pass"
    case = next(c for c in suite.iter("testcase") if c.get("name") == f"test_new[{P}]")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith("[pre-existing: stored, not recomputed]")


def test_the_gate_follows_the_stored_attribution() -> None:
    gating = attr.gating(edited_doc())
    assert [r.nodeid for r in gating] == ["testcases/t.py::test_new[deb/Haswell/virtio]"]


@pytest.mark.parametrize("schema", [SCHEMA_V1, SCHEMA])
def test_a_file_without_stored_attribution_gets_it_on_load(tmp_path: Path, schema: str) -> None:
    """A /1 file (and a /2 one written before kmatrix stored attribution) still renders."""
    d = twin_doc()
    d["schema"] = schema
    (tmp_path / "results.json").write_text(json.dumps(d))
    run = load_run(tmp_path)
    cells = {c.id: c.attribution for c in run.cells}
    patched = cells[P]
    assert patched is not None and patched.verdict is Verdict.SERIES
    assert cells[B] is None
    assert write_reports(tmp_path, quiet=True).errors == {}
    assert 'data-attr="series"' in (tmp_path / "index.html").read_text()
    assert "🔴 **caused by the series**" in (tmp_path / "summary.md").read_text()
    assert 'name="kmatrix.attribution" value="series"' in (tmp_path / "junit-cells.xml").read_text()


def test_reports_show_the_attribution(tmp_path: Path) -> None:
    run = Run(tmp_path / "results.json", attr.attach(run_of(twin_doc()).doc))
    assert attr.stored(run) == attr.attribute([run]), "stored as computed"
    page = report_html.render(run)
    assert 'data-attr="series"' in page and "caused by the series" in page
    assert 'id="attr-filter"' in page and 'data-filter="pre-existing"' in page
    assert 'data-attr="baseline"' in page and "baseline of k/Haswell/virtio" in page
    assert 'id="attribution-tests"' in page
    md = markdown.render(run)
    assert "### Attribution against the baselines" in md
    assert "🔴 **caused by the series**" in md and "test_new" in md
    root = ET.fromstring(junit.render(run))
    suite = next(s for s in root.iter("testsuite") if s.get("name") == P)
    props = {p.get("name"): p.get("value") for p in suite.iter("property")}
    assert props["kmatrix.attribution"] == "series"
    assert props["kmatrix.baseline_cell"] == B
    case = next(c for c in suite.iter("testcase") if c.get("name") == f"test_new[{P}]")
    failure = case.find("failure")
    assert failure is not None
    assert failure.get("message", "").startswith(
        "[caused by the series: it passes on the baseline]"
    )
    base = next(s for s in root.iter("testsuite") if s.get("name") == B)
    bprops = {p.get("name"): p.get("value") for p in base.iter("property")}
    assert bprops["kmatrix.baseline_of"] == P and "kmatrix.attribution" not in bprops


def test_series_view_compares_patched_with_baseline_by_the_existing_rules() -> None:
    runs = []
    for i in range(5):  # repeats: enough samples for a metric verdict
        d = twin_doc()
        for r in d["results"]:
            if r["metrics"]:
                r["metrics"] = {"m_s": r["metrics"]["m_s"] + i * 0.01}
        runs.append(run_of(d, f"{i}.json"))
    base = [series_view(r, "baseline") for r in runs]
    new = [series_view(r, "patched") for r in runs]
    assert {c.id for c in base[0].cells} == {P}, "baseline cells under their twins' ids"
    c = compare_runs(base, new, None)
    verdicts = {t.name.split("[")[0]: t.verdict for t in c.tests}
    assert verdicts["test_new"] == "new_failure" and verdicts["test_fixed"] == "fixed"
    assert verdicts["test_old"] == "still_failing" and verdicts["test_ok"] == "unchanged"
    [m] = [m for m in c.metrics if m.label.endswith("m_s")]
    assert m.verdict == "regressed", "2.0 s patched against 1.0 s baseline, 5 runs a side"
    with pytest.raises(ValueError):
        series_view(runs[0], "other")


def test_merge_attributes_across_shards(tmp_path: Path) -> None:
    whole = twin_doc()
    for name, keep in (("s1", P), ("s2", B)):
        part = {
            **whole,
            "cells": [c for c in whole["cells"] if c["id"] == keep],
            "results": [r for r in whole["results"] if r["cell"] == keep],
        }
        (tmp_path / name).mkdir()
        # As each shard's collector stores it: the patched shard has no baseline cell.
        stored = attr.attach(run_of(part).doc)
        (tmp_path / name / "results.json").write_text(dumps(stored))
    shard = {c.id: c.attribution for c in load_run(tmp_path / "s1").cells}[P]
    assert shard is not None and shard.verdict is Verdict.UNDETERMINED
    assert shard.baseline_status == "not run"
    res = merge_runs(tmp_path / "out", [tmp_path / "s1", tmp_path / "s2"])
    by_test = {r.nodeid: r.attribution for r in res.doc.results}
    new = by_test[f"testcases/t.py::test_new[{P}]"]
    assert new is not None and new.verdict is Verdict.SERIES
    assert new.baseline_outcome is Outcome.PASSED
    # What the merged results.json stores, and so what its reports show.
    merged = load_run(tmp_path / "out")
    cells = {c.id: c.attribution for c in merged.cells}
    patched = cells[P]
    assert patched is not None and patched.verdict is Verdict.SERIES
    assert patched.baseline_status == "fail" and cells[B] is None
    assert merged.doc.to_json() == attr.attach(merged.doc).to_json()
    assert write_reports(tmp_path / "out", quiet=True).errors == {}
    assert (
        'name="kmatrix.attribution" value="series"'
        in (tmp_path / "out" / "junit-cells.xml").read_text()
    )


@pytest.fixture
def browser() -> Iterator[Browser]:
    if chromium_path() is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing in CI (kmatrix setup --tests installs it)")
        pytest.skip("chromium is not installed (kmatrix setup --tests)")
    with Browser() as b:
        yield b


def test_html_filter_badges_and_reproduce_in_chromium(tmp_path: Path, browser: Browser) -> None:
    doc = attr.attach(run_of(twin_doc()).doc)
    (tmp_path / "results.json").write_text(dumps(doc))
    d = tmp_path / "cells" / P.replace("/", "__")
    d.mkdir(parents=True)
    (d / "reproduce.sh").write_text("#!/bin/sh\n")
    (tmp_path / "index.html").write_text(report_html.render(Run(tmp_path / "results.json", doc)))
    b = browser
    b.open((tmp_path / "index.html").as_uri())
    assert b.evaluate("document.documentElement.getAttribute('data-ready')") == "1"
    dimmed = "[...document.querySelectorAll('td.cell.dimmed')].map(td => td.dataset.cell).sort()"
    b.click('#attr-filter button[data-filter="series"]')
    assert b.evaluate(dimmed) == sorted([B, "deb/Haswell/virtio"])
    rows = "[...document.querySelectorAll('#attribution-tests tr[data-attr]:not(.dimmed)')]"
    assert b.evaluate(rows + ".map(r => r.dataset.attr)") == ["series"]
    b.click('#attr-filter button[data-filter="baseline"]')
    assert b.evaluate(dimmed) == sorted([P, "deb/Haswell/virtio"])
    b.click('#attr-filter button[data-filter=""]')
    assert b.evaluate(dimmed) == []
    b.click(f'td.cell[data-cell="{P}"]')
    badges = b.evaluate(
        "[...document.querySelectorAll('#detail .badge.attr')].map(e => e.textContent)"
    )
    assert sorted(badges) == ["caused by the series", "fixed by the series", "pre-existing"]
    cmds = b.evaluate("[...document.querySelectorAll('#detail pre.cmd')].map(e => e.textContent)")
    assert cmds == [f"sh cells/{P.replace('/', '__')}/reproduce.sh", f"kmatrix shell {P}"]
    assert b.console_errors() == []
