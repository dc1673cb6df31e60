"""The kmx-demo patch series (patches/kmx-demo), checked in the booted guest: each patch that
the kernel's build applied (or found already in its source) must show its effect.

These tests are not applicable to kernels not built from source with that series (decided at
collection: such a cell never boots for them), nor to a patch the build left out (`skip:` in
the matrix) or could not apply. See matrix/patched.yaml.
"""

from __future__ import annotations

import warnings

import pytest

from kmatrix import Cell, GuestSession, KernelArtifact, not_applicable

SERIES = "kmx-demo"
BANNER = "0001-init-print-a-kmx-demo-banner.patch"
SYSCTL = "0002-kernel-add-the-kmx_demo_answer-sysctl.patch"
KTHREAD = "0003-fs-proc-add-Kthread-flag-to-proc-pid-status.patch"
BASE_SLICE = "0004-sched-fair-raise-the-default-base-slice-to-1-ms.patch"
HAS_IT = ("clean", "offset", "fuzz", "already-applied")


def _built_with_series(cell: Cell) -> bool:
    build = cell.kernel.build
    return build is not None and build.patches is not None and build.patches.name == SERIES


# Applicability, from the matrix (decided at collection): the series' tests apply to kernels
# built from source with it; the config check to any kernel built from source.
WITH_SERIES = pytest.mark.kmatrix_applies(
    _built_with_series, "{cell.kernel.name} is not built from source with the " + SERIES + " series"
)
FROM_SOURCE = pytest.mark.kmatrix_applies(
    lambda cell: cell.kernel.build is not None, "{cell.kernel.name} is not built from source"
)


def require_patch(kernel: KernelArtifact, patch: str) -> str:
    """Not applicable unless the build has patch (applied, or already in the source)."""
    assert kernel.build is not None  # WITH_SERIES
    statuses = {p.patch: p.status for p in kernel.build.patches}
    if patch not in statuses:
        not_applicable(f"{kernel.name} is not built with {patch} of the {SERIES} series")
    if statuses[patch] not in HAS_IT:
        not_applicable(f"{kernel.name}: {patch} is {statuses[patch]} in this build")
    return statuses[patch]


@WITH_SERIES
def test_banner_printed(guest: GuestSession, kernel: KernelArtifact) -> None:
    require_patch(kernel, BANNER)
    lines = [ln for ln in guest.dmesg().splitlines() if "kmx-demo: patched kernel" in ln]
    assert len(lines) == 1, f"want the kmx-demo banner once in dmesg, found {lines}"
    assert "series kmx-demo v1" in lines[0]


@WITH_SERIES
def test_new_sysctl(guest: GuestSession, kernel: KernelArtifact) -> None:
    require_patch(kernel, SYSCTL)
    path = "/proc/sys/kernel/kmx_demo_answer"
    assert guest.read_file(path).strip() == "42", "the sysctl's default is 42"
    guest.write_file(path, "7\n")
    assert guest.read_file(path).strip() == "7"
    # Out of range [0, 1000]: proc_dointvec_minmax refuses it and keeps the value.
    r = guest.run(f"echo 5000 > {path}")
    assert r.exit_status != 0, "a write of 5000 was accepted"
    assert guest.read_file(path).strip() == "7"
    guest.write_file(path, "42\n")


@WITH_SERIES
def test_kthread_flag_in_status(guest: GuestSession, kernel: KernelArtifact) -> None:
    status = require_patch(kernel, KTHREAD)
    own = guest.read_file("/proc/self/status")
    kthreadd = guest.read_file("/proc/2/status")  # PID 2 is kthreadd on every kernel
    assert "Name:\tkthreadd" in kthreadd
    assert "Kthread:\t0" in own.splitlines(), f"({status}) no 'Kthread:\\t0' in:\n{own}"
    assert "Kthread:\t1" in kthreadd.splitlines(), f"({status}) no 'Kthread:\\t1' for kthreadd"


def _scaling_factor(mode: int, ncpus: int) -> int:
    """The scheduler's tunable scaling (kernel/sched/fair.c get_update_sysctl_factor)."""
    cpus = min(ncpus, 8)
    if mode == 0:  # SCHED_TUNABLESCALING_NONE
        return 1
    if mode == 2:  # SCHED_TUNABLESCALING_LINEAR
        return cpus
    return 1 + (cpus.bit_length() - 1)  # SCHED_TUNABLESCALING_LOG: 1 + ilog2(cpus)


@WITH_SERIES
@pytest.mark.kmatrix_config("SCHED_DEBUG", "DEBUG_FS")
def test_base_slice_default(guest: GuestSession, kernel: KernelArtifact) -> None:
    require_patch(kernel, BASE_SLICE)
    base = int(guest.read_file("/sys/kernel/debug/sched/base_slice_ns"))
    mode = int(guest.read_file("/sys/kernel/debug/sched/tunable_scaling"))
    ncpus = int(guest.run("nproc", check=True).stdout)
    factor = _scaling_factor(mode, ncpus)
    assert base == 1_000_000 * factor, (
        f"base_slice_ns is {base}; the patch makes it 1 ms x {factor} "
        f"(scaling mode {mode}, {ncpus} CPUs); upstream's default would be {700_000 * factor}"
    )


@FROM_SOURCE
def test_build_config_kept(kernel: KernelArtifact, record_property: object) -> None:
    """Options our own fragments ask for must survive olddefconfig; in-tree fragments
    (tree:...) are generic and may ask for options of other architectures: a warning."""
    assert kernel.build is not None  # FROM_SOURCE
    dropped = kernel.build.dropped
    if callable(record_property):
        record_property(
            "build.dropped_options", " ".join(f"{d.option}={d.wanted}->{d.got}" for d in dropped)
        )
    generic = [d for d in dropped if d.fragment.startswith("tree:")]
    own = [d for d in dropped if not d.fragment.startswith("tree:")]
    if generic:
        warnings.warn(
            f"{kernel.name}: in-tree fragment options not in the final .config: "
            + ", ".join(f"{d.option}={d.wanted} ({d.fragment}) -> {d.got}" for d in generic),
            stacklevel=1,
        )
    assert not own, "olddefconfig dropped requested options:\n" + "\n".join(
        f"  {d.option}={d.wanted} (from {d.fragment}) is {d.got}" for d in own
    )
