"""Guest image: the initramfs each cell boots, built from images/ and cached by content hash.

Contents: busybox-static with its applet links, the init, agent and mount-disk scripts from
images/, and the kernel modules the cell needs with their dependencies, decompressed on the
host so busybox modprobe can load them. An uncompressed cpio: under TCG, decompressing an
initramfs costs more than reading it.

The suite tools are not in it: the host tools the recipe names (copied with the shared
libraries they need), its small C programs (compiled static on the host, cached by source
and compiler) and its data files make the `tools` data disk (kmatrix.guest.datadisk),
attached only to cells whose selected tests need it and mounted by the agent on first use;
the image then holds symlinks to them at their usual paths.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from kmatrix.config.specs import Cell
from kmatrix.config.yamlnode import NodeReader, compose_file
from kmatrix.errors import ArtifactError, InfraError
from kmatrix.guest.datadisk import DataContent, DiskPlan, register_disk, stage_links
from kmatrix.host.cache import cache_root, digest_bytes, ensure_file, file_stamp, stamped_digest
from kmatrix.host.paths import FileRefused, PathEscape, check_regular, confine, read_regular
from kmatrix.host.tools import run_tool
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.kernels.bzimage import KernelImageError, decompress_file
from kmatrix.resources import data_dir

RECIPE_VERSION = "3"  # bump when the layout code below changes
TOOLS_DISK = "tools"  # the data disk with the recipe's tools, programs and data


@dataclass(frozen=True)
class Recipe:
    busybox: Path
    files: tuple[tuple[Path, str], ...]  # (source in images/, destination in the guest)
    tools: tuple[Path, ...]  # host binaries copied with their libraries
    data: tuple[Path, ...] = ()  # host data files the tools read, copied to the same path
    programs: tuple[tuple[Path, str], ...] = ()  # (C source in images/, guest path)
    # Programs the agent itself runs on every cell (e.g. kmx-kmsg): in the initramfs.
    base_programs: tuple[tuple[Path, str], ...] = ()

    def base_digest(self) -> str:
        """What the initramfs takes from the recipe: busybox, the files, the base programs."""
        parts: list[bytes | str] = [RECIPE_VERSION, stamped_digest(self.busybox)]
        for src, dst in self.files:
            parts += [dst, src.read_bytes()]
        for src, dst in self.base_programs:
            parts += [dst, program_key(src)]
        return digest_bytes(*parts)

    def tools_digest(self) -> str:
        """What the tools disk takes from it: tools, programs, data."""
        parts: list[bytes | str] = [RECIPE_VERSION]
        for src, dst in self.programs:
            parts += [dst, program_key(src)]
        for t in (*self.tools, *self.data):
            parts += [str(t), stamped_digest(t)]
        return digest_bytes(*parts)

    def digest(self) -> str:
        return digest_bytes(self.base_digest(), self.tools_digest())


_RECIPE_KEYS = ("busybox", "files", "base_programs", "tools", "data", "programs")


def load_recipe(images_dir: Path | None = None) -> Recipe:
    images_dir = images_dir or data_dir("images")
    path = images_dir / "recipe.yaml"
    ctx = NodeReader(path)
    node = compose_file(path)
    top = ctx.mapping(node, "", _RECIPE_KEYS)  # a misspelt section would be silently empty
    data = ctx.value(node)
    busybox = Path(data.get("busybox", "/bin/busybox"))
    if not busybox.is_file():
        raise InfraError(f"{path}: busybox {busybox} not found (install busybox-static)")
    files = tuple((images_dir / src, dst) for src, dst in data.get("files", {}).items())
    tools = []
    for t in data.get("tools", []) or []:
        found = shutil.which(t)
        if found is None:
            raise InfraError(f"{path}: guest tool {t!r} is not installed on the host")
        tools.append(Path(found))
    extra = tuple(Path(d) for d in data.get("data", []) or [])
    for d in extra:
        if not d.is_absolute() or not d.is_file():
            raise InfraError(f"{path}: guest data file {d} is not an absolute path to a host file")
    programs = {
        k: _programs(ctx, images_dir, top[k][1], k) if k in top else ()
        for k in ("programs", "base_programs")
    }
    return Recipe(
        busybox=busybox,
        files=files,
        tools=tuple(tools),
        data=extra,
        programs=programs["programs"],
        base_programs=programs["base_programs"],
    )


def _programs(
    ctx: NodeReader, images_dir: Path, node: yaml.Node, section: str = "programs"
) -> tuple[tuple[Path, str], ...]:
    """programs (or base_programs): {guest path: C source relative to images/}."""
    if isinstance(node, yaml.ScalarNode) and ctx.value(node) is None:
        return ()  # an empty section
    if not isinstance(node, yaml.MappingNode):
        raise ctx.err(node, section, "expected a mapping {guest path: C source}")
    out: list[tuple[Path, str]] = []
    seen: set[str] = set()
    for knode, vnode in node.value:
        dst = ctx.value(knode) if isinstance(knode, yaml.ScalarNode) else None
        key = f"{section}.{dst}"
        if not isinstance(dst, str) or not dst.startswith("/") or dst.endswith("/"):
            raise ctx.err(knode, key, "the guest path must be absolute, e.g. /usr/bin/kmx-vfio")
        if ".." in dst.split("/") or os.path.normpath(dst) != dst:
            raise ctx.err(knode, key, "the guest path must be normalised (no .., // or .)")
        if dst in seen:
            raise ctx.err(knode, key, "duplicate guest path")
        seen.add(dst)
        rel = ctx.string(vnode, key)
        src = (images_dir / rel).resolve()
        if not src.is_file():
            raise ctx.err(vnode, key, f"C source {rel!r} not found in {images_dir}")
        if src.suffix != ".c":
            raise ctx.err(vnode, key, f"{rel!r} is not a C source (.c)")
        out.append((src, dst))
    return tuple(out)


# --- guest programs -------------------------------------------------------------------------

# Static: the guest has busybox and no libc. -Werror: a warning in a test tool is a bug.
# musl, not glibc: a static program is tens of KB instead of ~700 KB, and the initramfs is
# copied into every guest and each exec of it page-faulted in (under TCG, ~0.1 s per MB).
PROGRAM_CC = "musl-gcc"
PROGRAM_CFLAGS = ("-static", "-Os", "-s", "-Wall", "-Werror")
# musl's headers leave out the kernel's UAPI ones (linux/vfio.h): those alone, from
# linux-libc-dev, through a directory of links to them, so no glibc header can slip in.
UAPI_HEADERS = {
    "linux": "/usr/include/linux",
    "asm": "/usr/include/x86_64-linux-gnu/asm",
    "asm-generic": "/usr/include/asm-generic",
}


@functools.cache
def _compiler_version() -> str:
    return run_tool([PROGRAM_CC, "--version"], "guest programs")


def program_key(src: Path) -> str:
    """What the compiled binary depends on: the source, the compiler and the flags."""
    return digest_bytes(src.read_bytes(), PROGRAM_CC, _compiler_version(), *PROGRAM_CFLAGS)


def _uapi_include() -> Path:
    """A directory holding only links to the kernel's UAPI headers (see UAPI_HEADERS)."""
    d = cache_root() / "programs" / "uapi-include"
    d.mkdir(parents=True, exist_ok=True)
    for name, target in UAPI_HEADERS.items():
        link = d / name
        if not link.is_symlink():
            with contextlib.suppress(FileExistsError):  # another process made it
                link.symlink_to(target)
    return d


