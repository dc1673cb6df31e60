"""The kmatrix command: list, shell (a real interactive boot), setup, errors."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pexpect
import pytest

from conftest import DATA, ROOT

KMATRIX = [sys.executable, "-m", "kmatrix.cli"]
TWO = DATA / "matrices" / "two.yaml"


def test_list_prints_cells() -> None:
    p = subprocess.run([*KMATRIX, "list", "-m", str(TWO)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    lines = [ln.split()[0] for ln in p.stdout.splitlines() if not ln.startswith("#")]
    assert lines == ["deb-6.1-cloud/Nehalem/virtio", "deb-6.12-cloud/Haswell/virtio"]


def test_bad_matrix_is_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("kernels: []\ncpus: [a]\ndevices: [{name: d}]\n")
    p = subprocess.run([*KMATRIX, "list", "-m", str(bad)], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == f"kmatrix: error: {bad}:1: kernels: must not be empty"


def test_unknown_cell_names_the_known_ones(tmp_path: Path) -> None:
    p = subprocess.run(
        [*KMATRIX, "shell", "nope/x/y", "-m", str(TWO)], capture_output=True, text=True
    )
    assert p.returncode == 2
    assert "no cell 'nope/x/y'; cells are: deb-6.1-cloud/Nehalem/virtio" in p.stderr


def test_setup_check_reports_state() -> None:
    p = subprocess.run([*KMATRIX, "setup", "--check"], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr  # the test machine has everything installed
    assert "all host packages present" in p.stdout


@pytest.mark.boot
def test_shell_gives_an_interactive_guest(tmp_path: Path) -> None:
    child = pexpect.spawn(
        sys.executable,
        ["-m", "kmatrix.cli", "shell", "deb-6.1-cloud/Nehalem/virtio", "-m", str(TWO),
         "--accel", "tcg", "--reports", str(tmp_path)],
        cwd=str(ROOT), timeout=120, encoding="utf-8",
    )  # fmt: skip
    try:
        child.expect("interactive shell on the console")
        # The shell may start after the line above and drop what was typed before it set up
        # the terminal: ask until it answers (the typed line echoes "$((6*7))", never "42").
        for _ in range(40):
            child.sendline("echo kmx-$((6*7))")
            if child.expect(["kmx-42", pexpect.TIMEOUT], timeout=3) == 0:
                break
        else:
            pytest.fail("the guest shell never answered")
        child.sendline("uname -r")
        child.expect("6.1.0-57-cloud-amd64")
        child.sendline("stress-ng --version")  # the tools disk, mounted before the shell
        child.expect("stress-ng, version")
        child.sendline("exit")
        child.expect(pexpect.EOF, timeout=60)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0
    log = tmp_path / "shell" / "deb-6.1-cloud__Nehalem__virtio" / "console.log"
    assert "6.1.0-57-cloud-amd64" in log.read_text()


def test_shell_refuses_a_host_device_the_host_cannot_pass(tmp_path: Path) -> None:
    """vfio-host: the host check runs first and no QEMU starts (this host has no IOMMU
    groups, and surely no device at ffff:ff:1f.7)."""
    m = tmp_path / "m.yaml"
    m.write_text(
        TWO.read_text().split("devices:")[0]
        + "devices:\n  - name: passthrough\n    host_devices: [{host: 'ffff:ff:1f.7'}]\n"
        + "host_access: {reason: a lab card, devices: ['ffff:ff:1f.7']}\n"
    )
    p = subprocess.run(
        [
            *KMATRIX,
            "shell",
            "-m",
            str(m),
            "--reports",
            str(tmp_path),
            "deb-6.1-cloud/Nehalem/passthrough",
            "--allow-host-access",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 2, p.stderr
    assert "cannot pass through host PCI device ffff:ff:1f.7" in p.stderr
    assert not (tmp_path / "shell").exists()  # nothing prepared, nothing booted


_FORWARD = """
import builtins, os, signal, sys, threading, time
from kmatrix.cli.main import _call_forwarding_signals
if os.environ.get("KMX_SLOW_IMPORT"):
    # A loaded host: the first import of what the forwarding needs takes seconds.
    real_import = builtins.__import__
    def slow_import(name, *args, **kw):
        if name == "kmatrix.vm.machine":
            time.sleep(2)
        return real_import(name, *args, **kw)
    builtins.__import__ = slow_import
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()
sys.exit(_call_forwarding_signals(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("ignored", "slow"), [(False, False), (True, False), (False, True)],
    ids=["forwarded", "ignored", "during-a-slow-start"],
)  # fmt: skip
def test_run_forwards_sigint_unless_the_parent_ignores_it(
    tmp_path: Path, ignored: bool, slow: bool
) -> None:
    """`kmatrix run` passes Ctrl-C on to its pytest child and kills the guests below it; a
    SIGINT its parent ignores (a script's background job) stays ignored, instead of killing
    the guests of a pytest that, inheriting the ignore, would carry on. A signal that comes
    while `run` is still starting leaves no child behind either (it came between starting
    pytest and installing the forwarding once, while an import was slow)."""
    # The child stands in for pytest's guest: a sleep named like QEMU, which the forwarding
    # kills (kill_all(descendants=True)) and which outlives an ignored SIGINT. Its output
    # goes elsewhere, so an orphan would not hold this test's pipes until it ends.
    guest = tmp_path / "qemu-system-x86_64"
    shutil.copy("/bin/sleep", guest)
    seconds = 3 if ignored else 60

    def start() -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN if ignored else signal.SIG_DFL)

    child = ["sh", "-c", f"exec {guest} {seconds} </dev/null >/dev/null 2>&1"]
    try:
        p = subprocess.run(
            [sys.executable, "-c", _FORWARD, *child], capture_output=True, text=True,
            timeout=60, preexec_fn=start, env={**os.environ, "KMX_SLOW_IMPORT": "1" * slow},
        )  # fmt: skip
        left = subprocess.run(["pgrep", "-f", str(guest)], capture_output=True, text=True)
    finally:
        subprocess.run(["pkill", "-KILL", "-f", str(guest)], check=False)
    if ignored:
        assert p.returncode == 0, (p.returncode, p.stderr)
    else:
        assert p.returncode != 0, (p.returncode, p.stderr)  # the signal ended the child
        assert not left.stdout.split(), f"the guest {left.stdout.split()} outlived the run"
