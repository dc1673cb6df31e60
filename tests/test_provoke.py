"""Kernel reports provoked on demand are found with the right kind and a syzkaller-style
title naming the function that caused them: an independent truth for the crash-report
parser (kmatrix.results.logparse) and the /dev/kmsg reader (kmatrix.guest.kmsg).

For each of Debian's 6.1 and 6.12 cloud kernels, kmx_crash (images/crash) is built on the
host against the kernel's linux-headers packages (apt-get download, never installed) and
loaded in one real guest under TCG. Every report class the kernel can produce is provoked
by one write to /proc/kmx_crash from a noinline function named kmx_crash_WORD, and must be
found in the records read since the provocation, with its kind and title, and with no
address, PID, CPU number or duration in any title. What the kernel survives (WARN, BUG,
oopses, lockups, stalls) runs on one boot, in an order that keeps the detectors working (a
hung task is no longer reported once an oops tainted the kernel); after each fatal one
(panic, int3, stack overflow) the guest is restored from the snapshot taken after loading
the module, and the report is read from the console.

KMATRIX_PROVOKE_LOGS=DIR keeps each provocation's log there (the golden logs in
tests/data/logs come from such runs).
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import TWO
from kmatrix.errors import GuestError
from kmatrix.guest.guest import Guest
from kmatrix.guest.kmsg import read_kmsg, render
from kmatrix.kernels import load_matrix
from kmatrix.kernels.extmod import crash_module
from kmatrix.results.logparse import Finding, findings_summary, parse_kernel_log

pytestmark = pytest.mark.boot

CELLS = {"6.1": "deb-6.1-cloud/Nehalem/virtio", "6.12": "deb-6.12-cloud/Haswell/virtio"}
SPIN = 5  # seconds softlockup and rcustall keep their CPU, hung sleeps


@dataclass(frozen=True)
class Provocation:
    word: str
    expect: tuple[tuple[str, str], ...]  # (kind, title): each must be found
    also: tuple[tuple[str, str], ...] = ()  # what may come with it
    knob: tuple[str, str] = ("", "")  # (file, value): a detector threshold set meanwhile
    background: bool = False  # the write blocks for long: run it in the background
    wait: float = 10.0  # seconds the reports may take to appear
    fatal: bool = False


def fn(word: str) -> str:
    return f"kmx_crash_{word}"


PANIC_IRQ = ("panic", "Kernel panic - not syncing: Fatal exception in interrupt")
# In the order they run on one boot: the hung-task detector stops reporting once an oops
# has tainted the kernel, so it goes before the oopses; the fatal ones each end the VM.
PROVOCATIONS = (
    Provocation("warn", (("warning", f"WARNING in {fn('warn')}"),)),
    Provocation("refcount", (("refcount", f"WARNING: refcount bug in {fn('refcount')}"),)),
    Provocation(
        "twin",
        (("warning", f"WARNING in {fn('twin_a')}"), ("warning", f"WARNING in {fn('twin_b')}")),
    ),
    Provocation("atomic", (("atomic_sleep", f"BUG: scheduling while atomic in {fn('atomic')}"),)),
    Provocation(
        "mightsleep",
        (
            (
                "atomic_sleep",
                f"BUG: sleeping function called from invalid context in {fn('mightsleep')}",
            ),
        ),
    ),
    Provocation("ubsan", (("ubsan", f"UBSAN: array-index-out-of-bounds in {fn('ubsan')}"),)),
    Provocation(
        "hung",
        (("hung_task", f"INFO: task hung in {fn('hung')}"),),
        knob=("/proc/sys/kernel/hung_task_timeout_secs", "2"),
        background=True,
        wait=30.0,
    ),
    Provocation(
        "softlockup",
        (("soft_lockup", f"BUG: soft lockup in {fn('softlockup')}"),),
        knob=("/proc/sys/kernel/watchdog_thresh", "1"),
    ),
    Provocation(
        "rcustall",
        (("rcu_stall", f"INFO: rcu detected stall in {fn('rcustall')}"),),
        knob=("/sys/module/rcupdate/parameters/rcu_cpu_stall_timeout", "3"),
    ),
    Provocation("list", (("list_corruption", f"BUG: corrupted list in {fn('list')}"),)),
    Provocation("bug", (("bug", f"kernel BUG in {fn('bug')}"),)),
    Provocation(
        "null",
        (("page_fault", f"BUG: unable to handle kernel NULL pointer dereference in {fn('null')}"),),
    ),
    Provocation(
        "pagefault",
        (("page_fault", f"BUG: unable to handle kernel paging request in {fn('pagefault')}"),),
    ),
    Provocation("div", (("divide_error", f"divide error in {fn('div')}"),)),
    Provocation("ud2", (("invalid_opcode", f"invalid opcode in {fn('ud2')}"),)),
    Provocation("gpf", (("gpf", f"general protection fault in {fn('gpf')}"),)),
    Provocation(
        "panic", (("panic", "Kernel panic - not syncing: kmx_crash: panic on request"),), fatal=True
    ),
    Provocation("int3", (("int3", f"int3 in {fn('int3')}"), PANIC_IRQ), fatal=True),
    Provocation(
        "overflow",
        (("stack_overflow", f"BUG: stack guard page was hit in {fn('overflow')}"), PANIC_IRQ),
        fatal=True,
    ),
)
# A title may name functions and files; any other digit is an address, PID, CPU or time.
_NAME_RE = re.compile(r"[A-Za-z_][\w.]*")


@dataclass
class Lab:
    """One kernel's guest with kmx_crash loaded, and a snapshot of it to come back to."""

    guest: Guest
    available: dict[str, str]  # word -> "yes" or why not
    logs: Path


