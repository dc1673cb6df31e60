"""Matrix files: load, validate (every error names file, line and key), expand into cells.

A matrix is kernels x CPU models x device profiles, filtered by include/exclude rules.
Validation walks the YAML node tree rather than the loaded data so that each error can
point at the line of the offending key; nothing here touches QEMU.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from kmatrix.errors import MatrixError
from kmatrix.hostpci import parse_address

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
DEB_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
ACCELS = ("auto", "kvm", "tcg")
IOMMUS = ("none", "intel")
MAX_GPU_STUBS = 8
MAX_NUMA_NODES = 7  # one PCIe expander bridge per node, 32 bus numbers apart below 256
# QEMU's x86 CPU models default to 40 physical address bits (1 TiB of guest physical space);
# a 64-bit window must sit above RAM and below that, naturally aligned for its largest BAR.
MAX_MMIO64 = 256 << 30
SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]?)i?B?$", re.IGNORECASE)
MACHINES = ("q35", "pc")
CONFIG_TARGETS = ("tinyconfig", "defconfig", "allnoconfig")  # make targets a build may start from
EXPECT_OUTCOMES = ("pass", "no-boot", "build-fail", "fail")
MAKE_VAR_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
INLINE_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+=\S.*|# CONFIG_[A-Za-z0-9_]+ is not set)$")
TARBALL_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.xz", ".txz", ".tar.bz2", ".tar.zst", ".deb")


@dataclass(frozen=True)
class BuildSpec:
    """A kernel built from source: source + patch series + base config + fragments + make vars."""

    source: str  # a Debian package name (linux-source-6.1) or an absolute path
    ref: str | None = None  # a git ref, when source is a git checkout
    patches: Path | None = None  # a series: directory, series file, mbox or one patch
    skip: tuple[str, ...] = ()  # globs of patch names left out of this build
    config: str = "tinyconfig"  # a make target of CONFIG_TARGETS, or an absolute .config path
    # Absolute fragment paths, "tree:REL" (a file in the source tree) or inline "CONFIG_X=v".
    fragments: tuple[str, ...] = ()
    make_vars: tuple[tuple[str, str], ...] = ()  # e.g. (("KCFLAGS", "-march=x86-64-v3"),)


@dataclass(frozen=True)
class KernelSpec:
    """Where a kernel comes from. Exactly one of deb, image, tree, build is set."""

    name: str
    source: str  # "deb" | "image" | "tree" | "build"
    location: str  # package name, or absolute path
    modules: Path | None = None
    config: Path | None = None
    release: str | None = None  # declared; checked against the image header
    kernel_args: tuple[str, ...] = ()
    origin: str = ""  # "file:line" for error messages
    build: BuildSpec | None = None  # set when source == "build"


@dataclass(frozen=True)
class CpuSpec:
    name: str
    model: str  # QEMU -cpu value
    flags: tuple[str, ...] = ()  # /proc/cpuinfo flags that define this model
    absent: tuple[str, ...] = ()  # flags this model must not show
    smp: int | None = None


@dataclass(frozen=True)
class QemuDevice:
    driver: str
    id: str | None = None
    props: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class QemuObject:
    qom_type: str
    id: str
    props: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class PciExpect:
    vendor: str  # 4 lower-case hex digits
    device: str
    driver: str | None = None  # expected bound driver, None: any or none


@dataclass(frozen=True)
class ScratchDisk:
    """A blank disk backed by a temporary host file made for each boot (driver suite)."""

    id: str
    size: int  # MiB
    driver: str = "virtio-blk-pci"
    props: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MemoryHotplug:
    """Room for memory hot-add: QEMU's -m SIZE,slots=N,maxmem=M."""

    slots: int
    maxmem: int  # MiB, above the cell's memory
    origin: str = ""  # "file:line" of maxmem, for the error when a cell has more memory


@dataclass(frozen=True)
class GpuStub:
    """One stand-in GPU: an ivshmem-plain device whose 64-bit prefetchable BAR 2 is backed by
    host memory, behind its own PCIe root port."""

    id: str  # QEMU device id (gpu0, gpu1, ...)
    bar: int  # bytes, a power of two
    root_port: str  # QEMU id of the root port it sits behind
    numa_node: int | None = None  # guest NUMA node of its expander bridge; None: no NUMA


@dataclass(frozen=True)
class GpuStubs:
    stubs: tuple[GpuStub, ...]
    vfio: bool = True  # the driver suite binds them to vfio-pci


@dataclass(frozen=True)
class HostDevice:
    """A host PCI device passed through with vfio-pci; checked on the host before boot."""

    address: str  # canonical DDDD:BB:SS.F
    id: str  # QEMU device id


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    machine: str = "q35"
    description: str = ""
    machine_props: tuple[tuple[str, str], ...] = ()
    devices: tuple[QemuDevice, ...] = ()
    objects: tuple[QemuObject, ...] = ()
    globals: tuple[str, ...] = ()
    kernel_args: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    expect_pci: tuple[PciExpect, ...] = ()
    memory: int | None = None
    origin: str = ""
    scratch_disk: ScratchDisk | None = None
    hotplug: tuple[str, ...] = ()  # device ids the driver suite may unplug and re-plug
    memory_hotplug: MemoryHotplug | None = None
    iommu: str = "none"  # "intel": an emulated VT-d (intel-iommu) with interrupt remapping
    mmio64: int | None = None  # bytes of the 64-bit PCI MMIO window (q35 pci-hole64-size)
    numa_nodes: int = 0  # guest NUMA nodes (0: none); memory and vCPUs are split evenly
    gpu_stubs: GpuStubs | None = None
    host_devices: tuple[HostDevice, ...] = ()


