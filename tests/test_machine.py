"""kmatrix.vm.machine: QEMU processes are found and killed down the process tree."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from kmatrix.vm.machine import descendant_qemus, kill_all


def test_kill_all_reaches_qemus_of_child_processes(tmp_path: Path) -> None:
    """A QEMU started by a child (as xdist workers start theirs) is found and killed from
    the top process, as CI's SIGTERM to `kmatrix run` needs; other processes are left."""
    fake = tmp_path / "qemu-system-x86_64"  # comm is the name, cut to 15 characters
    fake.symlink_to("/bin/sleep")
    # A shell (the "worker") that starts the fake QEMU and an ordinary sleep, then waits.
    worker = subprocess.Popen(["sh", "-c", f"{fake} 300 & sleep 300 & wait"])
    try:
        deadline = time.monotonic() + 10
        while len(found := descendant_qemus()) < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(found) == 1
        assert Path(f"/proc/{found[0]}/exe").resolve() == Path("/bin/sleep").resolve()
        kill_all(descendants=True)
        deadline = time.monotonic() + 10
        while descendant_qemus() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert descendant_qemus() == []
        assert worker.poll() is None  # the worker itself is not a QEMU: still running
    finally:
        worker.kill()
        worker.wait()
        subprocess.run(["pkill", "-f", str(tmp_path)], check=False)
