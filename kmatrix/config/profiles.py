"""Device profiles (matrix/devices/NAME.yaml, or inline in a matrix): read and validated.

A profile declares what a cell's VM has: QEMU devices and objects, and higher-level fields
(GPU stubs, NUMA nodes, an IOMMU, a scratch disk, hot-plug room). What QEMU is given for the
higher-level fields is decided in one place, kmatrix.vm.devices; here they are only checked,
with errors that name the file, line and key (a BAR that cannot fit its window among them).
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import yaml

from kmatrix.config.hostaccess import Judge
from kmatrix.config.pciaddr import parse_address
from kmatrix.config.specs import (
    DeviceProfile,
    GpuStub,
    GpuStubs,
    HostDevice,
    MemoryHotplug,
    PciExpect,
    QemuDevice,
    QemuObject,
    ScratchDisk,
)
from kmatrix.config.yamlnode import NAME_RE, NodeReader, compose_file, fmt_size, size, unique
from kmatrix.errors import MatrixError

IOMMUS = ("none", "intel")
MACHINES = ("q35", "pc")
MAX_GPU_STUBS = 8
MAX_NUMA_NODES = 7  # one PCIe expander bridge per node, 32 bus numbers apart below 256
# QEMU's x86 CPU models default to 40 physical address bits (1 TiB of guest physical space);
# a 64-bit window must sit above RAM and below that, naturally aligned for its largest BAR.
MAX_MMIO64 = 256 << 30
# Default 64-bit window: QEMU's own default, or the next power of two the stubs need.
MIN_MMIO64 = 32 << 30

# The keys each mapping of a device profile accepts, and those it requires (docs/matrix.md
# documents exactly these; tests/test_docs.py checks it).
PROFILE_KEYS = (
    "name", "description", "machine", "machine_props", "devices", "objects", "globals",
    "kernel_args", "modules", "expect_pci", "memory", "scratch_disk", "hotplug",
    "memory_hotplug", "iommu", "mmio64", "numa_nodes", "gpu_stubs", "host_devices",
)  # fmt: skip
PROFILE_REQUIRED = ("name",)
QEMU_DEVICE_KEYS = ("driver", "id", "props")
QEMU_DEVICE_REQUIRED = ("driver",)
QEMU_OBJECT_KEYS = ("type", "id", "props")
QEMU_OBJECT_REQUIRED = ("type", "id")
PCI_EXPECT_KEYS = ("vendor", "device", "driver")
PCI_EXPECT_REQUIRED = ("vendor", "device")
SCRATCH_DISK_KEYS = ("id", "size", "driver", "props")
SCRATCH_DISK_REQUIRED = ("size",)
MEMORY_HOTPLUG_KEYS = ("slots", "maxmem")
MEMORY_HOTPLUG_REQUIRED = ("slots", "maxmem")
GPU_STUBS_KEYS = ("count", "bar", "vfio")
HOST_DEVICE_KEYS = ("host",)
HOST_DEVICE_REQUIRED = ("host",)

_HEX4 = re.compile(r"^[0-9a-f]{4}$")


def _hex4(r: NodeReader, node: yaml.Node, key: str) -> str:
    v = r.value(node) if isinstance(node, yaml.ScalarNode) else None
    # YAML reads 0x1af4 as an int; accept both forms.
    s = f"{v:04x}" if isinstance(v, int) and not isinstance(v, bool) else str(v).lower()
    s = s.removeprefix("0x")
    if not _HEX4.match(s):
        raise r.err(node, key, f"expected a 4-digit hex PCI id, got {v!r}")
    return s


def _profile(r: NodeReader, node: yaml.Node, where: str) -> DeviceProfile:
    key = where
    pre = f"{where}." if where else ""
    m = r.mapping(node, key, PROFILE_KEYS, PROFILE_REQUIRED)
    name = r.string(m["name"][1], f"{pre}name", NAME_RE)
    judge = Judge(r)
    devices: list[QemuDevice] = []
    ids: dict[str, int] = {}
    for i, dnode in enumerate(r.seq(m["devices"][1], f"{pre}devices") if "devices" in m else []):
        dkey = f"{pre}devices[{i}]"
        dm = r.mapping(dnode, dkey, QEMU_DEVICE_KEYS, QEMU_DEVICE_REQUIRED)
        did = r.string(dm["id"][1], f"{dkey}.id", NAME_RE) if "id" in dm else None
        if did is not None:
            unique(r, ids, did, dm["id"][1], f"{dkey}.id")
        driver = r.string(dm["driver"][1], f"{dkey}.driver", NAME_RE)
        judge.device(dm["driver"][1], f"{dkey}.driver", driver)
        devices.append(
            QemuDevice(
                driver=driver,
                id=did,
                props=_props(r, judge, dm, f"{dkey}.props", f"device {driver!r}"),
            )
        )
    objects: list[QemuObject] = []
    for i, onode in enumerate(r.seq(m["objects"][1], f"{pre}objects") if "objects" in m else []):
        okey = f"{pre}objects[{i}]"
        om = r.mapping(onode, okey, QEMU_OBJECT_KEYS, QEMU_OBJECT_REQUIRED)
        oid = r.string(om["id"][1], f"{okey}.id", NAME_RE)
        unique(r, ids, oid, om["id"][1], f"{okey}.id")
        qom_type = r.string(om["type"][1], f"{okey}.type", NAME_RE)
        oprops = _props(r, judge, om, f"{okey}.props", f"object {qom_type!r}")
        judge.obj(om["type"][1], f"{okey}.type", qom_type, (k for k, _ in oprops))
        objects.append(QemuObject(qom_type=qom_type, id=oid, props=oprops))
    machine_props: tuple[tuple[str, str], ...] = ()
    if "machine_props" in m:
        items = r.prop_items(m["machine_props"][1], f"{pre}machine_props")
        judge.machine(items, f"{pre}machine_props")
        machine_props = tuple((k, v) for _, _, k, v in items)
    globals_: list[str] = []
    if "globals" in m:
        gnode = m["globals"][1]
        gitems = gnode.value if isinstance(gnode, yaml.SequenceNode) else [gnode]
        for i, (text, item) in enumerate(
            zip(r.strings(gnode, f"{pre}globals"), gitems, strict=True)
        ):
            judge.global_(item, f"{pre}globals[{i}]", text)
            globals_.append(text)
    expect: list[PciExpect] = []
    for i, enode in enumerate(
        r.seq(m["expect_pci"][1], f"{pre}expect_pci") if "expect_pci" in m else []
    ):
        ekey = f"{pre}expect_pci[{i}]"
        em = r.mapping(enode, ekey, PCI_EXPECT_KEYS, PCI_EXPECT_REQUIRED)
        expect.append(
            PciExpect(
                vendor=_hex4(r, em["vendor"][1], f"{ekey}.vendor"),
                device=_hex4(r, em["device"][1], f"{ekey}.device"),
                driver=r.string(em["driver"][1], f"{ekey}.driver") if "driver" in em else None,
            )
        )
    profile = DeviceProfile(
        name=name,
        description=r.string(m["description"][1], f"{pre}description")
        if "description" in m
        else "",
        machine=r.choice(m["machine"][1], f"{pre}machine", MACHINES) if "machine" in m else "q35",
        machine_props=machine_props,
        devices=tuple(devices),
        objects=tuple(objects),
        globals=tuple(globals_),
        kernel_args=r.args(m["kernel_args"][1], f"{pre}kernel_args") if "kernel_args" in m else (),
        modules=r.strings(m["modules"][1], f"{pre}modules") if "modules" in m else (),
        expect_pci=tuple(expect),
        memory=int(r.number(m["memory"][1], f"{pre}memory", 64, 1 << 20, True))
        if "memory" in m
        else None,
        origin=f"{r.path}:{node.start_mark.line + 1}",
        scratch_disk=_scratch_disk(r, judge, m["scratch_disk"][1], f"{pre}scratch_disk", ids)
        if "scratch_disk" in m
        else None,
        hotplug=_hotplug(r, m["hotplug"][1], f"{pre}hotplug", devices) if "hotplug" in m else (),
        memory_hotplug=_memory_hotplug(r, m["memory_hotplug"][1], f"{pre}memory_hotplug")
        if "memory_hotplug" in m
        else None,
    )
    profile = _pcie_topology(r, m, pre, profile, ids, judge)
    return replace(profile, host_uses=tuple(judge.uses))


def _props(
    r: NodeReader, judge: Judge, m: dict[str, tuple[yaml.Node, yaml.Node]], key: str, owner: str
) -> tuple[tuple[str, str], ...]:
    """An option's props:, each key and value judged (kmatrix.config.hostaccess)."""
    if "props" not in m:
        return ()
    items = r.prop_items(m["props"][1], key)
    judge.props(items, key, owner)
    return tuple((k, v) for _, _, k, v in items)


