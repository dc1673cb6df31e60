"""GPU-passthrough stubs and display devices, part of the driver suite (`-k driver`).

What the profile declares (gpu_stubs: count, BAR size, NUMA node, vfio; the IOMMU) is compared
with what the guest's sysfs shows and what VFIO lets a process do: no GPU is needed, the
kernel paths are the ones a passthrough host runs (large 64-bit BARs, IOMMU groups,
driver_override, /dev/vfio, PCIe hot-plug).
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from guestlib import (
    HOTPLUG_WAIT,
    assert_no_findings,
    find_pci,
    log_mark,
    new_findings,
    pci_address,
    replug,
    unplug,
    wait_exists,
)

from kmatrix import (
    Cell,
    GpuStub,
    Guest,
    GuestSession,
    KernelArtifact,
    fmt_size,
    needs_tools,
    qemu_layout,
)

pytestmark = pytest.mark.driver

BAR = 2  # ivshmem-plain's memory BAR
VFIO_PROBE = "/usr/bin/kmx-vfio"
# Linux resource flags (include/linux/ioport.h) in /sys/bus/pci/devices/*/resource.
IORESOURCE_MEM = 0x200
IORESOURCE_PREFETCH = 0x2000
IORESOURCE_MEM_64 = 0x100000
# Both wordings: "BAR 2: no space for [mem size …]" / "BAR 2: failed to assign" (6.1) and
# "BAR 2 [mem size …]: can't assign; no space" / "…: failed to assign" (6.12).
_PCI_RESOURCE_FAILURE = re.compile(
    r"pci (?P<addr>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]): (?P<what>.*?"
    r"(?:no space for|failed to assign|can't assign).*)$"
)


# Which cells each test applies to, decided at collection: elsewhere "not applicable".
HAS_STUBS = pytest.mark.kmatrix_applies(
    lambda cell: cell.device.gpu_stubs is not None,
    "device profile {cell.device.name} declares no gpu_stubs",
)


def _virtio_gpu(cell: Cell, vga: bool = True) -> bool:
    return any(
        d.driver.startswith("virtio-gpu") or (vga and d.driver == "virtio-vga")
        for d in qemu_layout(cell.device).devices
    )


def _stubs(cell: Cell) -> tuple[GpuStub, ...]:
    assert cell.device.gpu_stubs is not None  # HAS_STUBS
    return cell.device.gpu_stubs.stubs


def _addresses(booted: Guest, stubs: tuple[GpuStub, ...]) -> dict[str, str]:
    """{stub id: guest PCI address}, from QEMU's own view of the bus."""
    tree = booted.qmp("query-pci")
    out = {}
    for s in stubs:
        entry = find_pci(tree, s.id)
        assert entry is not None, f"QEMU's query-pci has no device {s.id}"
        out[s.id] = pci_address(entry)
    return out


