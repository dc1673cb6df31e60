"""Driver and device smoke suite: PCI enumeration and binding, module unload/reload, virtio
devices end to end, PCI hot-unplug and re-plug through QMP.

What the profile declares (expect_pci, modules, scratch_disk, hotplug) is compared with what
the guest's sysfs shows; the kernel log is judged only for the lines each test caused.
"""

from __future__ import annotations

import hashlib
import re

import pytest
from guestlib import (
    HOTPLUG_WAIT,
    LOADED_TIMEOUT,
    assert_no_findings,
    find_pci,
    log_mark,
    new_findings,
    pci_address,
    replug,
    unplug,
    wait_exists,
    wait_output,
)

from kmatrix import (
    Cell,
    Guest,
    GuestSession,
    KernelArtifact,
    QemuDevice,
    base_modules,
    not_applicable,
    qemu_layout,
    require_config,
)

pytestmark = pytest.mark.driver

RELOAD_ROUNDS = 3

_PCI_SCAN = (
    "for d in /sys/bus/pci/devices/*; do "
    'echo "${d##*/} $(cat $d/vendor $d/device | tr "\\n" " ")'
    '$(basename "$(readlink $d/driver)" 2>/dev/null)"; done'
)


def _pci(guest: GuestSession) -> dict[str, tuple[str, str, str]]:
    """{address: (vendor, device, driver or '')} from sysfs."""
    out = {}
    for line in guest.run(_PCI_SCAN, check=True).stdout.splitlines():
        f = line.split()
        if len(f) >= 3:
            vendor, device = (x.removeprefix("0x") for x in f[1:3])
            out[f[0]] = (vendor, device, f[3] if len(f) > 3 else "")
    return out


def _binding_problems(guest: GuestSession, cell: Cell) -> list[str]:
    """What differs between the profile's expect_pci and the guest's sysfs."""
    seen = _pci(guest)
    problems = []
    for e in cell.device.expect_pci:
        matches = [(a, drv) for a, (v, d, drv) in seen.items() if (v, d) == (e.vendor, e.device)]
        if not matches:
            problems.append(f"{e.vendor}:{e.device} not enumerated")
        elif e.driver and all(drv != e.driver for _, drv in matches):
            got = ", ".join(f"{a} -> {drv or 'no driver'}" for a, drv in matches)
            problems.append(f"{e.vendor}:{e.device} bound to {got}, expected {e.driver}")
    if problems:
        listing = "\n".join(f"  {a} {v}:{d} {drv}" for a, (v, d, drv) in sorted(seen.items()))
        problems.append(f"PCI devices in the guest:\n{listing}")
    return problems


@pytest.mark.kmatrix_applies(
    lambda cell: bool(cell.device.expect_pci),
    "device profile {cell.device.name} declares no expect_pci",
)
def test_expected_pci_devices_bound(guest: GuestSession, cell: Cell) -> None:
    """Every PCI device the profile expects is enumerated and bound to its driver."""
    problems = _binding_problems(guest, cell)
    assert not problems, "; ".join(problems)