def compile_program(src: Path) -> Path:
    """The static binary built from src, compiled once per source and compiler."""
    dest = cache_root() / "programs" / f"{src.stem}-{program_key(src)[:24]}"
    dest.parent.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        what = f"compiling guest program {src}"
        argv = [PROGRAM_CC, *PROGRAM_CFLAGS, "-isystem", str(_uapi_include())]
        run_tool([*argv, "-o", str(tmp), str(src)], what, timeout=300)

    return ensure_file(dest, build)


# --- modules ----------------------------------------------------------------------------------

_MOD_SUFFIX = re.compile(r"\.ko(\.xz|\.zst|\.gz)?$")


def module_name(path: str) -> str:
    return _MOD_SUFFIX.sub("", os.path.basename(path)).replace("-", "_")


@dataclass(frozen=True)
class ModuleIndex:
    """modules.dep and modules.builtin of one kernel (modules.softdep and modules.alias, read
    when asked, for what busybox modprobe does not follow: see closure)."""

    deps: dict[str, tuple[str, ...]]  # relative path -> dependency paths
    by_name: dict[str, str]  # module name -> relative path
    builtin: frozenset[str]
    modules_dir: Path | None = None

    @classmethod
    def load(cls, modules_dir: Path | None) -> ModuleIndex:
        if modules_dir is None or not (modules_dir / "modules.dep").is_file():
            return cls({}, {}, frozenset())
        # Parsed once per process and kernel (a cell's prepare and its image both need it).
        stamps = []
        for name in ("modules.dep", "modules.builtin"):
            with contextlib.suppress(OSError):
                stamps.append(file_stamp((modules_dir / name).stat()))
        key = (str(modules_dir), *stamps)
        if key not in _INDEXES:
            _INDEXES[key] = cls._parse(modules_dir)
        return _INDEXES[key]

    @classmethod
    def _parse(cls, modules_dir: Path) -> ModuleIndex:
        """modules.dep's entries must be relative paths inside the module tree (depmod writes
        them so); any other is an ArtifactError naming the file, line and entry."""
        dep_file = _module_file(modules_dir, "modules.dep")
        deps: dict[str, tuple[str, ...]] = {}
        for n, line in enumerate(_read_index(dep_file).splitlines(), 1):
            if ":" in line:
                mod, rest = line.split(":", 1)
                for entry in (mod, *rest.split()):
                    _check_entry(dep_file, n, entry)
                deps[mod] = tuple(rest.split())
        builtin_file = _module_file(modules_dir, "modules.builtin")
        builtin = frozenset(
            module_name(line)
            for line in (_read_index(builtin_file).splitlines() if builtin_file.is_file() else [])
        )
        return cls(deps, {module_name(p): p for p in deps}, builtin, modules_dir)

    def state(self, name: str) -> str:
        """'builtin', 'module' or 'absent'."""
        n = name.replace("-", "_")
        if n in self.builtin:
            return "builtin"
        return "module" if n in self.by_name else "absent"

    def closure(self, names: Iterable[str], soft: bool = False) -> list[str]:
        """Relative module paths to load, dependencies first; built-ins and absents skipped.
        soft: also each module's `softdep ... pre:` modules, before it. The kernel asks for
        those itself (e.g. libcrc32c's crc32c, where the crypto is a module), through a
        modprobe that, in the guest, has no modules.alias to find them by."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(path: str) -> None:
            if path in seen:
                return
            seen.add(path)
            if soft:
                for pre in self.soft_pre(module_name(path)):
                    visit(pre)
            for dep in self.deps.get(path, ()):
                visit(dep)
            order.append(path)

        for n in names:
            p = self.by_name.get(n.replace("-", "_"))
            if p is not None:
                visit(p)
        return order

    def soft_pre(self, name: str) -> list[str]:
        """The module paths of name's `softdep pre:` entries (an alias resolves to the module
        that provides it, the CPU-independent *_generic one when there are several; one a
        built-in module provides needs none)."""
        if self.modules_dir is None:
            return []
        out = []
        for target in _softdeps(self.modules_dir).get(name, ()):
            if self.state(target) == "builtin" or target in _builtin_aliases(self.modules_dir):
                continue  # e.g. crc32c built in: nothing to load (crc32c-intel may not probe)
            path = self.by_name.get(target.replace("-", "_"))
            if path is None:
                providers = [
                    self.by_name[m]
                    for m in _alias_providers(self.modules_dir, target)
                    if m in self.by_name
                ]
                generic = [p for p in providers if module_name(p).endswith("_generic")]
                path = next(iter(generic or providers), None)
            if path is not None:
                out.append(path)
        return out


_INDEXES: dict[tuple[str, ...], ModuleIndex] = {}
MAX_INDEX_BYTES = 64 << 20  # Debian's generic 6.12 modules.dep is ~0.5 MiB
MAX_MODULE_BYTES = 256 << 20  # decompressed; the largest Debian module is ~30 MiB


def _module_file(modules_dir: Path, rel: str) -> Path:
    """A file of the kernel's module tree, every link resolved and kept inside the tree."""
    try:
        return confine(modules_dir, rel, f"module file {rel}")
    except PathEscape as e:
        raise ArtifactError(f"{modules_dir}: {e} (a link that escapes the module tree)") from None


