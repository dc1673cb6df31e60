"""`pkg:` kernels (kmatrix/kernels/pkg.py): Arch Linux / CachyOS kernel packages.

Arch's archive is not reachable from here, so the package is built in the test from the
Debian 6.1 cloud kernel's files in Arch's layout: usr/lib/modules/<release>/vmlinuz,
`pkgbase`, the modules compressed as .ko.zst and no modules.dep (pacman's hook runs depmod
at install time), a .PKGINFO. The tar is deterministic, so repeated runs share one cache
entry.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import ROOT
from kmatrix.config.specs import Cell
from kmatrix.errors import ArtifactError, MatrixError
from kmatrix.guest.guest import Guest
from kmatrix.kernels import load_matrix
from kmatrix.kernels.artifact import KernelArtifact, resolve
from kmatrix.kernels.pkg import unpack_pkg

# Modules the virtio profile and the guest agent's channel load (and their dependencies).
FEW_MODULES = ("virtio_console", "virtio_rng", "virtio_blk")
GENERATED = ("modules.dep", "modules.alias", "modules.symbols", "modules.softdep",
             "modules.devname", "modules.builtin.alias")  # fmt: skip


def _add(tar: tarfile.TarFile, name: str, data: bytes | str) -> None:
    """A file with data, or (str) a symlink to it; fixed times and owner."""
    info = tarfile.TarInfo(name)
    info.mode, info.mtime, info.uname, info.gname = 0o644, 0, "root", "root"
    if isinstance(data, str):
        info.type, info.linkname = tarfile.SYMTYPE, data
        tar.addfile(info)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def arch_package(
    dest: Path, kernel: KernelArtifact, config: bool, modules: tuple[str, ...] | None = None,
    extra: dict[str, bytes | str] | None = None,
) -> Path:  # fmt: skip
    """A kernel package in Arch's layout from a resolved Debian kernel: all its modules (or
    those whose names are in `modules`), zstd-compressed; its .config as build/.config (as
    a package with the headers has it) when `config`; `extra` members as given."""
    assert kernel.modules_dir is not None and kernel.config_path is not None
    rel = kernel.release
    mdir = f"usr/lib/modules/{rel}"
    members: dict[str, bytes | str] = {
        ".PKGINFO": f"pkgname = linux-kmx\npkgbase = linux-kmx\npkgver = {rel}-1\n".encode(),
        f"{mdir}/vmlinuz": kernel.image.read_bytes(),
        f"{mdir}/pkgbase": b"linux-kmx\n",
    }
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        members[f"{mdir}/{name}"] = (kernel.modules_dir / name).read_bytes()
    kos = sorted(kernel.modules_dir.rglob("*.ko"))
    if modules is not None:
        kos = [k for k in kos if k.stem.replace("-", "_") in modules]
    # Compressed as Arch's modules_install does (it uses ZSTD_CLEVEL=19; the default level
    # is enough here), in one zstd run; its output is deterministic.
    stage = dest.parent / f"{dest.name}.stage"
    for ko in kos:
        copy = stage / ko.relative_to(kernel.modules_dir)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(ko.read_bytes())
    if kos:
        subprocess.run(["zstd", "-q", "--rm", "-T1", "-r", str(stage)], check=True)
    for zst in sorted(stage.rglob("*.ko.zst")):
        members[f"{mdir}/{zst.relative_to(stage)}"] = zst.read_bytes()
    if config:
        members[f"{mdir}/build/.config"] = kernel.config_path.read_bytes()
    members.update(extra or {})
    tar_path = dest.with_suffix("")  # x.pkg.tar
    with tarfile.open(tar_path, "w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(members):
            _add(tar, name, members[name])
    subprocess.run(["zstd", "-q", "-f", "-T1", "--rm", "-o", str(dest), str(tar_path)], check=True)
    return dest


def pkg_matrix(dest: Path, pkg: Path | str, extra: str = "") -> Path:
    """A one-cell matrix (Nehalem, the virtio profile) with the package as its kernel."""
    dest.write_text(
        "name: pkg\n"
        "defaults: {memory: 512, smp: 2, boot_timeout: 90, test_timeout: 60, accel: tcg}\n"
        "kernels:\n"
        "  - name: arch-6.1\n"
        f"    pkg: {pkg}\n{extra}"
        "cpus: [{name: Nehalem, flags: [sse4_2]}]\n"
        f"devices: [{ROOT / 'matrix' / 'devices' / 'virtio.yaml'}]\n"
    )
    return dest


@pytest.fixture(scope="module")
def deb61(cloud61: Cell) -> KernelArtifact:
    return resolve(cloud61.kernel)


@pytest.fixture(scope="module")
def full_pkg(deb61: KernelArtifact, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("pkg") / "linux-kmx-6.1.0-1-x86_64.pkg.tar.zst"
    return arch_package(dest, deb61, config=True)


def test_matrix_names_a_bad_package(tmp_path: Path) -> None:
    (tmp_path / "linux.deb").write_bytes(b"")
    for value, message in (
        ("linux.deb", "'linux.deb' is not a kernel package file (.pkg.tar.zst, "),
        ("missing.pkg.tar.zst", f"file not found: {tmp_path / 'missing.pkg.tar.zst'}"),
    ):
        m = pkg_matrix(tmp_path / "m.yaml", value)
        with pytest.raises(MatrixError) as e:
            load_matrix(m)
        assert str(e.value).startswith(f"{m}:5: kernels[0].pkg: {message}"), e.value


def test_release_modules_and_config_from_the_package(
    full_pkg: Path, deb61: KernelArtifact, tmp_path: Path
) -> None:
    kernel = load_matrix(pkg_matrix(tmp_path / "m.yaml", full_pkg)).kernels[0]
    assert (kernel.source, kernel.identity) == ("pkg", full_pkg.name)
    art = resolve(kernel)
    assert art.release == deb61.release
    assert art.image.name == "vmlinuz" and art.image.parent.name == deb61.release
    assert art.modules_dir == art.image.parent
    # depmod made the index pacman's hook would have made, over the .ko.zst modules.
    dep = (art.modules_dir / "modules.dep").read_text()
    assert "kernel/drivers/block/virtio_blk.ko.zst:" in dep, dep[:500]
    assert art.config_path == art.modules_dir / "build" / ".config"
    assert art.config == deb61.config and art.has("VIRTIO_BLK")
    assert unpack_pkg(full_pkg, "again") == art.image.parents[4]  # cached, not unpacked again


def test_no_config_unsafe_members_left_out(deb61: KernelArtifact, tmp_path: Path) -> None:
    hostile: dict[str, bytes | str] = {
        "../escape": b"x",
        "usr/../../escape2": b"x",
        "/abs-escape": b"x",
        "usr/lib/passwd": "/etc/passwd",
        "usr/lib/up": "../../../outside",
        "usr/lib/modules/fine": "../../share",  # a link that stays inside is kept
    }
    pkg = arch_package(
        tmp_path / "linux-small-1-x86_64.pkg.tar.zst", deb61, config=False,
        modules=FEW_MODULES, extra=hostile,
    )  # fmt: skip
    art = resolve(load_matrix(pkg_matrix(tmp_path / "m.yaml", pkg)).kernels[0])
    assert art.config_path is None and not art.config_known
    root = art.image.parents[4]
    assert sorted(p.name for p in root.iterdir()) == [".PKGINFO", ".kmatrix-complete", "usr"]
    assert sorted(p.name for p in (root / "usr" / "lib").iterdir()) == ["modules"]
    assert (root / "usr/lib/modules/fine").is_symlink()
    assert not (root.parent / "escape").exists() and not (tmp_path / "escape").exists()
    dep = (art.modules_dir / "modules.dep").read_text() if art.modules_dir else ""
    assert sum(1 for _ in dep.splitlines()) == len(FEW_MODULES), dep
    # A config: key in the matrix stands in for the package's missing one.
    kernel = load_matrix(
        pkg_matrix(tmp_path / "m2.yaml", pkg, f"    config: {deb61.config_path}\n")
    ).kernels[0]
    assert resolve(kernel).config == deb61.config


def test_package_without_a_kernel(tmp_path: Path) -> None:
    tar_path = tmp_path / "linux-empty-1-x86_64.pkg.tar"
    with tarfile.open(tar_path, "w") as tar:
        _add(tar, ".PKGINFO", b"pkgname = linux-empty\n")
        _add(tar, "usr/share/doc/linux-empty/README", b"no kernel here\n")
    kernel = load_matrix(pkg_matrix(tmp_path / "m.yaml", tar_path)).kernels[0]
    with pytest.raises(ArtifactError, match=r"\(kernel arch-6.1\): expected one "
                       r"usr/lib/modules/\*/vmlinuz, found none"):  # fmt: skip
        resolve(kernel)


@pytest.fixture(scope="module")
def booted_pkg(full_pkg: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    d = tmp_path_factory.mktemp("boot-pkg")
    cell = load_matrix(pkg_matrix(d / "m.yaml", full_pkg)).cells[0]
    g = Guest(cell, d / "cell", accel="tcg")
    g.start()
    try:
        yield g
    finally:
        g.stop()


@pytest.mark.boot
def test_boots_with_its_own_modules(booted_pkg: Guest, deb61: KernelArtifact) -> None:
    g = booted_pkg
    assert g.kernel is not None and g.kernel.release == deb61.release
    assert g.kernel.boot_image.suffix == ".elf"  # PVH vmlinux extracted from its vmlinuz
    # The agent's channel is virtio_console, a module: it came from a .ko.zst of the package.
    assert g.record.channel == "virtio"
    s = g.session
    assert s is not None
    assert s.run("uname -r", check=True).stdout.strip() == deb61.release
    loaded = s.run("cat /proc/modules", check=True).stdout
    for mod in ("virtio_console", "virtio_rng", "virtio_blk"):
        assert f"{mod} " in loaded, loaded
    assert g.poweroff()
