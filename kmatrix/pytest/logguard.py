"""The kernel-log guard: a kernel report printed while a test runs fails that test.

Around every test of a booted cell the guard reads the guest's kernel log by /dev/kmsg
sequence number (kmatrix.guest.kmsg), never by timestamp, so it works with printk.time=0
and with caller ids in the lines:

* setup: a VM that booted or was restored since the last read is read once to its end (its
  boot is judged by the boot tests and the cell's logs); otherwise, if anything ran in the
  guest since the last read (a fixture's teardown, a clean-guest restore), what it printed is
  charged to the cell, "between" two tests;
* after the test's call (setup fixtures included): every new kernel report (kmatrix.results
  .logparse) is charged to the test, and one the test does not allow fails it, naming the
  report's title and excerpt;
* before the cell's VM stops or is replaced: what is left is charged to the cell.

That is one small read per test (the agent reads on from where the last read stopped).
Charged reports reach the cell's findings in results.json (CellPool.record) with the test
they were charged to, so nothing is dropped.

A test that provokes reports on purpose declares the kinds it allows::

    @pytest.mark.kmatrix_allow("oom", reason="the OOM killer is what this test checks")
    @pytest.mark.kmatrix_allow("warning", match=r"^WARNING in my_func$")

Allowed reports are recorded (``allowed: true``) but do not fail the test.
"""

from __future__ import annotations

import re
import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pytest
from _pytest.outcomes import Failed  # pytest.fail.Exception, as a class to subclass

from kmatrix.config.specs import Cell
from kmatrix.errors import GuestError, KmatrixError
from kmatrix.guest.guest import Guest
from kmatrix.guest.kmsg import read_kmsg, render_lines
from kmatrix.guest.lifecycle import CellPool
from kmatrix.guest.session import GuestSession
from kmatrix.pytest.stash import cell_of, pool_of
from kmatrix.results.schema import FindingRecord

if TYPE_CHECKING:  # the parser's patterns compile on import: loaded while the first boot runs
    from kmatrix.results.logparse import Finding

ALLOW_MARKER = "kmatrix_allow"
ALLOW_DOC = (
    "kmatrix_allow(*kinds, match=None, reason=None): kernel-log report kinds (oom, warning, "
    "...) this test provokes on purpose; match: a regex the title must contain"
)
EXCERPT_LINES = 40  # of each report, in the failure message (the whole one is in results)


def add_option(group: Any) -> None:
    group.addoption(
        "--kmatrix-no-log-guard",
        action="store_true",
        help="do not read the kernel log around each test (a report then fails no test)",
    )


def register(config: pytest.Config) -> None:
    """Registers the marker, and the guard unless --kmatrix-no-log-guard."""
    config.addinivalue_line("markers", f"{ALLOW_MARKER}: {ALLOW_DOC}")
    if not config.getoption("kmatrix_no_log_guard", False):
        config.pluginmanager.register(LogGuard(config), "kmatrix-logguard")


class KernelLogFailed(Failed):
    """The guard's failure of a test: the kernel reports it did not allow, kept as data so
    known issues (kmatrix.pytest.known) can explain them."""

    def __init__(self, message: str, findings: list[Finding]) -> None:
        super().__init__(message, pytrace=False)
        self.findings = tuple(findings)


@dataclass(frozen=True)
class Allowance:
    kinds: frozenset[str]
    match: re.Pattern[str] | None

    def allows(self, kind: str, title: str) -> bool:
        return kind in self.kinds and (self.match is None or bool(self.match.search(title)))


def allowances(item: pytest.Item) -> list[Allowance]:
    """The test's kmatrix_allow markers; pytest.UsageError naming an unknown kind."""
    from kmatrix.results.logparse import KINDS

    out = []
    for mark in item.iter_markers(ALLOW_MARKER):
        unknown = [k for k in mark.args if k not in KINDS]
        if unknown or not mark.args:
            raise pytest.UsageError(
                f"{item.nodeid}: {ALLOW_MARKER}{mark.args!r}: "
                + (f"unknown kind {unknown[0]!r}" if unknown else "name at least one kind")
                + f" (kinds: {', '.join(KINDS)})"
            )
        match = mark.kwargs.get("match")
        try:
            pattern = re.compile(match) if match else None
        except re.error as e:
            raise pytest.UsageError(f"{item.nodeid}: {ALLOW_MARKER} match: {e}") from None
        out.append(Allowance(frozenset(mark.args), pattern))
    return out