@dataclass(frozen=True)
class Expectation:
    """A declared outcome for the cells (and tests) its globs match; the last match wins."""

    outcome: str  # one of EXPECT_OUTCOMES
    reason: str = ""
    kernel: str = "*"
    cpu: str = "*"
    device: str = "*"
    test: str = "*"  # glob on the test function's name
    origin: str = ""  # "file:line"

    def matches(self, kernel: str, cpu: str, device: str) -> bool:
        return (
            fnmatch.fnmatchcase(kernel, self.kernel)
            and fnmatch.fnmatchcase(cpu, self.cpu)
            and fnmatch.fnmatchcase(device, self.device)
        )


@dataclass(frozen=True)
class Cell:
    """One kernel on one CPU model with one device profile: one VM, one boot."""

    kernel: KernelSpec
    cpu: CpuSpec
    device: DeviceProfile
    memory: int
    smp: int
    boot_timeout: float
    test_timeout: float
    accel: str
    kernel_args: tuple[str, ...] = ()
    expect: tuple[Expectation, ...] = ()  # the matrix's expect rules that match this cell

    @property
    def id(self) -> str:
        return f"{self.kernel.name}/{self.cpu.name}/{self.device.name}"

    def expected(self, test: str) -> Expectation | None:
        """The declared outcome of test in this cell; None when it is expected to pass."""
        found = None
        for e in self.expect:
            if fnmatch.fnmatchcase(test, e.test):
                found = e
        return None if found is None or found.outcome == "pass" else found

    @property
    def slug(self) -> str:
        """The id as one path component (log and run directory names)."""
        return self.id.replace("/", "__")


@dataclass(frozen=True)
class Rule:
    kernel: str = "*"
    cpu: str = "*"
    device: str = "*"

    def matches(self, kernel: str, cpu: str, device: str) -> bool:
        return (
            fnmatch.fnmatchcase(kernel, self.kernel)
            and fnmatch.fnmatchcase(cpu, self.cpu)
            and fnmatch.fnmatchcase(device, self.device)
        )


@dataclass(frozen=True)
class Defaults:
    memory: int = 1024
    smp: int = 2
    boot_timeout: float = 120.0
    test_timeout: float = 60.0
    accel: str = "auto"
    kernel_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class Matrix:
    path: Path
    name: str
    defaults: Defaults
    kernels: tuple[KernelSpec, ...]
    cpus: tuple[CpuSpec, ...]
    devices: tuple[DeviceProfile, ...]
    include: tuple[Rule, ...] = ()
    exclude: tuple[Rule, ...] = ()
    description: str = ""
    cells: tuple[Cell, ...] = field(default=(), compare=False)
    expect: tuple[Expectation, ...] = ()

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        known = ", ".join(c.id for c in self.cells)
        raise MatrixError(self.path, None, None, f"no cell {cell_id!r}; cells are: {known}")


# --- node helpers -------------------------------------------------------------------------

_constructor = yaml.constructor.SafeConstructor()


