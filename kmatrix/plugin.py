"""The pytest plugin: one test per (cell, testcase), one boot per cell.

Tests that take the `cell` fixture (directly or through `guest`, `booted`, `qmp`, `kernel`)
are parametrized over the matrix's cells, with the cell id as the parameter id, so
`-k Haswell` or `-k "6.12 and boot"` select what users expect. Items are ordered cell by
cell; a cell boots when its first test sets up and powers off after its last one. Under
xdist, a scheduler keeps every test of a cell on one worker.
"""

from __future__ import annotations

import contextlib
import os
import platform
import signal
from collections.abc import Callable, Generator
from dataclasses import asdict
from pathlib import Path
from typing import Any, cast

import pytest

from kmatrix import __version__, progress, shard
from kmatrix.accel import qemu_version
from kmatrix.errors import (
    BuildFailure,
    GuestError,
    HostDeviceUnavailable,
    InfraError,
    InputError,
    KmatrixError,
    MatrixError,
)
from kmatrix.guest import BootFailure, Guest, console_tail
from kmatrix.kernel import KernelArtifact
from kmatrix.logparse import findings_summary, parse_kernel_log
from kmatrix.machine import kill_all
from kmatrix.matrix import Cell, Matrix, load_matrix
from kmatrix.plan import RunPlan
from kmatrix.results import ResultsCollector
from kmatrix.runs import write_json_atomic
from kmatrix.session import GuestSession

MATRIX_KEY = pytest.StashKey[Matrix | None]()
POOL_KEY = pytest.StashKey["CellPool"]()
SHARD_EMPTY_KEY = pytest.StashKey[str]()  # "I/N" when the shard got no cell at all
SUITE_MARKERS = {
    "boot": "boot smoke tests: userspace, release, CPUs, CPU flags, clean kernel log, poweroff",
    "sched": "scheduler suite",
    "memory": "memory-management suite",
    "driver": "driver and device suite",
}


# --- options and configuration --------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kmatrix", "kmatrix: kernels x CPU models x device profiles in QEMU")
    g.addoption(
        "--kmatrix-matrix", metavar="PATH", help="matrix file (default: matrix/default.yaml)"
    )
    g.addoption(
        "--kmatrix-accel",
        choices=("auto", "kvm", "tcg"),
        help="override the matrix's accelerator (auto: KVM only after a probe boot works)",
    )
    g.addoption(
        "--kmatrix-reports", metavar="DIR", default="reports", help="output directory (reports)"
    )
    g.addoption(
        "--kmatrix-no-direct-boot",
        action="store_true",
        help="boot the bzImage as given instead of its extracted PVH vmlinux",
    )
    g.addoption(
        "--kmatrix-retries",
        type=int,
        default=1,
        metavar="N",
        help="retry a boot that failed for host or QEMU reasons N times (kernel failures never)",
    )
    g.addoption(
        "--kmatrix-shard",
        metavar="I/N",
        help="run only shard I of N (whole cells, deterministic; see --kmatrix-durations)",
    )
    g.addoption(
        "--kmatrix-durations",
        metavar="RESULTS_JSON",
        help="an earlier results.json whose durations balance the shards and order the cells "
        "handed to xdist workers (default for -n: the last results.json in the reports dir)",
    )
    progress.add_option(g)
    g.addoption(
        "--kmatrix-baseline",
        metavar="DIR",
        action="append",
        help="an earlier run (reports dir or results.json) to compare with; repeatable",
    )
    g.addoption(
        "--kmatrix-known-issues",
        metavar="YAML",
        help="known kernel-log signatures (default: known-issues.yaml beside the matrix)",
    )
    g.addoption(
        "--kmatrix-kcidb-origin", metavar="NAME", help="origin of the KCIDB export (kmatrix)"
    )
    g.addoption(
        "--kmatrix-artifacts-url",
        metavar="URL",
        help="where the reports directory is published (log URLs in the KCIDB export)",
    )
    parser.addini("kmatrix_matrix", "default matrix file, relative to the rootdir")


