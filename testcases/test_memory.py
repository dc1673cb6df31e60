"""Memory-management smoke suite: sizing, pressure, THP, hugetlb, MGLRU, zswap, OOM, hot-add.

Loads come from stress-ng; the kernel's view is read back from /proc/meminfo, /proc/vmstat
and sysfs, and the kernel log is judged only for the lines each test caused. Tests that
change a global knob put it back in a finally, because later tests share the boot.
"""

from __future__ import annotations

import contextlib
import re
import time
from typing import Any

import pytest
from guestlib import (
    LOADED_TIMEOUT,
    SH_CHILDREN,
    assert_no_findings,
    log_mark,
    meminfo,
    new_findings,
    new_log,
    stress_ng_trouble,
    sysfs_choice,
)

from kmatrix import (
    Cell,
    Guest,
    GuestSession,
    KernelArtifact,
    KmatrixError,
    needs_tools,
    not_applicable,
)

pytestmark = pytest.mark.memory

MIB = 1024  # kB per MiB

# What the kernel may keep out of MemTotal: its image, struct pages (~1.6% of RAM), early
# allocations; the swiotlb bounce buffer (64 MiB once maxmem reaches past 4 GiB) is
# read from the log and allowed on top.
RESERVE_FIXED_MIB = 64
RESERVE_FRACTION = 0.04
# Memory the firmware keeps below 1 MiB and for ACPI tables: the RAM the kernel sees may
# fall short of the VM's size by this much.
FIRMWARE_HOLE_MIB = 2


def test_memtotal_matches_vm(guest: GuestSession, cell: Cell, record_property: Any) -> None:
    """The kernel sees the VM's RAM, and MemTotal is that less a bounded reservation."""
    info = meminfo(guest)
    total_mib = info["MemTotal"] / MIB
    log = guest.dmesg()
    swiotlb = re.search(r"software IO TLB: mapped \[.*\] \((\d+)MB\)", log)
    swiotlb_mib = int(swiotlb.group(1)) if swiotlb else 0
    seen = re.search(r"Memory: \d+K/(\d+)K available", log)
    record_property("mem.memtotal_mib", round(total_mib, 1))
    record_property("mem.swiotlb_mib", swiotlb_mib)
    if seen:
        seen_mib = int(seen.group(1)) / MIB
        record_property("mem.kernel_seen_mib", round(seen_mib, 1))
        assert cell.memory - FIRMWARE_HOLE_MIB <= seen_mib <= cell.memory, (
            f"the kernel found {seen_mib:.0f} MiB of RAM; the VM has {cell.memory} MiB "
            f"(allowed firmware hole {FIRMWARE_HOLE_MIB} MiB)"
        )
    allowed = RESERVE_FIXED_MIB + RESERVE_FRACTION * cell.memory + swiotlb_mib
    reserved = cell.memory - total_mib
    assert 0 <= reserved <= allowed, (
        f"MemTotal {total_mib:.0f} MiB for a {cell.memory} MiB VM: {reserved:.0f} MiB "
        f"reserved, allowed 0..{allowed:.0f} MiB ({RESERVE_FIXED_MIB} MiB + "
        f"{RESERVE_FRACTION:.0%} + swiotlb {swiotlb_mib} MiB)"
    )


VM_WAIT = 120  # seconds (guest time) stress-ng gets to populate its memory


