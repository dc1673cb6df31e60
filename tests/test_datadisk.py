"""Read-only data disks: which filesystem a kernel gets, the images built from a tree, the
initramfs fallback with its reason, the QEMU arguments, and in real guests the tools disk
mounted on first use (and the same tests passing from the initramfs)."""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from kmatrix.config.specs import Cell, Matrix
from kmatrix.guest import datadisk, image
from kmatrix.guest.datadisk import (
    FORMATS,
    DataContent,
    disk_image,
    kernel_support,
    mount_command,
    plan_disk,
    serial_of,
    staged_tree,
)
from kmatrix.guest.guest import Guest
from kmatrix.guest.image import TOOLS_DISK, ModuleIndex
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.vm.argv import BootPaths, build_argv

DEBIAN = {  # how the Debian 6.1/6.12 cloud and generic kernels build what a disk needs
    "CONFIG_VIRTIO_PCI": "m",
    "CONFIG_VIRTIO_BLK": "m",
    "CONFIG_EROFS_FS": "m",
    "CONFIG_SQUASHFS": "m",
    "CONFIG_EXT4_FS": "y",
    "CONFIG_EXT4_USE_FOR_EXT2": "y",
}
TINY = {  # matrix/patched.yaml's tinyconfig builds: virtio-blk built in, no disk filesystem
    "CONFIG_VIRTIO_PCI": "y",
    "CONFIG_VIRTIO_BLK": "y",
    "CONFIG_TMPFS": "y",
}


def kernel(config: dict[str, str]) -> KernelArtifact:
    return KernelArtifact(
        "k", Path("/k"), Path("/k"), "0.0-test", "", None, None, config=dict(config)
    )


def every_module(name: str) -> bool:
    return True


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def test_debian_kernels_get_squashfs_with_the_transport_modules() -> None:
    support = kernel_support(kernel(DEBIAN), every_module)
    assert not support.why_not
    names = [(f.name, fstype, mods) for f, fstype, mods in support.formats]
    assert names[0] == ("squashfs", "squashfs", ["virtio_pci", "virtio_blk", "squashfs"])
    # ext4 built in reads the ext2 image as ext4, with no filesystem module to load.
    assert names[-1] == ("ext2", "ext4", ["virtio_pci", "virtio_blk"])


def test_ext2_driver_is_preferred_to_ext4_and_builtins_load_nothing() -> None:
    cfg = {"CONFIG_VIRTIO_PCI": "y", "CONFIG_VIRTIO_BLK": "y", "CONFIG_EXT2_FS": "y"}
    support = kernel_support(kernel(cfg), every_module)
    assert [(f.name, t, m) for f, t, m in support.formats] == [("ext2", "ext2", [])]


def test_a_kernel_without_a_disk_filesystem_says_which_it_lacks() -> None:
    support = kernel_support(kernel(TINY), every_module)
    assert support.formats == []
    assert support.why_not == [
        "the kernel mounts none of CONFIG_SQUASHFS, CONFIG_EROFS_FS, CONFIG_EXT2_FS/CONFIG_EXT4_FS"
    ]


def test_a_module_that_does_not_ship_counts_as_absent() -> None:
    support = kernel_support(kernel(DEBIAN), lambda m: m != "virtio_blk")
    assert support.why_not == ["CONFIG_VIRTIO_BLK is =m without its module"]
    no_squashfs = kernel_support(kernel(DEBIAN), lambda m: m != "squashfs")
    assert [f.name for f, _, _ in no_squashfs.formats] == ["erofs", "ext2"]


def test_unknown_config_means_no_disk() -> None:
    assert kernel_support(kernel({}), every_module).why_not == ["the kernel's config is unknown"]


def _content(name: str = "demo", key: str = "1") -> tuple[DataContent, list[int]]:
    calls: list[int] = []

    def stage(root: Path) -> None:
        calls.append(1)
        (root / "usr/bin").mkdir(parents=True)
        (root / "usr/bin/demo").write_text("#!/bin/sh\necho demo\n")
        (root / "usr/share/demo").mkdir(parents=True)
        (root / "usr/share/demo/data").write_bytes(b"x" * 5000)

    return DataContent(name, key, stage), calls


def test_tree_is_staged_once_per_key(cache: Path) -> None:
    content, calls = _content()
    tree = staged_tree(content)
    assert staged_tree(content) == tree and calls == [1]
    assert datadisk.tree_files(tree) == ["usr/bin/demo", "usr/share/demo/data"]
    other, calls2 = _content(key="2")
    assert staged_tree(other) != tree and calls2 == [1]


