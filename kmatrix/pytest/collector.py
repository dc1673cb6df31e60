"""Run results: one record per (cell, test), collected from pytest reports, written as JSON.

Collection happens where reports arrive, which under xdist is the controller, so workers and
controller never write the same file. Per-cell facts (boot record, kernel-log findings,
artefact paths) are files the worker left in the cell's directory; they are read at the end.
results.json is rewritten after every cell's last test, and between those at most as often
as keeps the writing to WRITE_SHARE of the run's time (a rewrite costs time in proportion to
the results so far: after every test, a run was quadratic in its tests). It is written
through a temporary name, so an interrupted run still leaves a whole, readable file; a
signalled run writes it whole at the end.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import platform
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kmatrix import __version__
from kmatrix.config.specs import Cell, Matrix
from kmatrix.errors import InputError
from kmatrix.pytest import applicability, known, rerun
from kmatrix.pytest.crashguard import guarded
from kmatrix.pytest.plan import RunPlan
from kmatrix.results import attribution, rundirs
from kmatrix.results.runs import Run, summarize_failure, write_run
from kmatrix.results.schema import (
    BootRecord,
    CellResult,
    FindingRecord,
    Outcome,
    RunDocument,
    RunInfo,
    TestResult,
    Verdict,
    cell_status,
)
from kmatrix.vm.accel import qemu_version

METRIC_PREFIX = "metric."
T = TypeVar("T")


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def outcome_of(report: pytest.TestReport) -> Outcome | None:
    """The test's outcome from one phase report, or None if this phase adds nothing."""
    if applicability.is_not_applicable(report):
        return applicability.OUTCOME
    if rerun.is_flaky(report):
        return rerun.OUTCOME  # passed on a clean rerun (failed under --kmatrix-strict)
    if known.is_known(report):
        return known.OUTCOME  # failed only on kernel reports that known issues explain
    xfail = hasattr(report, "wasxfail")
    if report.when == "call":
        if xfail:
            return Outcome.XPASSED if report.passed else Outcome.XFAILED
        return Outcome.named(report.outcome)
    if report.failed:
        return Outcome.ERROR
    if report.skipped:
        return Outcome.XFAILED if xfail else Outcome.SKIPPED
    return None


def _metric(value: str) -> float | None:
    """A recorded metric's number; None for one that is not a finite number (JSON has no
    NaN or Infinity, and a comparison of them would mean nothing)."""
    try:
        v = float(value)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def read_cell_file(path: Path, read: Callable[[object, Path], T], default: T) -> T:
    """A per-cell file the worker left (boot.json, findings.json), typed; default when it is
    missing (the cell never booted) and, with a warning, when it cannot be read."""
    try:
        return read(json.loads(path.read_text()), path)
    except FileNotFoundError:
        return default
    except (OSError, ValueError, RecursionError, InputError) as e:
        sys.stderr.write(f"kmatrix: {path}: ignored: {e}\n")
        return default


# Between cells, results.json (and the per-cell JUnit) is rewritten no more often than keeps
# the writing to this share of the time (a rewrite that takes 0.5 s comes at most every 10 s).
WRITE_SHARE = 0.05
_clock = time.monotonic  # the write pacing's clock (a test steps it)


