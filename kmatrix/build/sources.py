"""Kernel sources: a directory, a git checkout (optionally at a ref), a release tarball, or a
Debian `linux-source-X.Y` package, each made into one plain source tree in the cache.

A source string is what a matrix `build.source` or `kmatrix patches check --source` says:

* a Debian package name (`linux-source-6.1`) or a `.deb` path: fetched with `apt-get
  download` (never installed), its `/usr/src/linux-source-*.tar.xz` unpacked once;
* a tarball path (`.tar`, `.tar.gz`, `.tgz`, `.tar.xz`, `.tar.bz2`, `.tar.zst`): unpacked once,
  its single top-level directory stripped;
* a directory: used in place (never written to); if it is a git checkout and a ref is given,
  `git archive REF` is unpacked once into the cache instead.

Every source has an identity string that changes whenever its content can have changed; the
build cache hashes it, so an unchanged source is never rebuilt.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from kmatrix.errors import ArtifactError
from kmatrix.host.cache import cache_root, digest_bytes, ensure_dir, stamped_digest
from kmatrix.host.debian import fetch_deb
from kmatrix.host.tools import run_tool

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar.zst")
DEB_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
UNPACK_TIMEOUT = 900.0
_MAKEFILE_VAR = re.compile(
    r"^(VERSION|PATCHLEVEL|SUBLEVEL|EXTRAVERSION)[ \t]*=[ \t]*(.*?)[ \t]*$", re.M
)


@dataclass(frozen=True)
class KernelSource:
    spec: str  # as the user wrote it
    kind: str  # "deb" | "tarball" | "dir" | "git"
    root: Path  # the unpacked tree (top-level Makefile inside)
    version: str  # from the top-level Makefile, e.g. "6.1.192"
    identity: str  # changes whenever the tree's content can have changed

    @property
    def label(self) -> str:
        return self.version or self.spec


def classify(spec: str) -> str:
    """The kind of a source string, without touching the disk beyond a stat."""
    if spec.endswith(".deb"):
        return "deb"
    if spec.endswith(TAR_SUFFIXES):
        return "tarball"
    p = Path(spec).expanduser()
    if "/" in spec or p.exists():
        return "git" if (p / ".git").exists() else "dir"
    if DEB_PACKAGE_RE.match(spec):
        return "deb"
    raise ArtifactError(
        f"source {spec!r} is neither a path (directory, tarball, .deb) nor a Debian package name"
    )


def _run(argv: list[str], what: str, cwd: Path | None = None) -> str:
    return run_tool(argv, what, cwd=cwd, timeout=UNPACK_TIMEOUT)


def makefile_version(root: Path) -> str:
    """'6.1.192' from the tree's top-level Makefile; '' if it is not a kernel tree."""
    try:
        head = (root / "Makefile").read_text(errors="replace")[:4096]
    except OSError:
        return ""
    v: dict[str, str] = {k: val for k, val in _MAKEFILE_VAR.findall(head)}
    if not v.get("VERSION"):
        return ""
    out = f"{v['VERSION']}.{v.get('PATCHLEVEL', '0')}"
    if v.get("SUBLEVEL", "0") not in ("", "0"):
        out += f".{v['SUBLEVEL']}"
    return out + v.get("EXTRAVERSION", "")


def _untar(archive: Path, dest: Path, what: str) -> None:
    """Unpacks archive into dest, stripping its single top-level directory if it has one."""
    stage = dest / ".unpack"
    stage.mkdir()
    _run(["tar", "-xf", str(archive), "-C", str(stage), "--no-same-owner"], what)
    entries = list(stage.iterdir())
    inner = entries[0] if len(entries) == 1 and entries[0].is_dir() else stage
    for child in list(inner.iterdir()):
        os.replace(child, dest / child.name)
    shutil.rmtree(stage)


def _check_tree(root: Path, spec: str) -> str:
    version = makefile_version(root)
    if not version or not (root / "scripts" / "kconfig").is_dir():
        raise ArtifactError(
            f"source {spec!r}: {root} is not a kernel source tree (no Makefile "
            "with VERSION, or no scripts/kconfig)"
        )
    return version


