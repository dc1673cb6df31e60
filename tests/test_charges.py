"""Joining the log guard's charges to a cell's findings (kmatrix.results.charges)."""

from __future__ import annotations

from typing import Any

import pytest

from kmatrix.errors import InputError
from kmatrix.results.charges import attribute, charge_note
from kmatrix.results.schema import FindingRecord


def finding(kind: str, title: str, source: str, line: int) -> FindingRecord:
    return FindingRecord(kind=kind, title=title, line=line, source=source, excerpt="x")


def charge(kind: str, title: str, test: str, phase: str = "test", **kw: Any) -> FindingRecord:
    return FindingRecord(
        kind=kind, title=title, source="kmsg", seq=kw.get("seq", 1), test=test, phase=phase,
        after=kw.get("after", ""), allowed=kw.get("allowed", False), excerpt="y",
    )  # fmt: skip


def test_each_log_finding_gets_the_charge_of_the_same_report_in_order() -> None:
    w = ("warning", "WARNING in f")
    logs = [
        finding(*w, "dmesg.log", 10),
        finding(*w, "dmesg.log", 50),
        finding(*w, "console.log", 12),  # the same first report, also on the console
    ]
    charges = [
        charge(*w, "t.py::test_a", seq=7),
        charge(*w, "", "between", after="t.py::test_a", seq=9),
    ]
    out = attribute(logs, charges)
    assert [(f.source, f.line, f.test, f.phase) for f in out] == [
        ("dmesg.log", 10, "t.py::test_a", "test"),
        ("dmesg.log", 50, "", "between"),
        ("console.log", 12, "t.py::test_a", "test"),
    ]
    assert out[1].after == "t.py::test_a"
    assert out[0].seq == 7 and out[0].excerpt == "x"  # the log's own excerpt stays


def test_a_charge_no_log_has_is_added_never_dropped() -> None:
    logs = [finding("bug", "BUG: x", "dmesg.log", 3)]
    charges = [charge("warning", "WARNING in g", "t.py::test_b", allowed=True)]
    out = attribute(logs, charges)
    assert [(f.kind, f.source) for f in out] == [("bug", "dmesg.log"), ("warning", "kmsg")]
    assert out[0].phase == "" and out[0].seq is None  # a boot-time report: never charged
    assert out[1].allowed is True


def test_charged_findings_round_trip_through_the_schema() -> None:
    f = charge("warning", "WARNING in g", "t.py::test_b", allowed=True, seq=41)
    assert FindingRecord.from_json(f.to_json(), "findings.json") == f
    bad = {**f.to_json(), "allowed": "yes"}
    with pytest.raises(InputError, match=r"findings.json: \[0\].allowed: expected true or false"):
        FindingRecord.from_json(bad, "findings.json", "[0]")


def test_charge_notes() -> None:
    def note(**kw: Any) -> str:
        return charge_note(FindingRecord(kind="warning", title="WARNING in f", **kw))

    assert note(phase="test", test="a/t.py::test_x[c]") == "during test_x[c]"
    assert note(phase="test", test="t.py::test_x", allowed=True) == "during test_x (allowed)"
    assert note(phase="between", after="t.py::test_y") == "between tests, after test_y"
    assert note(phase="teardown", after="t.py::test_z") == "after the last test, test_z"
    assert note() == ""
