"""Out-of-tree kernel modules built on the host against a matrix kernel, cached by inputs.

Where the kernel's build files come from depends on its source kind:

* ``deb:`` kernels: Debian's ``linux-headers-<release>`` package and the ``linux-headers-*``
  and ``linux-kbuild-*`` packages it depends on (read from the package's own Depends), each
  fetched with ``apt-get download`` (or found beside a ``.deb`` file given in the matrix) and
  unpacked with ``dpkg-deb -x`` into one tree, never installed. The packages' absolute
  symlinks and the flavour Makefile's ``include /usr/src/...`` point at the installed
  location; they are redirected into the unpacked tree.
* ``build:`` kernels: the cached build's source and ``O=`` object tree.
* ``tree:`` kernels: the build tree itself.

The module's ``.ko`` (debug info stripped: it is copied into guests) is cached under a key
hashing the module's sources, the kernel's build files and the host toolchain.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from kmatrix.config.specs import KernelSpec
from kmatrix.errors import ArtifactError, InfraError
from kmatrix.host.cache import cache_root, digest_bytes, ensure_dir, ensure_file, stamped_digest
from kmatrix.host.debian import fetch_deb, run_apt_tool
from kmatrix.host.tools import run_tool
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.resources import data_dir

MAKE_TIMEOUT = 600.0
# Packages a linux-headers package depends on that carry the build files (the rest, e.g.
# gcc-12 or linux-compiler-gcc-12-x86, are host tools).
_BUILD_FILE_PACKAGES = re.compile(r"^linux-(?:headers|kbuild)-")
_DEP_NAME = re.compile(r"^\s*([a-z0-9][a-z0-9+.-]+)")


@dataclass(frozen=True)
class KernelBuildFiles:
    """What `make -C DIR [O=OBJ] M=... modules` needs, and what identifies it."""

    make_dir: Path
    obj_dir: Path | None
    identity: str  # digest of the inputs (packages, or the build's key / tree's stamp)


def _toolchain() -> str:
    parts = []
    for argv in (["gcc", "--version"], ["make", "--version"], ["ld", "--version"]):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
            parts.append(p.stdout.split("\n", 1)[0])
        except (OSError, subprocess.TimeoutExpired):
            parts.append(f"{argv[0]}: missing")
    return "\n".join(parts)


def _deb_depends(deb: Path, origin: str) -> list[str]:
    """Package names a .deb depends on (the first of each set of alternatives)."""
    out = run_tool(["dpkg-deb", "-f", str(deb), "Depends"], f"{origin}: reading {deb.name}")
    names = []
    for clause in out.split(","):
        m = _DEP_NAME.match(clause.split("|", 1)[0])
        if m:
            names.append(m.group(1))
    return names


def _find_deb(package: str, beside: Path | None, origin: str) -> Path:
    if beside is not None:
        local = sorted(beside.glob(f"{package}_*.deb"))
        if local:
            return local[-1]
    return fetch_deb(package, origin)


def headers_debs(release: str, origin: str, beside: Path | None = None) -> list[Path]:
    """linux-headers-<release> and the header/kbuild packages it depends on, transitively."""
    todo, seen, debs = [f"linux-headers-{release}"], set(), []
    while todo:
        name = todo.pop(0)
        if name in seen:
            continue
        seen.add(name)
        try:
            deb = _find_deb(name, beside, origin)
        except ArtifactError as e:
            raise ArtifactError(
                f"{origin}: no kernel headers to build a module against ({e})"
            ) from None
        debs.append(deb)
        todo += [d for d in _deb_depends(deb, origin) if _BUILD_FILE_PACKAGES.match(d)]
    return debs


def _redirect(tmp: Path, final: Path) -> None:
    """Points the unpacked packages' absolute paths (/usr/src/..., /usr/lib/...) into the
    tree: symlinks become relative ones inside it (so they survive the rename from tmp to
    final); the flavour Makefile's `include /usr/src/...` names the path under final."""
    for path in list(tmp.rglob("*")):
        if path.is_symlink():
            target = os.readlink(path)
            if target.startswith("/"):
                path.unlink()
                path.symlink_to(os.path.relpath(tmp / target.lstrip("/"), path.parent))
    for makefile in tmp.glob("usr/src/*/Makefile"):
        text = makefile.read_text()
        fixed = re.sub(
            r"^(include\s+)/(\S+)", lambda m: f"{m.group(1)}{final / m.group(2)}", text, flags=re.M
        )
        if fixed != text:
            makefile.write_text(fixed)


def deb_build_files(kernel: KernelArtifact, spec: KernelSpec) -> KernelBuildFiles:
    origin = f"{spec.origin} (kernel {spec.name})"
    beside = Path(spec.location).parent if spec.location.endswith(".deb") else None
    debs = headers_debs(kernel.release, origin, beside)
    key = digest_bytes(*sorted(stamped_digest(d) for d in debs))[:20]
    dest = cache_root() / "headers" / f"{kernel.release}-{key}"

    def unpack(tmp: Path) -> None:
        for deb in debs:
            run_apt_tool(["dpkg-deb", "-x", str(deb), str(tmp)], tmp, f"{origin}: unpacking")
        _redirect(tmp, dest)

    ensure_dir(dest, unpack)
    make_dir = dest / "usr" / "src" / f"linux-headers-{kernel.release}"
    if not (make_dir / "Makefile").is_file():
        raise ArtifactError(f"{origin}: linux-headers-{kernel.release} has no {make_dir.name}")
    return KernelBuildFiles(make_dir=make_dir, obj_dir=None, identity=key)