class _Ctx:
    """Carries the file path so every check can name it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, node: yaml.Node | None, key: str | None, msg: str) -> MatrixError:
        line = node.start_mark.line + 1 if node is not None else None
        return MatrixError(self.path, line, key, msg)

    def mapping(
        self,
        node: yaml.Node,
        key: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Checks a mapping's keys; returns key -> (key node, value node)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, f"expected a mapping, got {_kind(node)}")
        allowed_set = set(allowed)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.err(knode, key, "keys must be plain strings")
            k = str(knode.value)
            full = f"{key}.{k}" if key else k
            if k in out:
                raise self.err(knode, full, "duplicate key")
            if k not in allowed_set:
                valid = ", ".join(sorted(allowed_set))
                raise self.err(knode, full, f"unknown key (valid keys: {valid})")
            out[k] = (knode, vnode)
        for r in required:
            if r not in out:
                raise self.err(node, f"{key}.{r}" if key else r, "required key is missing")
        return out

    def value(self, node: yaml.Node) -> Any:
        return _constructor.construct_object(node, deep=True)

    def string(self, node: yaml.Node, key: str, pattern: re.Pattern[str] | None = None) -> str:
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(v, str) or not v:
            raise self.err(node, key, f"expected a non-empty string, got {_describe(self, node)}")
        if pattern is not None and not pattern.match(v):
            raise self.err(node, key, f"{v!r} does not match {pattern.pattern}")
        return v

    def choice(self, node: yaml.Node, key: str, choices: Iterable[str]) -> str:
        v = self.string(node, key)
        options = tuple(choices)
        if v not in options:
            raise self.err(node, key, f"{v!r} is not one of {', '.join(options)}")
        return v

    def number(self, node: yaml.Node, key: str, lo: float, hi: float, integer: bool) -> float:
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        ok_types: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, ok_types):
            want = "an integer" if integer else "a number"
            raise self.err(node, key, f"expected {want}, got {_describe(self, node)}")
        assert isinstance(v, int | float)
        if not lo <= v <= hi:
            raise self.err(node, key, f"{v} is out of range [{lo:g}, {hi:g}]")
        return float(v)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(v, bool):
            raise self.err(node, key, f"expected true or false, got {_describe(self, node)}")
        return v

    def strings(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        """A list of strings; a single string is accepted as a one-item list."""
        if isinstance(node, yaml.ScalarNode):
            return (self.string(node, key),)
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, f"expected a list of strings, got {_kind(node)}")
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value))

    def args(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        """Kernel arguments: a string (split on whitespace) or a list."""
        return tuple(a for s in self.strings(node, key) for a in s.split())

    def props(self, node: yaml.Node, key: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, f"expected a mapping, got {_kind(node)}")
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for knode, vnode in node.value:
            k = str(knode.value)
            if k in seen:
                raise self.err(knode, f"{key}.{k}", "duplicate key")
            seen.add(k)
            v = self.value(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if v is None or isinstance(v, list | dict):
                raise self.err(vnode, f"{key}.{k}", "expected a scalar value")
            if isinstance(v, bool):
                v = "on" if v else "off"
            out.append((k, str(v)))
        return tuple(out)

    def seq(self, node: yaml.Node, key: str, nonempty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, f"expected a list, got {_kind(node)}")
        if nonempty and not node.value:
            raise self.err(node, key, "must not be empty")
        return list(node.value)

    def file(self, node: yaml.Node, key: str, must_exist: bool = True) -> Path:
        raw = self.string(node, key)
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = (self.path.parent / p).resolve()
        if must_exist and not p.exists():
            raise self.err(node, key, f"file not found: {p}")
        return p


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a scalar"


def _describe(ctx: _Ctx, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        return _kind(node)
    v = ctx.value(node)
    return f"{type(v).__name__} {v!r}"


def _compose(path: Path) -> yaml.Node:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MatrixError(path, None, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MatrixError(path, None, None, f"cannot read: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise MatrixError(path, line, None, f"YAML syntax error: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise MatrixError(path, None, None, f"YAML error: {e}") from None
    if node is None:
        raise MatrixError(path, None, None, "file is empty")
    return node


# --- sections -------------------------------------------------------------------------------


def _unique(ctx: _Ctx, seen: dict[str, int], name: str, node: yaml.Node, key: str) -> None:
    if name in seen:
        raise ctx.err(node, key, f"duplicate name {name!r} (first defined on line {seen[name]})")
    seen[name] = node.start_mark.line + 1


def _kernel(ctx: _Ctx, node: yaml.Node, key: str) -> KernelSpec:
    m = ctx.mapping(
        node,
        key,
        ("name", "deb", "image", "tree", "build", "modules", "config", "release", "kernel_args"),
        ("name",),
    )
    name = ctx.string(m["name"][1], f"{key}.name", NAME_RE)
    sources = [s for s in ("deb", "image", "tree", "build") if s in m]
    if len(sources) != 1:
        raise ctx.err(node, key, f"kernel {name!r} needs exactly one of deb, image, tree, build")
    source = sources[0]
    vnode = m[source][1]
    skey = f"{key}.{source}"
    build = None
    if source == "build":
        for k in ("modules", "config"):
            if k in m:
                raise ctx.err(m[k][0], f"{key}.{k}", "comes from the build; not allowed with build")
        build = _build(ctx, vnode, skey)
        location = build.source
    elif source == "deb":
        raw = ctx.string(vnode, skey)
        if raw.endswith(".deb") or "/" in raw:
            location = str(ctx.file(vnode, skey))
        elif DEB_NAME_RE.match(raw):
            location = raw
        else:
            raise ctx.err(vnode, skey, f"{raw!r} is neither a .deb file nor a package name")
    elif source == "image":
        p = ctx.file(vnode, skey)
        if not p.is_file():
            raise ctx.err(vnode, skey, f"not a file: {p}")
        location = str(p)
    else:
        p = ctx.file(vnode, skey)
        if not (p / "arch/x86/boot/bzImage").is_file():
            raise ctx.err(vnode, skey, f"no arch/x86/boot/bzImage in build tree {p}")
        location = str(p)
    modules = ctx.file(m["modules"][1], f"{key}.modules") if "modules" in m else None
    config = ctx.file(m["config"][1], f"{key}.config") if "config" in m else None
    release = ctx.string(m["release"][1], f"{key}.release") if "release" in m else None
    kargs = ctx.args(m["kernel_args"][1], f"{key}.kernel_args") if "kernel_args" in m else ()
    return KernelSpec(
        name=name,
        source=source,
        location=location,
        modules=modules,
        config=config,
        release=release,
        kernel_args=kargs,
        origin=f"{ctx.path}:{node.start_mark.line + 1}",
        build=build,
    )


def _build(ctx: _Ctx, node: yaml.Node, key: str) -> BuildSpec:
    m = ctx.mapping(
        node,
        key,
        ("source", "ref", "patches", "skip", "config", "fragments", "make_vars"),
        ("source",),
    )
    snode = m["source"][1]
    raw = ctx.string(snode, f"{key}.source")
    if "/" in raw or raw.endswith(TARBALL_SUFFIXES):
        src_path = ctx.file(snode, f"{key}.source")
        source = str(src_path)
    elif DEB_NAME_RE.match(raw):
        src_path, source = None, raw
    else:
        raise ctx.err(
            snode,
            f"{key}.source",
            f"{raw!r} is neither a path (directory, git checkout, tarball, .deb) "
            "nor a Debian package name such as linux-source-6.1",
        )
    ref = None
    if "ref" in m:
        ref = ctx.string(m["ref"][1], f"{key}.ref")
        if src_path is None or not (src_path / ".git").exists():
            raise ctx.err(m["ref"][0], f"{key}.ref", "a ref needs a git checkout as the source")
    patches = None
    skip: tuple[str, ...] = ()
    if "patches" in m:
        from kmatrix.patches import SeriesError, load_series

        pnode = m["patches"][1]
        patches = ctx.file(pnode, f"{key}.patches")
        try:
            series = load_series(patches)
        except SeriesError as e:
            raise ctx.err(pnode, f"{key}.patches", str(e)) from None
        if "skip" in m:
            skip = ctx.strings(m["skip"][1], f"{key}.skip")
            names = [p.name for p in series.patches]
            for pat in skip:
                if not any(fnmatch.fnmatchcase(n, pat) for n in names):
                    raise ctx.err(
                        m["skip"][1],
                        f"{key}.skip",
                        f"{pat!r} matches no patch of {patches} (patches: {', '.join(names)})",
                    )
    elif "skip" in m:
        raise ctx.err(m["skip"][0], f"{key}.skip", "skip needs patches")
    config = "tinyconfig"
    if "config" in m:
        cnode = m["config"][1]
        c = ctx.string(cnode, f"{key}.config")
        if c in CONFIG_TARGETS:
            config = c
        elif "/" in c or c.endswith(".config") or c.startswith("config-"):
            config = str(ctx.file(cnode, f"{key}.config"))
        else:
            raise ctx.err(
                cnode,
                f"{key}.config",
                f"{c!r} is neither one of {', '.join(CONFIG_TARGETS)} nor a config file path",
            )
    fragments: list[str] = []
    if "fragments" in m:
        fnodes = m["fragments"][1]
        items = (
            [fnodes] if isinstance(fnodes, yaml.ScalarNode) else ctx.seq(fnodes, f"{key}.fragments")
        )
        for i, fnode in enumerate(items):
            fkey = f"{key}.fragments[{i}]"
            f = ctx.string(fnode, fkey)
            if f.startswith(("CONFIG_", "# CONFIG_")):
                if not INLINE_OPTION_RE.match(f):
                    raise ctx.err(fnode, fkey, f"{f!r} is not CONFIG_NAME=value")
                fragments.append(f)
            elif f.startswith("tree:"):
                rel = f.removeprefix("tree:")
                if not rel or rel.startswith("/") or ".." in Path(rel).parts:
                    raise ctx.err(fnode, fkey, f"{f!r}: tree: takes a path inside the source")
                fragments.append(f)
            else:
                fragments.append(str(ctx.file(fnode, fkey)))
    make_vars = ctx.props(m["make_vars"][1], f"{key}.make_vars") if "make_vars" in m else ()
    for k, _ in make_vars:
        if not MAKE_VAR_RE.match(k):
            raise ctx.err(m["make_vars"][1], f"{key}.make_vars.{k}", "not a make variable name")
        if k in ("O", "ARCH", "SRCARCH"):
            raise ctx.err(
                m["make_vars"][1], f"{key}.make_vars.{k}", "set by kmatrix (x86_64, out of tree)"
            )
    return BuildSpec(
        source=source,
        ref=ref,
        patches=patches,
        skip=skip,
        config=config,
        fragments=tuple(fragments),
        make_vars=make_vars,
    )


def _cpu(ctx: _Ctx, node: yaml.Node, key: str) -> CpuSpec:
    if isinstance(node, yaml.ScalarNode):
        name = ctx.string(node, key, NAME_RE)
        return CpuSpec(name=name, model=name)
    m = ctx.mapping(node, key, ("name", "model", "flags", "absent", "smp"), ("name",))
    name = ctx.string(m["name"][1], f"{key}.name", NAME_RE)
    model = ctx.string(m["model"][1], f"{key}.model") if "model" in m else name
    flags = ctx.strings(m["flags"][1], f"{key}.flags") if "flags" in m else ()
    absent = ctx.strings(m["absent"][1], f"{key}.absent") if "absent" in m else ()
    smp = int(ctx.number(m["smp"][1], f"{key}.smp", 1, 64, True)) if "smp" in m else None
    both = set(flags) & set(absent)
    if both:
        raise ctx.err(node, key, f"flags both required and absent: {', '.join(sorted(both))}")
    return CpuSpec(name=name, model=model, flags=flags, absent=absent, smp=smp)


_HEX4 = re.compile(r"^[0-9a-f]{4}$")


def _hex4(ctx: _Ctx, node: yaml.Node, key: str) -> str:
    v = ctx.value(node) if isinstance(node, yaml.ScalarNode) else None
    # YAML reads 0x1af4 as an int; accept both forms.
    s = f"{v:04x}" if isinstance(v, int) and not isinstance(v, bool) else str(v).lower()
    s = s.removeprefix("0x")
    if not _HEX4.match(s):
        raise ctx.err(node, key, f"expected a 4-digit hex PCI id, got {v!r}")
    return s


def _profile(ctx: _Ctx, node: yaml.Node, where: str) -> DeviceProfile:
    key = where
    pre = f"{where}." if where else ""
    m = ctx.mapping(
        node,
        key,
        (
            "name",
            "description",
            "machine",
            "machine_props",
            "devices",
            "objects",
            "globals",
            "kernel_args",
            "modules",
            "expect_pci",
            "memory",
            "scratch_disk",
            "hotplug",
            "memory_hotplug",
            "iommu",
            "mmio64",
            "numa_nodes",
            "gpu_stubs",
            "host_devices",
        ),
        ("name",),
    )
    name = ctx.string(m["name"][1], f"{pre}name", NAME_RE)
    devices: list[QemuDevice] = []
    ids: dict[str, int] = {}
    for i, dnode in enumerate(ctx.seq(m["devices"][1], f"{pre}devices") if "devices" in m else []):
        dkey = f"{pre}devices[{i}]"
        dm = ctx.mapping(dnode, dkey, ("driver", "id", "props"), ("driver",))
        did = ctx.string(dm["id"][1], f"{dkey}.id", NAME_RE) if "id" in dm else None
        if did is not None:
            _unique(ctx, ids, did, dm["id"][1], f"{dkey}.id")
        devices.append(
            QemuDevice(
                driver=ctx.string(dm["driver"][1], f"{dkey}.driver", NAME_RE),
                id=did,
                props=ctx.props(dm["props"][1], f"{dkey}.props") if "props" in dm else (),
            )
        )
    objects: list[QemuObject] = []
    for i, onode in enumerate(ctx.seq(m["objects"][1], f"{pre}objects") if "objects" in m else []):
        okey = f"{pre}objects[{i}]"
        om = ctx.mapping(onode, okey, ("type", "id", "props"), ("type", "id"))
        oid = ctx.string(om["id"][1], f"{okey}.id", NAME_RE)
        _unique(ctx, ids, oid, om["id"][1], f"{okey}.id")
        objects.append(
            QemuObject(
                qom_type=ctx.string(om["type"][1], f"{okey}.type", NAME_RE),
                id=oid,
                props=ctx.props(om["props"][1], f"{okey}.props") if "props" in om else (),
            )
        )
    expect: list[PciExpect] = []
    for i, enode in enumerate(
        ctx.seq(m["expect_pci"][1], f"{pre}expect_pci") if "expect_pci" in m else []
    ):
        ekey = f"{pre}expect_pci[{i}]"
        em = ctx.mapping(enode, ekey, ("vendor", "device", "driver"), ("vendor", "device"))
        expect.append(
            PciExpect(
                vendor=_hex4(ctx, em["vendor"][1], f"{ekey}.vendor"),
                device=_hex4(ctx, em["device"][1], f"{ekey}.device"),
                driver=ctx.string(em["driver"][1], f"{ekey}.driver") if "driver" in em else None,
            )
        )
    profile = DeviceProfile(
        name=name,
        description=ctx.string(m["description"][1], f"{pre}description")
        if "description" in m
        else "",
        machine=ctx.choice(m["machine"][1], f"{pre}machine", MACHINES) if "machine" in m else "q35",
        machine_props=ctx.props(m["machine_props"][1], f"{pre}machine_props")
        if "machine_props" in m
        else (),
        devices=tuple(devices),
        objects=tuple(objects),
        globals=ctx.strings(m["globals"][1], f"{pre}globals") if "globals" in m else (),
        kernel_args=ctx.args(m["kernel_args"][1], f"{pre}kernel_args")
        if "kernel_args" in m
        else (),
        modules=ctx.strings(m["modules"][1], f"{pre}modules") if "modules" in m else (),
        expect_pci=tuple(expect),
        memory=int(ctx.number(m["memory"][1], f"{pre}memory", 64, 1 << 20, True))
        if "memory" in m
        else None,
        origin=f"{ctx.path}:{node.start_mark.line + 1}",
        scratch_disk=_scratch_disk(ctx, m["scratch_disk"][1], f"{pre}scratch_disk", ids)
        if "scratch_disk" in m
        else None,
        hotplug=_hotplug(ctx, m["hotplug"][1], f"{pre}hotplug", devices) if "hotplug" in m else (),
        memory_hotplug=_memory_hotplug(ctx, m["memory_hotplug"][1], f"{pre}memory_hotplug")
        if "memory_hotplug" in m
        else None,
    )
    return _pcie_topology(ctx, m, pre, profile, ids)


def _size(ctx: _Ctx, node: yaml.Node, key: str, lo: int, hi: int) -> int:
    """A byte size: an integer, or a number with a binary suffix (64G, 512M, 1T)."""
    v = ctx.value(node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    else:
        mt = SIZE_RE.match(str(v)) if isinstance(v, str) else None
        if mt is None:
            raise ctx.err(
                node, key, f"expected a size such as 1G or 512M, got {_describe(ctx, node)}"
            )
        n = int(mt.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[mt.group(2).upper()]
    if not lo <= n <= hi:
        raise ctx.err(node, key, f"{fmt_size(n)} is out of range [{fmt_size(lo)}, {fmt_size(hi)}]")
    return n


def fmt_size(n: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def _pcie_topology(
    ctx: _Ctx,
    m: dict[str, tuple[yaml.Node, yaml.Node]],
    pre: str,
    profile: DeviceProfile,
    ids: dict[str, int],
) -> DeviceProfile:
    """Adds what iommu, mmio64, numa_nodes, gpu_stubs and host_devices ask for to the profile's
    own devices, so the QEMU command line, the hot-plug test and the reports see plain devices."""
    stubs_node = m["gpu_stubs"][1] if "gpu_stubs" in m else None
    hosts_node = m["host_devices"][1] if "host_devices" in m else None
    wants_pcie = stubs_node is not None or hosts_node is not None or "numa_nodes" in m
    if wants_pcie and profile.machine != "q35":
        first = next(k for k in ("gpu_stubs", "host_devices", "numa_nodes") if k in m)
        raise ctx.err(m[first][0], f"{pre}{first}", "needs machine: q35 (PCIe root ports)")
    numa = 0
    if "numa_nodes" in m:
        numa = int(ctx.number(m["numa_nodes"][1], f"{pre}numa_nodes", 2, MAX_NUMA_NODES, True))
        if profile.memory_hotplug is not None:
            raise ctx.err(
                m["numa_nodes"][0],
                f"{pre}numa_nodes",
                "cannot be combined with memory_hotplug (hot-added DIMMs need a node each)",
            )

    stubs: GpuStubs | None = None
    bar_node: yaml.Node | None = stubs_node
    vfio_wanted = False
    if stubs_node is not None:
        skey = f"{pre}gpu_stubs"
        sm = ctx.mapping(stubs_node, skey, ("count", "bar", "vfio"))
        count = (
            int(ctx.number(sm["count"][1], f"{skey}.count", 1, MAX_GPU_STUBS, True))
            if "count" in sm
            else 1
        )
        bar = (
            _size(ctx, sm["bar"][1], f"{skey}.bar", 1 << 20, MAX_MMIO64) if "bar" in sm else 1 << 30
        )
        if bar & (bar - 1):
            # PCI BARs are powers of two; ivshmem would round up and the guest see another size.
            raise ctx.err(sm["bar"][1], f"{skey}.bar", f"{fmt_size(bar)} is not a power of two")
        vfio = ctx.boolean(sm["vfio"][1], f"{skey}.vfio") if "vfio" in sm else True
        if "bar" in sm:
            bar_node = sm["bar"][1]
        vfio_wanted = vfio
        placed = []
        for i in range(count):
            sid = f"gpu{i}"
            if sid in ids:
                raise ctx.err(stubs_node, skey, f"the stub id {sid!r} is already a device id")
            placed.append(
                GpuStub(
                    id=sid, bar=bar, root_port=f"kmx-gpurp{i}", numa_node=i % numa if numa else None
                )
            )
        stubs = GpuStubs(stubs=tuple(placed), vfio=vfio)

    hosts: list[HostDevice] = []
    if hosts_node is not None:
        hkey = f"{pre}host_devices"
        for i, hnode in enumerate(ctx.seq(hosts_node, hkey, nonempty=True)):
            ikey = f"{hkey}[{i}]"
            hm = ctx.mapping(hnode, ikey, ("host",), ("host",))
            hnode_value = hm["host"][1]
            # The text as written: YAML 1.1 would read an unquoted 01:00.0 as a base-60 number.
            raw = hnode_value.value if isinstance(hnode_value, yaml.ScalarNode) else None
            try:
                addr = parse_address(raw)
            except ValueError as e:
                raise ctx.err(hm["host"][1], f"{ikey}.host", str(e)) from None
            if any(h.address == addr for h in hosts):
                raise ctx.err(hm["host"][1], f"{ikey}.host", f"{addr} is listed twice")
            hosts.append(HostDevice(address=addr, id=f"host{i}"))
        vfio_wanted = True

    iommu = "none"
    if "iommu" in m:
        iommu = ctx.choice(m["iommu"][1], f"{pre}iommu", IOMMUS)
    elif vfio_wanted:
        iommu = "intel"  # VFIO needs an IOMMU in the guest
    if iommu != "none" and profile.machine != "q35":
        raise ctx.err(m["iommu"][1], f"{pre}iommu", "intel-iommu needs machine: q35")
    if vfio_wanted and iommu == "none":
        what = "gpu_stubs.vfio" if stubs is not None and stubs.vfio else "host_devices"
        raise ctx.err(
            m["iommu"][1], f"{pre}iommu", f"{what} needs an IOMMU in the guest (iommu: intel)"
        )

    total = sum(s.bar for s in stubs.stubs) if stubs else 0
    mmio64: int | None = None
    if "mmio64" in m:
        mnode = m["mmio64"][1]
        mmio64 = _size(ctx, mnode, f"{pre}mmio64", 1 << 30, MAX_MMIO64)
        if stubs is not None and total > mmio64:
            # Powers of two sorted largest first pack without gaps: the sum is what they need.
            n = len(stubs.stubs)
            raise ctx.err(
                bar_node,
                f"{pre}gpu_stubs.bar",
                f"BAR 2 of {'each of the ' + str(n) + ' GPU stubs' if n > 1 else 'the GPU stub'} "
                f"({fmt_size(stubs.stubs[0].bar)}, 64-bit prefetchable; {fmt_size(total)} in all) "
                f"cannot fit the {fmt_size(mmio64)} 64-bit MMIO window (mmio64, line "
                f"{mnode.start_mark.line + 1}); raise mmio64 or lower gpu_stubs.bar or count",
            )
    elif stubs is not None:
        # Sized to fit: the next power of two above what the stubs need, at least QEMU's 32 GiB.
        mmio64 = max(32 << 30, 1 << (total - 1).bit_length())
        if mmio64 > MAX_MMIO64:
            raise ctx.err(
                stubs_node,
                f"{pre}gpu_stubs",
                f"{len(stubs.stubs)} BARs of {fmt_size(stubs.stubs[0].bar)} need a "
                f"{fmt_size(mmio64)} 64-bit MMIO window; at most {fmt_size(MAX_MMIO64)} fits "
                "the guest's 40-bit physical address space",
            )

    devices = list(profile.devices)
    objects = list(profile.objects)
    machine_props = list(profile.machine_props)
    kernel_args = list(profile.kernel_args)
    modules = list(profile.modules)
    globals_ = list(profile.globals)
    if iommu == "intel":
        # Interrupt remapping needs the split irqchip; caching-mode lets VFIO map guest DMA.
        if not any(k == "kernel-irqchip" for k, _ in machine_props):
            machine_props.append(("kernel-irqchip", "split"))
        devices.insert(
            0, QemuDevice("intel-iommu", "kmx-iommu", (("intremap", "on"), ("caching-mode", "on")))
        )
        if not any(a.startswith("intel_iommu=") for a in kernel_args):
            kernel_args.append("intel_iommu=on")
    if mmio64 is not None:
        globals_.append(f"q35-pcihost.pci-hole64-size={mmio64}")
    if numa:
        for k in range(numa):
            devices.append(
                QemuDevice(
                    "pxb-pcie",
                    f"kmx-pxb{k}",
                    (("bus_nr", str(32 * (k + 1))), ("numa_node", str(k)), ("bus", "pcie.0")),
                )
            )
        # An expander bridge has no I/O-port window: without this Linux logs failures while
        # reserving I/O space for its empty hot-plug ports (the stubs need none).
        kernel_args.append("pci=hpiosize=0")
    chassis = 0x40
    for s in stubs.stubs if stubs else ():
        bus = f"kmx-pxb{s.numa_node}" if s.numa_node is not None else "pcie.0"
        devices.append(
            QemuDevice("pcie-root-port", s.root_port, (("bus", bus), ("chassis", str(chassis))))
        )
        chassis += 1
        # reserve=off: the host commits no memory up front, so large BARs cost nothing until
        # the guest touches them.
        objects.append(
            QemuObject(
                "memory-backend-ram", f"kmx-{s.id}-mem", (("size", str(s.bar)), ("reserve", "off"))
            )
        )
        # master=on: the stub's memory migrates with the VM; the default (a peer) blocks
        # migration, and with it the post-boot snapshot kmatrix_clean tests restore.
        props = (("bus", s.root_port), ("memdev", f"kmx-{s.id}-mem"), ("master", "on"))
        devices.append(QemuDevice("ivshmem-plain", s.id, props))
    for h in hosts:
        port = f"kmx-hostrp{h.id.removeprefix('host')}"
        devices.append(
            QemuDevice("pcie-root-port", port, (("bus", "pcie.0"), ("chassis", str(chassis))))
        )
        chassis += 1
        devices.append(QemuDevice("vfio-pci", h.id, (("host", h.address), ("bus", port))))
    if vfio_wanted:
        for mod in ("vfio_pci", "vfio_iommu_type1"):
            if mod not in modules:
                modules.append(mod)
    return replace(
        profile,
        devices=tuple(devices),
        objects=tuple(objects),
        machine_props=tuple(machine_props),
        kernel_args=tuple(kernel_args),
        modules=tuple(modules),
        globals=tuple(globals_),
        iommu=iommu,
        mmio64=mmio64,
        numa_nodes=numa,
        gpu_stubs=stubs,
        host_devices=tuple(hosts),
    )


def _scratch_disk(ctx: _Ctx, node: yaml.Node, key: str, ids: dict[str, int]) -> ScratchDisk:
    m = ctx.mapping(node, key, ("id", "size", "driver", "props"), ("size",))
    did = ctx.string(m["id"][1], f"{key}.id", NAME_RE) if "id" in m else "scratch0"
    _unique(ctx, ids, did, m["id"][1] if "id" in m else node, f"{key}.id")
    return ScratchDisk(
        id=did,
        size=int(ctx.number(m["size"][1], f"{key}.size", 1, 1 << 16, True)),
        driver=ctx.string(m["driver"][1], f"{key}.driver", NAME_RE)
        if "driver" in m
        else "virtio-blk-pci",
        props=ctx.props(m["props"][1], f"{key}.props") if "props" in m else (),
    )


def _hotplug(ctx: _Ctx, node: yaml.Node, key: str, devices: list[QemuDevice]) -> tuple[str, ...]:
    known = [d.id for d in devices if d.id is not None]
    names = ctx.strings(node, key)
    items = node.value if isinstance(node, yaml.SequenceNode) else [node]
    for i, (name, item) in enumerate(zip(names, items, strict=True)):
        if name not in known:
            raise ctx.err(
                item,
                f"{key}[{i}]",
                f"{name!r} is not the id of a device of this profile (ids: {', '.join(known)})",
            )
    return names


def _memory_hotplug(ctx: _Ctx, node: yaml.Node, key: str) -> MemoryHotplug:
    m = ctx.mapping(node, key, ("slots", "maxmem"), ("slots", "maxmem"))
    mnode = m["maxmem"][1]
    return MemoryHotplug(
        # x86 QEMU takes at most 256 DIMM slots.
        slots=int(ctx.number(m["slots"][1], f"{key}.slots", 1, 256, True)),
        maxmem=int(ctx.number(mnode, f"{key}.maxmem", 128, 1 << 22, True)),
        origin=f"{ctx.path}:{mnode.start_mark.line + 1}",
    )


def _check_maxmem(cells: tuple[Cell, ...]) -> None:
    """maxmem is only known to be too small once a cell's memory is known."""
    for c in cells:
        hp = c.device.memory_hotplug
        if hp is not None and hp.maxmem <= c.memory:
            path, _, line = hp.origin.rpartition(":")
            raise MatrixError(
                path,
                int(line) if line.isdigit() else None,
                "memory_hotplug.maxmem",
                f"{hp.maxmem} MiB leaves no room to hot-add memory: cell {c.id} already "
                f"has {c.memory} MiB",
            )


