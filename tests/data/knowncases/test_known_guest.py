"""Guest-side cases for known issues applied during the run (tests/test_known.py): each test
fails on kernel reports, parsed from a log text as a real guest would print them."""

from __future__ import annotations

from kmatrix import GuestSession, assert_no_findings, parse_kernel_log
from kmatrix.pytest.logguard import KernelLogFailed


def report(func: str, kind: str = "WARNING") -> str:
    """A kernel report whose normalised title is '<kind> in <func>'."""
    head = (
        f"WARNING: CPU: 1 PID: 42 at drivers/kmx/kmx.c:7 {func}+0x1a/0x40"
        if kind == "WARNING"
        else f"kernel BUG at drivers/kmx/kmx.c:9!\n[   12.345679] invalid opcode: 0000 [#1] SMP\n"
        f"[   12.345679] RIP: 0010:{func}+0x1a/0x40"
    )
    return (
        "[   12.345670] ------------[ cut here ]------------\n"
        f"[   12.345678] {head}\n"
        f"[   12.345680] RIP: 0010:{func}+0x1a/0x40\n"
        "[   12.345681] Call Trace:\n"
        "[   12.345682]  <TASK>\n"
        "[   12.345683]  kmx_init+0x10/0x20\n"
        "[   12.345684]  </TASK>\n"
        "[   12.345685] ---[ end trace 0000000000000000 ]---\n"
    )


def test_only_known_reports(guest: GuestSession) -> None:
    guest.run("true", check=True)
    assert_no_findings(parse_kernel_log(report("drm_mm_takedown")), "the kernel logged")


def test_the_log_guard_finds_only_known_reports(guest: GuestSession) -> None:
    # What the log guard raises after a test whose kernel printed a report it did not allow.
    found = parse_kernel_log(report("drm_mm_takedown"))
    raise KernelLogFailed("the kernel reported 1 problem during this test", found)


def test_a_known_and_an_unknown_report(guest: GuestSession) -> None:
    log = report("drm_mm_takedown") + report("kmx_probe")
    assert_no_findings(parse_kernel_log(log), "the kernel logged")


def test_known_title_but_another_kind(guest: GuestSession) -> None:
    assert_no_findings(parse_kernel_log(report("drm_mm_takedown", "BUG")), "the kernel logged")


def test_a_plain_failure_naming_the_title(guest: GuestSession) -> None:
    raise AssertionError("WARNING in drm_mm_takedown")  # text, not a kernel report