def _matrix_path(config: pytest.Config) -> Path | None:
    opt = config.getoption("kmatrix_matrix")
    if opt:
        return Path(opt)
    ini = config.getini("kmatrix_matrix")
    if ini:
        return config.rootpath / str(ini)
    default = config.rootpath / "matrix" / "default.yaml"
    return default if default.is_file() else None


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, doc in SUITE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    config.addinivalue_line("markers", "kmatrix_final: run last within its cell (e.g. poweroff)")
    config.addinivalue_line(
        "markers",
        "kmatrix_clean: run on a just-booted guest (the cell's post-boot snapshot restored, "
        "else a reboot)",
    )
    path = _matrix_path(config)
    try:
        matrix = load_matrix(path) if path is not None else None
    except MatrixError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None
    config.stash[MATRIX_KEY] = matrix
    reports = Path(config.getoption("kmatrix_reports"))
    if not reports.is_absolute():
        reports = Path(config.invocation_params.dir) / reports
    config.stash[POOL_KEY] = CellPool(
        reports,
        accel=config.getoption("kmatrix_accel"),
        direct_boot=not config.getoption("kmatrix_no_direct_boot"),
        retries=config.getoption("kmatrix_retries"),
    )
    # A cell's tests share one VM, so xdist must hand out whole cells (see the scheduler below).
    if getattr(config.option, "numprocesses", None) and getattr(config.option, "dist", "") in (
        "load",
        "no",
    ):
        config.option.dist = "loadscope"
    if not hasattr(config, "workerinput"):
        _install_signal_handlers()
        if matrix is not None:
            collector = ResultsCollector(matrix, reports, list(config.invocation_params.args))
            config.pluginmanager.register(collector, "kmatrix-results")
            # The plan (tests per cell, from collection or xdist's collection report) feeds
            # the live progress and results.json's shard facts for `kmatrix merge`.
            plan = RunPlan(matrix, config.getoption("kmatrix_shard"))
            config.pluginmanager.register(plan, "kmatrix-plan")
            collector.meta_extra = plan.meta
            progress.register(config, plan)


def _install_signal_handlers() -> None:
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so teardown and reports still run."""

    def on_term(signum: int, frame: object) -> None:
        kill_all()
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, on_term)


def pytest_report_header(config: pytest.Config) -> list[str]:
    m = config.stash.get(MATRIX_KEY, None)
    if m is None:
        return ["kmatrix: no matrix"]
    return [f"kmatrix {__version__}: matrix {m.path} ({len(m.cells)} cells), QEMU {qemu_version()}"]


# --- parametrization and ordering -----------------------------------------------------------


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "cell" not in metafunc.fixturenames:
        return
    matrix = metafunc.config.stash.get(MATRIX_KEY, None)
    if matrix is None:
        raise pytest.UsageError(
            "kmatrix: no matrix (pass --kmatrix-matrix PATH or create matrix/default.yaml)"
        )
    metafunc.parametrize("cell", matrix.cells, ids=[c.id for c in matrix.cells])


def cell_of(item: pytest.Item) -> Cell | None:
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return None
    c = callspec.params.get("cell")
    return c if isinstance(c, Cell) else None


# trylast: after -k/-m deselection, so shards split (and balance) what was actually selected.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    matrix = config.stash.get(MATRIX_KEY, None)
    if matrix is None:
        return
    order = {c.id: i for i, c in enumerate(matrix.cells)}
    position = {id(it): i for i, it in enumerate(items)}

    def key(it: pytest.Item) -> tuple[int, int, int]:
        c = cell_of(it)
        final = 1 if it.get_closest_marker("kmatrix_final") else 0
        return (order[c.id] if c else -1, final, position[id(it)])

    items.sort(key=key)
    _mark_expected(items)
    spec = config.getoption("kmatrix_shard")
    if spec:
        _select_shard(config, items, spec)
    _plan_snapshots(config, items)


def _plan_snapshots(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Cells whose first boot is saved for restores: those with a kmatrix_clean test that is
    not the cell's first (the first one gets the fresh boot anyway)."""
    pool = config.stash.get(POOL_KEY, None)
    if pool is None:
        return
    seen: set[str] = set()
    for it in items:
        c = cell_of(it)
        if c is None:
            continue
        if c.id in seen and it.get_closest_marker("kmatrix_clean"):
            pool.snapshot_cells.add(c.id)
        seen.add(c.id)


class NoBootFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """Raised for every test of a cell whose kernel never reached userspace."""


class BuildFailed(pytest.fail.Exception):  # type: ignore[misc,name-defined]
    """Raised for every test of a cell whose kernel did not build."""


