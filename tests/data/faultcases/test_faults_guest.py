"""Guest-side fault injections, run by tests/test_faults.py through `pytest -p kmatrix`.

Each test is selected with -k and breaks its own cell's VM in one specific way; the outer
test asserts how kmatrix classifies and records it.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from kmatrix.guest.guest import Guest
from kmatrix.guest.session import GuestSession


def test_a_sigkill_qemu(booted: Guest, guest: GuestSession) -> None:
    assert booted.machine is not None and booted.machine.proc is not None
    # The line must have left the guest before the kill: a write to ttyS0 returns once the
    # tty holds it, and the UART sends it when a vCPU next runs (late on a loaded host). It is
    # written a second late here on purpose, which a fixed pause before the kill (0.5 s once)
    # loses; the kill waits, bounded, until the host has read it.
    guest.run("(sleep 1; echo before-the-kill > /dev/ttyS0) >/dev/null 2>&1 &", check=True)
    deadline = time.monotonic() + 60
    while b"before-the-kill" not in booted.console_log.read_bytes():
        assert time.monotonic() < deadline, "the console line never reached the host"
        time.sleep(0.05)
    os.kill(booted.machine.proc.pid, signal.SIGKILL)
    guest.run("echo unreachable")


def test_b_after(guest: GuestSession) -> None:
    guest.run("true", check=True)


@pytest.mark.kmatrix_clean
def test_c_clean(guest: GuestSession) -> None:
    # Selected with a fault, it makes the cell save its post-boot state: the tests after the
    # VM's death then run on that state restored instead of erroring.
    assert guest.run("echo alive").stdout == "alive\n"


def test_a_panic(guest: GuestSession) -> None:
    guest.run("echo 1 > /proc/sys/kernel/sysrq; echo c > /proc/sysrq-trigger", timeout=60)


def test_a_sigstop_qemu(booted: Guest, guest: GuestSession) -> None:
    assert booted.machine is not None and booted.machine.proc is not None
    os.kill(booted.machine.proc.pid, signal.SIGSTOP)
    guest.run("echo frozen", timeout=3)


def test_a_userspace_hang(guest: GuestSession) -> None:
    # The agent's own shell stops itself: userspace never answers again, QEMU stays fine.
    guest.run("kill -STOP $PPID; sleep 1", timeout=4)


def test_a_slow_guest(guest: GuestSession) -> None:
    # Runs long enough for the outer test to interrupt the run; the console line tells it
    # that the command is running (the signal must land mid-command, not during the boot).
    guest.run("echo slow-guest-running > /dev/ttyS0; sleep 120", timeout=150)


def test_a_fill_the_disk(guest: GuestSession) -> None:
    # ~600 KB through the UART into a console log on a 256 KB filesystem.
    r = guest.run("head -c 600000 /dev/zero | tr '\\0' z > /dev/ttyS0; echo ok", timeout=120)
    assert r.stdout == "ok\n"
