"""Boot smoke tests: run in every cell, on the cell's single boot."""

from __future__ import annotations

import pytest

from kmatrix import Cell, Guest, GuestSession, assert_no_findings, parse_kernel_log

pytestmark = pytest.mark.boot


def test_userspace_reached(booted: Guest, cell: Cell, record_property: object) -> None:
    seconds = booted.record.boot_seconds
    assert seconds is not None, "the guest agent never said hello"
    assert booted.record.userspace_uptime is not None
    if callable(record_property):
        record_property("boot_seconds", f"{seconds:.3f}")
        record_property("userspace_uptime", f"{booted.record.userspace_uptime:.2f}")
    assert seconds <= cell.boot_timeout, f"booted in {seconds:.1f}s > {cell.boot_timeout}s"


def test_release_matches_artifact(guest: GuestSession, booted: Guest) -> None:
    assert booted.kernel is not None
    running = guest.run("uname -r", check=True).stdout.strip()
    assert running == booted.kernel.release, (
        f"guest runs {running!r}, the artefact is {booted.kernel.release!r}"
    )


def _cpu_list_count(text: str) -> int:
    """Counts CPUs in a sysfs cpu list such as '0-3,5'."""
    n = 0
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            n += int(b) - int(a) + 1
        elif part:
            n += 1
    return n


def test_online_cpus(guest: GuestSession, cell: Cell) -> None:
    online = guest.read_file("/sys/devices/system/cpu/online")
    assert _cpu_list_count(online) == cell.smp, f"online CPUs {online.strip()!r}, want {cell.smp}"
    nproc = int(guest.run("nproc", check=True).stdout)
    assert nproc == cell.smp


def test_cpu_model_flags(guest: GuestSession, cell: Cell, booted: Guest) -> None:
    text = guest.read_file("/proc/cpuinfo")
    flags_lines = [ln for ln in text.splitlines() if ln.startswith("flags")]
    assert len(flags_lines) == cell.smp, f"{len(flags_lines)} flags lines for {cell.smp} vCPUs"
    flags = set(flags_lines[0].split(":", 1)[1].split())
    unemulated = {f.replace("-", "_") for f in booted.record.tcg_missing}
    required = [f for f in cell.cpu.flags if f not in unemulated]
    missing = [f for f in required if f not in flags]
    assert not missing, f"{cell.cpu.name} guest lacks {missing}"
    present = [f for f in cell.cpu.absent if f in flags]
    assert not present, f"{cell.cpu.name} guest shows flags it must not have: {present}"
    lost = [f for f in cell.cpu.flags if f in unemulated]
    if lost:
        pytest.skip(
            f"{booted.record.accel.upper()} cannot emulate {', '.join(lost)} of CPU model "
            f"{cell.cpu.model} (QEMU dropped them); the other defining flags are present"
        )


def test_kernel_log_clean(guest: GuestSession, booted: Guest) -> None:
    dmesg = guest.dmesg()
    findings = parse_kernel_log(dmesg)
    console = booted.console_log.read_text(errors="replace") if booted.console_log.exists() else ""
    findings += parse_kernel_log(console)
    assert_no_findings(findings, "kernel log reports")


@pytest.mark.kmatrix_final
def test_clean_poweroff(booted: Guest) -> None:
    assert booted.alive, "the guest was not running before poweroff"
    clean = booted.poweroff(timeout=60)
    assert clean, (
        f"poweroff was not clean: QEMU exit code {booted.record.exitcode}, "
        f"after {booted.record.poweroff_seconds}s"
        + (f"; stopped by kmatrix: {booted.record.stopped}" if booted.record.stopped else "")
    )