_EXPECT_RAISES: dict[str, type[BaseException] | None] = {
    "no-boot": NoBootFailed,
    "build-fail": BuildFailed,
    "fail": None,  # any failure of the test
}


def _mark_expected(items: list[pytest.Item]) -> None:
    """The matrix's `expect:` rules as strict xfail markers: a cell expected not to boot is
    xfailed only by its boot failure; if it boots, its tests XPASS(strict), i.e. fail."""
    for it in items:
        c = cell_of(it)
        exp = c.expected(getattr(it, "originalname", it.name)) if c is not None else None
        if exp is None:
            continue
        reason = f"expected {exp.outcome}" + (f": {exp.reason}" if exp.reason else "")
        it.add_marker(
            pytest.mark.xfail(reason=reason, strict=True, raises=_EXPECT_RAISES[exp.outcome])
        )


def _select_shard(config: pytest.Config, items: list[pytest.Item], spec: str) -> None:
    try:
        index, total = shard.parse_spec(spec)
        dpath = config.getoption("kmatrix_durations")
        weights = shard.durations_from(Path(dpath)) if dpath else {}
    except InputError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None
    cells = list(dict.fromkeys(c.id for it in items if (c := cell_of(it)) is not None))
    if not weights:
        # Without history, a cell weighs as many tests as it has selected.
        for it in items:
            c = cell_of(it)
            if c is not None:
                weights[c.id] = weights.get(c.id, 0.0) + 1.0
    owner = shard.assign(cells, weights, total)
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for it in items:
        c = cell_of(it)
        (keep if c is None or owner[c.id] == index else drop).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    if cells and not keep:
        config.stash[SHARD_EMPTY_KEY] = f"{index}/{total}"


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    if config.getoption("dist") != "loadscope" or config.stash.get(MATRIX_KEY, None) is None:
        return None
    from xdist.scheduler import LoadScopeScheduling

    ids = sorted((c.id for c in config.stash[MATRIX_KEY].cells), key=len, reverse=True)  # type: ignore[union-attr]
    durations = _recorded_durations(config)

    class CellScheduling(LoadScopeScheduling):  # type: ignore[misc]
        """Whole cells to a worker: the scope of a test is its cell id. With recorded
        durations, the longest cells are handed out first (see shard.longest_first)."""

        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            params = nodeid[nodeid.find("[") :] if "[" in nodeid else ""
            for cid in ids:
                if cid in params:
                    return cid
            return str(super()._split_scope(nodeid))

        def _assign_work_unit(self, node: Any) -> None:
            # The first call comes right after schedule() filled the queue: reorder it once.
            if durations and not self.ordered:
                self.ordered = True
                units = {scope: list(unit) for scope, unit in self.workqueue.items()}
                queue = [(s, self.workqueue[s]) for s in shard.longest_first(units, durations)]
                self.workqueue.clear()
                self.workqueue.update(queue)
            super()._assign_work_unit(node)

    return CellScheduling(config, log)


def _recorded_durations(config: pytest.Config) -> dict[str, float]:
    """Per-test durations from --kmatrix-durations, else from the last run's results.json in
    the reports directory (this run replaces it only at its end); {} when there are none."""
    given = config.getoption("kmatrix_durations")
    if given:
        try:
            return shard.durations_by_test(Path(given))
        except InputError as e:
            raise pytest.UsageError(f"kmatrix: {e}") from None
    last = config.stash[POOL_KEY].reports / "results.json"
    try:
        return shard.durations_by_test(last) if last.is_file() else {}
    except InputError:
        return {}  # a damaged leftover only costs the ordering


# --- the pool of booted cells ----------------------------------------------------------------