def test_modules_unload_reload(guest: GuestSession, booted: Guest, cell: Cell) -> None:
    """Each module the profile loads unloads and reloads three times, with no new WARN or
    BUG in the kernel log, and comes back bound."""
    index = booted.modules
    assert index is not None
    channel = set(base_modules(booted.record.channel))
    held = booted.held_modules()  # e.g. virtio_blk under the mounted tools disk
    cycle, left_out = [], []
    for name in qemu_layout(cell.device).modules:
        mod = name.replace("-", "_")
        state = index.state(mod)
        if mod in channel:
            left_out.append(f"{mod} carries the harness's agent channel")
        elif mod in held:
            left_out.append(f"{mod} holds a mounted data disk ({', '.join(booted.mounted)})")
        elif state != "module":
            left_out.append(f"{mod} is {state} in {booted.kernel.release if booted.kernel else ''}")
        else:
            cycle.append(mod)
    if not cycle:
        not_applicable(
            f"no loadable module to cycle in profile {cell.device.name}: "
            + ("; ".join(left_out) or "it names none")
        )
    mark = log_mark(guest)
    failures = []
    for mod in cycle:
        script = f"""
for i in $(seq {RELOAD_ROUNDS}); do
    rmmod {mod} || {{ echo "round $i: rmmod {mod} failed"; exit 1; }}
    [ -d /sys/module/{mod} ] && {{ echo "round $i: {mod} still loaded after rmmod"; exit 1; }}
    modprobe {mod} || {{ echo "round $i: modprobe {mod} failed"; exit 1; }}
    [ -d /sys/module/{mod} ] || {{ echo "round $i: {mod} absent after modprobe"; exit 1; }}
done
echo "== holders $(ls /sys/module/{mod}/drivers 2>/dev/null | tr '\\n' ' ')"
"""
        res = guest.run(script, timeout=LOADED_TIMEOUT)
        if res.exit_status != 0:
            failures.append(f"{mod}: {(res.stdout + res.stderr).strip()}")
    findings, _ = new_findings(guest, mark)
    assert not failures, "module reload failed: " + "; ".join(failures)
    assert_no_findings(findings, "the kernel logged while modules were cycled")
    problems = _binding_problems(guest, cell)
    assert not problems, "after the reloads: " + "; ".join(problems)


def _devices(cell: Cell, prefix: str) -> list[QemuDevice]:
    return [d for d in qemu_layout(cell.device).devices if d.driver.startswith(prefix)]


@pytest.mark.kmatrix_applies(
    lambda cell: bool(_devices(cell, "virtio-rng")),
    "device profile {cell.device.name} has no virtio-rng device",
)
@pytest.mark.kmatrix_config("HW_RANDOM_VIRTIO")
def test_virtio_rng_yields_bytes(guest: GuestSession) -> None:
    """/dev/hwrng is served by virtio_rng and returns fresh, non-constant bytes."""
    current = guest.read_file("/sys/class/misc/hw_random/rng_current").strip()
    assert current.startswith("virtio_rng"), f"rng_current is {current!r}, not virtio_rng.N"
    out = guest.run(
        "for i in 1 2; do dd if=/dev/hwrng bs=64 count=1 2>/dev/null | od -An -tx1 | tr -d ' \\n'"
        "; echo; done",
        timeout=30,
        check=True,
    ).stdout.split()
    assert len(out) == 2 and all(len(x) == 128 for x in out), f"short reads from /dev/hwrng: {out}"
    assert out[0] != out[1], f"two reads of /dev/hwrng returned the same 64 bytes: {out[0]}"
    assert len(set(out[0])) > 4, f"/dev/hwrng returned a constant pattern: {out[0]}"