def load_profile(path: Path) -> DeviceProfile:
    """Loads one device-profile file (matrix/devices/NAME.yaml)."""
    return _profile(_Ctx(path), _compose(path), "")


def _device_ref(ctx: _Ctx, node: yaml.Node, key: str) -> DeviceProfile:
    if isinstance(node, yaml.MappingNode):
        return _profile(ctx, node, key)
    raw = ctx.string(node, key)
    if raw.endswith((".yaml", ".yml")) or "/" in raw:
        # A path to a profile file, relative to this matrix file.
        return load_profile(ctx.file(node, key))
    name = ctx.string(node, key, NAME_RE)
    pfile = ctx.path.parent / "devices" / f"{name}.yaml"
    if not pfile.is_file():
        known = sorted(p.stem for p in (ctx.path.parent / "devices").glob("*.yaml"))
        raise ctx.err(
            node, key, f"no device profile {name!r} ({pfile} not found; known: {', '.join(known)})"
        )
    profile = load_profile(pfile)
    if profile.name != name:
        raise MatrixError(pfile, None, "name", f"profile is named {profile.name!r}, not {name!r}")
    return profile


def _rule(ctx: _Ctx, node: yaml.Node, key: str, names: dict[str, set[str]]) -> Rule:
    m = ctx.mapping(node, key, ("kernel", "cpu", "device"))
    if not m:
        raise ctx.err(node, key, "a rule needs at least one of kernel, cpu, device")
    vals: dict[str, str] = {}
    for axis, (_, vnode) in m.items():
        pat = ctx.string(vnode, f"{key}.{axis}")
        if not any(fnmatch.fnmatchcase(n, pat) for n in names[axis]):
            known = ", ".join(sorted(names[axis]))
            raise ctx.err(vnode, f"{key}.{axis}", f"{pat!r} matches no {axis} (known: {known})")
        vals[axis] = pat
    return Rule(**vals)