class CellPool:
    """Boots a cell on first use, keeps one VM per worker, stops a cell after its last test."""

    def __init__(
        self, reports: Path, accel: str | None, direct_boot: bool, retries: int = 1
    ) -> None:
        self.reports = reports
        self.accel = accel
        self.direct_boot = direct_boot
        self.guests: dict[str, Guest] = {}
        self.failures: dict[str, BaseException] = {}  # cell id -> boot failure (kernel's fault)
        self.deaths: dict[str, str] = {}  # cell id -> how its VM died mid-run
        self.errors: dict[str, KmatrixError] = {}  # cell id -> set-up error (input, infra)
        self.skips: dict[str, str] = {}  # cell id -> why its host cannot run it
        self.retries = retries
        self.snapshot_cells: set[str] = set()  # cells saved after boot (see _plan_snapshots)
        self.dirty: set[str] = set()  # cells whose guest ran a test since its boot or restore
        self.no_restore: dict[str, str] = {}  # cell id -> why its clean guests are reboots
        self.recovered: dict[str, str] = {}  # cell id -> the VM death its guest replaced

    def outdir(self, cell: Cell) -> Path:
        return self.reports / "cells" / cell.slug

    def get(self, cell: Cell) -> Guest:
        """The cell's running guest, booting it if needed. Infra and input errors propagate
        (the same error for every test of the cell); kernel boot failures are recorded."""
        if cell.id in self.errors:
            raise self.errors[cell.id]
        if cell.id in self.skips:
            pytest.skip(self.skips[cell.id])
        g = self.guests.get(cell.id)
        if g is not None and (
            cell.id in self.failures
            or cell.id in self.deaths
            or g.alive
            or g.record.poweroff_clean is None
        ):
            return g
        # Not booted yet, or powered off on purpose by an earlier test: boot (again).
        for other in list(self.guests):
            if other != cell.id:
                self.stop(other)
        if g is None:
            g = Guest(cell, self.outdir(cell), accel=self.accel, direct_boot=self.direct_boot)
            self.guests[cell.id] = g
            try:
                g.prepare()
            except BuildFailure as e:
                # The kernel did not build from its patches and config: its cells fail.
                self.failures[cell.id] = e
                return g
            except HostDeviceUnavailable as e:
                self.skips[cell.id] = str(e)  # this host cannot run the cell: not a failure
                pytest.skip(str(e))
            except KmatrixError as e:
                self.errors[cell.id] = e
                raise
        else:
            g.stop(collect=False)
        self._start(cell, g)
        return g

    def _start(self, cell: Cell, g: Guest) -> None:
        for attempt in range(1, self.retries + 2):
            try:
                g.start()
                break
            except BootFailure as e:
                self.failures[cell.id] = e  # the kernel's fault: never retried into a pass
                g.stop(collect=False)
                break
            except InfraError as e:
                g.record.attempts.append(f"boot attempt {attempt}: {e}".splitlines()[0])
                g.stop(collect=False)
                if attempt > self.retries:
                    self.errors[cell.id] = e
                    raise
        self.dirty.discard(cell.id)
        self.recovered.pop(cell.id, None)
        if cell.id in self.snapshot_cells and cell.id not in self.no_restore and g.alive:
            g.snapshot()  # a failure is recorded (snapshot_error); clean guests then reboot

    def clean(self, cell: Cell, nodeid: str) -> str:
        """A just-booted guest for a kmatrix_clean test: the post-boot snapshot restored, or
        a reboot when there is none or a restore was measured slower than the cell's boot.
        Returns how, for the test's properties."""
        g = self.guests[cell.id]
        self.recovered.pop(cell.id, None)
        if g.has_snapshot and cell.id not in self.no_restore:
            try:
                took = g.restore(f"clean guest for {nodeid}")
            except InfraError as e:
                g.discard_snapshot()
                self.no_restore[cell.id] = f"restoring failed: {str(e).splitlines()[0]}"
            else:
                self.dirty.discard(cell.id)
                boot = g.record.boot_seconds
                if boot is not None and took >= boot:
                    self.no_restore[cell.id] = (
                        f"a restore took {took:.2f}s, the boot {boot:.2f}s: rebooting instead"
                    )
                return f"restored ({took:.2f}s)"
        why = self.no_restore.get(cell.id) or g.record.snapshot_error or "no snapshot"
        # The outgoing boot's kernel log, as a poweroff would keep it.
        g.save_dmesg(f"dmesg-boot-{g.record.launches}.log")
        g.stop(collect=False)
        self._start(cell, g)
        return f"rebooted ({why})"

    def recover(self, cell: Cell) -> bool:
        """After the cell's VM died mid-run (its test's failure and diagnosis already
        reported), the remaining tests get the post-boot snapshot restored; False if there
        is none or it does not come up, and they error as "the VM is gone"."""
        g = self.guests.get(cell.id)
        death = self.deaths.get(cell.id)
        if g is None or death is None or not g.has_snapshot:
            return False
        try:
            g.restore(f"after the VM died: {death}")
        except InfraError as e:
            g.discard_snapshot()
            self.deaths[cell.id] = f"{death}; restoring its snapshot failed: {e}".splitlines()[0]
            return False
        del self.deaths[cell.id]
        self.recovered[cell.id] = death
        self.dirty.discard(cell.id)
        return True

    def stop(self, cell_id: str) -> None:
        g = self.guests.pop(cell_id, None)
        if g is None:
            return
        try:
            g.stop()
        finally:
            self.record(g)

    def record(self, g: Guest) -> None:
        """Leaves the cell's boot record and kernel-log findings beside its logs."""
        boot = asdict(g.record)
        if g.kernel is not None:
            boot.update(
                release=g.kernel.release,
                kernel_image=str(g.kernel.image),
                boot_image=str(g.kernel.boot_image),
                initrd=str(g.initrd),
            )
        findings = []
        # dmesg-*.log: kernel logs of guests a restore or a reboot replaced.
        logs = [p.name for pat in ("dmesg*.log", "console*.log") for p in g.outdir.glob(pat)]
        for name in sorted(logs, key=lambda n: (n != "dmesg.log", n)):
            path = g.outdir / name
            if path.is_file():
                for f in parse_kernel_log(path.read_text(errors="replace")):
                    findings.append({**asdict(f), "source": name})
        with contextlib.suppress(OSError):
            write_json_atomic(g.outdir / "boot.json", boot)
            write_json_atomic(g.outdir / "findings.json", findings)

    def stop_all(self) -> None:
        for cid in list(self.guests):
            self.stop(cid)


