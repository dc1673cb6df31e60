"""Read-only data disks: content only some tests need, kept out of every cell's initramfs.

A *data disk* is a tree of files (the suite tools, kselftest binaries, test data), staged
once per content key into the cache and packed into a read-only filesystem image once per
(key, filesystem). A cell whose selected tests need it gets the image attached as a
read-only virtio-blk disk (serial `kmxro-<name>`); its initramfs carries a one-line
description (`/etc/kmatrix/datadisks/<name>`), the modules the mount needs (loaded at the
mount, not at boot) and, for a `link` disk, a symlink at each file's own path into the
mount point, so the files are where they would be in the image once the disk is mounted.
The agent mounts it on first use (`/usr/lib/kmatrix/mount-disk <name>`, images/mount-disk),
so the boot itself pays nothing for it.

The filesystem is the first of FORMATS that both the kernel (its config, and the module
when it is one) and the host (its mkfs) can handle. A kernel that can mount none of them,
or cannot drive virtio-blk, gets the tree in its initramfs instead, the old way, and the
reason is recorded (boot.json `disks`, the tests' `kmatrix.disk.<name>` property).

Anything can be a data disk: DataContent names the tree and says how to stage it; a
provider (DiskProvider) makes the content for a cell's kernel and cell, and
`register_disk` makes a name known to the `kmatrix_disk` marker.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix.config.specs import Cell
from kmatrix.errors import ArtifactError, InfraError
from kmatrix.host.cache import cache_root, digest_bytes, ensure_dir, ensure_file
from kmatrix.host.tools import run_tool
from kmatrix.kernels.artifact import KernelArtifact

DISK_LAYOUT = "1"  # bump when the staged tree or the image layout below changes
NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,13}$")  # serial kmxro-<name>: virtio-blk allows 20
MOUNT_ROOT = "/usr/lib/kmatrix/disks"  # in the initramfs: <MOUNT_ROOT>/<name>
MOUNT_SCRIPT = "/usr/lib/kmatrix/mount-disk"
DESCRIPTION_DIR = "etc/kmatrix/datadisks"


@dataclass(frozen=True)
class DataContent:
    """What a disk carries: stage(root) writes the tree into an empty directory; key must
    change whenever the tree can. link: symlinks at the files' own paths in the guest."""

    name: str
    key: str
    stage: Callable[[Path], None]
    link: bool = True


DiskProvider = Callable[[KernelArtifact, Cell], DataContent]


@dataclass(frozen=True)
class DiskFormat:
    """A filesystem a data disk can be: what the kernel needs and how the host makes it."""

    name: str  # the image's filesystem
    # (kernel option, its module, mount -t): any one driver, built in or a module we ship
    drivers: tuple[tuple[str, str, str], ...]
    tool: str  # the host mkfs
    package: str  # the Debian package with the tool
    argv: Callable[[Path, Path, int], list[str]]  # (tree, image, tree bytes) -> mkfs argv


def _erofs(tree: Path, image: Path, size: int) -> list[str]:
    # Uncompressed: under TCG, decompressing costs more than reading (see docs/speed.md).
    return ["mkfs.erofs", "--quiet", "-T0", "--all-root", str(image), str(tree)]


def _squashfs(tree: Path, image: Path, size: int) -> list[str]:
    return [
        "mksquashfs", str(tree), str(image), "-noappend", "-all-root", "-no-xattrs",
        "-noI", "-noD", "-noF", "-noX", "-mkfs-time", "0", "-all-time", "0", "-quiet",
        "-no-progress",
    ]  # fmt: skip


def _ext2(tree: Path, image: Path, size: int) -> list[str]:
    # mke2fs -d fills the filesystem from a directory, no root needed; room for metadata.
    kib = size // 1024 + size // 1024 // 8 + 8192
    return [
        "mke2fs", "-q", "-F", "-t", "ext2", "-m", "0", "-b", "4096", "-E", "root_owner=0:0",
        "-d", str(tree), str(image), f"{kib}k",
    ]  # fmt: skip


# Cheapest first: under TCG each module load costs (signature check included), and squashfs
# is one module with no dependencies in the Debian kernels, erofs two or three (libcrc32c and
# its crc32c); the ext2 driver is often built in (ext4) but as a module brings four more.
FORMATS: tuple[DiskFormat, ...] = (
    DiskFormat(
        "squashfs",
        (("SQUASHFS", "squashfs", "squashfs"),),
        "mksquashfs",
        "squashfs-tools",
        _squashfs,
    ),
    DiskFormat("erofs", (("EROFS_FS", "erofs", "erofs"),), "mkfs.erofs", "erofs-utils", _erofs),
    # The ext4 driver mounts ext2 filesystems whatever EXT4_USE_FOR_EXT2 says (as -t ext4).
    DiskFormat(
        "ext2",
        (("EXT2_FS", "ext2", "ext2"), ("EXT4_FS", "ext4", "ext4")),
        "mke2fs",
        "e2fsprogs",
        _ext2,
    ),
)