def _read_index(path: Path) -> str:
    try:
        return read_regular(path, MAX_INDEX_BYTES).decode(errors="replace")
    except FileRefused as e:
        raise ArtifactError(str(e)) from None


def _check_entry(dep_file: Path, line: int, entry: str) -> None:
    parts = entry.split("/")
    if not entry or entry.startswith("/") or ".." in parts or "\x00" in entry:
        raise ArtifactError(
            f"{dep_file}:{line}: {entry!r} is not a path inside the module tree (absolute or "
            "with ..): refusing to read it"
        )


@functools.cache
def _softdeps(modules_dir: Path) -> dict[str, tuple[str, ...]]:
    """module name -> the names its modules.softdep line loads before it."""
    out: dict[str, tuple[str, ...]] = {}
    with contextlib.suppress(OSError):
        for line in (modules_dir / "modules.softdep").read_text().splitlines():
            words = line.split()
            if len(words) > 3 and words[0] == "softdep" and words[2] == "pre:":
                pre = words[3 : words.index("post:")] if "post:" in words else words[3:]
                out[words[1].replace("-", "_")] = tuple(pre)
    return out


@functools.cache
def _builtin_aliases(modules_dir: Path) -> frozenset[str]:
    """The aliases of built-in modules (modules.builtin.modinfo, NUL-separated mod.key=value)."""
    try:
        raw = (modules_dir / "modules.builtin.modinfo").read_bytes()
    except OSError:
        return frozenset()
    out = set()
    for entry in raw.decode(errors="replace").split("\0"):
        _, sep, alias = entry.partition(".alias=")
        if sep:
            out.add(alias)
    return frozenset(out)


