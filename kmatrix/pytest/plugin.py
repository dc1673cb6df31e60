"""The pytest plugin: one test per (cell, testcase), one boot per cell.

Tests that take the `cell` fixture (directly or through `guest`, `booted`, `qmp`, `kernel`)
are parametrized over the matrix's cells, with the cell id as the parameter id, so
`-k Haswell` or `-k "6.12 and boot"` select what users expect. Items are ordered cell by
cell; a cell boots when its first test sets up and powers off after its last one. Under
xdist, a scheduler keeps every test of a cell on one worker.
"""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import pytest

from kmatrix import __version__
from kmatrix.config.hostaccess import check_run_allows
from kmatrix.errors import (
    InfraError,
    InputError,
    KmatrixError,
)
from kmatrix.guest.lifecycle import CellPool
from kmatrix.kernels import load_matrix
from kmatrix.kernels.source import with_series_upto
from kmatrix.pytest import applicability, kerneltests, known, logguard, progress, rundir, suites

# The plugin is this module: pytest finds hooks and fixtures by name on it, so those that
# live in the modules of their concern are re-exported here.
from kmatrix.pytest.collection import (  # noqa: F401
    disks_of,
    pytest_collection_modifyitems,
    pytest_generate_tests,
    pytest_itemcollected,
)
from kmatrix.pytest.collector import ResultsCollector
from kmatrix.pytest.crashguard import InternalErrors, exit_internal
from kmatrix.pytest.fixtures import booted, guest, kernel, kmatrix_run_info, qmp  # noqa: F401
from kmatrix.pytest.options import (  # noqa: F401
    SUITE_MARKERS,
    _matrix_path,
    check_options,
    pytest_addoption,
)
from kmatrix.pytest.outcomes import (  # noqa: F401
    _EXPECT_RAISES,
    BuildFailed,
    NoBootFailed,
    pytest_exception_interact,
    pytest_pyfunc_call,
    pytest_report_teststatus,
    pytest_runtest_makereport,
)
from kmatrix.pytest.plan import RunPlan
from kmatrix.pytest.rerun import pytest_runtest_protocol  # noqa: F401
from kmatrix.pytest.rundir import pytest_configure_node  # noqa: F401
from kmatrix.pytest.scheduler import pytest_xdist_make_scheduler  # noqa: F401
from kmatrix.pytest.stash import MATRIX_KEY, POOL_KEY, SHARD_EMPTY_KEY, cell_of, guest_of, pool_of
from kmatrix.results.known_issues import default_known_issues, load_known_issues
from kmatrix.vm.accel import qemu_version
from kmatrix.vm.machine import SANDBOX_ON, kill_all, sandbox_state


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    for name, doc in SUITE_MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {doc}")
    config.addinivalue_line("markers", "kmatrix_final: run last within its cell (e.g. poweroff)")
    for doc in applicability.MARKERS:
        config.addinivalue_line("markers", doc)
    config.addinivalue_line(
        "markers", "kmatrix_baseline: a test of a baseline cell (set by kmatrix; `-k baseline`)"
    )
    config.addinivalue_line(
        "markers",
        "kmatrix_clean: run on a just-booted guest (the cell's post-boot snapshot restored, "
        "else a reboot)",
    )
    logguard.register(config)
    reports = Path(config.getoption("kmatrix_reports"))
    if not reports.is_absolute():
        reports = Path(config.invocation_params.dir) / reports
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(
            InternalErrors(reports, config.stash), "kmatrix-internal-errors"
        )
    check_options(config)
    config.addinivalue_line(
        "markers",
        "kmatrix_disk(*names): the test needs these read-only data disks, attached to its cell "
        "and mounted before it runs ('tools': stress-ng, rt-tests, util-linux, pciutils, "
        "kmx-vfio)",
    )
    path = _matrix_path(config)
    allow_host = bool(config.getoption("kmatrix_allow_host_access"))
    try:
        matrix = load_matrix(path) if path is not None else None
        for spec in config.getoption("kmatrix_series_upto") or []:
            if matrix is None:
                raise InputError("--kmatrix-series-upto needs a matrix")
            kernel, sep, upto = spec.partition("=")
            if not sep or not kernel or not upto:
                raise InputError(f"--kmatrix-series-upto {spec!r}: expected KERNEL=PATCH")
            matrix = with_series_upto(matrix, kernel, upto)
        if matrix is not None:
            check_run_allows(matrix, allow_host)
            beside = default_known_issues(matrix.path)
            if beside is not None and not config.getoption("kmatrix_known_issues"):
                load_known_issues(beside)  # a broken one fails the run now, not silently later
    except InputError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None
    config.stash[MATRIX_KEY] = matrix
    if matrix is not None:
        suites.add_builtin_suites(config)
    require_sandbox = bool(config.getoption("kmatrix_require_sandbox"))
    if matrix is not None and not hasattr(config, "workerinput"):
        _check_sandbox(config, require_sandbox)
    # kselftest and KUnit items (its own hooks, among them a setup wrapper of its own).
    if not config.pluginmanager.has_plugin("kmatrix-kerneltests"):
        config.pluginmanager.register(kerneltests, "kmatrix-kerneltests")
    known.configure(config, matrix)
    dirs = rundir.choose(config)
    config.stash[rundir.RUN_DIRS_KEY] = dirs
    if config.getoption("kmatrix_pytest_junit") and not config.option.collectonly:
        # pytest's own JUnit goes into the run's directory (its junitxml plugin reads this
        # option in its pytest_configure, which runs after this tryfirst one).
        config.option.xmlpath = str(dirs.run / "junit.xml")
    pool = CellPool(
        dirs.run,
        accel=config.getoption("kmatrix_accel"),
        direct_boot=not config.getoption("kmatrix_no_direct_boot"),
        retries=config.getoption("kmatrix_retries"),
        allow_host_access=allow_host,
        require_sandbox=require_sandbox,
    )
    config.stash[POOL_KEY] = pool
    # Needed after the first boot (findings, then the reports where this process writes
    # them): imported while it boots instead of before it.
    pool.warmup = ("kmatrix.results.logparse",) + (
        () if hasattr(config, "workerinput") else ("kmatrix.reports.writer",)
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
            collector = ResultsCollector(
                matrix, dirs.run, list(config.invocation_params.args), root=dirs.root
            )
            config.pluginmanager.register(collector, "kmatrix-results")
            # The plan (tests per cell, from collection or xdist's collection report) feeds
            # the live progress and results.json's shard facts for `kmatrix merge`.
            plan = RunPlan(matrix, config.getoption("kmatrix_shard"))
            config.pluginmanager.register(plan, "kmatrix-plan")
            collector.plan = plan
            progress.register(config, plan)


def _check_sandbox(config: pytest.Config, required: bool) -> None:
    """QEMU's seccomp sandbox: a UsageError when it is required and missing, else a warning
    (each cell's boot.json and JUnit properties also say whether it ran sandboxed)."""
    state = sandbox_state()
    if state == SANDBOX_ON:
        return
    why = state.removeprefix("off: ")
    if required:
        raise pytest.UsageError(
            f"kmatrix: QEMU cannot run under its seccomp sandbox ({why}) and "
            "--kmatrix-require-sandbox was given"
        )
    config.issue_config_time_warning(
        pytest.PytestWarning(
            f"kmatrix: QEMU runs WITHOUT its seccomp sandbox ({why}); "
            "--kmatrix-require-sandbox makes this an error"
        ),
        stacklevel=2,
    )


def _install_signal_handlers() -> None:
    """SIGTERM (CI cancelling a job) unwinds like Ctrl-C, so teardown and reports still run.
    Both kill the guests first: the KeyboardInterrupt can land in code that is waiting on a
    guest (a command, a log read, a poweroff) and its cleanup would wait on it again."""

    def on_term(signum: int, frame: object) -> None:
        kill_all(descendants=True)  # the workers' QEMUs too, under xdist
        raise KeyboardInterrupt(f"signal {signum}")

    with contextlib.suppress(ValueError):  # not in the main thread
        signal.signal(signal.SIGTERM, on_term)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, on_term)