def _pool(config: pytest.Config) -> CellPool:
    return config.stash[POOL_KEY]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cell = cell_of(item)
    if cell is None:
        return
    pool = _pool(item.config)
    g = pool.get(cell)
    item.user_properties += [
        ("kmatrix.cell", cell.id),
        ("kmatrix.kernel", cell.kernel.name),
        ("kmatrix.kernel_release", g.kernel.release if g.kernel else ""),
        ("kmatrix.cpu_model", cell.cpu.model),
        ("kmatrix.device_profile", cell.device.name),
        ("kmatrix.qemu_version", qemu_version()),
        ("kmatrix.accelerator", g.record.accel),
        ("kmatrix.accel_reason", g.record.accel_reason),
        ("kmatrix.boot_seconds", f"{g.record.boot_seconds:.3f}" if g.record.boot_seconds else ""),
    ]
    if cell.id in pool.deaths and not pool.recover(cell):
        raise KmatrixError(f"{cell.id}: the VM is gone: {pool.deaths[cell.id]}")
    if item.get_closest_marker("kmatrix_clean") and cell.id not in pool.failures:
        how = pool.clean(cell, item.nodeid) if cell.id in pool.dirty else "fresh boot"
        item.user_properties.append(("kmatrix.clean_guest", how))
    if cell.id in pool.recovered:
        # This test runs on the post-boot snapshot restored after an earlier test's VM died.
        item.user_properties.append(("kmatrix.restored_after", pool.recovered[cell.id]))
    pool.dirty.add(cell.id)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> None:
    cell = cell_of(pyfuncitem)
    if cell is None:
        return
    failure = _pool(pyfuncitem.config).failures.get(cell.id)
    if failure is not None:
        # The kernel never reached userspace: every test of the cell fails (not errors).
        exc = BuildFailed if isinstance(failure, BuildFailure) else NoBootFailed
        raise exc(str(failure), pytrace=False)


# trylast: after pytest's own teardown of the item's fixtures, so an error raised here (a
# console that could not be written) cannot leave the item half torn down for the next one.
@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    cell = cell_of(item)
    if cell is None:
        return
    pool = _pool(item.config)
    g = pool.guests.get(cell.id)
    if (
        g is not None
        and cell.id not in pool.failures
        and not g.alive
        and g.record.poweroff_clean is None
        and cell.id not in pool.deaths
    ):
        code = g.machine.exitcode if g.machine else None
        pool.deaths[cell.id] = f"it ended during {item.nodeid} (QEMU exit code {code})"
    recorder_error = g.recorder.error if g is not None and g.recorder is not None else None
    nxt = cell_of(nextitem) if nextitem is not None else None
    if nxt is None or nxt.id != cell.id:
        pool.stop(cell.id)
    if recorder_error:
        # e.g. the disk filled up: the console log is incomplete from here on.
        raise InfraError(f"{cell.id}: {recorder_error}")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    cell = cell_of(item)
    if cell is not None and report.when == "call" and report.failed and call.excinfo is not None:
        _classify(item, cell, call.excinfo, report)
    if cell is not None and report.failed:
        g = _pool(item.config).guests.get(cell.id)
        log = g.console_log if g is not None else _pool(item.config).outdir(cell) / "console.log"
        tail = console_tail(log, 40)
        if tail.strip():
            report.sections.append((f"kmatrix console tail ({cell.id})", tail))
            report.longrepr = f"{report.longreprtext}\n\n--- console tail of {cell.id} ---\n{tail}"
    return report


