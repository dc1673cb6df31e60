"""What QEMU is given for a cell's device profile: every profile field lowered to plain
QEMU machine properties, globals, objects, devices, NUMA nodes and disks, in one place.

A profile's own `devices:` and `objects:` pass through as written; the higher-level fields
expand here: `iommu: intel` into an intel-iommu with interrupt remapping (and the split
irqchip and `intel_iommu=on` it needs), `gpu_stubs` into a root port plus an ivshmem-plain
over a RAM backend per stub, `numa_nodes` into memory backends, `-numa` nodes and one
pxb-pcie per node, `host_devices` into vfio-pci behind root ports, the scratch disk into a
raw blockdev. Pure functions: the same cell gives the same layout.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from kmatrix.config.specs import Cell, DeviceProfile, QemuDevice, QemuObject, ScratchDisk
from kmatrix.vm.qemuopts import escape, option

# Modules a guest needs to bind passed-through or stub devices to vfio-pci.
VFIO_MODULES = ("vfio_pci", "vfio_iommu_type1")


@dataclass(frozen=True)
class ProfileLayout:
    """A device profile as QEMU sees it (independent of the cell's memory and vCPUs)."""

    machine_props: tuple[tuple[str, str], ...]
    globals: tuple[str, ...]
    objects: tuple[QemuObject, ...]
    devices: tuple[QemuDevice, ...]
    kernel_args: tuple[str, ...]  # the profile's own, plus what its devices need
    modules: tuple[str, ...]  # the profile's own, plus what its devices need


@functools.cache
def lower(profile: DeviceProfile) -> ProfileLayout:
    devices = list(profile.devices)
    objects = list(profile.objects)
    machine_props = list(profile.machine_props)
    kernel_args = list(profile.kernel_args)
    modules = list(profile.modules)
    globals_ = list(profile.globals)
    stubs = profile.gpu_stubs
    if profile.iommu == "intel":
        # Interrupt remapping needs the split irqchip; caching-mode lets VFIO map guest DMA.
        if not any(k == "kernel-irqchip" for k, _ in machine_props):
            machine_props.append(("kernel-irqchip", "split"))
        devices.insert(
            0, QemuDevice("intel-iommu", "kmx-iommu", (("intremap", "on"), ("caching-mode", "on")))
        )
        if not any(a.startswith("intel_iommu=") for a in kernel_args):
            kernel_args.append("intel_iommu=on")
    if profile.mmio64 is not None:
        globals_.append(f"q35-pcihost.pci-hole64-size={profile.mmio64}")
    if profile.numa_nodes:
        for k in range(profile.numa_nodes):
            devices.append(
                QemuDevice(
                    "pxb-pcie",
                    f"kmx-pxb{k}",
                    (("bus_nr", str(32 * (k + 1))), ("numa_node", str(k)), ("bus", "pcie.0")),
                )
            )
        # An expander bridge has no I/O-port window: without this Linux logs failures while
        # reserving I/O space for its empty hot-plug ports (the stubs need none).
        kernel_args.append("pci=hpiosize=0")
    chassis = 0x40
    for s in stubs.stubs if stubs else ():
        bus = f"kmx-pxb{s.numa_node}" if s.numa_node is not None else "pcie.0"
        devices.append(
            QemuDevice("pcie-root-port", s.root_port, (("bus", bus), ("chassis", str(chassis))))
        )
        chassis += 1
        # reserve=off: the host commits no memory up front, so large BARs cost nothing until
        # the guest touches them.
        objects.append(
            QemuObject(
                "memory-backend-ram", f"kmx-{s.id}-mem", (("size", str(s.bar)), ("reserve", "off"))
            )
        )
        # master=on: the stub's memory migrates with the VM; the default (a peer) blocks
        # migration, and with it the post-boot snapshot kmatrix_clean tests restore.
        props = (("bus", s.root_port), ("memdev", f"kmx-{s.id}-mem"), ("master", "on"))
        devices.append(QemuDevice("ivshmem-plain", s.id, props))
    for h in profile.host_devices:
        port = f"kmx-hostrp{h.id.removeprefix('host')}"
        devices.append(
            QemuDevice("pcie-root-port", port, (("bus", "pcie.0"), ("chassis", str(chassis))))
        )
        chassis += 1
        devices.append(QemuDevice("vfio-pci", h.id, (("host", h.address), ("bus", port))))
    if (stubs is not None and stubs.vfio) or profile.host_devices:
        for mod in VFIO_MODULES:
            if mod not in modules:
                modules.append(mod)
    return ProfileLayout(
        machine_props=tuple(machine_props),
        globals=tuple(globals_),
        objects=tuple(objects),
        devices=tuple(devices),
        kernel_args=tuple(kernel_args),
        modules=tuple(modules),
    )


qemu_layout = lower  # the public name (kmatrix.qemu_layout)


def memory_arg(cell: Cell) -> str:
    """-m: the cell's RAM, with slots and a ceiling when the profile allows memory hot-add."""
    hp = cell.device.memory_hotplug
    if hp is None:
        return f"{cell.memory}M"
    return f"{cell.memory}M,slots={hp.slots},maxmem={hp.maxmem}M"


def numa_args(cell: Cell) -> list[str]:
    """Guest NUMA nodes: memory split evenly (node 0 takes the remainder), vCPUs in blocks.

    A node may get no vCPU (smp < nodes): a memory-only node, as on some real machines."""
    nodes = cell.device.numa_nodes
    if not nodes:
        return []
    argv: list[str] = []
    share = cell.memory // nodes
    for k in range(nodes):
        mib = share + (cell.memory - share * nodes if k == 0 else 0)
        backend = option("memory-backend-ram", (("id", f"kmx-numa{k}"), ("size", f"{mib}M")))
        argv += ["-object", backend]
        # Ceiling division: with fewer vCPUs than nodes the low nodes get them.
        first, last = -(-k * cell.smp // nodes), -(-(k + 1) * cell.smp // nodes) - 1
        cpus = (
            "" if last < first else f",cpus={first}" if first == last else f",cpus={first}-{last}"
        )
        argv += ["-numa", f"node,nodeid={k},memdev=kmx-numa{k}{cpus}"]
    return argv


def scratch_disk_args(disk: ScratchDisk, path: Path) -> list[str]:
    """A raw blockdev over the host file, and the device the guest finds by its serial."""
    node = f"{disk.id}-blk"
    blockdev = (("node-name", node), ("driver", "raw"), ("file.driver", "file"),
                ("file.filename", str(path)))  # fmt: skip
    pairs = disk.props
    if not any(k == "serial" for k, _ in pairs):
        pairs += (("serial", f"kmx-{disk.id}"),)  # how the guest finds the disk
    device = option(disk.driver, (("id", disk.id), ("drive", node), *pairs))
    # -blockdev keys are dotted paths (file.filename), outside the property-name grammar.
    return ["-blockdev", ",".join(f"{k}={escape(v)}" for k, v in blockdev), "-device", device]