@functools.cache
def _alias_providers(modules_dir: Path, alias: str) -> tuple[str, ...]:
    """The modules modules.alias names for an exact alias (no wildcards: softdeps name
    plain aliases such as crc32c)."""
    prefix = f"alias {alias} "
    found: list[str] = []
    with contextlib.suppress(OSError):
        for line in (modules_dir / "modules.alias").read_text().splitlines():
            if line.startswith(prefix):
                found.append(line[len(prefix) :].strip().replace("-", "_"))
    return tuple(found)


def channel_for(kernel: KernelArtifact, index: ModuleIndex) -> str:
    """virtio when the kernel can drive a virtio console (built in or as a module we ship)."""
    if not kernel.config_known:
        return "serial"
    for name, opt in (("virtio_pci", "VIRTIO_PCI"), ("virtio_console", "VIRTIO_CONSOLE")):
        value = kernel.option(opt)
        if value == "y":
            continue
        if value == "m" and index.state(name) == "module":
            continue
        return "serial"
    return "virtio"


def base_modules(channel: str) -> tuple[str, ...]:
    return ("virtio_pci", "virtio_console") if channel == "virtio" else ()


# --- building ---------------------------------------------------------------------------------


def _shared_libs(binary: Path) -> list[Path]:
    """The shared objects a host binary loads, from ldd, plus the dynamic loader."""
    try:
        out = subprocess.run(
            ["ldd", str(binary)], capture_output=True, text=True, timeout=30, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InfraError(f"ldd {binary}: {e}") from None
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+) \(0x", line)
        if m:
            libs.append(Path(m.group(1)))
    return libs


_COMPRESSION = {".xz": "xz", ".zst": "zstd", ".gz": "gzip"}


def _decompress_module(src: Path, dst: Path) -> None:
    """A module, decompressed (busybox modprobe loads plain .ko), at most MAX_MODULE_BYTES."""
    compression = _COMPRESSION.get(src.suffix)
    if compression is None:
        check_regular(src, MAX_MODULE_BYTES)
        shutil.copyfile(src, dst)
        return
    with dst.open("wb") as out:
        try:
            decompress_file(src, compression, out, MAX_MODULE_BYTES)
        except KernelImageError as e:
            raise ArtifactError(str(e)) from None


def _stage(
    root: Path,
    recipe: Recipe,
    kernel: KernelArtifact,
    index: ModuleIndex,
    modules: Sequence[str],
    extra_modules: Sequence[str] = (),
) -> None:
    """The base image: busybox, the recipe's files, the modules loaded at boot (modules) and
    those only shipped for later (extra_modules, e.g. what a data disk's mount loads)."""
    for d in (
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "usr/lib/kmatrix",
        "etc/kmatrix",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "root",
        "lib",
        "lib64",
        "mnt",
    ):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copyfile(recipe.busybox, root / "bin/busybox")
    (root / "bin/busybox").chmod(0o755)
    applets = subprocess.run(
        [str(recipe.busybox), "--list-full"], capture_output=True, text=True, check=True, timeout=30
    ).stdout.split()
    for a in applets:
        link = root / a
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to("/bin/busybox")
    for src, dst in recipe.files:
        target = root / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, target)
        target.chmod(0o755)
    for src, dst in recipe.base_programs:
        target = root / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(compile_program(src), target)
        target.chmod(0o755)
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (root / "etc/group").write_text("root:x:0:\n")
    if kernel.modules_dir is not None:
        mdir = root / "lib/modules" / kernel.release
        mdir.mkdir(parents=True, exist_ok=True)
        load = index.closure(modules)
        ship = list(dict.fromkeys([*load, *index.closure(extra_modules, soft=True)]))
        dep_lines = []
        for rel in ship:
            plain = _MOD_SUFFIX.sub(".ko", rel)
            staged = confine(mdir, plain, f"module {plain} in the image")
            staged.parent.mkdir(parents=True, exist_ok=True)
            _decompress_module(_module_file(kernel.modules_dir, rel), staged)
            deps = " ".join(_MOD_SUFFIX.sub(".ko", d) for d in index.deps.get(rel, ()))
            dep_lines.append(f"{plain}: {deps}".rstrip() + "\n")
        (mdir / "modules.dep").write_text("".join(dep_lines))
        builtin = _module_file(kernel.modules_dir, "modules.builtin")
        if builtin.is_file():
            (mdir / "modules.builtin").write_text(_read_index(builtin))
        (root / "etc/kmatrix/modules").write_text(
            "".join(_MOD_SUFFIX.sub(".ko", rel) + "\n" for rel in load)
        )