def _expectation(
    ctx: _Ctx, node: yaml.Node, key: str, names: dict[str, set[str]], built: set[str]
) -> Expectation:
    m = ctx.mapping(
        node, key, ("kernel", "cpu", "device", "test", "outcome", "reason"), ("outcome",)
    )
    outcome = ctx.choice(m["outcome"][1], f"{key}.outcome", EXPECT_OUTCOMES)
    globs: dict[str, str] = {}
    for axis in ("kernel", "cpu", "device"):
        if axis in m:
            vnode = m[axis][1]
            pat = ctx.string(vnode, f"{key}.{axis}")
            if not any(fnmatch.fnmatchcase(n, pat) for n in names[axis]):
                known = ", ".join(sorted(names[axis]))
                raise ctx.err(vnode, f"{key}.{axis}", f"{pat!r} matches no {axis} (known: {known})")
            globs[axis] = pat
    if outcome == "build-fail" and not any(
        fnmatch.fnmatchcase(k, globs.get("kernel", "*")) for k in built
    ):
        raise ctx.err(
            m["outcome"][1], f"{key}.outcome", "build-fail matches no kernel built from source"
        )
    return Expectation(
        outcome=outcome,
        reason=ctx.string(m["reason"][1], f"{key}.reason") if "reason" in m else "",
        test=ctx.string(m["test"][1], f"{key}.test") if "test" in m else "*",
        origin=f"{ctx.path}:{node.start_mark.line + 1}",
        **globs,
    )


