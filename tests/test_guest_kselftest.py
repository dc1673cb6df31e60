"""kselftest in real guests (kmatrix.guest.kselftest): the Debian 6.1 cloud kernel with the
selftests of linux-source-6.1 (the same upstream version), on a read-only disk; a crash
and a runner timeout in the middle of a target; and the items of a whole pytest run.

Building the selftests needs linux-source-6.1 unpacked in the cache (~140 MB download):
these tests skip, saying what to run, unless it is (or KMATRIX_TEST_BUILDS=1)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT, two_with
from kmatrix.build.sources import cached_source
from kmatrix.config.specs import Cell
from kmatrix.guest import kselftest as ksft
from kmatrix.guest.guest import Guest
from kmatrix.kernels import load_matrix
from kmatrix.results import ktap
from kmatrix.results.cases import FAILED, SKIPPED, Unit, running_chain, verdict

NANOSLEEP = ["CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID",
             "CLOCK_THREAD_CPUTIME_ID", "CLOCK_MONOTONIC_RAW", "CLOCK_REALTIME_COARSE",
             "CLOCK_MONOTONIC_COARSE", "CLOCK_BOOTTIME", "CLOCK_REALTIME_ALARM",
             "CLOCK_BOOTTIME_ALARM", "UNKNOWN_CLOCKID", "CLOCK_TAI"]  # fmt: skip


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Cell:
    if cached_source("linux-source-6.1") is None and os.environ.get("KMATRIX_TEST_BUILDS") != "1":
        pytest.skip(
            "linux-source-6.1 is not unpacked in the cache: run `kmatrix patches check "
            "patches/kmx-demo --source linux-source-6.1` once, or set KMATRIX_TEST_BUILDS=1"
        )
    d = tmp_path_factory.mktemp("m")
    m = two_with(
        d / "m.yaml",
        ("accel: tcg}", "accel: tcg}\nsuites: {kselftest: {targets: [timers]}}"),
    )
    return load_matrix(m).cell("deb-6.1-cloud/Nehalem/virtio")


@pytest.fixture(scope="module")
def prepared(cell: Cell) -> ksft.Prepared:
    p = ksft.prepare(cell, ["timers"])
    assert not p.failures and p.disk is not None, p.failures
    return p


@pytest.fixture
def guest(cell: Cell, prepared: ksft.Prepared, tmp_path: Path) -> Iterator[Guest]:
    g = Guest(cell, tmp_path / "g", accel="tcg")
    g.disk_providers = [lambda g: prepared.disk]
    g.start()
    try:
        yield g
    finally:
        g.stop()


@pytest.mark.boot
def test_crash_mid_target(guest: Guest, prepared: ksft.Prepared) -> None:
    """The kernel panics (sysrq) once the runner started the target's second program: that
    run ends early; the console says how far it got; the program that was running fails with
    the panic, the one after it is not run, the one before keeps its cases' results."""
    assert guest.session is not None and prepared.disk is not None
    # A program's results come in one burst when it exits (its output is a pipe, so
    # buffered): a crash set off by one of nanosleep's result lines would race the rest of
    # that burst. The runner's header for nsleep-lat comes alone, and nsleep-lat then runs
    # for tens of seconds under TCG. A blocking read of /dev/kmsg wakes on the line itself.
    guest.session.run(
        "(grep -q 'selftests: timers: nsleep-lat' /dev/kmsg; echo c >/proc/sysrq-trigger)"
        " >/dev/null 2>&1 &",
        timeout=10,
        check=True,
    )
    programs = ["nanosleep", "nsleep-lat", "posix_timers"]
    known: dict[tuple[str, ...], list[str]] = {("nanosleep",): NANOSLEEP}
    run = ksft.run_target(guest, prepared.disk, "timers", programs, 120, None, known)
    unit = run.unit
    assert unit.ended is not None and unit.ended.startswith("the guest went down"), unit
    assert "panic: Kernel panic - not syncing: sysrq triggered crash" in unit.ended, unit.ended
    assert running_chain(unit) == ("nsleep-lat",), unit
    items = [("nanosleep",), *(("nanosleep", c) for c in NANOSLEEP), ("nsleep-lat",),
             ("posix_timers",)]  # fmt: skip
    v = {p: verdict(unit, p, items) for p in items}
    assert v[("nsleep-lat",)].outcome == FAILED, v[("nsleep-lat",)]
    assert "it was running nsleep-lat" in v[("nsleep-lat",)].message, v[("nsleep-lat",)]
    assert v[("posix_timers",)].outcome == SKIPPED
    assert v[("posix_timers",)].message.startswith("not run")
    assert v[("nanosleep",)].outcome == "passed"
    assert v[("nanosleep", "CLOCK_REALTIME")].outcome == "passed"
    assert v[("nanosleep", "CLOCK_PROCESS_CPUTIME_ID")].outcome == SKIPPED  # its own SKIP