class ResultsCollector:
    """A pytest plugin object registered on the process that sees every report."""

    def __init__(
        self, matrix: Matrix, reports: Path, args: list[str], root: Path | None = None
    ) -> None:
        self.matrix = matrix
        self.reports = reports  # this run's directory
        self.root = root  # the reports root whose `latest` may point here
        self.records: dict[str, TestResult] = {}
        self.cells_by_id = {c.id: c for c in matrix.cells}
        self.cells_seen: list[str] = []
        self.started = _now()
        self.t0 = dt.datetime.now(dt.UTC)
        self.interrupted = False
        self.exitstatus: int | None = None
        self.run_id = str(uuid.uuid4())
        self.args = args
        # The plan (matrix digest, shard, planned cells) for the "run" section, once known.
        self.plan: RunPlan | None = None
        self.gate_note = ""  # why --kmatrix-gate series turned a red run green
        self.done: dict[str, set[str]] = {}  # cell id -> the tests whose teardown came
        self._last_write = (0.0, 0.0)  # when the last write ended, and what it cost (monotonic)

    # --- pytest hooks -----------------------------------------------------------------------

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        props = {str(k): str(v) for k, v in report.user_properties}
        cell_id = props.get("kmatrix.cell")
        if cell_id is None:
            # The plugin adds the properties only after the cell booted; a boot that raised
            # (an infra error) leaves the cell to be read from the node id's parameter.
            param = report.nodeid.partition("[")[2].removesuffix("]")
            cell_id = param if param in self.cells_by_id else None
        if cell_id is None:
            return
        outcome = outcome_of(report)
        rec = self.records.get(report.nodeid)
        if rec is None:
            rec = TestResult(
                cell=cell_id, test=report.nodeid.split("[", 1)[0], nodeid=report.nodeid,
                outcome=Outcome.PASSED,
            )  # fmt: skip
            self.records[report.nodeid] = rec
            if cell_id not in self.cells_seen:
                self.cells_seen.append(cell_id)
        rec.duration += report.duration
        for k, v in props.items():
            if k.startswith(METRIC_PREFIX):
                number = _metric(v)
                if number is not None:
                    rec.metrics[k.removeprefix(METRIC_PREFIX)] = number
            else:
                rec.properties[k] = v
        if outcome is not None and (rec.outcome is Outcome.PASSED or outcome is Outcome.ERROR):
            # A teardown error after a pass still makes the test an error.
            rec.outcome = outcome
            if report.longrepr is not None:
                rec.longrepr = report.longreprtext[-20000:]
                crash = getattr(report.longrepr, "reprcrash", None)
                if crash is not None:
                    rec.message = str(crash.message)[:2000]
                elif isinstance(report.longrepr, tuple):
                    rec.message = str(report.longrepr[2])[:2000]
                else:
                    # A plain-text report (the plugin appends the console tail): its first
                    # "E   " line is the assertion; its first line is only source context.
                    rec.message = summarize_failure("", rec.longrepr)[:2000]
        if report.when == "teardown":
            done = self.done.setdefault(cell_id, set())
            first = report.nodeid not in done
            done.add(report.nodeid)
            planned = self.plan.tests.get(cell_id) if self.plan is not None else None
            # The cell's last planned test, once (a rerun's reports come again later).
            if (first and len(done) == planned) or self._write_due():
                self.write()

    def _write_due(self) -> bool:
        ended, cost = self._last_write
        return _clock() - ended >= cost / WRITE_SHARE

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self.records:
            return
        tr = terminalreporter
        tr.section("kmatrix", sep="-")
        reasons = sorted(
            {
                (
                    r.properties.get("kmatrix.accelerator", ""),
                    r.properties.get("kmatrix.accel_reason", ""),
                )
                for r in self.records.values()
            }
        )
        for acc, why in reasons:
            if acc:
                tr.write_line(f"accelerator {acc}: {why}")
        statuses = [self.cell_entry(c).status for c in self.cells_seen]
        counts = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
        tr.write_line(f"{len(self.cells_seen)} cells ({counts}); reports in {self.reports}")
        for c in self.document().cells:
            a = c.attribution
            if a is None or a.verdict is attribution.PASS:
                continue
            what = ", ".join(f"{n} {Verdict.named(v).label}" for v, n in a.counts.items())
            tr.write_line(
                f"{c.id}: {a.verdict.label} ({what}; baseline {c.baseline_cell}: "
                f"{a.baseline_status})",
                red=a.verdict in (attribution.SERIES, attribution.UNDETERMINED),
            )
        if self.gate_note:
            tr.write_line(f"--kmatrix-gate series: exit status 0: {self.gate_note}", green=True)

    def pytest_keyboard_interrupt(self) -> None:
        self.interrupted = True

    @pytest.hookimpl(trylast=True)
    @guarded(lambda self: self.reports)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if session.config.option.collectonly:
            return  # nothing ran: the last run's results and reports stay as they were
        self.exitstatus = int(exitstatus)
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            self.interrupted = True
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if not self.records and not self._started():
            # Collection only, or nothing selected: no run to record (a leftover pytest
            # JUnit of zero tests is removed), and nothing to call green. A run stopped
            # before its first result but after a VM started is recorded (its logs are
            # there), as interrupted, never as the latest complete run.
            self._discard_empty_run()
            if tr is not None and not session.config.option.collectonly:
                tr.write_line("kmatrix: no test ran: nothing recorded", yellow=True)
            return
        gated = (
            session.config.getoption("kmatrix_gate", "all") == "series"
            and exitstatus == pytest.ExitCode.TESTS_FAILED
        )
        # Only what the series caused (or no baseline could judge) fails the run.
        if gated and not attribution.gating(self.document()):
            session.exitstatus = self.exitstatus = int(pytest.ExitCode.OK)
            self.gate_note = "every failure is pre-existing, flaky or on a baseline"
        self.write()
        self.write_reports(session.config)
        if self.root is not None and tr is not None:
            moved, why = rundirs.update_latest(self.root, self.reports, self.document())
            where = self.root / rundirs.LATEST
            tr.write_line(
                f"kmatrix: {where} -> {self.reports.name}"
                if moved
                else f"kmatrix: {where} left as it was: {why}"
            )
        elif self.root is not None:
            rundirs.update_latest(self.root, self.reports, self.document())

    def _started(self) -> bool:
        """Whether the run wrote anything of its own (a cell's logs) besides pytest's JUnit."""
        try:
            return any(p.name != "junit.xml" for p in self.reports.iterdir())
        except OSError:
            return False

    def _discard_empty_run(self) -> None:
        with contextlib.suppress(OSError):
            (self.reports / "junit.xml").unlink()
        with contextlib.suppress(OSError):
            self.reports.rmdir()  # only if nothing else is in it

    def write_reports(self, config: pytest.Config) -> None:
        """JUnit per cell, index.html, summary.md, kcidb.json (and compare.json against a
        baseline), from the results.json just written; a failing writer never fails the run."""
        from kmatrix.reports.writer import ReportOptions, write_reports

        def opt(name: str) -> Any:
            return config.getoption(name, None)

        tr = config.pluginmanager.get_plugin("terminalreporter")
        try:
            baseline = opt("kmatrix_baseline") or []
            known = opt("kmatrix_known_issues")
            result = write_reports(
                self.reports,
                ReportOptions(
                    baseline=[Path(b) for b in baseline],
                    known_issues=Path(known) if known else None,
                    kcidb_origin=opt("kmatrix_kcidb_origin") or "kmatrix",
                    artifacts_url=opt("kmatrix_artifacts_url"),
                    validate_kcidb=False,
                ),
            )
        except Exception as e:
            # Reports are derived data; results.json is already safe on disk.
            if tr is not None:
                tr.write_line(f"kmatrix: reports not written: {type(e).__name__}: {e}", red=True)
            return
        if tr is None:
            return
        names = ", ".join(p.name for p in result.written.values())
        tr.write_line(f"kmatrix reports in {self.reports}: results.json, {names}")
        for name, err in result.errors.items():
            tr.write_line(f"kmatrix: {name} report failed: {err}", red=True)
        c = result.comparison
        if c is not None:
            n = len(c.regressions)
            tr.write_line(
                f"kmatrix: against the baseline: {n} regression(s)"
                + " (see compare.json)" * bool(n),
                red=bool(n),
                green=not n,
            )

    # --- output -----------------------------------------------------------------------------

    def cell_dir(self, cell: Cell) -> Path:
        return self.reports / "cells" / cell.slug

    def cell_entry(self, cell_id: str) -> CellResult:
        cell = self.cells_by_id[cell_id]
        d = self.cell_dir(cell)
        boot = read_cell_file(d / "boot.json", BootRecord.from_json, BootRecord())
        findings: list[FindingRecord] = read_cell_file(d / "findings.json", read_findings, [])
        outcomes = [r.outcome for r in self.records.values() if r.cell == cell_id]
        artifacts = {
            name: str((d / fname).relative_to(self.reports))
            for name, fname in (
                ("console", "console.log"),
                ("dmesg", "dmesg.log"),
                ("qemu_log", "qemu.log"),
                ("commands", "commands.log"),
                ("screendump", "screendump.png"),  # the display, when a test saved it
            )
            if (d / fname).is_file()
        }
        return CellResult(
            id=cell_id,
            kernel=cell.kernel.name,
            kernel_release=boot.release,
            cpu=cell.cpu.name,
            cpu_model=cell.cpu.model,
            device=cell.device.name,
            smp=cell.smp,
            memory_mib=cell.memory,
            boot=boot,
            findings=findings,
            artifacts=artifacts,
            status=cell_status(outcomes),
            counts={str(o): outcomes.count(o) for o in sorted(set(outcomes))},
            baseline_cell=cell.baseline_cell,
            baseline_of=cell.baseline_of,
            baseline_label=cell.kernel.baseline_label,
        )

    def document(self) -> RunDocument:
        finished = dt.datetime.now(dt.UTC)
        accels = sorted(
            {r.properties.get("kmatrix.accelerator", "") for r in self.records.values()} - {""}
        )
        plan = self.plan
        info = RunInfo(
            id=self.run_id,
            started=self.started,
            finished=finished.isoformat(timespec="seconds"),
            duration=round((finished - self.t0).total_seconds(), 3),
            interrupted=self.interrupted,
            exitstatus=self.exitstatus,
            matrix=str(self.matrix.path),
            matrix_name=self.matrix.name,
            kmatrix=__version__,
            qemu=qemu_version(),
            accelerators=accels,
            host=platform.node(),
            host_kernel=platform.release(),
            python=platform.python_version(),
            args=self.args,
            argv=sys.argv,
            matrix_digest=plan.digest if plan else "",
            matrix_cells=plan.matrix_cells if plan else [],
            shard=plan.shard if plan else None,
            planned_cells=dict(plan.tests) if plan else {},
        )
        doc = RunDocument(
            run=info,
            cells=[self.cell_entry(c) for c in self.cells_seen],
            results=list(self.records.values()),
        )
        return attribution.attach(doc)

    def write(self) -> None:
        t0 = _clock()
        try:
            self._write()
        finally:
            end = _clock()
            self._last_write = (end, end - t0)

    def _write(self) -> None:
        doc = self.document()
        try:
            write_run(self.reports / "results.json", doc)
        except OSError as e:
            # Disk full or the like: keep the run (and pytest's own JUnit) going; say why once.
            if not getattr(self, "write_error", None):
                self.write_error = str(e)
                sys.stderr.write(f"kmatrix: cannot write {self.reports / 'results.json'}: {e}\n")
            return
        # The per-cell JUnit follows results.json, so even a killed run leaves a valid one;
        # a failure here is reported by the full report pass at the end of the session.
        with contextlib.suppress(Exception):
            from kmatrix.reports import junit as junit_cells

            junit_cells.write(Run(self.reports / "results.json", doc), self.reports)


def read_findings(data: object, source: Path) -> list[FindingRecord]:
    """findings.json: a list of the cell's kernel-log findings."""
    if not isinstance(data, list):
        raise InputError(f"{source}: expected a list of findings")
    return [FindingRecord.from_json(f, source, f"[{i}]") for i, f in enumerate(data)]
