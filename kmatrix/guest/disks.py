"""Read-only disks for the cells that ask: what only some tests need (the kselftest programs
and the tools they run under), kept out of the initramfs so that no other boot pays for it.

A disk is a newc cpio archive, built once per content and padded to whole sectors, attached
as a read-only virtio-blk device the guest finds by its serial. Nothing reads it at boot:
the first test that needs it unpacks it into the guest's root filesystem (`unpack_script`,
a busybox `cpio -i` straight from the block device, so no filesystem driver is needed),
after which its files are where the archive says, as if they were part of the image. A
marker file (`/etc/kmatrix/disks/<serial>`) in the archive says it is there.

A kernel that cannot drive the disk from the start (virtio-blk not built in) gets the same
archive appended to its initramfs instead (the kernel unpacks concatenated archives): the
files are then there from boot, and unpacking is a no-op. Either way, cells that do not ask
boot exactly as before.

A Guest attaches the disks its providers give it (Guest.disk_providers, set per cell by the
CellPool): a provider is called after the kernel is resolved and the image packed.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from kmatrix.errors import ArtifactError
from kmatrix.guest.image import _pack, _shared_libs
from kmatrix.host.cache import cache_root, digest_bytes, ensure_file, stamped_digest
from kmatrix.kernels.artifact import KernelArtifact

SERIAL_RE = re.compile(r"^[a-z0-9-]{1,20}$")  # virtio-blk serials are at most 20 bytes
SECTOR = 512
DISK_LAYOUT = "1"  # bump when the archive layout below changes


@dataclass(frozen=True)
class ExtraDisk:
    serial: str  # how the guest finds it: /sys/block/*/serial
    image: Path  # the archive (read-only, cached)

    @property
    def marker(self) -> str:
        return f"/etc/kmatrix/disks/{self.serial}"


def attachable(kernel: KernelArtifact) -> bool:
    """Whether the kernel drives a virtio-blk disk without loading a module."""
    return kernel.option("VIRTIO_BLK") == "y" and kernel.option("VIRTIO_PCI") == "y"


def copy_with_libs(binary: Path, root: Path, dest: str | None = None) -> None:
    """A host binary into the staging root (at its own path, or dest), with the shared
    libraries ldd finds for it at their host paths."""
    target = root / (dest or str(binary)).lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.is_symlink() or target.exists():
        target.unlink()
    shutil.copyfile(binary.resolve(), target)
    target.chmod(0o755)
    add_libs([binary], root)


def add_libs(binaries: Sequence[Path], root: Path) -> None:
    """The shared libraries (and loader) the given ELF files load, copied into root."""
    libs: set[Path] = set()
    for b in binaries:
        libs.update(_shared_libs(b))
    for lib in list(libs):
        # glibc loads libgcc_s at run time (pthread_cancel, unwinding): ldd cannot see it.
        gcc_s = lib.parent / "libgcc_s.so.1"
        if lib.name.startswith("libc.so") and gcc_s.is_file():
            libs.add(gcc_s)
    for lib in sorted(libs):
        t = root / str(lib).lstrip("/")
        if t.exists():
            continue
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(lib.resolve(), t)
        t.chmod(0o755)


def is_elf(path: Path) -> bool:
    with contextlib.suppress(OSError), path.open("rb") as f:
        return f.read(4) == b"\x7fELF"
    return False


def pack_disk(serial: str, key: str, stage: Callable[[Path], None]) -> ExtraDisk:
    """The disk whose content stage(root) writes into an empty staging directory, built
    once per (serial, key): key must change whenever that content can."""
    if not SERIAL_RE.match(serial):
        raise ValueError(f"bad disk serial {serial!r}")
    digest = digest_bytes(DISK_LAYOUT, serial, key)[:24]
    dest = cache_root() / "disks" / f"{serial}-{digest}.cpio"
    dest.parent.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        stage_dir = dest.parent / f".{dest.name}.stage-{tmp.name.rsplit('-', 1)[-1]}"
        shutil.rmtree(stage_dir, ignore_errors=True)
        stage_dir.mkdir()
        try:
            stage(stage_dir)
            marker = stage_dir / "etc/kmatrix/disks" / serial
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.write_text(f"{digest}\n")
            _pack(stage_dir, tmp)
        except (OSError, subprocess.SubprocessError) as e:
            raise ArtifactError(f"building the {serial} disk: {e}") from e
        finally:
            shutil.rmtree(stage_dir, ignore_errors=True)
        size = tmp.stat().st_size
        with tmp.open("ab") as f:
            f.truncate(-(-size // SECTOR) * SECTOR)

    return ExtraDisk(serial, ensure_file(dest, build))


def layered_initrd(base: Path, layers: Sequence[ExtraDisk]) -> Path:
    """base with the layers' archives appended (cached): for kernels that cannot read a disk."""
    if not layers:
        return base
    key = digest_bytes(stamped_digest(base), *(stamped_digest(d.image) for d in layers))[:24]
    dest = cache_root() / "images" / f"initramfs-layered-{key}.cpio"

    def build(tmp: Path) -> None:
        with tmp.open("wb") as out:
            for part in (base, *(d.image for d in layers)):
                with part.open("rb") as f:
                    shutil.copyfileobj(f, out)

    return ensure_file(dest, build)


def unpack_script(disk: ExtraDisk) -> str:
    """Guest shell that makes the disk's files present (once per boot); exit 97 if not."""
    return f"""
if [ ! -e {disk.marker} ]; then
    dev=
    for b in /sys/block/*; do
        s=
        [ -r "$b/serial" ] && read -r s <"$b/serial"
        [ "$s" = {disk.serial} ] && dev=/dev/${{b##*/}}
    done
    if [ -z "$dev" ]; then
        echo "kmatrix: no disk with serial {disk.serial}" >&2
        exit 97
    fi
    (cd / && cpio -idmu <"$dev") 2>/tmp/kmx-unpack.err
    if [ ! -e {disk.marker} ]; then
        echo "kmatrix: unpacking {disk.serial} from $dev failed: $(cat /tmp/kmx-unpack.err)" >&2
        exit 97
    fi
fi
"""