@dataclass
class _Watch:
    """Where the guard stands in one cell's guest."""

    session: GuestSession
    seq: int  # the sequence number of the first record the guard has not read
    requests: int  # the session's request count right after the guard's last read
    last_test: str = ""  # the test the last read was charged to
    lost: int = 0  # records the ring buffer overwrote before the guard read them


@dataclass(frozen=True)
class _Report:
    finding: Finding
    seq: int


class LogGuard:
    """A pytest plugin object; one per process that runs tests."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.watches: dict[str, _Watch] = {}
        self._hooked: set[int] = set()

    # --- reading --------------------------------------------------------------------------

    def _read(self, g: Guest) -> list[_Report]:
        """The kernel reports printed since the last read of this guest."""
        assert g.session is not None
        w = self.watches.get(g.cell.id)
        # From the guard's own mark: a test's log_mark/new_log moves the agent's position.
        own = w is not None and w.session is g.session
        got = read_kmsg(g.session, w.seq if own and w is not None else None)
        lines, seqs = render_lines(got.records, kernel_only=True)
        from kmatrix.results.logparse import parse_kernel_log

        found = parse_kernel_log("\n".join(lines))
        if w is not None and own:
            w.seq = got.next
            w.requests = g.session.requests
            # The ring buffer wrapped between two reads: say so, never pretend it was clean.
            w.lost += got.lost
        return [_Report(f, seqs[f.line - 1]) for f in found]

    def _baseline(self, g: Guest) -> None:
        assert g.session is not None
        got = read_kmsg(g.session)
        self.watches[g.cell.id] = _Watch(g.session, got.next, g.session.requests)

    @staticmethod
    def _charge(
        pool: CellPool, cell: Cell, reports: list[_Report], test: str, phase: str, after: str,
        allowed: list[bool] | None = None,
    ) -> None:  # fmt: skip
        for i, r in enumerate(reports):
            f = r.finding
            pool.charges.setdefault(cell.id, []).append(
                FindingRecord(
                    kind=f.kind,
                    title=f.title,
                    timestamp=f.timestamp,
                    excerpt=f.excerpt,
                    caller=f.caller,
                    source="kmsg",
                    seq=r.seq,
                    test=test,
                    phase=phase,
                    after=after,
                    allowed=bool(allowed and allowed[i]),
                )
            )

    def _hook_pool(self, pool: CellPool) -> None:
        if id(pool) not in self._hooked:
            self._hooked.add(id(pool))
            pool.before_vm_ends.append(lambda g, why: self._leftovers(pool, g, why))

    def _leftovers(self, pool: CellPool, g: Guest, why: str) -> None:
        """Before a cell's VM stops (why == "stop") or is replaced by a clean one: the rest
        of its log goes to the cell."""
        w = self.watches.get(g.cell.id)
        try:
            if w is not None and g.alive and w.session is g.session:
                reports = self._read(g)
                phase = "teardown" if why == "stop" else "between"
                self._charge(pool, g.cell, reports, "", phase, w.last_test)
        except (KmatrixError, OSError):
            pass  # the cell's logs still have whatever it printed
        finally:
            self.watches.pop(g.cell.id, None)

    # --- hooks ----------------------------------------------------------------------------

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        for item in items:
            allowances(item)  # a bad marker is a usage error before any VM starts

    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        # After the plugin's own setup (tryfirst: boot, clean-guest restore), before fixtures.
        cell = cell_of(item)
        if cell is None:
            return
        pool = pool_of(item.config)
        self._hook_pool(pool)
        g = pool.guest_of(cell)
        if g is None or not g.alive or g.session is None or pool.run_of(cell).failed:
            return
        w = self.watches.get(cell.id)
        try:
            if w is None or w.session is not g.session:
                self._baseline(g)
            elif g.session.requests != w.requests:
                reports = self._read(g)
                self._charge(pool, cell, reports, "", "between", w.last_test)
        except (KmatrixError, OSError):
            self.watches.pop(cell.id, None)

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_call(self, item: pytest.Item) -> Generator[None, None, None]:
        try:
            res = yield
        except (GuestError, KeyboardInterrupt):
            raise  # the guest (or the user) is in trouble: no read
        except BaseException as e:
            try:
                bad = self._after(item)
            except (KmatrixError, OSError):
                bad = []  # the test's own failure is the one to report
            if bad and isinstance(e, pytest.skip.Exception):
                # A report fails the test even if it then skipped.
                raise KernelLogFailed(self._message(bad), bad) from e
            if bad:
                item.stash[_BAD_KEY] = bad
            raise
        bad = self._after(item)
        if bad:
            raise KernelLogFailed(self._message(bad), bad)
        return res

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        bad = item.stash.get(_BAD_KEY, None)
        if call.when == "call" and bad and report.failed:
            # The test failed anyway: the reports go with its own failure.
            note = self._message(bad)
            report.sections.append(("kmatrix kernel log", note))
            report.longrepr = f"{report.longreprtext}\n\n{note}"
        return report

    def _after(self, item: pytest.Item) -> list[Finding]:
        """Reads what the test made the kernel print; the reports it does not allow."""
        cell = cell_of(item)
        if cell is None:
            return []
        pool = pool_of(item.config)
        g = pool.guest_of(cell)
        w = self.watches.get(cell.id)
        if g is None or w is None or not g.alive or w.session is not g.session:
            return []
        t0 = time.monotonic()
        lost = w.lost
        reports = self._read(g)  # a GuestError here is the test's: the guest stopped answering
        item.user_properties.append(("kmatrix.log_guard_seconds", f"{time.monotonic() - t0:.3f}"))
        if w.lost > lost:
            item.user_properties.append(
                ("kmatrix.log_guard_lost", f"{w.lost - lost} records overwritten before read")
            )
        rules = allowances(item)
        allowed = [any(a.allows(r.finding.kind, r.finding.title) for a in rules) for r in reports]
        # Kernel test items (kerneltests) fail the case that was running when a report was
        # printed, not the item that happened to run the whole target: such a report is not
        # this item's failure, but it is not allowed either (the record says so; an allowed
        # one would show as harmless in the reports).
        own = getattr(item, "kmatrix_attributes_reports", False)
        self._charge(pool, cell, reports, item.nodeid, "test", "", allowed)
        w.last_test = item.nodeid
        if reports:
            item.user_properties.append(
                (
                    "kmatrix.kernel_log",
                    "; ".join(
                        f"{r.finding.kind}: {r.finding.title}" + _suffix(ok, own)
                        for r, ok in zip(reports, allowed, strict=True)
                    ),
                )
            )
        if own:
            return []
        return [r.finding for r, ok in zip(reports, allowed, strict=True) if not ok]

    @staticmethod
    def _message(bad: list[Finding]) -> str:
        n = len(bad)
        head = f"the kernel reported {n} problem{'s' * (n != 1)} during this test:"
        parts = [head, *(f"  {f.kind}: {f.title}" for f in bad)]
        for f in bad:
            lines = f.excerpt.split("\n")
            more = f"\n  ... ({len(lines) - EXCERPT_LINES} more lines)" * (
                len(lines) > EXCERPT_LINES
            )
            parts.append(f"\n--- {f.title} ---\n" + "\n".join(lines[:EXCERPT_LINES]) + more)
        return "\n".join(parts)


def _suffix(allowed: bool, own: bool) -> str:
    if allowed:
        return " (allowed)"
    return " (failed the case that printed it)" if own else ""


_BAD_KEY = pytest.StashKey[list["Finding"]]()