def _pcie_topology(
    r: NodeReader,
    m: dict[str, tuple[yaml.Node, yaml.Node]],
    pre: str,
    profile: DeviceProfile,
    ids: dict[str, int],
    judge: Judge,
) -> DeviceProfile:
    """Checks iommu, mmio64, numa_nodes, gpu_stubs and host_devices and records them on the
    profile; kmatrix.vm.devices turns them into QEMU devices."""
    stubs_node = m["gpu_stubs"][1] if "gpu_stubs" in m else None
    hosts_node = m["host_devices"][1] if "host_devices" in m else None
    wants_pcie = stubs_node is not None or hosts_node is not None or "numa_nodes" in m
    if wants_pcie and profile.machine != "q35":
        first = next(k for k in ("gpu_stubs", "host_devices", "numa_nodes") if k in m)
        raise r.err(m[first][0], f"{pre}{first}", "needs machine: q35 (PCIe root ports)")
    numa = 0
    if "numa_nodes" in m:
        numa = int(r.number(m["numa_nodes"][1], f"{pre}numa_nodes", 2, MAX_NUMA_NODES, True))
        if profile.memory_hotplug is not None:
            raise r.err(
                m["numa_nodes"][0],
                f"{pre}numa_nodes",
                "cannot be combined with memory_hotplug (hot-added DIMMs need a node each)",
            )

    stubs: GpuStubs | None = None
    bar_node: yaml.Node | None = stubs_node
    vfio_wanted = False
    if stubs_node is not None:
        skey = f"{pre}gpu_stubs"
        sm = r.mapping(stubs_node, skey, GPU_STUBS_KEYS)
        count = (
            int(r.number(sm["count"][1], f"{skey}.count", 1, MAX_GPU_STUBS, True))
            if "count" in sm
            else 1
        )
        bar = size(r, sm["bar"][1], f"{skey}.bar", 1 << 20, MAX_MMIO64) if "bar" in sm else 1 << 30
        if bar & (bar - 1):
            # PCI BARs are powers of two; ivshmem would round up and the guest see another size.
            raise r.err(sm["bar"][1], f"{skey}.bar", f"{fmt_size(bar)} is not a power of two")
        vfio = r.boolean(sm["vfio"][1], f"{skey}.vfio") if "vfio" in sm else True
        if "bar" in sm:
            bar_node = sm["bar"][1]
        vfio_wanted = vfio
        placed = []
        for i in range(count):
            sid = f"gpu{i}"
            if sid in ids:
                raise r.err(stubs_node, skey, f"the stub id {sid!r} is already a device id")
            placed.append(
                GpuStub(
                    id=sid, bar=bar, root_port=f"kmx-gpurp{i}", numa_node=i % numa if numa else None
                )
            )
        stubs = GpuStubs(stubs=tuple(placed), vfio=vfio)

    hosts: list[HostDevice] = []
    if hosts_node is not None:
        hkey = f"{pre}host_devices"
        for i, hnode in enumerate(r.seq(hosts_node, hkey, nonempty=True)):
            ikey = f"{hkey}[{i}]"
            hm = r.mapping(hnode, ikey, HOST_DEVICE_KEYS, HOST_DEVICE_REQUIRED)
            hnode_value = hm["host"][1]
            # The text as written: YAML 1.1 would read an unquoted 01:00.0 as a base-60 number.
            raw = hnode_value.value if isinstance(hnode_value, yaml.ScalarNode) else None
            try:
                addr = parse_address(raw)
            except ValueError as e:
                raise r.err(hm["host"][1], f"{ikey}.host", str(e)) from None
            if any(h.address == addr for h in hosts):
                raise r.err(hm["host"][1], f"{ikey}.host", f"{addr} is listed twice")
            judge.host_device(hm["host"][1], f"{ikey}.host", addr)
            hosts.append(HostDevice(address=addr, id=f"host{i}"))
        vfio_wanted = True

    iommu = "none"
    if "iommu" in m:
        iommu = r.choice(m["iommu"][1], f"{pre}iommu", IOMMUS)
    elif vfio_wanted:
        iommu = "intel"  # VFIO needs an IOMMU in the guest
    if iommu != "none" and profile.machine != "q35":
        raise r.err(m["iommu"][1], f"{pre}iommu", "intel-iommu needs machine: q35")
    if vfio_wanted and iommu == "none":
        what = "gpu_stubs.vfio" if stubs is not None and stubs.vfio else "host_devices"
        raise r.err(
            m["iommu"][1], f"{pre}iommu", f"{what} needs an IOMMU in the guest (iommu: intel)"
        )

    total = sum(s.bar for s in stubs.stubs) if stubs else 0
    mmio64: int | None = None
    if "mmio64" in m:
        mnode = m["mmio64"][1]
        mmio64 = size(r, mnode, f"{pre}mmio64", 1 << 30, MAX_MMIO64)
        if stubs is not None and total > mmio64:
            # Powers of two sorted largest first pack without gaps: the sum is what they need.
            n = len(stubs.stubs)
            raise r.err(
                bar_node,
                f"{pre}gpu_stubs.bar",
                f"BAR 2 of {'each of the ' + str(n) + ' GPU stubs' if n > 1 else 'the GPU stub'} "
                f"({fmt_size(stubs.stubs[0].bar)}, 64-bit prefetchable; {fmt_size(total)} in all) "
                f"cannot fit the {fmt_size(mmio64)} 64-bit MMIO window (mmio64, line "
                f"{mnode.start_mark.line + 1}); raise mmio64 or lower gpu_stubs.bar or count",
            )
    elif stubs is not None:
        # Sized to fit: the next power of two above what the stubs need, at least QEMU's 32 GiB.
        mmio64 = max(32 << 30, 1 << (total - 1).bit_length())
        if mmio64 > MAX_MMIO64:
            raise r.err(
                stubs_node,
                f"{pre}gpu_stubs",
                f"{len(stubs.stubs)} BARs of {fmt_size(stubs.stubs[0].bar)} need a "
                f"{fmt_size(mmio64)} 64-bit MMIO window; at most {fmt_size(MAX_MMIO64)} fits "
                "the guest's 40-bit physical address space",
            )

    return replace(
        profile,
        iommu=iommu,
        mmio64=mmio64,
        numa_nodes=numa,
        gpu_stubs=stubs,
        host_devices=tuple(hosts),
    )