def _defaults(ctx: _Ctx, node: yaml.Node | None) -> Defaults:
    if node is None:
        return Defaults()
    m = ctx.mapping(
        node,
        "defaults",
        ("memory", "smp", "boot_timeout", "test_timeout", "accel", "kernel_args"),
    )
    d = Defaults()
    get: dict[str, Callable[[yaml.Node, str], Any]] = {
        "memory": lambda n, k: int(ctx.number(n, k, 64, 1 << 20, True)),
        "smp": lambda n, k: int(ctx.number(n, k, 1, 64, True)),
        "boot_timeout": lambda n, k: ctx.number(n, k, 1, 3600, False),
        "test_timeout": lambda n, k: ctx.number(n, k, 1, 3600, False),
        "accel": lambda n, k: ctx.choice(n, k, ACCELS),
        "kernel_args": lambda n, k: ctx.args(n, k),
    }
    values = {k: get[k](v, f"defaults.{k}") for k, (_, v) in m.items()}
    return Defaults(**{**d.__dict__, **values})


def load_matrix(path: Path | str) -> Matrix:
    """Loads and validates a matrix file and expands it into cells. Raises MatrixError."""
    path = Path(path).resolve()
    ctx = _Ctx(path)
    root = _compose(path)
    m = ctx.mapping(
        root,
        "",
        (
            "name",
            "description",
            "defaults",
            "kernels",
            "cpus",
            "devices",
            "include",
            "exclude",
            "expect",
        ),
        ("kernels", "cpus", "devices"),
    )
    name = ctx.string(m["name"][1], "name", NAME_RE) if "name" in m else path.stem
    defaults = _defaults(ctx, m["defaults"][1] if "defaults" in m else None)

    seen: dict[str, int] = {}
    kernels = []
    for i, n in enumerate(ctx.seq(m["kernels"][1], "kernels", nonempty=True)):
        k = _kernel(ctx, n, f"kernels[{i}]")
        _unique(ctx, seen, k.name, n, f"kernels[{i}].name")
        kernels.append(k)
    seen = {}
    cpus = []
    for i, n in enumerate(ctx.seq(m["cpus"][1], "cpus", nonempty=True)):
        c = _cpu(ctx, n, f"cpus[{i}]")
        _unique(ctx, seen, c.name, n, f"cpus[{i}].name")
        cpus.append(c)
    seen = {}
    devices = []
    for i, n in enumerate(ctx.seq(m["devices"][1], "devices", nonempty=True)):
        d = _device_ref(ctx, n, f"devices[{i}]")
        _unique(ctx, seen, d.name, n, f"devices[{i}]")
        devices.append(d)

    names = {
        "kernel": {k.name for k in kernels},
        "cpu": {c.name for c in cpus},
        "device": {d.name for d in devices},
    }
    rules: dict[str, tuple[Rule, ...]] = {}
    for section in ("include", "exclude"):
        if section in m:
            nodes = ctx.seq(m[section][1], section)
            rules[section] = tuple(
                _rule(ctx, n, f"{section}[{i}]", names) for i, n in enumerate(nodes)
            )
    built = {k.name for k in kernels if k.build is not None}
    expect = tuple(
        _expectation(ctx, n, f"expect[{i}]", names, built)
        for i, n in enumerate(ctx.seq(m["expect"][1], "expect") if "expect" in m else [])
    )
    mat = Matrix(
        path=path,
        name=name,
        description=ctx.string(m["description"][1], "description") if "description" in m else "",
        defaults=defaults,
        kernels=tuple(kernels),
        cpus=tuple(cpus),
        devices=tuple(devices),
        include=rules.get("include", ()),
        exclude=rules.get("exclude", ()),
        expect=expect,
    )
    cells = expand(mat)
    _check_maxmem(cells)
    if not cells:
        raise MatrixError(path, None, "include/exclude", "the rules leave no cell to run")
    return Matrix(**{**mat.__dict__, "cells": cells})


def expand(mat: Matrix) -> tuple[Cell, ...]:
    """kernels x cpus x devices, kept by include (if any) and dropped by exclude, in file order."""
    d = mat.defaults
    out = []
    for k in mat.kernels:
        for c in mat.cpus:
            for dev in mat.devices:
                if mat.include and not any(
                    r.matches(k.name, c.name, dev.name) for r in mat.include
                ):
                    continue
                if any(r.matches(k.name, c.name, dev.name) for r in mat.exclude):
                    continue
                out.append(
                    Cell(
                        kernel=k,
                        cpu=c,
                        device=dev,
                        memory=dev.memory or d.memory,
                        smp=c.smp or d.smp,
                        boot_timeout=d.boot_timeout,
                        test_timeout=d.test_timeout,
                        accel=d.accel,
                        kernel_args=d.kernel_args + k.kernel_args + dev.kernel_args,
                        expect=tuple(e for e in mat.expect if e.matches(k.name, c.name, dev.name)),
                    )
                )
    return tuple(out)