@pytest.mark.boot
def test_progress_reaches_console_and_kernel_log(guest: Guest, prepared: ksft.Prepared) -> None:
    """Every progress line of a run is in the console and in the kernel log, in order, even
    when a program's results come in a burst (the kernel rate-limits writers of /dev/kmsg)."""
    assert guest.session is not None and prepared.disk is not None
    known: dict[tuple[str, ...], list[str]] = {("nanosleep",): NANOSLEEP}
    run = ksft.run_target(guest, prepared.disk, "timers", ["nanosleep"], 45, None, known)
    assert run.unit.ended is None and run.unit.error is None, run.unit
    console = guest.console_log.read_text(errors="replace")
    m = re.search(rf"{ksft.PROGRESS} (\w+): begin timers", console)
    assert m is not None, console[-2000:]
    on_console, _ = ksft.progress_lines(console, m.group(1))
    in_log, _ = ksft.progress_lines(guest.session.run("dmesg", check=True).stdout, m.group(1))
    assert len(on_console) >= 2 + len(NANOSLEEP), on_console  # header, cases, its result
    assert [ln.rstrip() for ln in in_log] == [ln.rstrip() for ln in on_console]


@pytest.mark.boot
def test_runner_timeout_mid_program(guest: Guest, prepared: ksft.Prepared) -> None:
    """The matrix's timeout (3 s) overrides the target's settings: kselftest's runner kills
    nanosleep part-way (TIMEOUT); the case it was in fails, the rest are not run."""
    assert prepared.disk is not None
    known: dict[tuple[str, ...], list[str]] = {("nanosleep",): NANOSLEEP}
    run = ksft.run_target(guest, prepared.disk, "timers", ["nanosleep"], 3, 3, known)
    unit = run.unit
    assert unit.ended is None and unit.error is None, unit
    prog = unit.tree.find(["nanosleep"])
    assert prog is not None and prog.status == "timeout" and prog.reason == "3 seconds", prog
    printed = [t.name for t in prog.subtests]
    assert printed == NANOSLEEP[: len(printed)] and len(printed) < len(NANOSLEEP)
    items = [("nanosleep",), *(("nanosleep", c) for c in NANOSLEEP)]
    running = ("nanosleep", NANOSLEEP[len(printed)])
    v = verdict(unit, running, items)
    assert v.outcome == FAILED and v.message.startswith("timed out (TIMEOUT 3 seconds)")
    for c in NANOSLEEP[len(printed) + 1 :]:
        assert verdict(unit, ("nanosleep", c), items).outcome == SKIPPED
    assert guest.alive  # the runner's timeout is not the guest's end