def pytest_report_header(config: pytest.Config) -> list[str]:
    m = config.stash.get(MATRIX_KEY, None)
    if m is None:
        return ["kmatrix: no matrix"]
    return [f"kmatrix {__version__}: matrix {m.path} ({len(m.cells)} cells), QEMU {qemu_version()}"]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    cell = cell_of(item)
    if cell is None:
        return
    pool = pool_of(item.config)
    applicability.before_boot(item, pool, cell)
    g = guest_of(item.config, cell)
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
        ("kmatrix.sandbox", g.record.sandbox),
    ]
    if cell.baseline_of or cell.baseline_cell:
        item.user_properties.append(
            ("kmatrix.baseline_of", cell.baseline_of)
            if cell.baseline_of
            else ("kmatrix.baseline_cell", cell.baseline_cell)
        )
    g.begin_test(item.nodeid)
    offline = getattr(item, "kmatrix_offline", False)  # its result is in hand (kerneltests)
    run = pool.run_of(cell)
    if run.dead and not offline and not pool.recover(cell):
        raise KmatrixError(f"{cell.id}: the VM is gone: {run.death}")
    if item.get_closest_marker("kmatrix_clean") and not run.failed:
        how = pool.clean(cell, item.nodeid) if run.dirty else "fresh boot"
        item.user_properties.append(("kmatrix.clean_guest", how))
    if run.recovered:
        # This test runs on the post-boot snapshot restored after an earlier test's VM died.
        item.user_properties.append(("kmatrix.restored_after", run.recovered))
    if not run.failed:
        for name in disks_of(item):
            g.mount_disk(name)  # once per boot; InfraError if it fails
            item.user_properties.append((f"kmatrix.disk.{name}", g.disk_plans[name].summary()))
    pool.begin_test(cell)


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    cell = cell_of(item)
    if cell is None:
        return
    pool = pool_of(item.config)
    g = pool.guest_of(cell)
    if g is not None:
        g.current_test = ""  # what runs from here on (dmesg, poweroff) is the harness's
    pool.end_test(cell, item.nodeid)
    recorder_error = g.recorder.error if g is not None and g.recorder is not None else None
    nxt = cell_of(nextitem) if nextitem is not None else None
    if nxt is None or nxt.id != cell.id:
        pool.stop(cell.id)
    if recorder_error:
        # e.g. the disk filled up: the console log is incomplete from here on.
        raise InfraError(f"{cell.id}: {recorder_error}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    try:
        _sessionfinish(session, exitstatus)
    except (pytest.exit.Exception, KeyboardInterrupt):
        raise
    except Exception as e:
        exit_internal(e, session.config.stash[POOL_KEY].reports)


def _sessionfinish(session: pytest.Session, exitstatus: int) -> None:
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