def build_files(kernel: KernelArtifact, spec: KernelSpec) -> KernelBuildFiles:
    """The kernel's build files for external modules; ArtifactError when it has none."""
    origin = f"{spec.origin} (kernel {spec.name})"
    if kernel.config and kernel.config.get("CONFIG_MODULES") != "y":
        raise ArtifactError(f"{origin}: the kernel has no module support (CONFIG_MODULES)")
    if spec.source == "deb":
        return deb_build_files(kernel, spec)
    if kernel.build is not None:
        d = kernel.build.directory
        return KernelBuildFiles(make_dir=d / "src", obj_dir=d / "out", identity=kernel.build.key)
    if spec.source == "tree":
        tree = Path(spec.location)
        if not (tree / "Module.symvers").is_file():
            raise ArtifactError(f"{origin}: {tree} has no Module.symvers (were modules built?)")
        return KernelBuildFiles(
            make_dir=tree, obj_dir=None, identity=stamped_digest(tree / "Module.symvers")
        )
    raise ArtifactError(
        f"{origin}: cannot build modules for a {spec.source!r} kernel (deb, build and tree "
        "kernels have their build files)"
    )


def build_module(kernel: KernelArtifact, spec: KernelSpec, source: Path) -> Path:
    """Builds the module in directory `source` (a Kbuild file and its C sources) against the
    kernel; returns the cached .ko. ArtifactError if the kernel has no build files or the
    module does not compile (with the compiler's output)."""
    files = build_files(kernel, spec)
    srcs = sorted(p for p in source.iterdir() if p.is_file())
    name = _module_name(source)
    key = digest_bytes(
        files.identity,
        kernel.release,
        _toolchain(),
        *(part for p in srcs for part in (p.name, p.read_bytes())),
    )[:24]
    dest = cache_root() / "modules" / key / f"{name}.ko"
    dest.parent.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        work = dest.parent / f".build-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        try:
            argv = ["make", "-C", str(files.make_dir)]
            if files.obj_dir is not None:
                argv.append(f"O={files.obj_dir}")
            # No BTF for the module: it is not needed to load it, and generating it would make
            # pahole (dwarves) a host requirement for kernels that ship a vmlinux for it.
            argv += [f"M={work}", "CONFIG_DEBUG_INFO_BTF_MODULES=", "modules"]
            _make(argv, kernel, spec)
            ko = work / f"{name}.ko"
            if not ko.is_file():
                raise ArtifactError(f"building {name}.ko for {kernel.release} produced no .ko")
            # Symbols stay (kallsyms names the module's functions in reports).
            run_tool(["strip", "--strip-debug", "-o", str(tmp), str(ko)], f"stripping {ko.name}")
        finally:
            shutil.rmtree(work, ignore_errors=True)

    return ensure_file(dest, build)


def _module_name(source: Path) -> str:
    kbuild = source / "Kbuild"
    if not kbuild.is_file():
        raise ArtifactError(f"{source}: no Kbuild file")
    m = re.search(r"^obj-m\s*[:+]?=\s*(\S+)\.o\b", kbuild.read_text(), re.M)
    if m is None:
        raise ArtifactError(f"{kbuild}: no `obj-m := NAME.o` line")
    return m.group(1)


def _make(argv: list[str], kernel: KernelArtifact, spec: KernelSpec) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KBUILD_", "ARCH"))}
    try:
        p = subprocess.run(
            argv, capture_output=True, text=True, timeout=MAKE_TIMEOUT, check=False, env=env
        )
    except FileNotFoundError:
        raise InfraError("make is not installed (run `kmatrix setup`)") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"`{' '.join(argv)}` took more than {MAKE_TIMEOUT:.0f}s") from None
    if p.returncode != 0:
        out = (p.stderr or p.stdout).strip()
        missing = re.search(
            r"(\S+): (?:No such file or directory|not found|command not found)", out
        )
        if missing and "/" not in missing.group(1):
            raise InfraError(
                f"building a module for {spec.name} ({kernel.release}): the host lacks "
                f"{missing.group(1)} (run `kmatrix setup`):\n{out[-2000:]}"
            )
        raise ArtifactError(
            f"building a module for {spec.name} ({kernel.release}) failed:\n{out[-3000:]}"
        )


def crash_module(kernel: KernelArtifact, spec: KernelSpec) -> Path:
    """kmx_crash.ko (images/crash) built for the kernel: it provokes kernel reports on demand
    (`echo WORD > /proc/kmx_crash`; `cat /proc/kmx_crash` lists what this kernel can do)."""
    return build_module(kernel, spec, data_dir("images") / "crash")