def stage_tools(root: Path, recipe: Recipe) -> None:
    """The recipe's tools (with their shared libraries), programs and data, at their guest
    paths under root: the tools data disk's tree."""
    for src, dst in recipe.programs:
        target = root / dst.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(compile_program(src), target)
        target.chmod(0o755)
    for tool in recipe.tools:
        for f in [tool, *_shared_libs(tool)]:
            target = root / str(f).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                shutil.copyfile(f.resolve(), target)
                target.chmod(0o755)
    for extra in recipe.data:
        target = root / str(extra).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(extra, target)


def tools_content(recipe: Recipe) -> DataContent:
    """The tools data disk of a recipe."""
    return DataContent(TOOLS_DISK, recipe.tools_digest(), lambda root: stage_tools(root, recipe))


def tools_disk(kernel: KernelArtifact, cell: Cell) -> DataContent:
    """The tools disk provider: the same content for every kernel and cell."""
    return tools_content(load_recipe())


register_disk(TOOLS_DISK, tools_disk)


def disk_modules(plan: DiskPlan) -> tuple[str, ...]:
    return plan.modules if plan.attached else ()


def _pack(root: Path, dest: Path) -> None:
    """newc cpio with sorted names and zeroed times, so equal inputs give equal bytes."""
    names = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    for n in names:
        os.utime(root / n, (0, 0), follow_symlinks=False)
    with dest.open("wb") as out:
        p = subprocess.run(
            ["cpio", "--quiet", "-o", "-H", "newc", "-0", "--reproducible", "-R", "0:0"],
            input="\0".join(names).encode() + b"\0",
            stdout=out,
            stderr=subprocess.PIPE,
            cwd=root,
            timeout=300,
            check=False,
        )
    if p.returncode != 0:
        raise InfraError(f"cpio failed building {dest}: {p.stderr.decode(errors='replace')}")


