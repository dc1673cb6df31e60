"""Live progress per cell: booting, which test or suite runs, done, elapsed.

`--kmatrix-progress=auto|tty|plain|off`. Plain mode (auto when output is not a terminal, as in
CI logs) writes one line per cell event through pytest's terminal reporter, so it interleaves
with pytest's own output the way pytest's own messages do. TTY mode also keeps one status line
below pytest's current line, redrawn every second (elapsed times) and erased around every write
pytest makes, so pytest's output stays intact above it.

Registered only on the process that sees every report (the xdist controller, or the only
process); its cell boundaries come from the run plan (tests per cell).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import pytest

from kmatrix.pytest import applicability
from kmatrix.pytest.collector import outcome_of
from kmatrix.pytest.plan import RunPlan
from kmatrix.results.schema import Outcome

MODES = ("auto", "tty", "plain", "off")
TICK = 1.0  # seconds between redraws of the tty status line


def add_option(group: Any) -> None:
    group.addoption(
        "--kmatrix-progress",
        choices=MODES,
        default="auto",
        help="per-cell progress: a live status line on a terminal (tty), one line per cell "
        "event (plain, e.g. CI logs), or off; auto picks tty or plain (default: auto)",
    )


def choose_mode(requested: str, isatty: bool, capture: str, verbosity: int) -> str:
    """The effective mode; a live line needs a terminal and pytest's capture on (with -s
    tests write to the terminal themselves)."""
    if requested == "off" or (requested == "auto" and verbosity < -1):
        return "off"
    if requested == "plain":
        return "plain"
    if isatty and capture != "no":
        return "tty"
    return "plain"


def fmt_elapsed(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


@dataclass
class CellState:
    id: str
    started: float
    expected: int  # selected tests of the cell (0: unknown)
    phase: str = "booting"
    test: str = ""
    test_started: float = 0.0
    module: str = ""
    finished: int = 0  # tests whose teardown was reported
    outcomes: dict[str, Outcome] = field(default_factory=dict)  # nodeid -> outcome
    boot_seconds: str = ""
    done: float | None = None


def _short(nodeid: str) -> tuple[str, str]:
    """('test_boot.py', 'test_online_cpus') from a node id with its parameters."""
    path, _, rest = nodeid.partition("::")
    return path.rsplit("/", 1)[-1], rest.split("[", 1)[0]


class Progress:
    def __init__(self, config: pytest.Config, plan: RunPlan, mode: str) -> None:
        self.config = config
        self.plan = plan
        self.mode = mode
        self.cells: dict[str, CellState] = {}
        self.t0 = time.monotonic()
        self.lock = threading.RLock()
        self.shown = False  # the tty status line is on screen
        self.column = 0  # pytest's cursor column under the status line (-1: on its line)
        self.stopped = threading.Event()
        self.thread: threading.Thread | None = None
        self.clock = time.monotonic
        self.pending: list[str] = []

    # --- output -----------------------------------------------------------------------------

    @property
    def tr(self) -> Any:
        return self.config.pluginmanager.get_plugin("terminalreporter")

    def line(self, text: str) -> None:
        tr = self.tr
        if tr is None or self.mode == "off":
            return
        # pytest -q writes its dots without a path, which ensure_newline does not end.
        tr.ensure_newline()
        if tr._tw.width_of_current_line:
            tr._tw.line()
        tr._tw.line(f"kmatrix: {text}")

    def flush(self) -> None:
        """Writes the cells' "done" lines, held back until pytest finished its own line
        (its [NN%] would otherwise land on the line after ours)."""
        lines, self.pending = self.pending, []
        for text in lines:
            self.line(text)

    def elapsed(self) -> str:
        return fmt_elapsed(self.clock() - self.t0)

    def totals(self) -> str:
        done = sum(1 for c in self.cells.values() if c.done is not None)
        total = len(self.plan.tests) if self.plan.known else 0
        return f"{done}/{total or '?'} cells done, {self.elapsed()}"

    def status(self, width: int) -> str:
        now = self.clock()
        parts = []
        for c in self.cells.values():
            if c.done is not None:
                continue
            if c.phase == "booting":
                parts.append(f"{c.id} booting {now - c.started:.0f}s")
            else:
                parts.append(f"{c.id} {c.test} {now - c.test_started:.0f}s")
        text = f"kmatrix [{self.totals()}] " + " | ".join(parts)
        return text[: max(10, width - 1)]

    # The status line sits on the line below pytest's current one; pytest's writer does not
    # know about it, so it is erased (and the cursor put back at pytest's column) before
    # pytest writes, and redrawn after.
    def _raw(self, s: str) -> None:
        tr = self.tr
        if tr is None:
            return
        f = tr._tw._file
        f.write(s)
        f.flush()

    def hide(self) -> None:
        if self.mode != "tty":
            return
        with self.lock:
            if self.shown:
                if self.column < 0:  # drawn on pytest's (then empty) line
                    self._raw("\r\x1b[K")
                else:
                    back = f"\x1b[{self.column}C" if self.column else ""
                    self._raw("\r\x1b[K\x1b[A" + back)
                self.shown = False

    def show(self) -> None:
        if self.mode != "tty" or self.stopped.is_set() or not self._running():
            return
        tr = self.tr
        if tr is None:
            return
        with self.lock:
            width = tr._tw.fullwidth
            if self.shown:
                self._raw("\r\x1b[K" + self.status(width))
            else:
                col = min(tr._tw.width_of_current_line, width - 1)
                self.column = col if col else -1
                self._raw(("\n" if col else "\r") + self.status(width))
                self.shown = True

    def _running(self) -> bool:
        return any(c.done is None for c in self.cells.values())

    def _tick(self) -> None:
        while not self.stopped.wait(TICK):
            with self.lock:
                if self.shown:
                    self.show()

    def stop(self) -> None:
        self.hide()
        self.stopped.set()

    # --- state ------------------------------------------------------------------------------

    def start_test(self, nodeid: str) -> None:
        cid = self.plan.cell_ids.of(nodeid)
        if cid is None:
            return
        now = self.clock()
        module, test = _short(nodeid)
        c = self.cells.get(cid)
        if c is None or c.done is not None:
            c = CellState(cid, now, self.plan.tests.get(cid, 0))
            self.cells[cid] = c
            n = list(self.plan.tests).index(cid) + 1 if cid in self.plan.tests else "?"
            total = len(self.plan.tests) or "?"
            if self.mode == "plain":
                self.line(f"{cid}: booting (cell {n}/{total}, {self.elapsed()})")
        elif c.phase != "booting" and module != c.module and self.mode == "plain":
            self.line(f"{cid}: running {module}")
        if c.phase != "booting":
            c.module = module
        c.test, c.test_started = test, now

    def report(self, report: pytest.TestReport) -> None:
        cid = self.plan.cell_ids.of(report.nodeid)
        c = self.cells.get(cid) if cid is not None else None
        if c is None:
            return
        if (
            report.when == "setup"
            and c.phase == "booting"
            and not applicability.is_not_applicable(report)  # decided without a boot
        ):
            props = {str(k): str(v) for k, v in report.user_properties}
            c.boot_seconds = props.get("kmatrix.boot_seconds", "")
            c.phase = "running"
            c.module, _ = _short(report.nodeid)
            if self.mode == "plain":
                if report.failed:
                    what = "set-up failed"
                elif report.skipped:
                    what = "skipped"  # e.g. a vfio-host cell whose host lacks the device
                elif c.boot_seconds:
                    what = f"booted in {float(c.boot_seconds):.1f}s"
                else:
                    what = "did not boot"
                self.line(f"{c.id}: {what}; running {c.module}")
        outcome = outcome_of(report)
        if outcome is not None:
            prev = c.outcomes.get(report.nodeid)
            if prev is None or prev is Outcome.PASSED or outcome is Outcome.ERROR:
                c.outcomes[report.nodeid] = outcome
        if report.when == "teardown":
            c.outcomes.setdefault(report.nodeid, Outcome.PASSED)
            c.finished += 1
            if c.expected and c.finished >= c.expected:
                self.finish(c)

    def finish(self, c: CellState) -> None:
        c.done = self.clock()
        counts: dict[str, int] = {}
        for o in c.outcomes.values():
            counts[o] = counts.get(o, 0) + 1
        summary = ", ".join(f"{n} {o.replace('_', ' ')}" for o, n in sorted(counts.items()))
        boot = f", boot {float(c.boot_seconds):.1f}s" if c.boot_seconds else ""
        self.pending.append(
            f"{c.id}: done in {c.done - c.started:.1f}s{boot}: {summary} ({self.totals()})"
        )

    # --- hooks ------------------------------------------------------------------------------

    def _around(self) -> Generator[None, None, None]:
        with self.lock:
            self.hide()
            try:
                yield
            finally:
                self.show()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logstart(self, nodeid: str) -> Generator[None, None, None]:
        with self.lock:
            self.hide()
            self.flush()
            self.start_test(nodeid)  # its lines go before pytest's (-v: the test's name)
            yield
            if self.thread is None and self.mode == "tty":
                self.thread = threading.Thread(target=self._tick, name="kmatrix-progress")
                self.thread.daemon = True
                self.thread.start()
            self.show()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logreport(self, report: pytest.TestReport) -> Generator[None, None, None]:
        with self.lock:
            self.hide()
            yield
            self.report(report)
            self.show()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True)
    def pytest_runtest_logfinish(self) -> Generator[None, None, None]:
        with self.lock:
            self.hide()
            yield
            self.flush()
            self.show()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True, optionalhook=True)
    def pytest_testnodedown(self) -> Generator[None, None, None]:
        yield from self._around()

    @pytest.hookimpl(hookwrapper=True, tryfirst=True, optionalhook=True)
    def pytest_handlecrashitem(self) -> Generator[None, None, None]:
        yield from self._around()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        tr = self.tr
        if tr is None:
            return
        live_log = bool(self.config.getoption("log_cli_level", None)) or bool(
            self.config.getini("log_cli")
        )
        self.mode = choose_mode(
            str(self.config.getoption("kmatrix_progress", "auto") or "auto"),
            _isatty(tr) and not live_log,
            str(self.config.getoption("capture", "fd")),
            self.config.get_verbosity(),
        )
        self.t0 = self.clock()

    @pytest.hookimpl(tryfirst=True)
    def pytest_keyboard_interrupt(self) -> None:
        self.stop()

    @pytest.hookimpl(tryfirst=True)
    def pytest_internalerror(self) -> None:
        self.stop()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self) -> None:
        self.stop()
        self.flush()


def _isatty(tr: Any) -> bool:
    f = getattr(tr._tw, "_file", None)
    try:
        return bool(f is not None and f.isatty()) and os.environ.get("TERM") != "dumb"
    except (OSError, ValueError):
        return False


def register(config: pytest.Config, plan: RunPlan) -> Progress | None:
    """Registers progress on this (controller) process unless it is off; the terminal
    reporter does not exist yet at configure time, so the mode is chosen at session start."""
    if (config.getoption("kmatrix_progress", "auto") or "auto") == "off":
        return None
    p = Progress(config, plan, "off")
    config.pluginmanager.register(p, "kmatrix-progress")
    return p