def _kv(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def test_pci_resources_assigned(guest: GuestSession, booted: Guest, cell: Cell) -> None:
    """The kernel assigned every BAR and bridge window: no "no space for" / "failed to
    assign" in the log since boot. Each failure is named by device (QEMU id) and BAR."""
    names = {}
    tree = booted.qmp("query-pci")
    for d in qemu_layout(cell.device).devices:
        entry = find_pci(tree, d.id) if d.id else None
        if entry is not None:
            names[pci_address(entry)] = f"{d.id} ({d.driver})"
    failures = []
    for line in guest.dmesg().splitlines():
        m = _PCI_RESOURCE_FAILURE.search(line)
        if m:
            who = names.get(m["addr"], "a device the profile did not name")
            failures.append(f"{m['addr']} = {who}: {m['what']}")
    assert not failures, "PCI resources left unassigned:\n" + "\n".join(failures)


@HAS_STUBS
def test_gpu_stub_bars_as_declared(guest: GuestSession, booted: Guest, cell: Cell) -> None:
    """Each stub's BAR 2 is 64-bit prefetchable memory of the declared size, assigned above
    4 GiB (inside the 64-bit window), as the guest kernel sees it."""
    stubs = _stubs(cell)
    where = _addresses(booted, stubs)
    problems = []
    for s in stubs:
        addr = where[s.id]
        lines = guest.read_file(f"/sys/bus/pci/devices/{addr}/resource").splitlines()
        start, end, flags = (int(x, 16) for x in lines[BAR].split())
        size = end - start + 1 if end else 0
        desc = f"{s.id} at {addr} BAR {BAR}"
        if size != s.bar:
            problems.append(
                f"{desc} is {fmt_size(size) if size else 'unassigned'}, declared {fmt_size(s.bar)}"
            )
            continue
        want = IORESOURCE_MEM | IORESOURCE_PREFETCH | IORESOURCE_MEM_64
        if flags & want != want:
            problems.append(f"{desc} flags {flags:#x} lack 64-bit prefetchable memory")
        if start < 1 << 32:
            problems.append(f"{desc} at {start:#x}, below 4 GiB")
    assert not problems, "; ".join(problems)


@HAS_STUBS
@pytest.mark.kmatrix_applies(
    lambda cell: cell.device.iommu != "none", "device profile {cell.device.name} has no IOMMU"
)
@pytest.mark.kmatrix_config("INTEL_IOMMU", "IOMMU_SUPPORT")
def test_gpu_stub_iommu_groups(
    guest: GuestSession, booted: Guest, cell: Cell, kernel: KernelArtifact
) -> None:
    """The emulated IOMMU is on and each stub sits alone in its IOMMU group (what VFIO needs
    to hand a device to one owner)."""
    stubs = _stubs(cell)
    where = _addresses(booted, stubs)
    listing = guest.run(
        "for g in /sys/kernel/iommu_groups/*; do "
        "if [ -d $g ]; then echo ${g##*/} $(ls $g/devices); fi; done",
        check=True,
    ).stdout
    groups = {int(f[0]): f[1:] for f in (line.split() for line in listing.splitlines()) if f}
    assert groups, "no IOMMU groups: the guest kernel did not enable the IOMMU"
    problems = []
    for s in stubs:
        addr = where[s.id]
        mine = [g for g, devs in groups.items() if addr in devs]
        if not mine:
            problems.append(f"{s.id} at {addr} is in no IOMMU group")
        elif groups[mine[0]] != [addr]:
            others = " ".join(d for d in groups[mine[0]] if d != addr)
            problems.append(f"{s.id} at {addr} shares IOMMU group {mine[0]} with {others}")
    assert not problems, "; ".join(problems) + "\nIOMMU groups:\n" + listing


@HAS_STUBS
@pytest.mark.kmatrix_applies(
    lambda cell: bool(cell.device.numa_nodes),
    "device profile {cell.device.name} declares no NUMA nodes",
)
def test_gpu_stub_numa_nodes(guest: GuestSession, booted: Guest, cell: Cell) -> None:
    """The guest has the declared NUMA nodes and reports each stub on the node of its PCIe
    expander bridge."""
    stubs = _stubs(cell)
    nodes = cell.device.numa_nodes
    online = guest.read_file("/sys/devices/system/node/online").strip()
    assert online == f"0-{nodes - 1}", f"NUMA nodes online: {online!r}, declared {nodes}"
    where = _addresses(booted, stubs)
    got = {
        s.id: guest.read_file(f"/sys/bus/pci/devices/{where[s.id]}/numa_node").strip()
        for s in stubs
    }
    wrong = [
        f"{s.id}: node {got[s.id]}, declared {s.numa_node}"
        for s in stubs
        if got[s.id] != str(s.numa_node)
    ]
    assert not wrong, "; ".join(wrong)


def _bind_vfio(guest: GuestSession, addr: str) -> str:
    """Binds addr to vfio-pci through driver_override; returns its IOMMU group number."""
    script = f"""
d=/sys/bus/pci/devices/{addr}
modprobe vfio-pci 2>/dev/null
[ -e $d/driver ] && echo {addr} > $d/driver/unbind
echo vfio-pci > $d/driver_override
echo {addr} > /sys/bus/pci/drivers_probe
echo "driver=$(basename "$(readlink $d/driver)" 2>/dev/null)"
echo "group=$(basename "$(readlink $d/iommu_group)")"
"""
    res = guest.run(script, timeout=30)
    kv = _kv(res.stdout)
    assert kv.get("driver") == "vfio-pci", (
        f"{addr} did not bind to vfio-pci (driver {kv.get('driver') or 'none'}): {res.stderr}"
    )
    return kv["group"]


def _vfio_probe(guest: GuestSession, addr: str, stub: GpuStub) -> None:
    """Opens the device through VFIO as a passthrough user would and checks the BAR."""
    res = guest.run(f"{VFIO_PROBE} {addr} {BAR}", timeout=60)
    kv = _kv(res.stdout)
    assert res.exit_status == 0, (
        f"VFIO use of {stub.id} at {addr} failed: {kv.get('error') or res.stderr.strip()}\n"
        + res.stdout
    )
    assert kv.get("viable") == "1", f"VFIO group of {stub.id} not viable: {res.stdout}"
    assert int(kv.get("bar_size", "0")) == stub.bar, (
        f"VFIO region {BAR} of {stub.id} is {kv.get('bar_size')} bytes, declared {stub.bar}"
    )
    for step in ("mmap", "readback", "dma_map"):
        assert kv.get(step) == "ok", f"VFIO {step} on {stub.id} at {addr}: {res.stdout}"


@needs_tools
@HAS_STUBS
@pytest.mark.kmatrix_applies(
    lambda cell: cell.device.gpu_stubs is not None and cell.device.gpu_stubs.vfio,
    "device profile {cell.device.name} sets gpu_stubs.vfio: false",
)
@pytest.mark.kmatrix_config("VFIO", "VFIO_PCI", "VFIO_IOMMU_TYPE1", "INTEL_IOMMU")
def test_gpu_stub_vfio_bind_open_rebind(
    guest: GuestSession, booted: Guest, cell: Cell, kernel: KernelArtifact
) -> None:
    """Each stub binds to vfio-pci through driver_override, /dev/vfio/<group> appears, a
    process opens it (container, type-1 IOMMU, device, BAR mmap, DMA map), and the device
    unbinds and rebinds cleanly, with nothing new in the kernel log."""
    stubs = _stubs(cell)
    where = _addresses(booted, stubs)
    mark = log_mark(guest)
    for s in stubs:
        addr = where[s.id]
        group = _bind_vfio(guest, addr)
        assert guest.run(f"test -c /dev/vfio/{group}").exit_status == 0, (
            f"/dev/vfio/{group} missing after binding {s.id} to vfio-pci"
        )
        _vfio_probe(guest, addr, s)
        # Unbind and rebind: the device must come back usable.
        guest.run(f"echo {addr} > /sys/bus/pci/drivers/vfio-pci/unbind", check=True)
        gone = wait_exists(guest, f"/dev/vfio/{group}", False, 0)
        assert gone, f"/dev/vfio/{group} stayed after unbinding {s.id}"
        assert _bind_vfio(guest, addr) == group
        _vfio_probe(guest, addr, s)
    findings, _ = new_findings(guest, mark)
    assert_no_findings(findings, "the kernel logged during VFIO use")


@needs_tools
@HAS_STUBS
@pytest.mark.kmatrix_config("HOTPLUG_PCI_PCIE")
def test_gpu_stub_hot_unplug_replug(
    guest: GuestSession, booted: Guest, cell: Cell, kernel: KernelArtifact
) -> None:
    """The first stub leaves through QMP device_del (the guest ejects it via PCIe native
    hot-plug) and comes back with device_add: same BAR, and it binds to vfio-pci again."""
    stubs = _stubs(cell)
    s = stubs[0]
    addr = _addresses(booted, (s,))[s.id]
    sysfs = f"/sys/bus/pci/devices/{addr}"
    mark = log_mark(guest)
    unplug(booted, s.id, HOTPLUG_WAIT)
    gone = wait_exists(guest, sysfs, False, HOTPLUG_WAIT)
    assert gone, f"{addr} still in the guest after {s.id} was deleted"
    spec = next(d for d in qemu_layout(cell.device).devices if d.id == s.id)
    # A fresh memory backend: QEMU 7.2 aborts (qemu_ram_set_idstr assertion) when a re-added
    # ivshmem reuses the backend of the device it replaces.
    old = dict(spec.props)["memdev"]
    new = f"{old}-replug"
    backend: dict[str, Any] = {"qom-type": "memory-backend-ram", "id": new, "size": s.bar}
    booted.qmp("object-add", reserve=False, **backend)
    replug(
        booted, replace(spec, props=tuple((k, new if k == "memdev" else v) for k, v in spec.props))
    )
    booted.qmp("object-del", id=old)
    back = wait_exists(guest, sysfs, True, HOTPLUG_WAIT)
    assert back, f"{s.id} did not come back at {addr} after device_add"
    # pciehp assigns the BAR from the root port's window once the link is up.
    size = 0
    deadline = time.monotonic() + HOTPLUG_WAIT
    while size != s.bar and time.monotonic() < deadline:
        fields = guest.run(f"sed -n {BAR + 1}p {sysfs}/resource").stdout.split()
        size = int(fields[1], 16) - int(fields[0], 16) + 1 if len(fields) == 3 else 0
        time.sleep(0.2)
    assert size == s.bar, f"after re-plug {s.id} BAR {BAR} is {size:#x} bytes, declared {s.bar:#x}"
    assert cell.device.gpu_stubs is not None
    if cell.device.gpu_stubs.vfio and kernel.has("VFIO_PCI"):
        _bind_vfio(guest, addr)
        _vfio_probe(guest, addr, s)
    findings, _ = new_findings(guest, mark)
    assert_no_findings(findings, "the kernel logged during hot-(un)plug")


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"not a PNG (starts {data[:8]!r})"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.kmatrix_applies(_virtio_gpu, "device profile {cell.device.name} has no virtio GPU")
@pytest.mark.kmatrix_config("DRM_VIRTIO_GPU")
def test_virtio_gpu_drm_and_screendump(
    guest: GuestSession, booted: Guest, cell: Cell, kernel: KernelArtifact
) -> None:
    """virtio_gpu binds as a DRM driver (/dev/dri/card0 and a render node appear) and QEMU's
    screendump of the guest display is saved with the cell's artefacts."""
    out = guest.run(
        "ls /dev/dri 2>/dev/null | tr '\\n' ' '; echo; "
        # card0's device is the virtio-pci function; the DRM driver binds its virtio child.
        'basename "$(readlink /sys/class/drm/card0/device/virtio*/driver)" 2>/dev/null'
    ).stdout
    nodes, _, driver = out.partition("\n")
    assert "card0" in nodes.split(), f"no /dev/dri/card0 (have: {nodes.strip() or 'nothing'})"
    assert any(n.startswith("renderD") for n in nodes.split()), f"no render node in {nodes!r}"
    assert driver.strip() == "virtio_gpu", f"card0 is driven by {driver.strip()!r}"
    shot = booted.outdir / "screendump.png"
    deadline = time.monotonic() + 10
    while True:
        booted.qmp("screendump", filename=str(shot), format="png")
        if shot.is_file() and shot.stat().st_size > 24:
            break
        assert time.monotonic() < deadline, f"QEMU wrote no screendump to {shot}"
        time.sleep(0.2)
    width, height = _png_size(Path(shot).read_bytes())
    assert width > 0 and height > 0, f"screendump {shot} is {width}x{height}"


def _ppm(data: bytes) -> tuple[int, int, bytes]:
    """(width, height, RGB bytes) of a binary PPM, the format QEMU's screendump writes."""
    fields = data.split(maxsplit=4)
    assert fields[0] == b"P6" and int(fields[3]) == 255, f"not an 8-bit P6 PPM: {data[:20]!r}"
    return int(fields[1]), int(fields[2]), fields[4]


@pytest.mark.kmatrix_applies(
    lambda cell: _virtio_gpu(cell, vga=False),
    "device profile {cell.device.name} has no virtio-gpu device",
)
@pytest.mark.kmatrix_config("DRM_VIRTIO_GPU", "DRM_FBDEV_EMULATION")
def test_virtio_gpu_frame_reaches_the_display(
    guest: GuestSession, booted: Guest, cell: Cell, kernel: KernelArtifact
) -> None:
    """A frame written by the guest (all white, through the DRM driver's fbdev emulation)
    reaches QEMU's display: the host's screendump has the guest's mode size and is white.
    Proves the guest-to-host transfer path of the GPU, not just the driver's probe."""
    geometry = guest.run(
        "echo 0 > /sys/class/graphics/fbcon/cursor_blink 2>/dev/null; "
        "cat /sys/class/graphics/fb0/virtual_size /sys/class/graphics/fb0/bits_per_pixel"
    ).stdout.split()
    assert len(geometry) == 2, f"no /dev/fb0 geometry from virtio_gpu's fbdev: {geometry}"
    width, height = (int(x) for x in geometry[0].split(","))
    frame = width * height * int(geometry[1]) // 8
    # One write of the whole frame: the fbdev emulation flushes what each write damaged.
    guest.run(
        f"head -c {frame} /dev/zero | tr '\\0' '\\377' > /tmp/kmx-frame && "
        f"dd if=/tmp/kmx-frame of=/dev/fb0 bs={frame} count=1 2>/dev/null; rm -f /tmp/kmx-frame",
        timeout=60,
        check=True,
    )
    shot = booted.outdir / "screendump-white.ppm"
    deadline = time.monotonic() + 15
    white = 0.0
    while white < 0.99:
        assert time.monotonic() < deadline, (
            f"the display is {white:.1%} white {15:g}s after the guest filled /dev/fb0"
        )
        time.sleep(0.3)
        booted.qmp("screendump", filename=str(shot))
        w, h, rgb = _ppm(shot.read_bytes())
        assert (w, h) == (width, height), f"display is {w}x{h}, the guest's mode {width}x{height}"
        white = rgb.count(b"\xff\xff\xff") / (w * h)
