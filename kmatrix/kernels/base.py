"""The interface every kernel source kind implements, and what it hands back.

A kind reads its entry of a matrix (KindParser, kmatrix.config.kinds) and, at run time,
makes its kernel's files exist: `locate` fetches, unpacks or builds, and returns where the
image, config and modules are. Reading the image header, checking the release, picking
the modules directory and the direct-boot vmlinux are common to all kinds
(kmatrix.kernels.artifact).
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from kmatrix.config.kinds import KindParser
from kmatrix.config.specs import KernelSpec
from kmatrix.errors import ArtifactError
from kmatrix.host.paths import PathEscape, confine, file_kind

if TYPE_CHECKING:
    from kmatrix.build.builder import BuiltKernel

DEB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")


@dataclass(frozen=True)
class KernelFiles:
    image: Path  # the kernel image as the kind provides it (bzImage / vmlinuz)
    config_path: Path | None = None  # the kernel's .config, when the kind has one
    modules_root: Path | None = None  # lib/modules or lib/modules/<release>
    build: BuiltKernel | None = None  # for kernels built from source
    # The tree the kind unpacked or built the kernel into (a package's contents, a build's
    # output), and what to call it in errors: image, config and modules found there must
    # stay inside it, whatever links they are. None: paths the matrix named itself.
    root: Path | None = None
    root_name: str = ""


class SourceKind(KindParser, Protocol):
    def locate(self, spec: KernelSpec, origin: str) -> KernelFiles:
        """Makes the kernel's files exist (download, unpack, build) and says where they are;
        ArtifactError (or BuildFailure) naming origin when it cannot."""
        ...


def one(paths: list[Path], what: str, origin: str) -> Path:
    if len(paths) != 1:
        names = ", ".join(p.name for p in paths) or "none"
        raise ArtifactError(f"{origin}: expected one {what}, found {names}")
    return paths[0]


def check_members(root: Path, what: str) -> None:
    """Every member of an unpacked package is a plain file, a directory, or a link that stays
    inside the package: an absolute or escaping link (or a device, FIFO, socket) would have
    depmod, the image builder or the kernel reader open a host file instead."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in (*dirnames, *filenames):
            path = Path(dirpath) / name
            member = path.relative_to(root)
            mode = path.lstat().st_mode
            if stat.S_ISLNK(mode):
                try:
                    confine(root, member, str(member))
                except PathEscape as e:
                    raise ArtifactError(
                        f"{what}: member {member} is a link to {os.readlink(path)!r}, which "
                        f"leads to {e.target}, outside the package: refused"
                    ) from None
            elif not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise ArtifactError(f"{what}: member {member} is {file_kind(mode)}: refused")