@dataclass(frozen=True)
class DiskPlan:
    """How one data disk reaches one cell: as a disk (fs set) or in the initramfs."""

    name: str
    tree: Path  # the staged content (cached)
    link: bool
    fs: str = ""  # the image's filesystem; "" when the tree goes into the initramfs
    fstype: str = ""  # what the guest mounts it as (the ext4 driver reads ext2)
    image: Path | None = None
    modules: tuple[str, ...] = ()  # loaded by the mount, dependencies first
    holds: tuple[str, ...] = ()  # of those, what the mount itself keeps in use (driver, fs)
    reason: str = ""  # why the initramfs, when it is

    @property
    def serial(self) -> str:
        return serial_of(self.name)

    @property
    def mountpoint(self) -> str:
        return f"{MOUNT_ROOT}/{self.name}"

    @property
    def attached(self) -> bool:
        return self.image is not None

    def description(self) -> str:
        """The guest's /etc/kmatrix/datadisks/<name> line, read by images/mount-disk."""
        if not self.attached:
            return "initramfs\n"
        return f"disk {self.serial} {self.fstype} {' '.join(self.modules)}".rstrip() + "\n"

    def key(self) -> str:
        """What the initramfs depends on."""
        return digest_bytes(self.name, str(self.tree), str(self.link), self.description())

    def summary(self) -> str:
        """One line for reports: how the content reached the guest."""
        if self.attached:
            return f"{self.fs} disk"
        return f"initramfs: {self.reason}"


def serial_of(name: str) -> str:
    return f"kmxro-{name}"


_REGISTRY: dict[str, DiskProvider] = {}


def register_disk(name: str, provider: DiskProvider) -> None:
    """Makes a data disk known by name (the kmatrix_disk marker, Guest(disks=...))."""
    check_name(name)
    _REGISTRY[name] = provider


def registered() -> dict[str, DiskProvider]:
    return dict(_REGISTRY)


def check_name(name: str) -> None:
    if not NAME_RE.match(name):
        raise ValueError(
            f"bad data disk name {name!r}: 1-14 characters, a-z, 0-9 and '-', "
            "starting with a letter"
        )


# --- building ---------------------------------------------------------------------------------


def staged_tree(content: DataContent) -> Path:
    """The content's tree in the cache, staged once per key."""
    check_name(content.name)
    digest = digest_bytes(DISK_LAYOUT, content.name, content.key)[:24]
    dest = cache_root() / "disks" / f"{content.name}-{digest}"

    def build(tmp: Path) -> None:
        try:
            content.stage(tmp)
        except (OSError, subprocess.SubprocessError) as e:
            raise ArtifactError(f"staging the {content.name} data disk: {e}") from e
        for p in tmp.rglob("*"):
            os.utime(p, (0, 0), follow_symlinks=False)

    return ensure_dir(dest / "tree", build)


def tree_files(tree: Path) -> list[str]:
    """Paths under tree (files and symlinks, not directories), relative, sorted."""
    out = []
    for p in tree.rglob("*"):
        if p.name == ".kmatrix-complete" and p.parent == tree:
            continue
        if p.is_symlink() or not p.is_dir():
            out.append(str(p.relative_to(tree)))
    return sorted(out)


def tree_bytes(tree: Path) -> int:
    return sum((tree / f).lstat().st_size for f in tree_files(tree) if not (tree / f).is_symlink())


