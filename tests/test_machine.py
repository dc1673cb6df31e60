"""kmatrix.vm.machine: QEMU processes are found and killed down the process tree."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from kmatrix.vm.machine import Machine, descendant_qemus, kill_all


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


def _stand_in(tmp_path: Path, script: str) -> Machine:
    """A Machine whose process is a shell standing in for QEMU (no QMP): only the signal
    steps of the shutdown apply to it. Returned once the script has set itself up (it
    touches ./ready), or has ended."""
    m = Machine(["sh"], tmp_path / "run", tmp_path / "qemu.log", "stand-in")
    m.rundir.mkdir()
    m.proc = subprocess.Popen(["sh", "-c", script], cwd=tmp_path, start_new_session=True)
    deadline = time.monotonic() + 30
    while not (tmp_path / "ready").exists() and m.proc.poll() is None:
        assert time.monotonic() < deadline, "the stand-in never got ready"
        time.sleep(0.02)
    return m


@pytest.mark.parametrize(
    ("script", "steps", "code"),
    [
        ("touch ready; sleep 300", ["sigterm"], -signal.SIGTERM),
        ("trap '' TERM; touch ready; sleep 300 & wait", ["sigkill"], -signal.SIGKILL),
        ("exit 3", [], 3),  # gone before the shutdown: it ended by itself
    ],
)
def test_shutdown_records_the_step_that_ended_it(
    tmp_path: Path, script: str, steps: list[str], code: int
) -> None:
    m = _stand_in(tmp_path, script)
    assert m.shutdown(timeout=1.0) == code
    assert m.shutdown_steps == steps
    assert not m.rundir.exists()


def test_an_exit_just_after_the_wait_is_the_step_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded host: the wait after SIGTERM gives up just as the process goes. The exit is
    the SIGTERM's; no SIGKILL is sent to a process that is gone."""
    m = _stand_in(tmp_path, "touch ready; sleep 300")
    real_wait = m.wait_exit

    def gives_up_as_it_goes(timeout: float) -> int | None:
        real_wait(30)
        return None

    monkeypatch.setattr(m, "wait_exit", gives_up_as_it_goes)
    m.shutdown(timeout=1.0)
    assert m.shutdown_steps == ["sigterm"]