@pytest.mark.boot
def test_items_of_a_pytest_run(cell: Cell, prepared: ksft.Prepared, tmp_path: Path) -> None:
    """Through the plugin: a run with no case known yet has an item per program; it learns
    the cases, and the next run has an item per case, each with its own outcome."""
    from conftest import run_kmatrix_pytest

    index = tmp_path / "cases"
    m = two_with(
        tmp_path / "m.yaml",
        ("accel: tcg}", "accel: tcg}\nsuites: {kselftest: {targets: "
         "[{name: timers, tests: [nanosleep]}]}}"),
        ("include:\n  - {kernel: deb-6.1-cloud, cpu: Nehalem}\n"
         "  - {kernel: deb-6.12-cloud, cpu: Haswell}",
         "include:\n  - {kernel: deb-6.1-cloud, cpu: Nehalem}"),
    )  # fmt: skip
    os.environ["KMATRIX_CASE_INDEX"] = str(index)
    try:
        tests = [ROOT / "testcases" / "test_kselftest.py"]
        first = run_kmatrix_pytest(tests, tmp_path / "r1", matrix=m, junit=tmp_path / "1.xml")
        assert first.outcomes() == {
            "kselftest/timers/nanosleep[deb-6.1-cloud/Nehalem/virtio]": "passed"
        }, first.log
        second = run_kmatrix_pytest(tests, tmp_path / "r2", matrix=m, junit=tmp_path / "2.xml")
    finally:
        del os.environ["KMATRIX_CASE_INDEX"]
    cases = second.cases()
    cid = "deb-6.1-cloud/Nehalem/virtio"
    assert len(cases) == 1 + len(NANOSLEEP), second.log
    assert cases[f"kselftest/timers/nanosleep/CLOCK_REALTIME[{cid}]"].outcome == "passed"
    skip = cases[f"kselftest/timers/nanosleep/CLOCK_PROCESS_CPUTIME_ID[{cid}]"]
    assert skip.outcome == "skipped" and skip.properties.get("ktap.directive") == "SKIP"
    assert cases[f"kselftest/timers/nanosleep[{cid}]"].properties["kselftest.timeout"] == "0"


# --- real captures, parsed (no guest needed) ---------------------------------------------------

CAPTURES = Path(__file__).parent / "data" / "ktap"


def test_captured_crash_from_the_console() -> None:
    """The console of a guest that panicked (sysrq) while nanosleep ran its eleventh case:
    the progress lines the run mirrored there rebuild how far it got, and the kernel
    report is charged to that case."""
    console = (CAPTURES / "kselftest-timers-crash-deb-6.1.console.log").read_text()
    lines, _ = ksft.progress_lines(console, "addf6feb")
    known = {(): ["nanosleep", "posix_timers"], ("nanosleep",): NANOSLEEP}
    unit = Unit(ksft.normalise(ktap.parse(lines), "timers"), known, ended="the guest went down")
    items = [("nanosleep",), *(("nanosleep", c) for c in NANOSLEEP), ("posix_timers",)]
    got = {p: verdict(unit, p, items).outcome for p in items}
    assert got[("nanosleep", "CLOCK_BOOTTIME_ALARM")] == "passed"
    assert got[("nanosleep", "CLOCK_MONOTONIC_COARSE")] == SKIPPED  # its own SKIP
    assert got[("nanosleep", "UNKNOWN_CLOCKID")] == FAILED
    assert got[("nanosleep", "CLOCK_TAI")] == SKIPPED
    assert verdict(unit, ("posix_timers",), items).message.startswith("not run: the guest")
    ((where, finding),) = ksft.attribute(console, "addf6feb", "timers", known)
    assert where == ("nanosleep", "UNKNOWN_CLOCKID") and finding.kind == "panic"


def test_captured_runner_timeouts() -> None:
    """kselftest's runner timed both programs out after 3 s: nanosleep after its first case
    (the second was running), posix_timers before any KTAP (it prints none)."""
    out = (CAPTURES / "kselftest-timers-timeout-deb-6.1.txt").read_text()
    known = {(): ["nanosleep", "posix_timers"], ("nanosleep",): NANOSLEEP}
    unit = Unit(ksft.normalise(ktap.parse(out), "timers"), known)
    items = [("nanosleep",), *(("nanosleep", c) for c in NANOSLEEP), ("posix_timers",)]
    got = {p: verdict(unit, p, items) for p in items}
    assert got[("nanosleep", "CLOCK_REALTIME")].outcome == "passed"
    running = got[("nanosleep", "CLOCK_MONOTONIC")]
    assert running.outcome == FAILED
    assert running.message == (
        "timed out (TIMEOUT 3 seconds); it was running nanosleep/CLOCK_MONOTONIC"
    )
    assert got[("nanosleep", "CLOCK_TAI")].outcome == SKIPPED
    assert got[("posix_timers",)].outcome == FAILED
    assert got[("posix_timers",)].message == "timed out (TIMEOUT 3 seconds)"
    assert got[("nanosleep",)].outcome == "passed"  # its failure is the running case's