MAGIC = {  # filesystem -> (offset, bytes): what says the image really is that filesystem
    "erofs": (1024, (0xE0F5E1E2).to_bytes(4, "little")),
    "squashfs": (0, b"hsqs"),
    "ext2": (1080, (0xEF53).to_bytes(2, "little")),
}


@pytest.mark.parametrize("fmt", FORMATS, ids=[f.name for f in FORMATS])
def test_each_format_builds_a_whole_sector_image(cache: Path, fmt: datadisk.DiskFormat) -> None:
    if shutil.which(fmt.tool) is None:
        pytest.skip(f"{fmt.tool} ({fmt.package}) is not installed")
    tree = staged_tree(_content()[0])
    image = disk_image(tree, fmt)
    data = image.read_bytes()
    offset, magic = MAGIC[fmt.name]
    assert data[offset : offset + len(magic)] == magic
    assert len(data) % 512 == 0
    assert disk_image(tree, fmt) == image  # cached


def test_plan_falls_back_to_the_initramfs_with_every_reason(cache: Path) -> None:
    content = _content()[0]
    plan = plan_disk(
        content, kernel_support(kernel(DEBIAN), every_module), lambda n: n, lambda f: False
    )
    assert not plan.attached and plan.image is None
    assert plan.summary().startswith("initramfs: the host has no mksquashfs (squashfs-tools)")
    assert "mke2fs (e2fsprogs) for ext2" in plan.reason
    assert plan.description() == "initramfs\n"
    tiny = plan_disk(content, kernel_support(kernel(TINY), every_module), lambda n: n)
    assert tiny.summary() == "initramfs: the kernel mounts none of CONFIG_SQUASHFS, " + (
        "CONFIG_EROFS_FS, CONFIG_EXT2_FS/CONFIG_EXT4_FS"
    )


def test_plan_takes_the_first_format_the_host_can_make(cache: Path) -> None:
    if shutil.which("mke2fs") is None:
        pytest.skip("mke2fs absent")
    support = kernel_support(kernel(DEBIAN), every_module)
    plan = plan_disk(_content()[0], support, lambda n: ["dep", *n], lambda f: f.name == "ext2")
    assert (plan.fs, plan.fstype, plan.modules) == (
        "ext2",
        "ext4",
        ("dep", "virtio_pci", "virtio_blk"),
    )
    assert plan.description() == "disk kmxro-demo ext4 dep virtio_pci virtio_blk\n"
    assert plan.mountpoint == "/usr/lib/kmatrix/disks/demo"


def test_names_are_checked() -> None:
    assert mount_command("tools") == "/usr/lib/kmatrix/mount-disk tools"
    assert serial_of("kselftest") == "kmxro-kselftest"
    for bad in ("", "Tools", "a b", "x" * 15, "-x", "../x"):
        with pytest.raises(ValueError, match="bad data disk name"):
            mount_command(bad)


def test_argv_attaches_data_disks_read_only(two: Matrix, tmp_path: Path) -> None:
    cell = two.cell("deb-6.1-cloud/Nehalem/virtio")
    paths = BootPaths(
        kernel=tmp_path / "vmlinux", initrd=tmp_path / "i.cpio", console_log=tmp_path / "c",
        qmp_socket=tmp_path / "q", agent_socket=tmp_path / "a", scratch_disk=tmp_path / "d",
        extra_disks=(("kmxro-tools", tmp_path / "a,b.erofs"),),
    )  # fmt: skip
    argv = build_argv(cell, paths, "tcg", "virtio", sandbox=False)
    blockdevs = [argv[j + 1] for j, a in enumerate(argv) if a == "-blockdev"]
    assert blockdevs[-1] == (
        f"node-name=kmx-ro0,driver=raw,read-only=on,file.driver=file,"
        f"file.filename={tmp_path}/a,,b.erofs,file.read-only=on"
    )
    assert argv[-2:] == ["-device", "virtio-blk-pci,drive=kmx-ro0,serial=kmxro-tools"]
    without = build_argv(cell, dataclasses.replace(paths, extra_disks=()), "tcg", "virtio")
    assert "kmx-ro0" not in " ".join(without)


# --- real QEMU --------------------------------------------------------------------------------

TOOLS_CHECK = (
    "stress-ng --version && chrt --version && /usr/bin/taskset --version && "
    "cyclictest --help >/dev/null 2>&1; hackbench -g 1 -f 2 -l 5 >/dev/null && "
    "lspci -nn | head -1 && { /usr/bin/kmx-vfio; [ $? = 2 ]; } && test -s /usr/share/misc/pci.ids"
)


def _no(tree: Path, image: Path, size: int) -> list[str]:
    raise AssertionError("no image is made for a format the kernel lacks")