def _classify(
    item: pytest.Item, cell: Cell, excinfo: pytest.ExceptionInfo[BaseException],
    report: pytest.TestReport,
) -> None:  # fmt: skip
    """Host and harness faults are errors, never failures blamed on the kernel (GUIDE §4)."""
    pool = _pool(item.config)
    g = pool.guests.get(cell.id)
    verdict, why = "kernel", ""
    if excinfo.errisinstance((InfraError, OSError)):
        # OSError here is the host's: disk full, a socket torn down, a missing file.
        verdict, why = "infra", str(excinfo.value).splitlines()[0]
    elif excinfo.errisinstance(GuestError) and g is not None:
        verdict, why = g.diagnose()
        if verdict == "infra" and g.machine is not None:
            g.machine.kill()
    if verdict == "infra":
        pool.deaths.setdefault(cell.id, f"{why} (during {item.nodeid})")
        # A failed call phase reported as set-up makes pytest and JUnit count an error.
        report.when = "setup"
        report.longrepr = f"kmatrix infrastructure error, not the kernel: {why}\n\n" + (
            report.longreprtext
        )
    elif why:
        note = f"kmatrix diagnosis: {why}"
        if g is not None and g.console_log.is_file():
            found = parse_kernel_log(g.console_log.read_text(errors="replace"))
            if found:
                note += "\nkernel log:\n" + findings_summary(found)
        report.longrepr = f"{report.longreprtext}\n\n{note}"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if (
        session.config.stash.get(SHARD_EMPTY_KEY, None)
        and exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED
    ):
        # More shards than cells: a shard left with no cell did its part; not a CI failure.
        session.exitstatus = pytest.ExitCode.OK
    pool = session.config.stash.get(POOL_KEY, None)
    if pool is not None:
        pool.stop_all()
    kill_all()


def pytest_unconfigure(config: pytest.Config) -> None:
    kill_all()


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def booted(request: pytest.FixtureRequest, cell: Cell) -> Guest:
    """The cell's booted Guest: record (boot time, accelerator), kernel artefact, QMP."""
    return _pool(request.config).get(cell)


@pytest.fixture
def guest(request: pytest.FixtureRequest, booted: Guest) -> GuestSession:
    """The guest session: run(cmd), read_file(path), write_file(path, data), dmesg()."""
    if booted.cell.id in _pool(request.config).failures:
        # Never used: pytest_pyfunc_call fails the test (a kernel failure, not a set-up error).
        return cast(GuestSession, None)
    if booted.session is None or not booted.alive:
        pytest.fail(f"{booted.cell.id}: the guest is not running", pytrace=False)
    return booted.session


@pytest.fixture
def kernel(request: pytest.FixtureRequest, booted: Guest) -> KernelArtifact:
    if booted.kernel is None and booted.cell.id in _pool(request.config).failures:
        # Never used: pytest_pyfunc_call fails the test (the kernel did not build).
        return cast(KernelArtifact, None)
    assert booted.kernel is not None
    return booted.kernel


@pytest.fixture
def qmp(booted: Guest) -> Callable[..., Any]:
    """qmp("query-status") runs a QMP command on the cell's VM, with a timeout."""
    return booted.qmp


@pytest.fixture(scope="session")
def kmatrix_run_info() -> dict[str, str]:
    return {
        "kmatrix": __version__,
        "qemu": qemu_version(),
        "host": platform.node(),
        "python": platform.python_version(),
        "cpus": str(os.cpu_count()),
    }


def pytest_exception_interact(node: Any, call: Any, report: Any) -> None:
    # An input error is the user's to fix: show its message, not a traceback into kmatrix.
    if call.excinfo is not None and call.excinfo.errisinstance(InputError):
        report.longrepr = f"kmatrix input error: {call.excinfo.value}"
