"""Guest-side cases for kmatrix_clean, run by tests/test_snapshot.py through `pytest -p kmatrix`.

test_a leaves dirt in the guest (a file in /tmp, a line on the console); test_b, marked,
must not see it; test_c, unmarked, runs on whatever test_b left.
"""

from __future__ import annotations

import pytest

from kmatrix.guest.guest import Guest
from kmatrix.guest.session import GuestSession


def test_a_dirty(guest: GuestSession) -> None:
    guest.run("echo dirt > /tmp/kmx-dirt; echo before-the-restore > /dev/ttyS0", check=True)
    assert guest.run("cat /tmp/kmx-dirt").stdout == "dirt\n"


@pytest.mark.kmatrix_clean
def test_b_clean(guest: GuestSession, booted: Guest) -> None:
    assert guest.run("test -e /tmp/kmx-dirt").exit_status == 1, "the dirt survived"
    assert booted.record.restores == 1
    guest.run("echo from-b > /tmp/kmx-b", check=True)


def test_c_after(guest: GuestSession) -> None:
    assert guest.run("cat /tmp/kmx-b").stdout == "from-b\n"
