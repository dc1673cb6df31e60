"""The frozen specs a matrix is made of: kernels, CPU models, device profiles, cells.

Plain data with no behaviour beyond naming and matching, so every stage can hold them.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix.errors import MatrixError


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
    # What the kernel is compared against in the same run: "vanilla" (no patches) or the
    # name of a patch of the series (the series through that patch); None: no baseline.
    baseline: str | None = None


BASELINE_SUFFIX = "+baseline"


@dataclass(frozen=True)
class KselftestTarget:
    """One kselftest target (a directory of tools/testing/selftests) a cell runs."""

    name: str
    tests: tuple[str, ...] = ()  # globs on its program names; () = every program
    timeout: float | None = None  # per-program timeout; None: the target's `settings`
    origin: str = ""  # "file:line"


@dataclass(frozen=True)
class KselftestSpec:
    targets: tuple[KselftestTarget, ...] = ()
    timeout: float | None = None  # per-program timeout for every target without its own
    source: str | None = None  # where the selftests come from, when not the kernel's source
    origin: str = ""


@dataclass(frozen=True)
class KunitSpec:
    filter: str | None = None  # kunit.filter_glob
    enabled: bool = True
    origin: str = ""


@dataclass(frozen=True)
class Suites:
    """The kernel's own tests a cell runs (kmatrix.config.suites)."""

    kselftest: KselftestSpec | None = None
    kunit: KunitSpec | None = None


@dataclass(frozen=True)
class Rule:
    """Cells whose kernel, cpu and device match these globs (include, exclude, suites)."""

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
class SuiteRule(Rule):
    """Suites for the cells whose kernel, cpu and device match these globs (cell level)."""

    suites: Suites = field(kw_only=True)


@dataclass(frozen=True)
class KernelSpec:
    """Where a kernel comes from: one source kind (deb, image, tree, build, pkg, ...; each is
    a module of kmatrix.kernels) and what that kind read from the matrix."""

    name: str
    source: str  # the source kind's name, the key the matrix used ("deb", "build", ...)
    location: str  # package name, or absolute path
    # What identifies the kernel wherever the matrix is checked out (a package name, a
    # file's base name, a build's inputs): shards of one matrix must agree on it.
    identity: str = ""
    modules: Path | None = None
    config: Path | None = None
    release: str | None = None  # declared; checked against the image header
    kernel_args: tuple[str, ...] = ()
    origin: str = ""  # "file:line" for error messages
    build: BuildSpec | None = None  # set when source == "build"
    # A kernel with a baseline has a twin, named name + BASELINE_SUFFIX, built the same way
    # without (part of) its series and run on the same cells: `baseline` names the twin on
    # the patched kernel, `baseline_of` the patched kernel on the twin.
    baseline: str = ""
    baseline_of: str = ""
    baseline_label: str = ""  # "vanilla" or "through <patch>", on both
    suites: Suites | None = None  # the kernel's `suites:` (kernel level)


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


FILES, DEVICES, NETWORKS = "files", "devices", "networks"  # kinds of host access


@dataclass(frozen=True)
class HostUse:
    """One thing a profile reaches on the host, and where the profile asks for it."""

    kind: str  # FILES | DEVICES | NETWORKS
    what: str  # a resolved host path, a PCI address, a QEMU driver or object type
    path: str  # the profile file
    line: int | None
    key: str  # e.g. devices[0].props.romfile

    def describe(self) -> str:
        noun = {FILES: "the host file", DEVICES: "the host PCI device"}.get(
            self.kind, "a host network service through"
        )
        return f"{noun} {self.what}"


@dataclass(frozen=True)
class HostAccess:
    """A matrix's `host_access:` section: what its profiles may reach on the host."""

    reason: str
    files: tuple[str, ...] = ()  # resolved host paths; a use must be one of them or below
    devices: tuple[str, ...] = ()  # canonical PCI addresses
    networks: bool = False
    path: str = ""  # the matrix file
    line: int | None = None

    def grants(self, use: HostUse) -> bool:
        if use.kind == FILES:
            target = Path(use.what)
            return any(target == Path(g) or Path(g) in target.parents for g in self.files)
        if use.kind == DEVICES:
            return use.what in self.devices
        return self.networks


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
    # What its QEMU options reach on the host (kmatrix.config.hostaccess), in file order.
    host_uses: tuple[HostUse, ...] = field(default=(), compare=False)


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
    suites: Suites = Suites()  # the kernel's own tests this cell runs (kselftest, KUnit)

    @functools.cached_property
    def id(self) -> str:  # cached: every collected test asks for it, often more than once
        return f"{self.kernel.name}/{self.cpu.name}/{self.device.name}"

    def expected(self, test: str) -> Expectation | None:
        """The declared outcome of test in this cell; None when it is expected to pass."""
        found = None
        for e in self.expect:
            if fnmatch.fnmatchcase(test, e.test):
                found = e
        return None if found is None or found.outcome == "pass" else found

    @property
    def baseline_cell(self) -> str:
        """The id of this cell's baseline twin ("" when its kernel has no baseline)."""
        k = self.kernel
        return f"{k.baseline}/{self.cpu.name}/{self.device.name}" if k.baseline else ""

    @property
    def baseline_of(self) -> str:
        """On a baseline cell, the id of the patched cell it is the baseline of; else ""."""
        k = self.kernel
        return f"{k.baseline_of}/{self.cpu.name}/{self.device.name}" if k.baseline_of else ""

    @property
    def slug(self) -> str:
        """The id as one path component (log and run directory names)."""
        return self.id.replace("/", "__")


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
    suites: Suites = Suites()  # matrix level
    suite_rules: tuple[SuiteRule, ...] = ()  # cell level
    host_access: HostAccess | None = None  # the matrix's host_access: section

    def cell(self, cell_id: str) -> Cell:
        for c in self.cells:
            if c.id == cell_id:
                return c
        known = ", ".join(c.id for c in self.cells)
        raise MatrixError(self.path, None, None, f"no cell {cell_id!r}; cells are: {known}")