def _deb_source(spec: str, fetch: bool) -> KernelSource | None:
    deb = Path(spec).expanduser().resolve() if spec.endswith(".deb") else None
    if deb is None:
        if not fetch:
            found = sorted((cache_root() / "debs").glob(f"{spec}_*.deb"))
            if not found:
                return None
            deb = found[-1]
        else:
            deb = fetch_deb(spec, f"source {spec!r}")
    elif not deb.is_file():
        raise ArtifactError(f"source {spec!r}: no such file {deb}")
    digest = stamped_digest(deb)
    dest = cache_root() / "sources" / f"deb-{digest[:20]}"
    if not fetch and not _unpacked(dest):
        return None

    def unpack(tmp: Path) -> None:
        pkg = tmp / ".pkg"
        _run(["dpkg-deb", "-x", str(deb), str(pkg)], f"source {spec!r}: unpacking {deb.name}")
        tarballs = sorted((pkg / "usr" / "src").glob("linux-source-*.tar*"))
        if len(tarballs) != 1:
            names = ", ".join(t.name for t in tarballs) or "none"
            raise ArtifactError(
                f"source {spec!r}: expected one usr/src/linux-source-*.tar* in {deb.name}, "
                f"found {names}"
            )
        _untar(tarballs[0], tmp, f"source {spec!r}")
        shutil.rmtree(pkg)

    root = ensure_dir(dest, unpack)
    return KernelSource(spec, "deb", root, _check_tree(root, spec), f"deb:{digest}")


def _unpacked(dest: Path) -> bool:
    return (dest / ".kmatrix-complete").is_file()


def _tarball_source(spec: str, fetch: bool) -> KernelSource | None:
    tar = Path(spec).expanduser().resolve()
    if not tar.is_file():
        raise ArtifactError(f"source {spec!r}: no such file {tar}")
    digest = stamped_digest(tar)
    dest = cache_root() / "sources" / f"tar-{digest[:20]}"
    if not fetch and not _unpacked(dest):
        return None
    root = ensure_dir(dest, lambda tmp: _untar(tar, tmp, f"source {spec!r}"))
    return KernelSource(spec, "tarball", root, _check_tree(root, spec), f"tar:{digest}")


def tree_fingerprint(root: Path) -> str:
    """A digest of every file's path, size and mtime: cheap, and changes with any edit."""
    h: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in sorted(filenames):
            p = os.path.join(dirpath, name)
            try:
                st = os.lstat(p)
            except OSError:
                continue
            h.append(f"{os.path.relpath(p, root)}\0{st.st_size}\0{st.st_mtime_ns}")
    return digest_bytes("\n".join(h))


def _git(root: Path, *args: str) -> str:
    return _run(["git", "-C", str(root), *args], f"source {root}: git {args[0]}")


def _dir_source(spec: str, ref: str | None, fetch: bool) -> KernelSource | None:
    root = Path(spec).expanduser().resolve()
    if not root.is_dir():
        raise ArtifactError(f"source {spec!r}: no such directory {root}")
    is_git = (root / ".git").exists()
    if ref is not None:
        if not is_git:
            raise ArtifactError(f"source {spec!r}: a ref ({ref!r}) needs a git checkout")
        commit = _git(root, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()
        dest = cache_root() / "sources" / f"git-{commit[:20]}"
        if not fetch and not _unpacked(dest):
            return None

        def export(tmp: Path) -> None:
            archive = tmp / ".export.tar"
            _git(root, "archive", "--format=tar", "-o", str(archive), commit)
            _untar(archive, tmp, f"source {spec!r}")
            archive.unlink()

        tree = ensure_dir(dest, export)
        return KernelSource(f"{spec}@{ref}", "git", tree, _check_tree(tree, spec), f"git:{commit}")
    version = _check_tree(root, spec)
    if (root / ".config").exists() or (root / "include" / "config").exists():
        # Out-of-tree builds (O=) refuse a configured source tree.
        raise ArtifactError(
            f"source {spec!r}: {root} has been configured or built in place; run "
            "`make mrproper` there or give a clean tree"
        )
    if is_git:
        head = _git(root, "rev-parse", "HEAD").strip()
        dirty = _git(root, "status", "--porcelain", "--untracked-files=all")
        # Uncommitted or untracked edits change the identity through the tree's fingerprint.
        extra = tree_fingerprint(root) if dirty.strip() else "clean"
        return KernelSource(spec, "git", root, version, f"git:{head}:{extra}")
    return KernelSource(spec, "dir", root, version, f"dir:{root}:{tree_fingerprint(root)}")


def resolve_source(spec: str, ref: str | None = None) -> KernelSource:
    """Makes sure the source tree exists (fetching and unpacking once) and describes it."""
    src = _resolve(spec, ref, fetch=True)
    assert src is not None
    return src


def cached_source(spec: str, ref: str | None = None) -> KernelSource | None:
    """The source if it is already unpacked in the cache (or a directory); never fetches."""
    return _resolve(spec, ref, fetch=False)


def _resolve(spec: str, ref: str | None, fetch: bool) -> KernelSource | None:
    kind = classify(spec)
    if ref is not None and kind not in ("git", "dir"):
        raise ArtifactError(f"source {spec!r}: a ref is only meaningful for a git checkout")
    if kind == "deb":
        return _deb_source(spec, fetch)
    if kind == "tarball":
        return _tarball_source(spec, fetch)
    return _dir_source(spec, ref, fetch)
