"""The plugin's command-line options (one prefixed group) and the matrix it loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmatrix.config.hostaccess import ALLOW_OPTION
from kmatrix.config.optionvalues import count
from kmatrix.errors import InputError
from kmatrix.pytest import logguard, progress, rerun, suites
from kmatrix.results import shard
from kmatrix.results.known_issues import load_known_issues
from kmatrix.results.runs import expand_run_paths

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
        "--kmatrix-reports",
        metavar="ROOT",
        default="reports",
        help="reports root (reports): each run writes ROOT/<start time>/, and ROOT/latest "
        "points at the newest complete run",
    )
    g.addoption(
        "--kmatrix-run-dir",
        metavar="DIR",
        help="write this run into DIR itself (e.g. a CI shard's artefact directory); refused "
        "if DIR already holds a run",
    )
    g.addoption(
        "--kmatrix-pytest-junit",
        action="store_true",
        help="also write pytest's own JUnit XML as junit.xml in the run directory",
    )
    g.addoption(
        "--kmatrix-no-direct-boot",
        action="store_true",
        help="boot the bzImage as given instead of its extracted PVH vmlinux",
    )
    g.addoption(
        "--kmatrix-retries",
        type=count,
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
        help="an earlier run (run directory, results.json or reports root) whose durations "
        "balance the shards and order the cells handed to xdist workers (default: the "
        "newest duration of each test across the runs in the reports root)",
    )
    progress.add_option(g)
    logguard.add_option(g)
    rerun.add_options(g)
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
        help="an earlier run (run directory, results.json, or a reports root: its latest) to "
        "compare with; repeatable",
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
    g.addoption(
        ALLOW_OPTION,
        action="store_true",
        help="let the matrix's host_access: grants take effect (host files, host PCI devices, "
        "host network services); only for matrices you trust (docs/security.md)",
    )
    g.addoption(
        "--kmatrix-require-sandbox",
        action="store_true",
        help="make it an error when QEMU cannot run under its seccomp sandbox (-sandbox), "
        "instead of a warning",
    )
    parser.addini("kmatrix_matrix", "default matrix file, relative to the rootdir")
    suites.add_option(parser, g)


def check_options(config: pytest.Config) -> None:
    """The options whose values need more than their type: each a UsageError naming it,
    before any matrix is loaded or QEMU asked anything."""
    spec = config.getoption("kmatrix_shard")
    try:
        if spec is not None:
            shard.parse_spec(spec)
        durations = config.getoption("kmatrix_durations")
        if durations is not None:
            shard.durations_from(Path(durations))
        known = config.getoption("kmatrix_known_issues")
        if known is not None:
            load_known_issues(Path(known))
        for base in config.getoption("kmatrix_baseline") or ():
            if not expand_run_paths(Path(base))[0].is_file():
                raise InputError(f"--kmatrix-baseline {base}: no results.json there")
    except InputError as e:
        raise pytest.UsageError(f"kmatrix: {e}") from None
    reports = Path(config.getoption("kmatrix_reports"))
    if reports.exists() and not reports.is_dir():
        raise pytest.UsageError(
            f"kmatrix: --kmatrix-reports {reports}: exists and is not a directory"
        )


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
