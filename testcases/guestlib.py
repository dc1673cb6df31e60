"""Guest-side helpers shared by the scheduler, memory and driver suites.

Everything here runs real tools in the guest (busybox, stress-ng, util-linux) and reads
/proc and /sys; the host only parses. Under TCG every guest process costs tens of
milliseconds, so scripts read the few /proc files they need rather than scanning /proc.
"""

from __future__ import annotations

import re
import time
from typing import Any

from kmatrix import (  # noqa: F401  (the suites import these from here)
    Finding,
    Guest,
    GuestSession,
    LogMark,
    QemuDevice,
    assert_no_findings,
    log_mark,
    new_log,
    parse_kernel_log,
)

# util-linux taskset by path: busybox sh runs its own applet for a bare `taskset`.
TASKSET = "/usr/bin/taskset"


def online_cpus(text: str) -> list[int]:
    """Expands a sysfs cpu list such as '0-3,5'."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if "-" in part:
            a, b = part.split("-")
            cpus += range(int(a), int(b) + 1)
        elif part:
            cpus.append(int(part))
    return cpus


def meminfo(guest: GuestSession) -> dict[str, int]:
    """/proc/meminfo in kB (HugePages_* counts as they are)."""
    out: dict[str, int] = {}
    for line in guest.read_file("/proc/meminfo").splitlines():
        key, _, rest = line.partition(":")
        fields = rest.split()
        if fields:
            out[key.strip()] = int(fields[0])
    return out


def sysfs_choice(text: str) -> tuple[str, list[str]]:
    """'always [madvise] never' -> ('madvise', ['always', 'madvise', 'never'])."""
    words = text.split()
    chosen = [w[1:-1] for w in words if w.startswith("[") and w.endswith("]")]
    return (chosen[0] if chosen else ""), [w.strip("[]") for w in words]


def new_findings(guest: GuestSession, mark: LogMark) -> tuple[list[Finding], str]:
    text = new_log(guest, mark)
    return parse_kernel_log(text), text


# Shell functions for scripts that drive stress-ng: its workers are direct children of the
# stress-ng process started with `&` ($!). /proc/<pid>/task/<pid>/children (PROC_CHILDREN)
# is one small read; without it, one scan of every /proc/<pid>/stat. kmx_wait_kids waits up
# to 60 s of guest time (a third argument changes it): starting stress-ng takes a moment
# under TCG, and many on a busy host.
SH_CHILDREN = r"""
kmx_kids() {
    if [ -r /proc/$1/task/$1/children ]; then cat /proc/$1/task/$1/children
    else cat /proc/[0-9]*/stat 2>/dev/null | awk -v p=$1 '$4 == p { printf "%s ", $1 }'; fi
}
kmx_wait_kids() {
    _end=$(( $(cut -d. -f1 /proc/uptime) + ${3:-60} ))
    while :; do
        _k=$(kmx_kids $1)
        [ $(echo $_k | wc -w) -ge $2 ] && break
        [ $(cut -d. -f1 /proc/uptime) -ge $_end ] && break
        sleep 0.1
    done
    echo $_k
}
kmx_files() { for _p in $2; do printf '/proc/%s/%s ' $_p $1; done; }
"""


# Deadline of a guest script that starts loads (stress-ng, hackbench) and measures them:
# seconds on an idle host, but a guest under TCG on a host with other VMs and compilers
# runs ten times slower or more. A deadline, never a tolerance on what is measured.
LOADED_TIMEOUT = 180


def parse_stat(line: str) -> tuple[int, list[str]]:
    """A /proc/<pid>/stat line -> (pid, fields after the comm, numbered from field 3)."""
    head, _, rest = line.rpartition(")")
    return int(head.split("(", 1)[0]), rest.split()


def stat_field(fields: list[str], number: int) -> int:
    """Field `number` (1-based, as in proc(5)) from parse_stat's list."""
    return int(fields[number - 3])


_STRESS_NG_TROUBLE = re.compile(r"unexpected signal|\bfail(?:ed)?:|memory error|unsuccessful run")


def stress_ng_trouble(output: str) -> list[str]:
    """stress-ng lines saying a stressor died or found errors; its exit status can still be 0
    (e.g. a worker killed by SIGILL counts as 'successful run completed')."""
    return [line for line in output.splitlines() if _STRESS_NG_TROUBLE.search(line)]


def find_pci(tree: list[dict[str, Any]], qdev_id: str) -> dict[str, Any] | None:
    """The QMP query-pci entry of a device, searching behind bridges and on every root bus
    (PCIe expander bridges are root buses of their own)."""
    for bus in tree:
        for dev in bus.get("devices", []):
            if dev.get("qdev_id") == qdev_id:
                return dict(dev)
            sub = dev.get("pci_bridge", {}).get("devices")
            if sub:
                hit = find_pci([{"devices": sub}], qdev_id)
                if hit:
                    return hit
    return None


def pci_address(entry: dict[str, Any]) -> str:
    """The guest's sysfs name of a query-pci entry (QEMU has one PCI domain, 0000)."""
    return f"0000:{entry['bus']:02x}:{entry['slot']:02x}.{entry['function']}"


def wait_output(guest: GuestSession, cmd: str, want: str, seconds: float) -> str:
    """Runs cmd until its stripped output is want or seconds pass; returns the last output."""
    deadline = time.monotonic() + seconds
    while True:
        got = guest.run(cmd, timeout=30).stdout.strip()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.2)


HOTPLUG_WAIT = 20.0  # seconds; PCI hot-plug on q35 under TCG usually takes < 1 s


def wait_exists(guest: GuestSession, path: str, exists: bool, seconds: float) -> bool:
    """Waits until path exists (or is gone); returns whether it ended as wanted."""
    want = "present" if exists else "gone"
    got = wait_output(guest, f"test -e {path} && echo present || echo gone", want, seconds)
    return got == want


def unplug(booted: Guest, qdev_id: str, seconds: float) -> None:
    """QMP device_del, then waits for QEMU's DEVICE_DELETED (the guest ejected it)."""
    assert booted.machine is not None
    seen = len(booted.machine.events())
    booted.qmp("device_del", id=qdev_id)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if any(
            e.get("event") == "DEVICE_DELETED" and e.get("data", {}).get("device") == qdev_id
            for e in booted.machine.events()[seen:]
        ):
            return
        time.sleep(0.1)
    raise AssertionError(f"no DEVICE_DELETED for {qdev_id} within {seconds:g}s")


def replug(booted: Guest, device: QemuDevice) -> None:
    """device_add with the profile's own properties (HMP parses -device syntax as written)."""
    props = "".join(f",{k}={v}" for k, v in device.props)
    hmp: dict[str, Any] = {"command-line": f"device_add {device.driver},id={device.id}{props}"}
    said = booted.qmp("human-monitor-command", **hmp)
    assert not str(said).strip(), f"device_add {device.id} failed: {said}"
