"""Read-only disks for the cells that ask (kmatrix.guest.disks): the archive, its marker and
padding, the initramfs layer for kernels that cannot read a disk; no QEMU here (the real
boots are in test_guest_kselftest.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from kmatrix.guest.disks import SECTOR, ExtraDisk, layered_initrd, pack_disk


@pytest.fixture(autouse=True)
def private_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))


def listing(archive: Path) -> list[str]:
    out = subprocess.run(
        ["cpio", "-it", "--quiet"], stdin=archive.open("rb"), capture_output=True, text=True,
        check=True,
    ).stdout  # fmt: skip
    return sorted(out.split())


def test_archive_with_marker_padded_to_sectors_built_once() -> None:
    calls: list[Path] = []

    def stage(root: Path) -> None:
        calls.append(root)
        (root / "opt/x").mkdir(parents=True)
        (root / "opt/x/prog").write_text("#!/bin/sh\necho hi\n")

    disk = pack_disk("kmx-test", "content-1", stage)
    assert disk.image.stat().st_size % SECTOR == 0
    assert listing(disk.image) == [
        "etc", "etc/kmatrix", "etc/kmatrix/disks", "etc/kmatrix/disks/kmx-test", "opt",
        "opt/x", "opt/x/prog",
    ]  # fmt: skip
    assert disk.marker == "/etc/kmatrix/disks/kmx-test"
    assert pack_disk("kmx-test", "content-1", stage) == disk and len(calls) == 1
    assert pack_disk("kmx-test", "content-2", stage).image != disk.image
    with pytest.raises(ValueError, match="serial"):
        pack_disk("Not A Serial!", "k", stage)


def test_initramfs_layer(tmp_path: Path) -> None:
    base = tmp_path / "base.cpio"
    base.write_bytes(b"BASE" * 128)
    layer = tmp_path / "layer.cpio"
    layer.write_bytes(b"LAYER" * 100)
    assert layered_initrd(base, []) == base
    out = layered_initrd(base, [ExtraDisk("kmx-test", layer)])
    assert out.read_bytes() == base.read_bytes() + layer.read_bytes()
