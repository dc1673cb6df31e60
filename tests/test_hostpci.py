"""Host PCI passthrough pre-boot checks, against fake sysfs and /dev trees shaped like real ones.

This machine has no device to pass through, so every reason is produced from a tree built in
tmp_path with the same symlinks the kernel makes; one test runs against the real /sys.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from kmatrix.config.pciaddr import parse_address
from kmatrix.vm.hostpci import HostDeviceCheck, check_host_device, check_host_devices

GPU = "0000:01:00.0"
AUDIO = "0000:01:00.1"  # the GPU's HDMI audio function, usually in the same group
ROOT_PORT = "0000:00:01.0"


class FakeHost:
    """sys/ and dev/ under a tmp dir, linked the way the kernel links them:
    sys/bus/pci/devices/ADDR -> ../../../devices/pci0000:00/ADDR
    sys/devices/pci0000:00/ADDR/driver -> ../../../bus/pci/drivers/DRIVER
    sys/devices/pci0000:00/ADDR/iommu_group -> ../../../kernel/iommu_groups/N
    sys/kernel/iommu_groups/N/devices/ADDR -> ../../../../devices/pci0000:00/ADDR
    """

    def __init__(self, root: Path) -> None:
        self.sys = root / "sys"
        self.dev = root / "dev"
        self.groups = self.sys / "kernel" / "iommu_groups"
        self.groups.mkdir(parents=True)
        (self.sys / "bus" / "pci" / "devices").mkdir(parents=True)
        (self.sys / "bus" / "pci" / "drivers").mkdir(parents=True)
        (self.sys / "devices" / "pci0000:00").mkdir(parents=True)
        self.dev.mkdir()

    def add(
        self,
        addr: str,
        driver: str | None = None,
        group: int | None = None,
        cls: str = "0x030000",
        vendor: str = "0x10de",
        device: str = "0x1eb8",
    ) -> None:
        d = self.sys / "devices" / "pci0000:00" / addr
        d.mkdir()
        (d / "class").write_text(cls + "\n")
        (d / "vendor").write_text(vendor + "\n")
        (d / "device").write_text(device + "\n")
        (d / "driver_override").write_text("(null)\n")
        (self.sys / "bus" / "pci" / "devices" / addr).symlink_to(
            f"../../../devices/pci0000:00/{addr}"
        )
        if driver is not None:
            drv = self.sys / "bus" / "pci" / "drivers" / driver
            drv.mkdir(exist_ok=True)
            (d / "driver").symlink_to(f"../../../bus/pci/drivers/{driver}")
            (drv / addr).symlink_to(f"../../../../devices/pci0000:00/{addr}")
        if group is not None:
            members = self.groups / str(group) / "devices"
            members.mkdir(parents=True, exist_ok=True)
            (d / "iommu_group").symlink_to(f"../../../kernel/iommu_groups/{group}")
            (members / addr).symlink_to(f"../../../../devices/pci0000:00/{addr}")

    def vfio(self, *names: str) -> None:
        (self.dev / "vfio").mkdir(exist_ok=True)
        for name in names:
            (self.dev / "vfio" / name).write_text("")

    def check(self, addr: str = GPU) -> HostDeviceCheck:
        return check_host_device(addr, sys_root=self.sys, dev_root=self.dev)


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return FakeHost(tmp_path)


def ready(host: FakeHost) -> None:
    """A passthrough-ready GPU in group 7 next to peers the kernel would accept."""
    host.add(GPU, "vfio-pci", 7)
    host.add(AUDIO, "vfio-pci", 7, cls="0x040300", device="0x10f8")
    host.add("0000:01:00.2", None, 7, cls="0x0c0330")  # unbound: harmless
    host.add(ROOT_PORT, "pcieport", 7, cls="0x060400", vendor="0x8086", device="0x1901")
    host.add("0000:00:1c.0", "shpchp", 7, cls="0x060401")  # a bridge, whatever its driver
    host.add("0000:00:1f.0", "pci-stub", 7, cls="0x060100")
    host.add("0000:02:00.0", "nvme", 3, cls="0x010802")  # another group: irrelevant
    host.vfio("7", "vfio")


# --- parse_address ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0000:01:00.0", "0000:01:00.0"),
        ("01:00.0", "0000:01:00.0"),
        ("0000:3B:1F.7", "0000:3b:1f.7"),
        (" 0a:00.1 ", "0000:0a:00.1"),
        ("10000:e1:00.0", "10000:e1:00.0"),  # VMD domains are wider than 4 digits
    ],
)
def test_parse_address_canonical(text: str, expected: str) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    "text",
    ["1:00.0", "01:00", "01:20.0", "01:00.8", "000:01:00.0", "0000:01:00.0.0", "gg:00.0", ""],
)
def test_parse_address_rejects_with_expected_form(text: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_address(text)
    assert repr(text) in str(e.value)
    assert "DDDD:BB:SS.F or BB:SS.F" in str(e.value)


def test_parse_address_number_from_yaml_says_quote_it() -> None:
    # PyYAML reads unquoted 0000:01:00.0 as the sexagesimal float 60.0.
    with pytest.raises(ValueError, match=r"number 60\.0.*quote it"):
        parse_address(60.0)
    with pytest.raises(ValueError, match="got None"):
        parse_address(None)


# --- check_host_device: every reason in order -------------------------------------------------


def test_ok(host: FakeHost) -> None:
    ready(host)
    got = host.check("01:00.0")
    assert got == HostDeviceCheck(
        address=GPU,
        ok=True,
        reason="",
        group=7,
        group_members=(ROOT_PORT, "0000:00:1c.0", "0000:00:1f.0", GPU, AUDIO, "0000:01:00.2"),
        vendor="10de",
        device="1eb8",
        driver="vfio-pci",
    )


@pytest.mark.parametrize("groups_dir", ["missing", "empty"])
def test_iommu_off(host: FakeHost, groups_dir: str) -> None:
    ready(host)
    for g in host.groups.iterdir():
        for m in (g / "devices").iterdir():
            m.unlink()
        (g / "devices").rmdir()
        g.rmdir()
    if groups_dir == "missing":
        host.groups.rmdir()
    got = host.check()
    assert not got.ok
    assert got.reason == (
        f"cannot pass through host PCI device {GPU}: the host IOMMU is off (no IOMMU groups in "
        f"{host.groups}); boot the host with intel_iommu=on or amd_iommu=on (and enable "
        "VT-d/AMD-Vi in the firmware)."
    )


def test_device_absent_lists_nothing_else(host: FakeHost) -> None:
    host.add(ROOT_PORT, "pcieport", 0, cls="0x060400")
    got = host.check()
    assert not got.ok
    assert got.reason == (
        f"cannot pass through host PCI device {GPU}: no such device on this host "
        f"({host.sys}/bus/pci/devices/{GPU} is missing); check the address with `lspci -D`."
    )
    assert ROOT_PORT not in got.reason
    assert (got.group, got.vendor, got.driver) == (None, "", None)


def test_no_iommu_group_link(host: FakeHost) -> None:
    host.add(ROOT_PORT, "pcieport", 0, cls="0x060400")
    host.add(GPU, "vfio-pci", None)
    got = host.check()
    assert not got.ok
    assert (
        f"{GPU}: it has no IOMMU group ({host.sys}/bus/pci/devices/{GPU}/iommu_group" in got.reason
    )
    assert (got.vendor, got.device, got.driver, got.group) == ("10de", "1eb8", "vfio-pci", None)


def test_bound_to_another_driver_gives_rebind_commands(host: FakeHost) -> None:
    host.add(GPU, "nouveau", 7)
    host.vfio("7", "vfio")
    got = host.check()
    dev = f"{host.sys}/bus/pci/devices/{GPU}"
    assert not got.ok
    assert got.driver == "nouveau"
    assert got.reason == (
        f"cannot pass through host PCI device {GPU}: it is bound to nouveau, not vfio-pci; as "
        f"root run `modprobe vfio-pci`, `echo {GPU} > {dev}/driver/unbind`, then "
        f"`echo vfio-pci > {dev}/driver_override` and "
        f"`echo {GPU} > {host.sys}/bus/pci/drivers_probe`."
    )


def test_bound_to_no_driver_needs_no_unbind(host: FakeHost) -> None:
    host.add(GPU, None, 7)
    got = host.check()
    assert not got.ok
    assert "it is bound to no driver, not vfio-pci" in got.reason
    assert "unbind" not in got.reason
    assert f"`echo vfio-pci > {host.sys}/bus/pci/devices/{GPU}/driver_override`" in got.reason
    assert f"`echo {GPU} > {host.sys}/bus/pci/drivers_probe`" in got.reason


def test_variant_vfio_driver_counts_as_vfio(host: FakeHost) -> None:
    host.add(GPU, "mlx5_vfio_pci", 7, cls="0x020000")
    host.vfio("7", "vfio")
    got = host.check()
    assert (got.ok, got.reason, got.driver) == (True, "", "mlx5_vfio_pci")


def test_group_not_viable_names_each_offender_with_driver(host: FakeHost) -> None:
    ready(host)
    (host.groups / "7" / "devices" / AUDIO).unlink()
    host.add("0000:01:00.3", "snd_hda_intel", 7, cls="0x040300")
    host.add("0000:05:00.0", "r8169", 7, cls="0x020000")
    got = host.check()
    assert not got.ok
    assert got.reason == (
        f"cannot pass through host PCI device {GPU}: its IOMMU group 7 is not viable: "
        "0000:01:00.3 (bound to snd_hda_intel), 0000:05:00.0 (bound to r8169); every device "
        "in the group must be bound to vfio-pci or to no driver, so rebind those too, or move "
        "the card to a slot with its own group."
    )
    # Harmless peers are not named.
    for peer in (ROOT_PORT, "0000:00:1c.0", "0000:00:1f.0", "0000:01:00.2"):
        assert peer not in got.reason


def test_pcieport_peer_is_harmless_even_without_a_bridge_class(host: FakeHost) -> None:
    host.add(GPU, "vfio-pci", 7)
    host.add(ROOT_PORT, "pcieport", 7, cls="0x088000")
    host.vfio("7", "vfio")
    got = host.check()
    assert (got.ok, got.reason) == (True, "")


def test_group_node_missing(host: FakeHost) -> None:
    ready(host)
    (host.dev / "vfio" / "7").unlink()
    got = host.check()
    assert not got.ok
    assert got.reason == (
        f"cannot pass through host PCI device {GPU}: {host.dev}/vfio/7 is missing; load the "
        "vfio modules (`modprobe vfio-pci`) and check that udev created it."
    )


def test_container_missing(host: FakeHost) -> None:
    ready(host)
    (host.dev / "vfio" / "vfio").unlink()
    got = host.check()
    assert not got.ok
    assert f"{host.dev}/vfio/vfio is missing" in got.reason


def test_group_node_not_accessible(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    ready(host)
    node = host.dev / "vfio" / "7"
    node.chmod(0o444)
    # Root passes os.access whatever the mode, so answer for this one path as a non-root user
    # would: readable, not writable.
    real: Callable[..., bool] = os.access

    def access(path: os.PathLike[str] | str, mode: int, **kw: object) -> bool:
        if Path(path) == node:
            return not mode & os.W_OK
        return real(path, mode, **kw)

    monkeypatch.setattr(os, "access", access)
    got = host.check()
    assert not got.ok
    assert got.reason.startswith(
        f"cannot pass through host PCI device {GPU}: {node} is not readable and writable by "
        f"this process (uid {os.geteuid()});"
    )
    assert "or run as root" in got.reason


def test_bad_address_raises_value_error(host: FakeHost) -> None:
    ready(host)
    with pytest.raises(ValueError, match=r"DDDD:BB:SS\.F"):
        host.check("01:00")


def test_checks_never_write(host: FakeHost) -> None:
    ready(host)
    host.add("0000:03:00.0", "nouveau", 9)

    def snapshot() -> dict[str, tuple[str, float]]:
        out: dict[str, tuple[str, float]] = {}
        for dirpath, dirnames, filenames in os.walk(host.sys.parent):
            for name in dirnames + filenames:
                p = Path(dirpath) / name
                st = p.lstat()
                body = os.readlink(p) if p.is_symlink() else (p.read_text() if p.is_file() else "")
                out[str(p)] = (body, st.st_mtime)
        return out

    before = snapshot()
    assert host.check().ok
    assert not host.check("0000:03:00.0").ok
    assert snapshot() == before


# --- several devices, and the real host ----------------------------------------------------------


def test_check_host_devices_first_failure(host: FakeHost) -> None:
    ready(host)
    host.add("0000:03:00.0", "nouveau", 9)
    assert check_host_devices([GPU, AUDIO], host.sys, host.dev) is None
    got = check_host_devices([GPU, "03:00.0", "0000:09:00.0"], host.sys, host.dev)
    assert got is not None
    assert got.startswith(
        "cannot pass through host PCI device 0000:03:00.0: it is bound to nouveau"
    )


def test_real_sys_unknown_address_gives_reason() -> None:
    addr = "ffff:ff:1f.7"  # no host has a device there
    got = check_host_device(addr)
    assert not got.ok
    head = f"cannot pass through host PCI device {addr}: "
    # Which reason depends on the host: this CI machine has no IOMMU groups at all.
    assert got.reason.startswith(head + "the host IOMMU is off") or got.reason.startswith(
        head + "no such device on this host"
    ), got.reason
    assert check_host_devices([addr]) == got.reason