def _scratch_disk(
    r: NodeReader, judge: Judge, node: yaml.Node, key: str, ids: dict[str, int]
) -> ScratchDisk:
    m = r.mapping(node, key, SCRATCH_DISK_KEYS, SCRATCH_DISK_REQUIRED)
    did = r.string(m["id"][1], f"{key}.id", NAME_RE) if "id" in m else "scratch0"
    unique(r, ids, did, m["id"][1] if "id" in m else node, f"{key}.id")
    driver = "virtio-blk-pci"
    if "driver" in m:
        driver = r.string(m["driver"][1], f"{key}.driver", NAME_RE)
        judge.device(m["driver"][1], f"{key}.driver", driver)
    return ScratchDisk(
        id=did,
        size=int(r.number(m["size"][1], f"{key}.size", 1, 1 << 16, True)),
        driver=driver,
        props=_props(r, judge, m, f"{key}.props", f"scratch disk {driver!r}"),
    )


def _hotplug(
    r: NodeReader, node: yaml.Node, key: str, devices: list[QemuDevice]
) -> tuple[str, ...]:
    known = [d.id for d in devices if d.id is not None]
    names = r.strings(node, key)
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for i, (name, item) in enumerate(zip(names, items, strict=True)):
        if name not in known:
            raise r.err(
                item,
                f"{key}[{i}]",
                f"{name!r} is not the id of a device of this profile (ids: {', '.join(known)})",
            )
    return names