@needs_tools
def test_vm_stress_clean_log(guest: GuestSession) -> None:
    """stress-ng --vm maps and populates 80% of available memory and verifies a zero/one
    pattern in it; no worker dies and the kernel logs no new error."""
    avail_mib = meminfo(guest)["MemAvailable"] // MIB
    size = int(avail_mib * 0.8)
    # The worker must really hold most of the memory at once: MemFree has to fall this low.
    target_kb = int((avail_mib - 0.6 * size) * MIB)
    mark = log_mark(guest)
    # Populating takes seconds under TCG (minutes on a busy host) and a stress-ng timeout
    # that fires first would cut it short, so the run is stopped once MemFree shows the
    # memory held: a bounded wait, in guest time, for the state the test measures.
    script = f"""
stress-ng --vm 1 --vm-bytes {size}M --vm-populate --vm-keep --vm-method zero-one --verify \\
    -t {VM_WAIT + 60} >/tmp/kmx-vm.log 2>&1 &
s=$!
end=$(( $(cut -d. -f1 /proc/uptime) + {VM_WAIT} ))
low=$(awk '/^MemFree/ {{ print $2 }}' /proc/meminfo)
while [ "$low" -gt {target_kb} ] && [ $(cut -d. -f1 /proc/uptime) -lt $end ] && kill -0 $s; do
    sleep 0.2
    f=$(awk '/^MemFree/ {{ print $2 }}' /proc/meminfo); [ "$f" -lt "$low" ] && low=$f
done 2>/dev/null
sleep 0.5  # a moment of pattern checking over the populated buffer
kill $s; wait $s
echo "== rc=$?"
echo "== minfree $low"
cat /tmp/kmx-vm.log; rm -f /tmp/kmx-vm.log
"""
    out = guest.run(script, timeout=VM_WAIT + 60).stdout
    findings, _ = new_findings(guest, mark)
    assert "== rc=0" in out and not stress_ng_trouble(out), f"stress-ng --vm {size}M:\n{out}"
    m = re.search(r"== minfree (\d+)", out)
    assert m, out
    low_mib = int(m.group(1)) / MIB
    assert int(m.group(1)) <= target_kb, (
        f"MemFree never fell below {low_mib:.0f} MiB in {VM_WAIT}s of stress-ng holding "
        f"{size} MiB of {avail_mib} MiB available (expected <= {target_kb / MIB:.0f} MiB)"
    )
    assert_no_findings(findings, "the kernel logged during stress-ng --vm")


THP = "/sys/kernel/mm/transparent_hugepage"


@pytest.mark.kmatrix_config("TRANSPARENT_HUGEPAGE")
def test_thp_modes(guest: GuestSession, kernel: KernelArtifact, record_property: Any) -> None:
    """Every THP `enabled` and `defrag` mode the kernel offers can be set and reads back."""
    wrong = {}
    for knob in ("enabled", "defrag"):
        path = f"{THP}/{knob}"
        original, modes = sysfs_choice(guest.read_file(path))
        record_property(f"mem.thp_{knob}", original)
        assert original and modes, f"{path} lists no modes: {guest.read_file(path)!r}"
        try:
            for mode in modes:
                guest.run(f"echo {mode} > {path}", check=True)
                now, _ = sysfs_choice(guest.read_file(path))
                if now != mode:
                    wrong[f"{knob}={mode}"] = now
        finally:
            guest.run(f"echo {original} > {path}", check=True)
    assert not wrong, f"modes that did not stick (asked -> read back): {wrong}"


@needs_tools
@pytest.mark.kmatrix_config("TRANSPARENT_HUGEPAGE")
def test_thp_madvise_region_gets_huge_pages(guest: GuestSession) -> None:
    """With THP in madvise mode, a 32 MiB region stress-ng madvises MADV_HUGEPAGE ends up
    backed by huge pages (AnonHugePages)."""
    khp = f"{THP}/khugepaged/scan_sleep_millisecs"
    saved = {
        path: sysfs_choice(guest.read_file(path))[0] for path in (f"{THP}/enabled", f"{THP}/defrag")
    }
    saved[khp] = guest.read_file(khp).strip()
    size_mib = 32
    want_kb = size_mib * 1024 // 2
    counters = "awk '/^thp_(fault|collapse)_alloc / { printf \"%s=%s \", $1, $2 }' /proc/vmstat"
    # stress-ng may touch the buffer before its madvise, so the huge pages can come from the
    # fault path or from khugepaged collapsing the region; khugepaged is made to scan often.
    script = f"""
echo madvise > {THP}/enabled && echo madvise > {THP}/defrag || exit 3
echo 100 > {khp}
echo "== before $({counters})"
stress-ng --vm 1 --vm-bytes {size_mib}M --vm-madvise hugepage --vm-method zero-one \\
    --vm-keep -t 30 >/tmp/kmx-thp.log 2>&1 &
s=$!
i=0; peak=0
while [ $i -lt 100 ]; do
    peak=$(awk '/^AnonHugePages/ {{ print $2 }}' /proc/meminfo)
    [ "$peak" -ge {want_kb} ] && break
    sleep 0.1; i=$((i + 1))
done
echo "== anonhuge $peak"
echo "== after $({counters})"
kill $s; wait
cat /tmp/kmx-thp.log; rm -f /tmp/kmx-thp.log
"""
    try:
        res = guest.run(script, timeout=LOADED_TIMEOUT)
    finally:
        guest.run("; ".join(f"echo {v} > {k}" for k, v in saved.items()), check=True)
    assert res.exit_status == 0, f"could not set THP to madvise: {res.stderr}"
    assert not stress_ng_trouble(res.stdout), res.stdout
    peak = re.search(r"== anonhuge (\d+)", res.stdout)
    assert peak, res.stdout
    assert int(peak.group(1)) >= want_kb, (
        f"AnonHugePages peaked at {peak.group(1)} kB within 10 s for a {size_mib} MiB "
        f"MADV_HUGEPAGE region; expected >= {want_kb} kB\n{res.stdout}"
    )


