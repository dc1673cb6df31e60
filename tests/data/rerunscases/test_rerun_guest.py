"""Guest-side cases for --kmatrix-rerun, run by tests/test_rerun.py through `pytest -p kmatrix`.

KMX_ATTEMPTS names a host directory where each test counts its attempts, so a test can fail
on its first attempt only, on every attempt, or quote a kernel crash report.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kmatrix.config.specs import Cell
from kmatrix.guest.session import GuestSession


def attempt(cell: Cell, name: str) -> int:
    """This test's attempt number (1, 2, ...), counted in a host file."""
    f = Path(os.environ["KMX_ATTEMPTS"]) / f"{cell.slug}-{name}"
    n = int(f.read_text()) + 1 if f.exists() else 1
    f.write_text(str(n))
    return n


def test_flaky_once(guest: GuestSession, cell: Cell) -> None:
    left = guest.run("cat /tmp/kmx-attempt 2>/dev/null").stdout
    guest.run("echo ran > /tmp/kmx-attempt", check=True)
    if attempt(cell, "flaky") == 1:
        pytest.fail("the first attempt fails")
    assert left == "", "the rerun ran on the guest the failed attempt left behind"


def test_fails_always(guest: GuestSession, cell: Cell) -> None:
    attempt(cell, "always")
    assert guest.run("false").exit_status == 0, "this test never passes"


def test_quotes_a_kernel_report(guest: GuestSession, cell: Cell) -> None:
    attempt(cell, "report")
    warning = (
        "[   12.345678] WARNING: CPU: 1 PID: 42 at drivers/kmx/kmx.c:7 kmx_probe+0x1a/0x40\n"
        "[   12.345679] Modules linked in:\n"
        "[   12.345680] RIP: 0010:kmx_probe+0x1a/0x40\n"
        "[   12.345681] Call Trace:\n"
        "[   12.345682]  <TASK>\n"
        "[   12.345683]  kmx_init+0x10/0x20\n"
        "[   12.345684]  </TASK>\n"
        "[   12.345685] ---[ end trace 0000000000000000 ]---\n"
    )
    pytest.fail("the kernel logged:\n" + warning)
