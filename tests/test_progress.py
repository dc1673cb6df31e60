"""Per-cell progress: the mode chosen, the plain lines of a cell's life, and the tty status
line drawn under pytest's current line and erased around pytest's writes, leaving the screen
exactly as pytest alone would have left it. (The real terminal run is in test_merge.py.)"""

from __future__ import annotations

import io
from collections.abc import Generator
from typing import Any, Literal

import pytest
from _pytest._io import TerminalWriter
from vt import render

from conftest import DATA
from kmatrix.config.matrix import matrix_digest
from kmatrix.kernels import load_matrix
from kmatrix.pytest.plan import CellIds, RunPlan
from kmatrix.pytest.progress import Progress, choose_mode, fmt_elapsed

TWO = load_matrix(DATA / "matrices" / "two.yaml")
A, B = (c.id for c in TWO.cells)
TESTS = ("test_userspace_reached", "test_release_matches_artifact")


def node(test: str, cell: str, module: str = "test_boot.py") -> str:
    return f"testcases/{module}::{test}[{cell}]"


class FakeReporter:
    """What Progress uses of pytest's TerminalReporter, with pytest's own newline logic."""

    def __init__(self) -> None:
        self.buf = io.StringIO()
        self._tw = TerminalWriter(self.buf)
        self._tw.fullwidth = 100
        self.currentfspath: Any = None

    def ensure_newline(self) -> None:
        if self.currentfspath:
            self._tw.line()
            self.currentfspath = None

    def write_line(self, line: str) -> None:
        self.ensure_newline()
        self._tw.line(line)

    # pytest -q: the module's path once, then one character per test
    def dot(self, nodeid: str, letter: str = ".") -> None:
        path = nodeid.split("::")[0]
        if self.currentfspath != path:
            self._tw.line()
            self._tw.write(path + " ")
            self.currentfspath = path
        self._tw.write(letter)


class FakeConfig:
    def __init__(self, tr: FakeReporter, verbosity: int = -1) -> None:
        self.tr = tr
        self.verbosity = verbosity
        self.pluginmanager = self

    def get_plugin(self, name: str) -> Any:
        return self.tr if name == "terminalreporter" else None

    def get_verbosity(self) -> int:
        return self.verbosity


def progress(mode: str, selected: list[str]) -> tuple[Progress, FakeReporter, list[float]]:
    tr = FakeReporter()
    plan = RunPlan(TWO, None)
    plan.set_nodeids(selected)
    p = Progress(FakeConfig(tr), plan, mode)  # type: ignore[arg-type]
    now = [100.0]
    p.clock = lambda: now[0]
    p.t0 = 100.0
    return p, tr, now


Phase = Literal["setup", "call", "teardown"]
Outcome = Literal["passed", "failed", "skipped"]
PHASES: tuple[Phase, ...] = ("setup", "call", "teardown")


def rep(
    nodeid: str,
    when: Phase,
    outcome: Outcome = "passed",
    boot: str = "2.50",
) -> pytest.TestReport:
    props = [("kmatrix.cell", "x"), ("kmatrix.boot_seconds", boot)] if when == "setup" else []
    return pytest.TestReport(
        nodeid,
        ("f", 0, "t"),
        {},
        outcome,
        None,
        when,
        user_properties=props,
    )


def wrap(gen: Generator[None, None, None], write: Any = None) -> None:
    """Drives a hookwrapper as pluggy would: before, pytest's own write, after."""
    next(gen)
    if write is not None:
        write()
    with pytest.raises(StopIteration):
        next(gen)


def call_dot(tr: FakeReporter, nodeid: str, when: str) -> Any:
    return (lambda: tr.dot(nodeid)) if when == "call" else None


def run_cell(p: Progress, tr: FakeReporter, now: list[float], cell: str, fail: str = "") -> None:
    for i, t in enumerate(TESTS):
        n = node(t, cell)
        wrap(p.pytest_runtest_logstart(n))
        now[0] += 3.0 if i == 0 else 0.5
        for when in PHASES:
            outcome: Outcome = "failed" if (t == fail and when == "call") else "passed"
            letter = "F" if outcome == "failed" else "."
            write = (lambda n=n, x=letter: tr.dot(n, x)) if when == "call" else None
            wrap(p.pytest_runtest_logreport(rep(n, when, outcome)), write)
        wrap(p.pytest_runtest_logfinish())


@pytest.mark.parametrize(
    ("requested", "isatty", "capture", "verbosity", "want"),
    [
        ("auto", True, "fd", 0, "tty"),
        ("auto", False, "fd", 0, "plain"),  # CI logs
        ("auto", True, "no", 0, "plain"),  # -s: tests write to the terminal themselves
        ("auto", True, "fd", -2, "off"),  # -qq
        ("tty", False, "fd", 0, "plain"),  # no terminal to draw on
        ("plain", True, "fd", 0, "plain"),
        ("off", True, "fd", 0, "off"),
    ],
)
def test_mode(requested: str, isatty: bool, capture: str, verbosity: int, want: str) -> None:
    assert choose_mode(requested, isatty, capture, verbosity) == want


