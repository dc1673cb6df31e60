"""The plugin's command-line options (one prefixed group) and the matrix it loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmatrix.pytest import logguard, progress, suites

SUITE_MARKERS = {
    "boot": "boot smoke tests: userspace, release, CPUs, CPU flags, clean kernel log, poweroff",
    "sched": "scheduler suite",
    "memory": "memory-management suite",
    "driver": "driver and device suite",
    "kselftest": "the kernel's kselftest cases (matrix suites.kselftest)",
    "kunit": "the kernel's KUnit cases, run at boot",
}


# --- options and configuration --------------------------------------------------------------


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("kmatrix", "kmatrix: kernels x CPU models x device profiles in QEMU")
    g.addoption(
        "--kmatrix-matrix", metavar="PATH", help="matrix file (default: matrix/default.yaml)"
    )
    g.addoption(
        "--kmatrix-accel",
        choices=("auto", "kvm", "tcg"),
        help="override the matrix's accelerator (auto: KVM only after a probe boot works)",
    )
    g.addoption(
        "--kmatrix-reports", metavar="DIR", default="reports", help="output directory (reports)"
    )
    g.addoption(
        "--kmatrix-no-direct-boot",
        action="store_true",
        help="boot the bzImage as given instead of its extracted PVH vmlinux",
    )
    g.addoption(
        "--kmatrix-retries",
        type=int,
        default=1,
        metavar="N",
        help="retry a boot that failed for host or QEMU reasons N times (kernel failures never)",
    )
    g.addoption(
        "--kmatrix-shard",
        metavar="I/N",
        help="run only shard I of N (whole cells, deterministic; see --kmatrix-durations)",
    )
    g.addoption(
        "--kmatrix-durations",
        metavar="RESULTS_JSON",
        help="an earlier results.json whose durations balance the shards and order the cells "
        "handed to xdist workers (default for -n: the last results.json in the reports dir)",
    )
    progress.add_option(g)
    logguard.add_option(g)
    g.addoption(
        "--kmatrix-gate",
        choices=("all", "series"),
        default="all",
        help="what makes the exit status 1: any failure (all), or only failures of kernels "
        "with a baseline that their series caused or that no baseline could judge, plus "
        "failures of kernels without one (series)",
    )
    g.addoption(
        "--kmatrix-series-upto",
        metavar="KERNEL=PATCH",
        action="append",
        help="build KERNEL with its series only through PATCH (a patch name or its leading "
        "part, or `vanilla` for none); its baseline twin is left out; repeatable",
    )
    g.addoption(
        "--kmatrix-baseline",
        metavar="DIR",
        action="append",
        help="an earlier run (reports dir or results.json) to compare with; repeatable",
    )
    g.addoption(
        "--kmatrix-known-issues",
        metavar="YAML",
        help="known kernel-log signatures (default: known-issues.yaml beside the matrix)",
    )
    g.addoption(
        "--kmatrix-kcidb-origin", metavar="NAME", help="origin of the KCIDB export (kmatrix)"
    )
    g.addoption(
        "--kmatrix-artifacts-url",
        metavar="URL",
        help="where the reports directory is published (log URLs in the KCIDB export)",
    )
    parser.addini("kmatrix_matrix", "default matrix file, relative to the rootdir")
    suites.add_option(parser, g)


def _matrix_path(config: pytest.Config) -> Path | None:
    opt = config.getoption("kmatrix_matrix")
    if opt:
        return Path(opt)
    ini = config.getini("kmatrix_matrix")
    if ini:
        return config.rootpath / str(ini)
    # matrix/default.yaml in the rootdir, else where pytest was started (`pytest testcases`
    # without an ini file makes testcases/ the rootdir).
    for base in (config.rootpath, Path(config.invocation_params.dir)):
        default = base / "matrix" / "default.yaml"
        if default.is_file():
            return default
    return None