def disk_image(tree: Path, fmt: DiskFormat) -> Path:
    """The tree as a read-only filesystem image of the format (cached beside the tree)."""
    dest = tree.parent / f"image.{fmt.name}"

    def build(tmp: Path) -> None:
        # The completion marker of the cached tree is not part of the content.
        stage = tree.parent / f".stage-{tmp.name}"
        shutil.rmtree(stage, ignore_errors=True)
        try:
            shutil.copytree(tree, stage, symlinks=True, ignore=_skip_marker, copy_function=os.link)
            run_tool(fmt.argv(stage, tmp, tree_bytes(tree)), f"making the {fmt.name} data disk")
        finally:
            shutil.rmtree(stage, ignore_errors=True)
        size = tmp.stat().st_size
        if size % 512:  # a block device is whole sectors
            with tmp.open("ab") as f:
                f.truncate(-(-size // 512) * 512)

    return ensure_file(dest, build)


def _skip_marker(directory: str, names: list[str]) -> list[str]:
    return [".kmatrix-complete"] if ".kmatrix-complete" in names else []


# --- planning ---------------------------------------------------------------------------------


@dataclass
class KernelSupport:
    """What the kernel offers for disks: its verdict per format and for virtio-blk."""

    # usable: (format, mount -t, modules to load: transport and filesystem)
    formats: list[tuple[DiskFormat, str, list[str]]] = field(default_factory=list)
    why_not: list[str] = field(default_factory=list)


def _driver_modules(
    kernel: KernelArtifact, has_module: Callable[[str], bool], option: str, module: str
) -> list[str] | None:
    """[] if built in, [module] if a module we can ship, None if neither."""
    value = kernel.option(option)
    if value == "y":
        return []
    if value == "m" and has_module(module):
        return [module]
    return None


def kernel_support(
    kernel: KernelArtifact,
    has_module: Callable[[str], bool],
    formats: Iterable[DiskFormat] | None = None,
) -> KernelSupport:
    """Which formats (default: FORMATS, in order) this kernel mounts from a virtio-blk disk,
    with the modules each needs. has_module: whether a module ships with the kernel."""
    formats = FORMATS if formats is None else formats
    out = KernelSupport()
    if not kernel.config_known:
        out.why_not.append("the kernel's config is unknown")
        return out
    transport: list[str] = []
    for option, module in (("VIRTIO_PCI", "virtio_pci"), ("VIRTIO_BLK", "virtio_blk")):
        mods = _driver_modules(kernel, has_module, option, module)
        if mods is None:
            out.why_not.append(f"CONFIG_{option} is {_state(kernel, option)}")
            return out
        transport += mods
    missing = []
    for fmt in formats:
        for option, module, fstype in fmt.drivers:
            mods = _driver_modules(kernel, has_module, option, module)
            if mods is not None:
                out.formats.append((fmt, fstype, transport + mods))
                break
        else:
            missing.append("/".join(f"CONFIG_{o}" for o, _, _ in fmt.drivers))
    if not out.formats:
        out.why_not.append("the kernel mounts none of " + ", ".join(missing))
    return out


def _state(kernel: KernelArtifact, option: str) -> str:
    value = kernel.option(option)
    return "not set" if value is None else f"={value} without its module"


def plan_disk(
    content: DataContent,
    support: KernelSupport,
    closure: Callable[[list[str]], list[str]],
    formats_on_host: Callable[[DiskFormat], bool] | None = None,
) -> DiskPlan:
    """How content reaches a cell with this kernel; builds (or reuses) what that needs.

    closure: module names -> what to load, dependencies first (the kernel's modules.dep).
    """
    tree = staged_tree(content)
    on_host = formats_on_host or (lambda f: shutil.which(f.tool) is not None)
    reasons = list(support.why_not)
    for fmt, fstype, modules in support.formats:
        if not on_host(fmt):
            reasons.append(f"the host has no {fmt.tool} ({fmt.package}) for {fmt.name}")
            continue
        image = disk_image(tree, fmt)
        # virtio_pci is the transport of every virtio device (the agent's channel too): the
        # disk's own holders are the block driver and the filesystem.
        holds = tuple(m for m in modules if m != "virtio_pci")
        return DiskPlan(
            content.name,
            tree,
            content.link,
            fmt.name,
            fstype,
            image,
            tuple(closure(modules)),
            holds,
        )
    return DiskPlan(content.name, tree, content.link, reason="; ".join(reasons))


def stage_links(root: Path, plan: DiskPlan) -> None:
    """In the initramfs staging root: the description, the mount point and, for a link
    disk, a symlink per file of the disk at its own path, into the mount point (dangling
    until the mount). An initramfs plan gets the tree itself."""
    desc = root / DESCRIPTION_DIR / plan.name
    desc.parent.mkdir(parents=True, exist_ok=True)
    desc.write_text(plan.description())
    if not plan.attached:
        _copy_tree(plan.tree, root)
        return
    (root / plan.mountpoint.lstrip("/")).mkdir(parents=True, exist_ok=True)
    if not plan.link:
        return
    for rel in tree_files(plan.tree):
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_symlink() or target.exists():  # e.g. a busybox applet: the tool wins
            if target.is_dir() and not target.is_symlink():
                raise InfraError(f"data disk {plan.name}: /{rel} is a directory in the image")
            target.unlink()
        target.symlink_to(f"{plan.mountpoint}/{rel}")


def _copy_tree(tree: Path, root: Path) -> None:
    for rel in tree_files(tree):
        src, dst = tree / rel, root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink() or (dst.exists() and not dst.is_dir()):
            dst.unlink()
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)


def mount_command(name: str) -> str:
    """The guest command that mounts the disk (idempotent; no-op for an initramfs plan)."""
    check_name(name)
    return f"{MOUNT_SCRIPT} {name}"
