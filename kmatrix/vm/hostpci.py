"""Pre-boot checks for passing a real host PCI device to the guest (`-device vfio-pci,host=…`).

A cell whose profile names host devices is skipped, with the first reason found, unless every
device exists, is bound to vfio-pci, sits in a viable IOMMU group and its /dev/vfio node is
usable by this process. Passthrough is never tried blindly: QEMU's own failure would surface
as a harness error mid-boot, and a wrong rebind could take the host's disk or display away.

Reads only (sysfs and /dev); never writes sysfs. The roots are parameters so tests can point
them at fake trees.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from kmatrix.config.pciaddr import parse_address

VFIO_DRIVER = "vfio-pci"
# Drivers a group peer may hold while the group is still viable: the kernel's vfio allows
# pci-stub, and bridges (pcieport) are not DMA masters of their own.
_HARMLESS_DRIVERS = frozenset({"pci-stub", "pcieport"})
_BRIDGE_CLASS = "0x0604"  # PCI-to-PCI bridge; the last two hex digits are the prog-if


@dataclass(frozen=True)
class HostDeviceCheck:
    address: str  # canonical DDDD:BB:SS.F
    ok: bool
    reason: str  # "" when ok, else one sentence naming the address and what to do
    group: int | None = None  # IOMMU group number, once known
    group_members: tuple[str, ...] = ()  # every device in the group, this one included
    vendor: str = ""  # e.g. "10de", once the device is found
    device: str = ""
    driver: str | None = None  # host driver bound now; None when unbound


def _is_vfio(driver: str | None) -> bool:
    # Vendor variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, ...) are vfio-pci for QEMU too.
    return driver is not None and (driver == VFIO_DRIVER or driver.endswith("_vfio_pci"))


def _driver_of(dev: Path) -> str | None:
    link = dev / "driver"
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


def _read_id(path: Path) -> str:
    try:
        return path.read_text().strip().lower().removeprefix("0x")
    except OSError:
        return ""


def _is_bridge(dev: Path) -> bool:
    try:
        return dev.joinpath("class").read_text().strip().lower().startswith(_BRIDGE_CLASS)
    except OSError:
        return False


def check_host_device(
    address: str, sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")
) -> HostDeviceCheck:
    """Checks one device in order and stops at the first problem.

    An address that does not parse raises ValueError (the matrix loader has already checked
    it); every host condition comes back as a HostDeviceCheck with ok=False and the reason.
    """
    addr = parse_address(address)
    head = f"cannot pass through host PCI device {addr}:"
    result = HostDeviceCheck(addr, ok=False, reason="")
    groups_dir = sys_root / "kernel" / "iommu_groups"
    try:
        has_groups = any(groups_dir.iterdir())
    except OSError:
        has_groups = False
    if not has_groups:
        return replace(
            result,
            reason=f"{head} the host IOMMU is off (no IOMMU groups in {groups_dir}); boot the "
            "host with intel_iommu=on or amd_iommu=on (and enable VT-d/AMD-Vi in the firmware).",
        )

    dev = sys_root / "bus" / "pci" / "devices" / addr
    if not dev.exists():
        return replace(
            result,
            reason=f"{head} no such device on this host ({dev} is missing); check the address "
            "with `lspci -D`.",
        )
    driver = _driver_of(dev)
    result = replace(
        result, vendor=_read_id(dev / "vendor"), device=_read_id(dev / "device"), driver=driver
    )

    try:
        group = int(os.path.basename(os.readlink(dev / "iommu_group")))
    except (OSError, ValueError):
        return replace(
            result,
            reason=f"{head} it has no IOMMU group ({dev / 'iommu_group'} is missing), so the "
            "IOMMU does not cover it; check the firmware's IOMMU settings for that slot.",
        )
    members_dir = groups_dir / str(group) / "devices"
    try:
        members = tuple(sorted(p.name for p in members_dir.iterdir()))
    except OSError:
        members = ()
    result = replace(result, group=group, group_members=members)

    if not _is_vfio(driver):
        now = "is bound to no driver" if driver is None else f"is bound to {driver}"
        unbind = "" if driver is None else f"`echo {addr} > {dev / 'driver' / 'unbind'}`, then "
        return replace(
            result,
            reason=f"{head} it {now}, not {VFIO_DRIVER}; as root run `modprobe {VFIO_DRIVER}`, "
            f"{unbind}`echo {VFIO_DRIVER} > {dev / 'driver_override'}` and "
            f"`echo {addr} > {sys_root / 'bus' / 'pci' / 'drivers_probe'}`.",
        )

    offenders: list[str] = []
    for member in members:
        peer = members_dir / member
        peer_driver = _driver_of(peer)
        harmless = peer_driver is None or _is_vfio(peer_driver) or peer_driver in _HARMLESS_DRIVERS
        # The device itself passed the driver check above, so it is never an offender.
        if not harmless and not _is_bridge(peer):
            offenders.append(f"{member} (bound to {peer_driver})")
    if offenders:
        return replace(
            result,
            reason=f"{head} its IOMMU group {group} is not viable: {', '.join(offenders)}; "
            f"every device in the group must be bound to {VFIO_DRIVER} or to no driver, so "
            "rebind those too, or move the card to a slot with its own group.",
        )

    # QEMU opens the group node and the container; both must exist and be usable by us.
    for node in (dev_root / "vfio" / str(group), dev_root / "vfio" / "vfio"):
        if not node.exists():
            return replace(
                result,
                reason=f"{head} {node} is missing; load the vfio modules "
                f"(`modprobe {VFIO_DRIVER}`) and check that udev created it.",
            )
        if not os.access(node, os.R_OK | os.W_OK):
            return replace(
                result,
                reason=f"{head} {node} is not readable and writable by this process (uid "
                f"{os.geteuid()}); give this user access (e.g. a udev rule setting its group "
                "and mode) or run as root.",
            )
    return replace(result, ok=True)


def check_host_devices(
    addresses: Iterable[str], sys_root: Path = Path("/sys"), dev_root: Path = Path("/dev")
) -> str | None:
    """The first failing device's reason, or None when every device can be passed through."""
    for address in addresses:
        result = check_host_device(address, sys_root, dev_root)
        if not result.ok:
            return result.reason
    return None
