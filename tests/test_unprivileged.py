"""No root needed, proven: a new user runs a real cell end to end (docs/security.md).

The test (run as root, as CI does) creates a user, gives it its own cache, reports and
TMPDIR, and a Python environment it can read: this process's interpreter if the user can
run it, else Debian's of the same version, else a copy; kmatrix's runtime dependencies are
copied from this environment and the checkout's package and data beside them. As that user
it unpacks a Debian kernel package, builds the guest image, boots QEMU (TCG) and runs the
boot tests of one cell; everything it wrote belongs to it. `kmatrix setup` is the one step
that needs root: as the user it can check, but not install.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import pwd
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from conftest import ROOT, junit_cases
from kmatrix.host.debian import fetch_deb

PACKAGE = "linux-image-6.1.0-57-cloud-amd64-unsigned"
# The interpreter behind this venv (CPython sets it; a venv's sys.executable is a link).
BASE_EXECUTABLE: str = getattr(sys, "_base_executable", sys.executable)

pytestmark = [
    pytest.mark.boot,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("useradd") is None or shutil.which("runuser") is None,
        reason="creates a user: needs root, useradd and runuser (CI runs as root)",
    ),
]


@pytest.fixture
def user() -> Iterator[str]:
    name = f"kmx{uuid.uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--no-create-home", "--home-dir", "/nonexistent", "--shell",
         "/usr/sbin/nologin", name],
        check=True,
    )  # fmt: skip
    try:
        yield name
    finally:
        subprocess.run(["pkill", "-KILL", "-u", name], check=False)
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def world() -> Iterator[Path]:
    """A directory the new user can read (tmp_path is under a 0700 directory)."""
    d = Path(tempfile.mkdtemp(prefix="kmx-unpriv-", dir="/tmp"))
    d.chmod(0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_user(
    user: str, argv: list[str], env: dict[str, str], cwd: Path = Path("/"), timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """argv as user with exactly env, from cwd (not the checkout: `python -m` puts the
    working directory first on sys.path, and the checkout has its own kmatrix.egg-info)."""
    return subprocess.run(
        ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *argv],
        capture_output=True, text=True, timeout=timeout, check=False, cwd=cwd,
    )  # fmt: skip


def readable_python(user: str, world: Path) -> Path:
    """An interpreter of this Python version the user can run."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (Path(os.path.realpath(BASE_EXECUTABLE)), Path(f"/usr/bin/python{version}")):
        p = as_user(user, [str(cand), "-c", "import sys; print(sys.version_info[:2])"], {})
        if p.returncode == 0 and p.stdout.strip() == str(sys.version_info[:2]):
            return cand
    # A copy of this interpreter and its standard library (no site-packages, no tests).
    prefix = Path(sys.base_prefix)
    dest = world / "python"
    (dest / "bin").mkdir(parents=True)
    shutil.copy2(os.path.realpath(BASE_EXECUTABLE), dest / "bin" / f"python{version}")
    for lib in prefix.glob("lib/libpython*.so*"):
        (dest / "lib").mkdir(exist_ok=True)
        shutil.copy2(lib, dest / "lib" / lib.name)
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    shutil.copytree(
        stdlib, dest / "lib" / f"python{version}",
        ignore=shutil.ignore_patterns("site-packages", "test", "__pycache__", "idlelib"),
    )  # fmt: skip
    return dest / "bin" / f"python{version}"


def runtime_packages(dest: Path) -> None:
    """kmatrix's dependencies (and theirs), copied file by file from this environment."""
    todo, seen = ["kmatrix"], set()
    while todo:
        req = Requirement(todo.pop())
        name = req.name.lower().replace("_", "-")
        if name in seen or (req.marker is not None and not req.marker.evaluate({"extra": ""})):
            continue
        seen.add(name)
        dist = md.distribution(name)
        todo += list(dist.requires or [])
        if name == "kmatrix":
            continue  # the checkout is copied itself (an editable install points at it)
        for f in dist.files or []:
            src = Path(str(dist.locate_file(f)))
            if src.is_file() and "__pycache__" not in f.parts:
                target = dest / f
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, target)


