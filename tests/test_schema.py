"""The typed results.json schema: round trip, every class of validation error, /1 files."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from synthetic import cell_id, make_run, warn_finding

from conftest import DATA
from kmatrix.cli.main import main
from kmatrix.errors import InputError
from kmatrix.pytest.collector import _metric, read_cell_file, read_findings
from kmatrix.results.runs import load_run, write_run
from kmatrix.results.schema import (
    SCHEMA,
    SCHEMA_V1,
    BootRecord,
    CellAttribution,
    CellResult,
    CellStatus,
    DiskRecord,
    FindingRecord,
    MergeInfo,
    Outcome,
    RunDocument,
    RunInfo,
    ShardInfo,
    TestAttribution,
    TestResult,
    cell_status,
    dumps,
)

V1 = DATA / "results" / "v1-run.json"
A = cell_id("deb-6.1-cloud", "Nehalem", "virtio")
METRIC = "hackbench_seconds"


def document() -> RunDocument:
    """A document using every part of the schema."""
    result = TestResult(
        cell=A,
        test="testcases/test_boot.py::test_online_cpus",
        nodeid=f"testcases/test_boot.py::test_online_cpus[{A}]",
        outcome=Outcome.FAILED,
        duration=1.25,
        message="AssertionError: 1 != 2",
        longrepr="E   AssertionError: 1 != 2",
        metrics={METRIC: 1.5, "ops": 3},
        properties={"kmatrix.cell": A},
    )
    cell = CellResult(
        id=A,
        kernel="deb-6.1-cloud",
        kernel_release="6.1.0-57-cloud-amd64",
        cpu="Nehalem",
        cpu_model="Nehalem-v1",
        device="virtio",
        smp=2,
        memory_mib=512,
        boot=BootRecord(accel="tcg", boot_seconds=2.5, restore_seconds=[0.5], exitcode=0),
        findings=[warn_finding()],
        artifacts={"console": "cells/x/console.log"},
        status=cell_status([result.outcome]),
        counts={"failed": 1},
    )
    info = RunInfo(
        id="r1",
        started="2026-11-29T06:00:00+00:00",
        duration=60.0,
        exitstatus=1,
        accelerators=["tcg"],
        args=["-x"],
        matrix_cells=[A],
        shard="1/2",
        planned_cells={A: 1},
        shards=[ShardInfo(path="s1/results.json", shard="1/2", cells=[A])],
        merge=MergeInfo(missing_shards=[2], incomplete_cells={A: "1 of 2 tests"}),
    )
    return RunDocument(run=info, cells=[cell], results=[result])


def raw() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(dumps(document()))
    return data


# --- round trip ------------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path: Path) -> None:
    doc = document()
    text = dumps(doc)
    assert json.loads(text)["schema"] == SCHEMA == "kmatrix-results/2"
    again = RunDocument.from_json(json.loads(text), "results.json")
    assert again == doc
    assert dumps(again) == text
    write_run(tmp_path / "results.json", doc)
    assert load_run(tmp_path).doc == doc
    # Typed all the way down: enums, nested records, ints kept as ints.
    r = again.results[0]
    assert r.outcome is Outcome.FAILED and again.cells[0].status is CellStatus.FAIL
    assert isinstance(again.cells[0].findings[0], FindingRecord)
    assert again.run.merge == MergeInfo(missing_shards=[2], incomplete_cells={A: "1 of 2 tests"})
    assert type(r.metrics["ops"]) is int and json.loads(text)["results"][0]["metrics"]["ops"] == 3


def test_every_field_is_written_in_order() -> None:
    data = raw()
    assert list(data) == ["schema", "run", "cells", "results"]
    assert list(data["cells"][0])[:6] == [
        "id", "kernel", "kernel_release", "cpu", "cpu_model", "device"
    ]  # fmt: skip
    assert list(data["results"][0])[:4] == ["cell", "test", "nodeid", "outcome"]
    assert set(data["cells"][0]["boot"]) == set(BootRecord().to_json())
    # Defaults are written too: a reader never has to guess what a missing key means.
    empty = RunDocument(run=RunInfo(), cells=[], results=[]).to_json()
    assert empty["run"]["merge"] is None and empty["run"]["shards"] == []


def test_writer_refuses_non_finite_numbers() -> None:
    doc = document()
    doc.results[0].metrics[METRIC] = math.nan
    with pytest.raises(ValueError, match="not JSON compliant"):
        dumps(doc)


def test_collector_keeps_only_finite_metrics() -> None:
    assert _metric("1.5") == 1.5
    for bad in ("nan", "inf", "-Infinity", "fast", ""):
        assert _metric(bad) is None, bad


# --- outcomes ----------------------------------------------------------------------------------


def test_outcomes_say_what_they_count_as() -> None:
    assert [o.value for o in Outcome] == [
        "passed", "failed", "error", "skipped", "xfailed", "xpassed", "flaky", "known",
        "not_applicable",
    ]  # fmt: skip
    assert {o for o in Outcome if o.failing} == {Outcome.FAILED, Outcome.ERROR}
    assert {o for o in Outcome if o.notable} == {Outcome.FAILED, Outcome.ERROR, Outcome.XPASSED}
    assert {o.junit for o in Outcome} == {"", "failure", "error", "skipped"}
    assert {o.kcidb for o in Outcome} <= {"PASS", "FAIL", "ERROR", "SKIP"}
    assert Outcome.named("xfailed") is Outcome.XFAILED
    assert not Outcome.NOT_APPLICABLE.measured and not Outcome.SKIPPED.measured
    assert Outcome.FLAKY.measured and Outcome.KNOWN.measured
    with pytest.raises(ValueError, match="unknown outcome 'flakey'"):
        Outcome.named("flakey")


@pytest.mark.parametrize(
    ("outcomes", "status"),
    [
        ([], "none"),
        (["skipped", "skipped"], "skip"),
        (["skipped", "passed"], "pass"),
        (["skipped", "xfailed"], "pass"),
        (["passed", "xpassed"], "xpass"),
        (["xpassed", "error"], "error"),
        (["error", "failed", "passed"], "fail"),
        (["not_applicable", "not_applicable"], "na"),
        (["not_applicable", "skipped"], "skip"),
        (["not_applicable", "passed"], "pass"),
        (["known", "passed"], "known"),
        (["known", "flaky"], "flaky"),
        (["flaky", "xpassed"], "xpass"),
    ],
)
def test_cell_status_is_the_worst_outcome(outcomes: list[str], status: str) -> None:
    assert cell_status(Outcome.named(o) for o in outcomes) == status


# --- validation: one error naming the file and the entry --------------------------------------

Edit = Callable[[dict[str, Any]], object]
Key = str | int


def _parent(d: dict[str, Any], path: tuple[Key, ...]) -> Any:
    node: Any = d
    for k in path[:-1]:
        node = node[k]
    return node


def _set(*path: Key, to: object) -> Edit:
    """An edit of raw() setting the value at a path of keys and list indexes."""
    return lambda d: _parent(d, path).__setitem__(path[-1], to)


def _del(*path: Key) -> Edit:
    return lambda d: _parent(d, path).__delitem__(path[-1])


BAD: list[tuple[str, Edit, str]] = [
    ("missing schema", _del("schema"), "missing key 'schema' (not a kmatrix results file?)"),
    ("foreign schema", _set("schema", to="other/3"),
     "schema: expected 'kmatrix-results/2' (or 'kmatrix-results/1'), got 'other/3'"),
    ("schema not a string", _set("schema", to=2), "schema: expected 'kmatrix-results/2' (or "
     "'kmatrix-results/1'), got the number 2"),
    ("missing section", _del("cells"), "missing key 'cells'"),
    ("missing required key", _del("results", 0, "nodeid"), "results[0]: missing key 'nodeid'"),
    ("unknown key", _set("cells", 0, "boot", "sandboxes", to="off"),
     "cells[0].boot: unknown key 'sandboxes'"),
    ("section of the wrong type", _set("results", to={}),
     "results: expected a list, got an object"),
    ("entry of the wrong type", _set("cells", 0, to="x"), 'cells[0]: expected an object, got a '
     'string ("x")'),
    ("string for a number", _set("results", 0, "duration", to="fast"),
     'results[0].duration: expected a number, got a string ("fast")'),
    ("bool for a number", _set("run", "duration", to=True),
     "run.duration: expected a number, got true"),
    ("bool for an integer", _set("cells", 0, "smp", to=True),
     "cells[0].smp: expected an integer, got true"),
    ("fraction for an integer", _set("cells", 0, "memory_mib", to=512.5),
     "cells[0].memory_mib: expected an integer, got the number 512.5"),
    ("null for a string", _set("results", 0, "cell", to=None),
     "results[0].cell: expected a string, got null"),
    ("number for a string", _set("run", "host", to=7),
     "run.host: expected a string, got the number 7"),
    ("string for a bool", _set("run", "interrupted", to="no"),
     'run.interrupted: expected true or false, got a string ("no")'),
    ("wrong optional", _set("cells", 0, "boot", "boot_seconds", to="3s"),
     'cells[0].boot.boot_seconds: expected a number or null, got a string ("3s")'),
    ("wrong optional record", _set("run", "merge", to=[]),
     "run.merge: expected an object or null, got a list"),
    ("list item", _set("run", "args", 0, to=5),
     "run.args[0]: expected a string, got the number 5"),
    ("string for a list", _set("run", "accelerators", to="tcg"),
     'run.accelerators: expected a list, got a string ("tcg")'),
    ("metric not a number", _set("results", 0, "metrics", METRIC, to="1.5"),
     f'results[0].metrics.{METRIC}: expected a number, got a string ("1.5")'),
    ("property not a string", _set("results", 0, "properties", "kmatrix.x", to=1),
     'results[0].properties["kmatrix.x"]: expected a string, got the number 1'),
    ("non-numeric planned_cells", _set("run", "planned_cells", A, to="many"),
     f'run.planned_cells["{A}"]: expected an integer, got a string ("many")'),
    ("planned_cells not an object", _set("run", "planned_cells", to="all"),
     'run.planned_cells: expected an object, got a string ("all")'),
    ("negative planned count", _set("run", "planned_cells", A, to=-1),
     f"run.planned_cells: '{A}': a test count cannot be negative (-1)"),
    ("unknown outcome", _set("results", 0, "outcome", to="purple"),
     "results[0].outcome: expected one of 'passed', 'failed', 'error', 'skipped', 'xfailed', "
     "'xpassed', 'flaky', 'known', 'not_applicable', got a string (\"purple\")"),
    ("unknown cell status", _set("cells", 0, "status", to="purple"),
     "cells[0].status: expected one of"),
    ("finding without a title", _del("cells", 0, "findings", 0, "title"),
     "cells[0].findings[0]: missing key 'title'"),
    ("shard out of range", _set("run", "shard", to="3/2"),
     "run.shard: expected a shard I/N with 1 <= I <= N, got '3/2'"),
    ("shard zero", _set("run", "shards", 0, "shard", to="0/0"),
     "run.shards[0].shard: expected a shard I/N with 1 <= I <= N, got '0/0'"),
    ("shard not numbers", _set("run", "shard", to="a/b"),
     "run.shard: expected a shard I/N with 1 <= I <= N, got 'a/b'"),
    ("merge list item", _set("run", "merge", "missing_shards", 0, to="2"),
     'run.merge.missing_shards[0]: expected an integer, got a string ("2")'),
]  # fmt: skip


@pytest.mark.parametrize(("edit", "message"), [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_document_is_one_error_naming_file_and_entry(
    tmp_path: Path, edit: Edit, message: str
) -> None:
    data = raw()
    edit(data)
    path = tmp_path / "results.json"
    path.write_text(json.dumps(data))
    with pytest.raises(InputError) as e:
        load_run(tmp_path)
    text = str(e.value)
    assert text.startswith(f"{path}: "), text
    assert message in text, text
    assert "\n" not in text


@pytest.mark.parametrize(
    ("literal", "message"),
    [
        ("NaN", "NaN is not a number"),
        ("Infinity", "Infinity is not a finite number"),
        ("-Infinity", "-Infinity is not a finite number"),
    ],
)
def test_non_finite_numbers_are_refused_wherever_they_are(
    tmp_path: Path, literal: str, message: str
) -> None:
    # json.loads accepts these literals (Python's json.dumps writes them): refuse them as data.
    for where, place in (
        (f"results[0].metrics.{METRIC}", f'"{METRIC}": 1.5'),
        ("cells[0].boot.boot_seconds", '"boot_seconds": 2.5'),
        ("run.duration", '"duration": 60.0'),
    ):
        text = dumps(document())
        assert place in text
        bad = text.replace(place, place.split(":")[0] + ": " + literal, 1)
        (tmp_path / "results.json").write_text(bad)
        with pytest.raises(InputError) as e:
            load_run(tmp_path)
        assert str(e.value) == f"{tmp_path / 'results.json'}: {where}: {message}"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "not valid JSON"),
        ("{", "not valid JSON"),
        ("[1, 2]", "expected an object, got a list"),
        ('"kmatrix-results/2"', "expected an object, got a string"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        (b"\xff\xfe{}", "is not UTF-8 text"),
    ],
)
def test_not_a_document(tmp_path: Path, content: str | bytes, message: str) -> None:
    path = tmp_path / "results.json"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(InputError, match=message):
        load_run(path)


@pytest.mark.parametrize("command", ["report", "compare", "merge"])
def test_commands_give_one_line_and_exit_2(
    tmp_path: Path, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_run(tmp_path / "good")
    bad = make_run(tmp_path / "bad", shard="1/1", planned_cells={A: 3})
    path = bad / "results.json"
    path.write_text(path.read_text().replace(f'"{A}": 3', f'"{A}": "3"'))
    argv = {
        "report": ["report", str(bad)],
        "compare": ["compare", str(good), str(bad)],
        "merge": ["merge", str(tmp_path / "out"), str(bad)],
    }[command]
    assert main(argv) == 2
    out = capsys.readouterr()
    assert out.err == (
        f'kmatrix: error: {path}: run.planned_cells["{A}"]: expected an integer, got a '
        'string ("3")\n'
    )
    assert "Traceback" not in out.out + out.err
    assert not (tmp_path / "out").exists()


# --- /1 files ----------------------------------------------------------------------------------


def test_reads_a_v1_run() -> None:
    run = load_run(V1)
    assert json.loads(V1.read_text())["schema"] == SCHEMA_V1
    assert [c.status for c in run.cells] == [CellStatus.FAIL, CellStatus.PASS]
    bad, good = run.cells
    assert bad.findings[0].title.startswith("Kernel panic - not syncing: VFS")
    assert bad.boot.boot_seconds is None and good.boot.boot_seconds == pytest.approx(7.0356)
    assert good.boot.release == good.kernel_release != ""
    assert [r.outcome for r in run.results] == [Outcome.FAILED] * 6 + [Outcome.PASSED] * 6
    assert run.meta.planned_cells == {bad.id: 6, good.id: 6} and run.meta.merge is None
    # Written back, it is a /2 document with the same content.
    again = RunDocument.from_json(json.loads(dumps(run.doc)), "again")
    assert again == run.doc and json.loads(dumps(run.doc))["schema"] == SCHEMA


def test_v1_is_lenient_where_v2_is_strict(tmp_path: Path) -> None:
    data = json.loads(V1.read_text())
    # What early /1 writers left: a plan of cell ids only, keys since dropped, fields missing.
    ids = [c["id"] for c in data["cells"]]
    data["run"]["planned_cells"] = ids
    data["run"]["retired_key"] = 1
    del data["run"]["matrix_digest"], data["cells"][0]["boot"]["snapshot_mib"]
    doc = RunDocument.from_json(data, "old.json")
    assert doc.run.planned_cells == dict.fromkeys(ids, 0)
    assert doc.run.matrix_digest == "" and doc.cells[0].boot.snapshot_mib is None
    # Types are checked in /1 files too.
    data["results"][3]["duration"] = "slow"
    with pytest.raises(InputError, match=r"^old.json: results\[3\].duration: expected a number"):
        RunDocument.from_json(data, "old.json")
    # /2 names every field it knows; a key it does not know is an error there.
    v2 = raw()
    v2["run"]["retired_key"] = 1
    with pytest.raises(InputError, match="run: unknown key 'retired_key'"):
        RunDocument.from_json(v2, "new.json")
    v2 = raw()
    v2["run"]["planned_cells"] = ids
    with pytest.raises(InputError, match=r"run\.planned_cells: expected an object, got a list"):
        RunDocument.from_json(v2, "new.json")


def test_v1_baseline_compares_with_a_v2_run(tmp_path: Path) -> None:
    new = tmp_path / "new" / "results.json"
    write_run(new, load_run(V1).doc)
    assert main(["compare", str(V1), str(new)]) == 0


# --- the worker's per-cell files ------------------------------------------------------------


def test_cell_files_read_typed_and_a_broken_one_is_ignored_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    boot = tmp_path / "boot.json"
    boot.write_text(json.dumps(BootRecord(accel="kvm", launches=1).to_json()))
    assert read_cell_file(boot, BootRecord.from_json, BootRecord()) == BootRecord(
        accel="kvm", launches=1
    )
    findings = tmp_path / "findings.json"
    findings.write_text(json.dumps([warn_finding().to_json()]))
    none: list[FindingRecord] = []
    assert read_cell_file(findings, read_findings, none) == [warn_finding()]
    assert read_cell_file(tmp_path / "none.json", read_findings, none) == []
    assert capsys.readouterr().err == ""
    findings.write_text('[{"kind": "warning"}]')
    assert read_cell_file(findings, read_findings, none) == []
    assert capsys.readouterr().err == (
        f"kmatrix: {findings}: ignored: {findings}: [0]: missing key 'title'\n"
    )


# --- the reference page cannot drift ------------------------------------------------------------

PAGE = Path(__file__).resolve().parent.parent / "docs" / "results-schema.md"


def _table_after(marker: str) -> list[list[str]]:
    """The rows (cells stripped of backticks) of the first table after the line with marker."""
    lines = PAGE.read_text().splitlines()
    start = next(i for i, ln in enumerate(lines) if marker in ln)
    rows, seen = [], False
    for ln in lines[start + 1 :]:
        if ln.startswith("|"):
            seen = True
            rows.append([c.strip().strip("`") for c in ln.strip("|").split("|")])
        elif seen:
            break
    return rows[2:]  # past the header and the |---| line


@pytest.mark.parametrize(
    "record",
    [
        RunInfo, ShardInfo, MergeInfo, CellResult, BootRecord, DiskRecord, FindingRecord,
        TestResult, TestAttribution, CellAttribution,
    ],
)  # fmt: skip
def test_reference_page_lists_every_field_in_order(record: type) -> None:
    marker = {TestAttribution: "(TestAttribution)", CellAttribution: "(CellAttribution)"}
    rows = _table_after(marker.get(record, f"({record.__name__}"))
    assert [r[0] for r in rows] == [f.name for f in dataclasses.fields(record)]
    for row, f in zip(rows, dataclasses.fields(record), strict=True):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        assert (row[2] == "*required*") == required, row


def test_reference_page_lists_every_outcome() -> None:
    rows = _table_after("### Outcomes")
    assert rows == [
        [o.value, o.status.value, "yes" if o.failing else "no", o.junit or "testcase", o.kcidb]
        for o in Outcome
    ]