def image_key(
    recipe: Recipe,
    kernel: KernelArtifact,
    index: ModuleIndex,
    wanted: Sequence[str],
    extra: Sequence[str] = (),
    disks: Sequence[DiskPlan] = (),
) -> str:
    """Everything that goes into the image: the recipe's base part, the kernel's release, the
    modules loaded at boot (wanted) and shipped for a data disk's mount (extra), each with
    its content and dependencies, modules.builtin (the guest's modprobe reads it) and the
    data disks' descriptions (or trees)."""
    key_parts: list[bytes | str] = [recipe.base_digest(), kernel.release, *wanted]
    for rel in dict.fromkeys([*index.closure(wanted), *index.closure(extra, soft=True)]):
        assert kernel.modules_dir is not None
        key_parts += [rel, stamped_digest(_module_file(kernel.modules_dir, rel)),
                      " ".join(index.deps.get(rel, ()))]  # fmt: skip
    if kernel.modules_dir is not None:
        builtin = _module_file(kernel.modules_dir, "modules.builtin")
        if builtin.is_file():
            key_parts += ["modules.builtin", stamped_digest(builtin)]
    key_parts += [d.key() for d in disks]
    return digest_bytes(*key_parts)[:24]


def build_image(
    kernel: KernelArtifact,
    modules: Sequence[str],
    recipe: Recipe | None = None,
    disks: Sequence[DiskPlan] = (),
) -> Path:
    """The cell's initramfs, from the cache when its inputs are unchanged. disks: the data
    disks the cell gets (their links, descriptions and mount modules; or their trees)."""
    recipe = recipe or load_recipe()
    index = ModuleIndex.load(kernel.modules_dir)
    wanted = list(dict.fromkeys(modules))
    extra = [m for d in disks for m in disk_modules(d)]
    key = image_key(recipe, kernel, index, wanted, extra, disks)
    dest = cache_root() / "images" / f"initramfs-{key}.cpio"
    dest.parent.mkdir(parents=True, exist_ok=True)

    def build(tmp: Path) -> None:
        with tempfile.TemporaryDirectory(prefix="kmx-img-", dir=dest.parent) as staging:
            root = Path(staging)
            try:
                _stage(root, recipe, kernel, index, wanted, extra)
                for d in disks:
                    stage_links(root, d)
            except (OSError, subprocess.SubprocessError, PathEscape) as e:
                raise ArtifactError(f"building the guest image for {kernel.name}: {e}") from e
            _pack(root, tmp)

    return ensure_file(dest, build)