HUGE_2M = "/sys/kernel/mm/hugepages/hugepages-2048kB"
HUGE_PAGES = 8


@needs_tools
@pytest.mark.kmatrix_config("HUGETLBFS", "HUGETLB_PAGE")
def test_hugetlb_reserve_map_release(guest: GuestSession, kernel: KernelArtifact) -> None:
    """Reserve 8 x 2 MiB hugetlb pages, allocate and map them (hugetlbfs, stress-ng
    --mmaphuge), give them back."""
    if guest.run(f"test -d {HUGE_2M}").exit_status != 0:
        not_applicable(f"{kernel.release} has no 2 MiB hugetlb pool ({HUGE_2M})")
    n = HUGE_PAGES
    original = guest.read_file(f"{HUGE_2M}/nr_hugepages").strip()
    free = "awk '/^HugePages_Free/ { print $2 }' /proc/meminfo"
    script = f"""
echo {n} > {HUGE_2M}/nr_hugepages
echo "== reserved $(cat {HUGE_2M}/nr_hugepages) $({free})"
mkdir -p /mnt/kmx-huge && mount -t hugetlbfs -o pagesize=2M none /mnt/kmx-huge || exit 3
fallocate -l {n // 2 * 2}M /mnt/kmx-huge/f
echo "== file $({free})"
rm -f /mnt/kmx-huge/f
echo "== unlinked $({free})"
stress-ng --mmaphuge 1 --mmaphuge-mmaps {n} -t 2 >/tmp/kmx-mh.log 2>&1 &
s=$!
low={n}
while kill -0 $s 2>/dev/null; do f=$({free}); [ "$f" -lt "$low" ] && low=$f; sleep 0.05; done
wait $s; echo "== mapped_low $low rc=$?"
cat /tmp/kmx-mh.log; rm -f /tmp/kmx-mh.log
echo 0 > {HUGE_2M}/nr_hugepages
echo "== released $(cat {HUGE_2M}/nr_hugepages)"
"""
    try:
        res = guest.run(script, timeout=LOADED_TIMEOUT)
    finally:
        guest.run(
            f"umount /mnt/kmx-huge 2>/dev/null; echo {original} > {HUGE_2M}/nr_hugepages",
            timeout=30,
        )
    assert res.exit_status == 0, f"could not mount hugetlbfs: {res.stderr}"
    assert not stress_ng_trouble(res.stdout), res.stdout
    vals = {k: [int(x) for x in v.split()] for k, v in re.findall(r"== (\w+) ([\d ]+)", res.stdout)}
    assert vals["reserved"] == [n, n], f"asked for {n} pages; pool/free: {vals['reserved']}"
    assert vals["file"] == [n - n // 2], (
        f"a {n} MiB hugetlbfs file left {vals['file']} of {n} pages free; expected {n - n // 2}"
    )
    assert vals["unlinked"] == [n], f"removing the file left {vals['unlinked']} free, not {n}"
    assert vals["mapped_low"][0] < n, (
        f"stress-ng --mmaphuge never held a hugetlb page (free stayed at {n})"
    )
    assert vals["released"] == [0], f"pool after release: {vals['released']}"


