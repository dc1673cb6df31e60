"""Host packages kmatrix needs, installed when missing (as root) or named with the exact command.

Running a matrix never needs root; only this set-up step installs packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from kmatrix.errors import ArtifactError, InfraError

# Debian package -> a file that proves it is installed.
HOST_PACKAGES: dict[str, str] = {
    "qemu-system-x86": "/usr/bin/qemu-system-x86_64",
    "busybox-static": "/bin/busybox",
    "cpio": "/usr/bin/cpio",
    "kmod": "/usr/sbin/depmod",
    "zstd": "/usr/bin/zstd",
    "lz4": "/usr/bin/lz4",
    "lzop": "/usr/bin/lzop",
    "xz-utils": "/usr/bin/xz",
    # Guest tools for the tools disk (images/recipe.yaml): the sched/memory/driver suites.
    "stress-ng": "/usr/bin/stress-ng",
    "rt-tests": "/usr/bin/cyclictest",
    "util-linux": "/usr/bin/chrt",
    "coreutils": "/usr/bin/nice",
    "pciutils": "/usr/share/misc/pci.ids",
    # The read-only filesystem of the tools data disk (kmatrix/guest/datadisk.py).
    "squashfs-tools": "/usr/bin/mksquashfs",
    # The guest programs (images/programs/*.c): static with musl, the kernel's UAPI headers.
    "musl-tools": "/usr/bin/musl-gcc",
    "linux-libc-dev": "/usr/include/linux/vfio.h",
    # Static glibc: kernel builds' host tools and kselftest programs linked -static.
    "libc6-dev": "/usr/lib/x86_64-linux-gnu/libc.a",
    # Kernel builds from source (matrix `build:` kernels, kmatrix patches check).
    "gcc": "/usr/bin/gcc",
    "make": "/usr/bin/make",
    "flex": "/usr/bin/flex",
    "bison": "/usr/bin/bison",
    "bc": "/usr/bin/bc",
    "libelf-dev": "/usr/include/libelf.h",
    "libssl-dev": "/usr/include/openssl/ssl.h",
    "ccache": "/usr/bin/ccache",
    "patch": "/usr/bin/patch",
    # Out-of-tree modules (kmx_crash) against Debian's linux-headers packages, whose Makefile
    # names gcc-12, and stripped of debug info (kmatrix.kernels.extmod).
    "gcc-12": "/usr/bin/gcc-12",
    "binutils": "/usr/bin/strip",
    # kselftest targets (matrix suites.kselftest): `make install` copies with rsync.
    "rsync": "/usr/bin/rsync",
}
# Only the project's own tests need these: the HTML report is checked in a real browser.
TEST_PACKAGES: dict[str, str] = {
    "chromium": "/usr/bin/chromium",
}


def missing_packages(packages: dict[str, str] | None = None) -> list[str]:
    wanted = HOST_PACKAGES if packages is None else packages
    return [pkg for pkg, probe in wanted.items() if not os.path.exists(probe)]


def install_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_host_packages(check_only: bool = False, tests: bool = False) -> int:
    """Returns 0 when everything is there (after installing it, as root), else 1.
    tests: also the packages the project's own tests need (TEST_PACKAGES)."""
    wanted = {**HOST_PACKAGES, **(TEST_PACKAGES if tests else {})}
    missing = missing_packages(wanted)
    if not missing:
        print("kmatrix setup: all host packages present: " + " ".join(wanted))
        return 0
    cmd = install_command(missing)
    if check_only or os.geteuid() != 0 or shutil.which("apt-get") is None:
        print(
            "kmatrix setup: missing host packages: " + " ".join(missing) + "\n"
            "install them with:\n  sudo apt-get update && sudo " + " ".join(cmd),
            file=sys.stderr,
        )
        return 1
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("kmatrix setup: installing " + " ".join(missing), flush=True)
    subprocess.run(["apt-get", "update", "-q"], check=False, env=env, timeout=900)
    p = subprocess.run(cmd, check=False, env=env, timeout=1800)
    still = missing_packages(wanted)
    if p.returncode != 0 or still:
        print(f"kmatrix setup: apt-get failed; still missing: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0


def run_tool(argv: list[str], what: str, cwd: Path | None = None, timeout: float = 600.0) -> str:
    """Runs a host tool; a missing tool or a timeout is the host's problem (InfraError), a
    non-zero exit is the input's (ArtifactError). Returns its stdout."""
    try:
        p = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise InfraError(f"{what}: {argv[0]} is not installed (run `kmatrix setup`)") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"{what}: `{' '.join(argv)}` took more than {timeout:.0f}s") from None
    if p.returncode != 0:
        raise ArtifactError(f"{what}: `{' '.join(argv)}` failed: {(p.stderr or p.stdout).strip()}")
    return p.stdout
