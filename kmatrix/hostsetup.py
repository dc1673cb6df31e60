"""Host packages kmatrix needs, installed when missing (as root) or named with the exact command.

Running a matrix never needs root; only this set-up step installs packages.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
}


def missing_packages() -> list[str]:
    return [pkg for pkg, probe in HOST_PACKAGES.items() if not os.path.exists(probe)]


def install_command(packages: list[str]) -> list[str]:
    return ["apt-get", "install", "-y", "--no-install-recommends", *packages]


def ensure_host_packages(check_only: bool = False) -> int:
    """Returns 0 when everything is there (after installing it, as root), else 1."""
    missing = missing_packages()
    if not missing:
        print("kmatrix setup: all host packages present: " + " ".join(HOST_PACKAGES))
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
    still = missing_packages()
    if p.returncode != 0 or still:
        print(f"kmatrix setup: apt-get failed; still missing: {' '.join(still)}", file=sys.stderr)
        return 1
    return 0