def test_elapsed_format() -> None:
    assert [fmt_elapsed(s) for s in (0, 61.9, 3599, 3725)] == ["0:00", "1:01", "59:59", "1:02:05"]


def test_cell_ids_and_digest() -> None:
    ids = CellIds(TWO.cells)
    assert ids.of(node("t", A)) == A
    assert ids.of(f"testcases/test_x.py::t[{B}-extra]") == B
    assert ids.of("tests/test_x.py::plain") is None
    assert matrix_digest(TWO) == matrix_digest(load_matrix(DATA / "matrices" / "two.yaml"))
    assert matrix_digest(TWO) != matrix_digest(load_matrix(DATA / "matrices" / "three.yaml"))


def test_plain_lines_follow_each_cell() -> None:
    selected = [node(t, c) for c in (A, B) for t in TESTS]
    p, tr, now = progress("plain", selected)
    run_cell(p, tr, now, A)
    run_cell(p, tr, now, B, fail=TESTS[1])
    p.pytest_sessionfinish()
    lines = [ln for ln in tr.buf.getvalue().splitlines() if ln.startswith("kmatrix:")]
    assert lines == [
        f"kmatrix: {A}: booting (cell 1/2, 0:00)",
        f"kmatrix: {A}: booted in 2.5s; running test_boot.py",
        f"kmatrix: {A}: done in 3.5s, boot 2.5s: 2 passed (1/2 cells done, 0:03)",
        f"kmatrix: {B}: booting (cell 2/2, 0:03)",
        f"kmatrix: {B}: booted in 2.5s; running test_boot.py",
        f"kmatrix: {B}: done in 3.5s, boot 2.5s: 1 failed, 1 passed (2/2 cells done, 0:07)",
    ]
    # pytest's four results are all there, on their own lines between kmatrix's.
    screen = render(tr.buf.getvalue(), 100)
    dots = [ln.removeprefix("testcases/test_boot.py ") for ln in screen if ln.startswith("test")]
    assert dots == ["..", ".F"], screen


def test_plain_line_when_a_cell_does_not_boot_or_changes_suite() -> None:
    n1, n2 = node(TESTS[0], A), node("test_x", A, "test_sched.py")
    p, tr, _ = progress("plain", [n1, n2])
    wrap(p.pytest_runtest_logstart(n1))
    wrap(p.pytest_runtest_logreport(rep(n1, "setup", boot="")))
    wrap(p.pytest_runtest_logstart(n2))
    text = tr.buf.getvalue()
    assert f"kmatrix: {A}: did not boot; running test_boot.py" in text
    assert f"kmatrix: {A}: running test_sched.py" in text


def pytest_alone(selected: list[str]) -> list[str]:
    tr = FakeReporter()
    for n in selected:
        tr.dot(n)
    return render(tr.buf.getvalue(), 100)


def test_tty_status_line_is_erased_around_pytest_writes() -> None:
    selected = [node(t, A) for t in TESTS]
    p, tr, now = progress("tty", selected)
    n = selected[0]
    wrap(p.pytest_runtest_logstart(n))
    # Booting: pytest has written nothing on its line yet; the status is drawn on it.
    screen = render(tr.buf.getvalue(), 100)
    assert screen[-1] == f"kmatrix [0/1 cells done, 0:00] {A} booting 0s", screen
    now[0] += 7.0
    p.show()  # the ticker's redraw
    assert render(tr.buf.getvalue(), 100)[-1].endswith("booting 7s")
    for when in PHASES:
        wrap(p.pytest_runtest_logreport(rep(n, when)), call_dot(tr, n, when))
    screen = render(tr.buf.getvalue(), 100)
    # Now the status sits under pytest's line "testcases/test_boot.py ." and names the test.
    assert screen[-2:] == [
        "testcases/test_boot.py .",
        f"kmatrix [0/1 cells done, 0:07] {A} test_userspace_reached 7s",
    ], screen
    n2 = selected[1]
    wrap(p.pytest_runtest_logstart(n2))
    for when in PHASES:
        wrap(p.pytest_runtest_logreport(rep(n2, when)), call_dot(tr, n2, when))
    p.pytest_sessionfinish()
    screen = render(tr.buf.getvalue(), 100)
    # Exactly pytest's screen plus the cell's done line; no status line left behind.
    done = f"kmatrix: {A}: done in 7.0s, boot 2.5s: 2 passed (1/1 cells done, 0:07)"
    assert [ln for ln in screen if ln] == [*[ln for ln in pytest_alone(selected) if ln], done]
    assert not p.shown and p.stopped.is_set()


def test_off_writes_nothing() -> None:
    selected = [node(t, A) for t in TESTS]
    p, tr, now = progress("off", selected)
    run_cell(p, tr, now, A)
    assert "kmatrix" not in tr.buf.getvalue()


def test_plan_from_xdist_collection_report() -> None:
    plan = RunPlan(TWO, "2/3")
    plan.pytest_xdist_node_collection_finished(None, [node(t, B) for t in TESTS])
    plan.pytest_xdist_node_collection_finished(None, [])  # a second worker's: ignored
    assert plan.tests == {B: 2}
    assert plan.shard == "2/3" and plan.matrix_cells == [A, B]