@pytest.mark.kmatrix_applies(
    lambda cell: cell.device.scratch_disk is not None,
    "device profile {cell.device.name} declares no scratch_disk",
)
def test_scratch_disk_read_write(
    guest: GuestSession, booted: Guest, cell: Cell, kernel: KernelArtifact
) -> None:
    """Data written to the scratch disk in the guest reads back in the guest after dropping
    caches, and lands at the same offset of the host file behind the disk."""
    disk = cell.device.scratch_disk
    assert disk is not None
    if disk.driver.startswith("virtio-blk"):
        require_config(kernel, "VIRTIO_BLK")
    assert booted.scratch_disk is not None
    serial = f"kmx-{disk.id}"
    for k, v in disk.props:
        if k == "serial":
            serial = v
    find = (
        f'for b in /sys/block/*; do [ "$(cat $b/serial 2>/dev/null)" = {serial} ] && '
        'echo "${b##*/} $(cat $b/size)"; done'
    )
    found = guest.run(find, check=True).stdout.split()
    assert len(found) == 2, f"no block device with serial {serial} in /sys/block"
    dev, sectors = found[0], int(found[1])
    assert sectors * 512 == disk.size << 20, (
        f"/dev/{dev} has {sectors * 512} bytes, the profile's disk has {disk.size} MiB"
    )
    offset_blocks, blocks, bs = 16, 16, 65536  # 1 MiB at 1 MiB
    script = f"""
dd if=/dev/urandom of=/tmp/kmx-pattern bs={bs} count={blocks} 2>/dev/null
dd if=/tmp/kmx-pattern of=/dev/{dev} bs={bs} seek={offset_blocks} conv=fsync 2>/dev/null || exit 2
echo "== wrote $(sha256sum < /tmp/kmx-pattern | cut -d' ' -f1)"
sync; echo 3 > /proc/sys/vm/drop_caches
echo "== read $(dd if=/dev/{dev} bs={bs} skip={offset_blocks} count={blocks} 2>/dev/null \\
    | sha256sum | cut -d' ' -f1)"
rm -f /tmp/kmx-pattern
"""
    res = guest.run(script, timeout=LOADED_TIMEOUT)
    assert res.exit_status == 0, f"writing /dev/{dev} failed: {res.stderr}"
    sums = dict(re.findall(r"== (\w+) ([0-9a-f]{64})", res.stdout))
    assert sums.get("wrote") == sums.get("read"), f"read back differs from written: {sums}"
    with booted.scratch_disk.open("rb") as f:
        f.seek(offset_blocks * bs)
        host = hashlib.sha256(f.read(blocks * bs)).hexdigest()
    assert host == sums["wrote"], (
        f"the host file {booted.scratch_disk} holds other bytes at offset "
        f"{offset_blocks * bs} than the guest wrote"
    )


@pytest.mark.kmatrix_applies(
    lambda cell: bool(cell.device.hotplug),
    "device profile {cell.device.name} names no hotplug device",
)
def test_pci_hot_unplug_replug(guest: GuestSession, booted: Guest, cell: Cell) -> None:
    """Each device the profile marks hot-pluggable is removed with QMP device_del (the guest
    ejects it) and added back with device_add; its driver binds again."""
    assert booted.machine is not None
    mark = log_mark(guest)
    by_id = {d.id: d for d in qemu_layout(cell.device).devices}
    for qid in cell.device.hotplug:
        spec = by_id[qid]
        entry = find_pci(booted.qmp("query-pci"), qid)
        assert entry is not None, f"QEMU's query-pci has no device {qid}"
        addr = pci_address(entry)
        sysfs = f"/sys/bus/pci/devices/{addr}"
        probe = f'basename "$(readlink {sysfs}/driver)" 2>/dev/null || echo gone'
        child = f'basename "$(readlink {sysfs}/virtio*/driver)" 2>/dev/null || echo none'
        driver_before = guest.run(probe).stdout.strip()
        child_before = guest.run(child).stdout.strip()
        assert driver_before not in ("", "gone"), f"{qid} at {addr} has no driver before unplug"

        unplug(booted, qid, HOTPLUG_WAIT)
        gone = wait_exists(guest, sysfs, False, HOTPLUG_WAIT)
        assert gone, f"{addr} still in the guest after {qid} was deleted"

        replug(booted, spec)
        rebound = wait_output(guest, probe, driver_before, HOTPLUG_WAIT)
        assert rebound == driver_before, (
            f"after re-plugging {qid} at {addr} its driver is {rebound!r}, was {driver_before!r}"
        )
        if child_before != "none":
            again = wait_output(guest, child, child_before, HOTPLUG_WAIT)
            assert again == child_before, (
                f"{qid}'s virtio function is bound to {again!r} after re-plug, was {child_before!r}"
            )
    findings, _ = new_findings(guest, mark)
    assert_no_findings(findings, "the kernel logged during hot-(un)plug")