def _memory_hotplug(r: NodeReader, node: yaml.Node, key: str) -> MemoryHotplug:
    m = r.mapping(node, key, MEMORY_HOTPLUG_KEYS, MEMORY_HOTPLUG_REQUIRED)
    mnode = m["maxmem"][1]
    return MemoryHotplug(
        # x86 QEMU takes at most 256 DIMM slots.
        slots=int(r.number(m["slots"][1], f"{key}.slots", 1, 256, True)),
        maxmem=int(r.number(mnode, f"{key}.maxmem", 128, 1 << 22, True)),
        origin=f"{r.path}:{mnode.start_mark.line + 1}",
    )


def load_profile(path: Path) -> DeviceProfile:
    """Loads one device-profile file (matrix/devices/NAME.yaml)."""
    return _profile(NodeReader(path), compose_file(path), "")


def device_ref(r: NodeReader, node: yaml.Node, key: str) -> DeviceProfile:
    if isinstance(node, yaml.MappingNode):
        return _profile(r, node, key)
    raw = r.string(node, key)
    if raw.endswith((".yaml", ".yml")) or "/" in raw:
        # A path to a profile file, relative to this matrix file.
        return load_profile(r.file(node, key))
    name = r.string(node, key, NAME_RE)
    pfile = r.path.parent / "devices" / f"{name}.yaml"
    if not pfile.is_file():
        known = sorted(p.stem for p in (r.path.parent / "devices").glob("*.yaml"))
        raise r.err(
            node, key, f"no device profile {name!r} ({pfile} not found; known: {', '.join(known)})"
        )
    profile = load_profile(pfile)
    if profile.name != name:
        raise MatrixError(pfile, None, "name", f"profile is named {profile.name!r}, not {name!r}")
    return profile