def test_a_cell_runs_as_an_unprivileged_user(user: str, world: Path) -> None:
    deb = fetch_deb(PACKAGE, "test_unprivileged")  # root's cache; the user gets a copy
    src, site = world / "src", world / "site"
    for name in ("kmatrix", "images", "testcases", "matrix"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(ROOT / "pyproject.toml", src / "pyproject.toml")
    runtime_packages(site)
    (world / "debs").mkdir()
    shutil.copy2(deb, world / "debs" / deb.name)
    (world / "matrix.yaml").write_text(
        textwrap.dedent(f"""\
            name: unprivileged
            defaults: {{memory: 512, smp: 1, boot_timeout: 240, test_timeout: 120, accel: tcg}}
            kernels:
              - {{name: deb-6.1-cloud, deb: {world / "debs" / deb.name}}}
            cpus: [{{name: Nehalem, flags: [sse4_2]}}]
            devices: [{src / "matrix" / "devices" / "virtio.yaml"}]
            """)
    )
    for d in ("home", "cache", "reports", "tmp"):
        (world / d).mkdir()
        shutil.chown(world / d, user, user)
    python = readable_python(user, world)
    env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "HOME": str(world / "home"),
        "KMATRIX_CACHE": str(world / "cache"),
        "TMPDIR": str(world / "tmp"),
        "PYTHONPATH": f"{src}:{site}",
        "PYTHONDONTWRITEBYTECODE": "1",
        "LANG": "C.UTF-8",
    }
    uid = pwd.getpwnam(user).pw_uid

    # `kmatrix setup` can check as the user; installing is what needs root.
    p = as_user(user, [str(python), "-m", "kmatrix", "setup", "--check"], env)
    assert p.returncode == 0, p.stdout + p.stderr
    p = as_user(user, [str(python), "-c", textwrap.dedent("""\
        from kmatrix.host import tools
        tools.HOST_PACKAGES["kmx-not-a-package"] = "/nonexistent/kmx"
        raise SystemExit(tools.ensure_host_packages())
        """)], env)  # fmt: skip
    assert p.returncode == 1 and "sudo apt-get" in p.stderr, p.stdout + p.stderr

    junit = world / "reports" / "junit.xml"
    p = as_user(
        user,
        [str(python), "-m", "pytest", str(src / "testcases" / "test_boot.py"),
         "-p", "kmatrix.pytest.plugin", "-p", "no:cacheprovider", "-q",
         f"--kmatrix-matrix={world / 'matrix.yaml'}", f"--kmatrix-reports={world / 'reports'}",
         "--kmatrix-require-sandbox", f"--junitxml={junit}", "-o", "junit_family=xunit1",
         "-k", "test_userspace_reached or test_release_matches_artifact or test_clean_poweroff"],
        env,
        cwd=world / "home",
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    cases = junit_cases(junit)
    assert {c.outcome for c in cases.values()} == {"passed"} and len(cases) == 3, cases
    cell = world / "reports" / "latest" / "cells" / "deb-6.1-cloud__Nehalem__virtio"
    boot = json.loads((cell / "boot.json").read_text())
    assert boot["sandbox"] == "on" and boot["accel"] == "tcg", boot
    assert "6.1.0-57-cloud-amd64" in (cell / "console.log").read_text() + boot["release"]
    # Everything the run made is the user's, in the user's directories.
    for d in ("cache", "reports", "tmp"):
        owners = {f.stat().st_uid for f in (world / d).rglob("*") if not f.is_symlink()}
        assert owners <= {uid}, (d, owners)
    assert list((world / "cache").glob("images/initramfs-*.cpio"))
    assert list((world / "tmp").iterdir()) == []  # QEMU's private run directories are gone
