"""`pkg:` kernels: an Arch Linux (or CachyOS, or any pacman distribution) kernel package file,
`*.pkg.tar.zst`, unpacked into the cache and never installed.

Such a package keeps everything under usr/lib/modules/<release>/: the image as `vmlinuz`,
`pkgbase` (the package's base name), and the modules, compressed (.ko.zst) and without
modules.dep, which pacman's hook makes at install time; depmod makes it here. The kernel's
.config is used when the package carries one (a headers package: build/.config; or
boot/config-<release>); a `config:` key in the matrix names one otherwise.
"""

from __future__ import annotations

import os
import posixpath
import tarfile
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import yaml

from kmatrix.config.kinds import ParsedSource
from kmatrix.config.specs import KernelSpec
from kmatrix.config.yamlnode import NodeReader
from kmatrix.errors import ArtifactError
from kmatrix.host.cache import cache_root, ensure_dir, stamped_digest
from kmatrix.host.tools import run_tool
from kmatrix.kernels.base import KernelFiles, check_members, one

# pacman's package formats: zstd since 2020, xz before; plain tar and gzip are allowed too.
SUFFIXES = (".pkg.tar.zst", ".pkg.tar.xz", ".pkg.tar.gz", ".pkg.tar")
MODULES = Path("usr/lib/modules")
UNPACK_TIMEOUT = 600.0


def _safe_members(tar: tarfile.TarFile) -> Iterator[tarfile.TarInfo]:
    """Directories, regular files and symlinks that stay inside the package, owned by us,
    without set-id bits. Anything else (absolute or `..` paths, links out, hard links,
    devices) is left out rather than failing the package: only the image, modules and
    config are needed. (Debian 12's Python 3.11.2 has no tarfile extraction filters.)"""
    for m in tar.getmembers():
        path = PurePosixPath(m.name)
        if path.is_absolute() or ".." in path.parts:
            continue
        if m.issym():
            target = posixpath.normpath(posixpath.join(str(path.parent), m.linkname))
            if m.linkname.startswith("/") or target == ".." or target.startswith("../"):
                continue
        elif not (m.isdir() or m.isfile()):
            continue
        m.mode &= 0o755
        m.uid, m.gid, m.uname, m.gname = os.getuid(), os.getgid(), "", ""
        yield m


def _extract(pkg: Path, dest: Path, origin: str) -> None:
    tar_path = pkg
    if pkg.name.endswith(".zst"):
        # Python 3.11 reads no zstd: the zstd tool (a host package) decompresses, tarfile
        # unpacks what it wrote.
        tar_path = dest.with_name(dest.name + ".tar")
        run_tool(
            ["zstd", "-q", "-d", "-f", "-o", str(tar_path), "--", str(pkg)],
            f"{origin}: decompressing {pkg.name}",
            timeout=UNPACK_TIMEOUT,
        )
    # The members were checked one by one (_safe_members); newer Pythons want that said.
    trusted = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
    try:
        with tarfile.open(tar_path) as tar:
            tar.extractall(dest, members=_safe_members(tar), **trusted)  # type: ignore[arg-type]
    except (tarfile.TarError, OSError, EOFError) as e:
        raise ArtifactError(f"{origin}: cannot unpack {pkg}: {e}") from None
    finally:
        if tar_path != pkg:
            tar_path.unlink(missing_ok=True)


def unpack_pkg(pkg: Path, origin: str) -> Path:
    """The package unpacked into the cache (once per content), with depmod's index made."""
    dest = cache_root() / "kernels" / f"pkg-{stamped_digest(pkg)[:20]}"

    def build(tmp: Path) -> None:
        _extract(pkg, tmp, origin)
        # Judged again by where each link really leads, not by its text.
        check_members(tmp, f"{origin}: package {pkg.name}")
        # depmod -b BASE looks in BASE/lib/modules: BASE is the package's usr/.
        for mdir in sorted((tmp / MODULES).glob("*/vmlinuz")):
            release = mdir.parent.name
            run_tool(
                ["depmod", "-b", str(tmp / "usr"), release], f"{origin}: depmod {release}", tmp
            )

    return ensure_dir(dest, build)


class PkgKind:
    name = "pkg"
    exclusive: tuple[str, ...] = ()

    def parse(self, r: NodeReader, node: yaml.Node, key: str) -> ParsedSource:
        raw = r.string(node, key)
        if not raw.endswith(SUFFIXES):
            raise r.err(node, key, f"{raw!r} is not a kernel package file ({', '.join(SUFFIXES)})")
        path = r.file(node, key)
        if not path.is_file():
            raise r.err(node, key, f"not a file: {path}")
        return ParsedSource(location=str(path), identity=path.name)

    def locate(self, spec: KernelSpec, origin: str) -> KernelFiles:
        root = unpack_pkg(Path(spec.location), origin)
        image = one(sorted((root / MODULES).glob("*/vmlinuz")), f"{MODULES}/*/vmlinuz", origin)
        release_dir = image.parent
        config_path = spec.config
        if config_path is None:
            candidates = (
                release_dir / "build" / ".config",
                root / "boot" / f"config-{release_dir.name}",
            )
            config_path = next((c for c in candidates if c.is_file()), None)
        modules = spec.modules if spec.modules is not None else release_dir
        return KernelFiles(
            image=image,
            config_path=config_path,
            modules_root=modules,
            root=root,
            root_name=f"package {Path(spec.location).name}",
        )