@pytest.mark.kmatrix_config("LRU_GEN")
def test_mglru_state_and_toggle(
    guest: GuestSession, kernel: KernelArtifact, record_property: Any
) -> None:
    """MGLRU's feature mask is reported, switched off and back on."""
    path = "/sys/kernel/mm/lru_gen/enabled"
    original = guest.read_file(path).strip()
    record_property("mem.lru_gen_enabled", original)
    try:
        guest.run(f"echo n > {path}", check=True)
        off = guest.read_file(path).strip()
        guest.run(f"echo y > {path}", check=True)
        on = guest.read_file(path).strip()
    finally:
        guest.run(f"echo {original} > {path}", check=True)
    assert int(off, 16) == 0, f"after 'n' {path} reads {off}; expected 0x0000"
    assert int(on, 16) & 1, f"after 'y' {path} reads {on}; expected the core bit (0x0001) set"
    assert guest.read_file(path).strip() == original


@pytest.mark.kmatrix_config("ZSWAP")
def test_zswap_state_and_toggle(
    guest: GuestSession, kernel: KernelArtifact, record_property: Any
) -> None:
    """zswap's state, compressor and pool are reported; it switches on and off."""
    params = "/sys/module/zswap/parameters"
    state = {}
    for name in ("enabled", "compressor", "zpool", "max_pool_percent"):
        res = guest.run(f"cat {params}/{name}")
        state[name] = res.stdout.strip() if res.ok else "?"
        record_property(f"mem.zswap_{name}", state[name])
    original = state["enabled"]
    assert original in ("Y", "N"), f"{params}/enabled reads {original!r}"
    got = {}
    try:
        for want in ("Y", "N"):
            guest.run(f"echo {want} > {params}/enabled", check=True)
            got[want] = guest.read_file(f"{params}/enabled").strip()
    finally:
        guest.run(f"echo {original} > {params}/enabled", check=True)
    assert got == {"Y": "Y", "N": "N"}, f"zswap enabled after writing Y, N: {got}"


OOM_WAIT = 150  # seconds (guest time) the hog gets to run into the OOM killer


@needs_tools
@pytest.mark.kmatrix_allow("oom", reason="the OOM killer's report is what this test provokes")
def test_oom_killer_keeps_guest_alive(guest: GuestSession) -> None:
    """A stress-ng hog mapping all of MemTotal is killed by the OOM killer; the guest keeps
    answering. The OOM report is the one kernel message this test expects."""
    total_mib = meminfo(guest)["MemTotal"] // MIB
    mark = log_mark(guest)
    # Without swap, touching MemTotal's worth cannot succeed; --oomable keeps stress-ng
    # from respawning the worker, which it otherwise does after an OOM kill. The pages are
    # touched one fault at a time, not with MAP_POPULATE: a victim inside one long populate
    # holds its mmap lock, the OOM reaper cannot free its memory in time and the killer
    # moves on to innocent processes (seen under TCG on a busy host). That takes a minute
    # or more there: wait (bounded) for the kernel's own count of OOM kills to move, then
    # make sure no part of the hog is left to take the memory of the tests that follow.
    script = f"""{SH_CHILDREN}
oom() {{ awk '/^oom_kill / {{ print $2 }}' /proc/vmstat; }}
before=$(oom)
stress-ng --vm 1 --vm-bytes {total_mib}M --vm-keep --vm-hang 0 --oomable \\
    -t {OOM_WAIT + 60} >/tmp/kmx-oom.log 2>&1 & s=$!
end=$(( $(cut -d. -f1 /proc/uptime) + {OOM_WAIT} ))
while [ "$(oom)" = "$before" ] && [ $(cut -d. -f1 /proc/uptime) -lt $end ]; do sleep 0.5; done
echo "== oom_kill $before $(oom)"
# A process is gone once it is a zombie (its memory is freed) or reaped.
running() {{ for p in "$@"; do grep -qv ') Z' /proc/$p/stat 2>/dev/null && echo $p; done; }}
left=$(kmx_kids $s); kill -9 $left $s 2>/dev/null; wait $s 2>/dev/null
i=0; while [ -n "$(running $left)" ] && [ $i -lt 150 ]; do sleep 0.2; i=$((i + 1)); done
echo "== left $(running $left $s)"
cat /tmp/kmx-oom.log; rm -f /tmp/kmx-oom.log
"""
    res = guest.run(script, timeout=OOM_WAIT + 90)
    assert guest.run("echo alive", timeout=30).stdout.strip() == "alive"
    left = re.search(r"== left(.*)", res.stdout)
    assert left is not None and not left.group(1).strip(), (
        f"stress-ng outlived its kill:\n{res.stdout}"
    )
    log = new_log(guest, mark)
    killed = re.findall(r"Out of memory: Killed process (\d+) \(([^)]*)\)", log)
    assert killed, f"no OOM kill in the kernel log after a {total_mib} MiB hog:\n{res.stdout}"
    victims = {comm for _, comm in killed}
    assert all(c.startswith("stress-ng") for c in victims), (
        f"the OOM killer took {victims}, not (only) the stress-ng hog"
    )
    findings, _ = new_findings(guest, mark)
    others = [f for f in findings if f.kind != "oom"]
    assert findings != others, "the OOM killer's report is not recognised in the kernel log"
    assert_no_findings(others, "besides the OOM report the kernel logged")