@pytest.fixture
def tools_guest(cloud61: Cell, tmp_path: Path) -> Iterator[Guest]:
    g = Guest(cloud61, tmp_path / "g", accel="tcg", disks=[TOOLS_DISK])
    try:
        yield g
    finally:
        g.stop()


@pytest.mark.boot
def test_tools_disk_is_mounted_on_first_use(tools_guest: Guest) -> None:
    g = tools_guest
    g.prepare()
    plan = g.disk_plans[TOOLS_DISK]
    assert plan.fs == "squashfs" and plan.image is not None, plan  # the Debian kernels have it
    assert g.initrd is not None and g.initrd.stat().st_size < 8 << 20  # busybox, agent, modules
    g.start()
    assert g.session is not None
    # Booted without it: the links dangle until the agent mounts the disk.
    before = g.session.run("stress-ng --version")
    assert before.exit_status != 0
    assert g.mount_disk(TOOLS_DISK) > 0
    res = g.session.run(TOOLS_CHECK, timeout=120)
    assert res.exit_status == 0, res.stdout + res.stderr
    assert "stress-ng, version" in res.stdout
    assert g.mount_disk(TOOLS_DISK) == 0.0  # once per boot
    assert g.held_modules() == {"virtio_blk", "squashfs"}  # not their dependencies
    mounts = g.session.read_file("/proc/mounts")
    assert f"/usr/lib/kmatrix/disks/{TOOLS_DISK} squashfs ro" in mounts
    assert g.record.disks[TOOLS_DISK].how == "squashfs disk"
    took = g.record.disks[TOOLS_DISK].mount_seconds
    assert took is not None and took > 0


@pytest.mark.boot
def test_kernel_that_cannot_mount_gets_the_tools_in_its_initramfs(
    tools_guest: Guest, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As if the kernel could mount no filesystem we can make.
    nope = datadisk.DiskFormat("nopefs", (("KMX_NOPE_FS", "nopefs", "nopefs"),), "true", "-", _no)
    monkeypatch.setattr(datadisk, "FORMATS", (nope,))
    g = tools_guest
    g.start()
    plan = g.disk_plans[TOOLS_DISK]
    assert not plan.attached
    how = g.record.disks[TOOLS_DISK].how
    assert how == "initramfs: the kernel mounts none of CONFIG_KMX_NOPE_FS"
    assert g.mount_disk(TOOLS_DISK) >= 0  # a no-op that succeeds
    assert g.session is not None
    res = g.session.run(TOOLS_CHECK, timeout=120)
    assert res.exit_status == 0, res.stdout + res.stderr
    assert "kmxro-tools" not in " ".join(g._argv("tcg", g.outdir, g.console_log))


def test_mount_modules_follow_softdeps_busybox_modprobe_does_not(tmp_path: Path) -> None:
    """The 6.12 generic kernel: libcrc32c needs crc32c first (a softdep, through an alias
    two modules provide); busybox modprobe knows neither, so the host resolves them."""
    mods = tmp_path / "lib/modules/0.0-test"
    mods.mkdir(parents=True)
    (mods / "modules.dep").write_text(
        "kernel/fs/erofs/erofs.ko.xz: kernel/lib/libcrc32c.ko.xz\n"
        "kernel/lib/libcrc32c.ko.xz:\n"
        "kernel/arch/x86/crypto/crc32c-intel.ko.xz:\n"
        "kernel/crypto/crc32c_generic.ko.xz:\n"
    )
    (mods / "modules.softdep").write_text("# Soft dependencies\nsoftdep libcrc32c pre: crc32c\n")
    (mods / "modules.alias").write_text(
        "alias crc32c crc32c_intel\nalias crc32c crc32c_generic\nalias crc32cx other\n"
    )
    index = ModuleIndex._parse(mods)
    assert index.closure(["erofs"]) == ["kernel/lib/libcrc32c.ko.xz", "kernel/fs/erofs/erofs.ko.xz"]
    # The CPU-independent provider, before what needs it (crc32c-intel needs SSE4.2).
    assert index.closure(["erofs"], soft=True) == [
        "kernel/crypto/crc32c_generic.ko.xz",
        "kernel/lib/libcrc32c.ko.xz",
        "kernel/fs/erofs/erofs.ko.xz",
    ]
    # The cloud kernels have crc32c built in: nothing more to load.
    (mods / "modules.builtin.modinfo").write_bytes(
        b"crc32c_generic.alias=crypto-crc32c\0crc32c_generic.alias=crc32c\0"
    )
    index = ModuleIndex._parse(mods)
    image._builtin_aliases.cache_clear()
    assert index.closure(["erofs"], soft=True) == index.closure(["erofs"])