@pytest.fixture(scope="module", params=sorted(CELLS), ids=lambda k: f"deb-{k}-cloud")
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    cell = load_matrix(TWO).cell(CELLS[request.param])
    out = tmp_path_factory.mktemp(f"provoke-{request.param}")
    g = Guest(cell, out, accel="tcg")
    g.prepare()
    assert g.kernel is not None
    ko = crash_module(g.kernel, cell.kernel)
    g.start()
    try:
        assert g.session is not None
        g.session.write_file("/tmp/kmx_crash.ko", ko.read_bytes())
        g.session.run(f"insmod /tmp/kmx_crash.ko secs={SPIN}", check=True)
        listing = g.session.read_file("/proc/kmx_crash")
        available = dict(line.split(" ", 1) for line in listing.splitlines())
        assert g.snapshot(), g.record.snapshot_error
        keep = os.environ.get("KMATRIX_PROVOKE_LOGS")
        logs = Path(keep) / request.param if keep else out / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        yield Lab(g, available, logs)
    finally:
        g.stop(collect=False)


def _found(findings: list[Finding], want: tuple[tuple[str, str], ...]) -> bool:
    got = {(f.kind, f.title) for f in findings}
    return all(w in got for w in want)


def _provoke(lab: Lab, p: Provocation) -> tuple[list[Finding], str]:
    g = lab.guest
    assert g.session is not None
    path, value = p.knob
    if path:
        old = g.session.read_file(path).strip()
        g.session.write_file(path, f"{value}\n")
    read_kmsg(g.session)  # from here on
    cmd = f"echo {p.word} > /proc/kmx_crash" + (" &" if p.background else "")
    # An oops kills the writing shell: its exit status is no verdict, the kernel log is.
    g.session.run(cmd, timeout=60)
    deadline = time.monotonic() + p.wait
    text = ""
    try:
        while True:
            text += render(read_kmsg(g.session).records, kernel_only=True)
            findings = parse_kernel_log(text)
            if _found(findings, p.expect) or time.monotonic() > deadline:
                return findings, text
            time.sleep(0.5)
    finally:
        if path:
            g.session.write_file(path, f"{old}\n")


def _provoke_fatal(lab: Lab, p: Provocation) -> tuple[list[Finding], str]:
    g = lab.guest
    assert g.session is not None and g.machine is not None
    offset = g.console_log.stat().st_size
    with pytest.raises(GuestError):
        g.session.run(f"echo {p.word} > /proc/kmx_crash", timeout=60)
    # panic=-1 with -no-reboot: the dying kernel ends QEMU.
    assert g.machine.wait_exit(30) is not None, "QEMU still runs after a fatal report"
    g.restore(f"after provoking {p.word}")  # also flushes the dead VM's console
    text = g.console_log.read_bytes()[offset:].decode(errors="replace")
    text = text.split("\n[kmatrix: restore", 1)[0]
    return parse_kernel_log(text), text


@pytest.mark.parametrize("p", PROVOCATIONS, ids=[p.word for p in PROVOCATIONS])
def test_provoked_report_is_found_and_titled(lab: Lab, p: Provocation) -> None:
    state = lab.available.get(p.word, "no: kmx_crash does not know it")
    if state != "yes":
        pytest.skip(f"{p.word}: this kernel cannot produce it ({state.removeprefix('no: ')})")
    findings, text = (_provoke_fatal if p.fatal else _provoke)(lab, p)
    (lab.logs / f"{p.word}.log").write_text(text)
    summary = findings_summary(findings)
    assert _found(findings, p.expect), f"expected {p.expect}, found:\n{summary}\n\n{text[-3000:]}"
    unexpected = {(f.kind, f.title) for f in findings} - set(p.expect) - set(p.also)
    assert not unexpected, f"{p.word} also gave:\n{summary}"
    for f in findings:
        assert not re.search(r"\d", _NAME_RE.sub("", f.title)), f"number in title {f.title!r}"
        assert f.excerpt.strip(), f.title