def _wait_memtotal(guest: GuestSession, pred: Any, seconds: float = 20.0) -> int:
    deadline = time.monotonic() + seconds
    while True:
        total = meminfo(guest)["MemTotal"]
        if pred(total) or time.monotonic() > deadline:
            return total
        time.sleep(0.3)


@pytest.mark.kmatrix_applies(
    lambda cell: cell.device.memory_hotplug is not None,
    "device profile {cell.device.name} declares no memory_hotplug (slots/maxmem), so QEMU "
    "has no room to hot-add memory",
)
@pytest.mark.kmatrix_config("MEMORY_HOTPLUG", "ACPI_HOTPLUG_MEMORY")
def test_memory_hot_add(guest: GuestSession, booted: Guest, cell: Cell) -> None:
    """A pc-dimm hot-added through QMP shows up in MemTotal; unplugged, it goes away."""
    hp = cell.device.memory_hotplug
    assert hp is not None
    block = int(guest.read_file("/sys/devices/system/memory/block_size_bytes").strip(), 16)
    size = max(block, 128 << 20)
    assert cell.memory + size // (1 << 20) <= hp.maxmem, "maxmem leaves no room for one block"
    auto = "/sys/devices/system/memory/auto_online_blocks"
    original = guest.read_file(auto).strip()
    before = meminfo(guest)["MemTotal"]
    # online_movable: the block holds no kernel allocations, so it can be removed again.
    guest.run(f"echo online_movable > {auto}", check=True)
    plugged = False
    try:
        backend: dict[str, Any] = {"qom-type": "memory-backend-ram", "id": "kmx-hotmem"}
        booted.qmp("object-add", size=size, **backend)
        booted.qmp("device_add", driver="pc-dimm", id="kmx-dimm", memdev="kmx-hotmem")
        plugged = True
        grown = _wait_memtotal(guest, lambda t: t - before >= size // 1024 * 0.9)
        assert grown - before >= size // 1024 * 0.9, (
            f"MemTotal went {before} -> {grown} kB after hot-adding {size >> 20} MiB"
        )
        seen = len(booted.machine.events()) if booted.machine else 0
        booted.qmp("device_del", id="kmx-dimm")
        deleted = False
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not deleted:
            events = booted.machine.events() if booted.machine else []
            deleted = any(
                e.get("event") == "DEVICE_DELETED" and e.get("data", {}).get("device") == "kmx-dimm"
                for e in events[seen:]
            )
            time.sleep(0.2)
        assert deleted, "no DEVICE_DELETED for the DIMM within 20 s (the guest did not eject it)"
        plugged = False
        after = _wait_memtotal(guest, lambda t: t <= before)
        assert after == before, f"MemTotal {after} kB after unplug, {before} kB before hot-add"
    finally:
        guest.run(f"echo {original} > {auto}", timeout=30)
        if not plugged:
            with contextlib.suppress(KmatrixError):  # absent if object-add itself failed
                booted.qmp("object-del", id="kmx-hotmem")
