"""Fault injection with real QEMU: each fault is named, classified, and nothing is lost."""

from __future__ import annotations

import errno
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import (
    DATA,
    ROOT,
    TWO,
    KmatrixRun,
    junit_cases,
    kmatrix_pytest_argv,
    only_run,
    qemu_left_after,
    qemu_pids,
    run_kmatrix_pytest,
    started,
    wait_for,
)
from kmatrix.config.specs import Cell
from kmatrix.errors import GuestDied
from kmatrix.guest.guest import Guest
from kmatrix.guest.session import GuestSession
from kmatrix.vm.console import ConsoleRecorder
from kmatrix.vm.machine import private_rundir

CASES = DATA / "faultcases" / "test_faults_guest.py"


def run_case(tmp_path: Path, k: str, tmpdir: Path) -> KmatrixRun:
    return run_kmatrix_pytest(
        [CASES], tmp_path / "reports", "-k", k, "--rootdir", str(ROOT),
        junit=tmp_path / "junit.xml", tmpdir=tmpdir, timeout=600,
    )  # fmt: skip


def consoles(cell_dir: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in sorted(cell_dir.glob("console*.log")))


@pytest.mark.boot
def test_sigkilled_qemu_errors_and_keeps_the_console(tmp_path: Path, private_tmp: Path) -> None:
    """No kmatrix_clean test selected, so no snapshot: the tests after the death error."""
    run = run_case(tmp_path, "sigkill or test_b_after", private_tmp)
    res = run.cases()  # parses: the JUnit file is well-formed
    for cell in ("deb-6.1-cloud/Nehalem/virtio", "deb-6.12-cloud/Haswell/virtio"):
        kind, text, _ = res[f"test_a_sigkill_qemu[{cell}]"]
        assert kind == "error", (kind, text)
        assert "killed by signal 9" in text
        kind, text, _ = res[f"test_b_after[{cell}]"]
        assert kind == "error", (kind, text)
        assert "the VM is gone" in text
    assert "before-the-kill" in consoles(run.reports / "cells" / "deb-6.1-cloud__Nehalem__virtio")
    assert qemu_pids(str(private_tmp)) == []
    assert run.proc.returncode == 1
    assert {r["outcome"] for r in run.results()["results"]} == {"error"}


@pytest.mark.boot
def test_vm_death_with_a_snapshot_restores_it_for_the_rest(
    tmp_path: Path, private_tmp: Path
) -> None:
    """A kmatrix_clean test in the cell has it saved after boot; after a VM death the
    remaining tests run on that state restored instead of erroring. The dead test keeps its
    error, diagnosis and console; the tests after it say what they ran on."""
    run = run_case(tmp_path, "Nehalem and (sigkill or test_b_after or test_c_clean)", private_tmp)
    res = run.cases()
    cell = "deb-6.1-cloud/Nehalem/virtio"
    kind, text, _ = res[f"test_a_sigkill_qemu[{cell}]"]
    assert kind == "error", (kind, text)
    assert "killed by signal 9" in text and "before-the-kill" in text  # diagnosis, console tail
    after = res[f"test_b_after[{cell}]"]
    assert after.outcome == "passed", after
    assert "killed by signal 9" in after.properties["kmatrix.restored_after"]
    clean = res[f"test_c_clean[{cell}]"]
    assert clean.outcome == "passed", clean
    assert clean.properties["kmatrix.clean_guest"].startswith("restored (")
    cell_dir = run.reports / "cells" / "deb-6.1-cloud__Nehalem__virtio"
    console = consoles(cell_dir)
    assert console.index("before-the-kill") < console.index("[kmatrix: restore 1 (after the VM")
    boot = json.loads((cell_dir / "boot.json").read_text())
    assert boot["restores"] == 2 and boot["restore_reasons"][0].startswith("after the VM died")
    outcomes = {r["test"].rsplit("::", 1)[1]: r["outcome"] for r in run.results()["results"]}
    assert outcomes == {"test_a_sigkill_qemu": "error", "test_b_after": "passed",
                        "test_c_clean": "passed"}  # fmt: skip
    assert qemu_pids(str(private_tmp)) == []


@pytest.mark.boot
def test_panic_fails_with_title_and_trace(tmp_path: Path, private_tmp: Path) -> None:
    run = run_case(tmp_path, "panic and 6.12", private_tmp)
    kind, text, _ = run.cases()["test_a_panic[deb-6.12-cloud/Haswell/virtio]"]
    assert kind == "failure", (kind, text)
    assert "panic: Kernel panic - not syncing: sysrq triggered crash" in text
    findings = json.loads(
        (run.reports / "cells" / "deb-6.12-cloud__Haswell__virtio" / "findings.json").read_text()
    )
    panic = [f for f in findings if f["kind"] == "panic"]
    assert panic and "Call Trace" in panic[0]["excerpt"], findings


@pytest.mark.boot
def test_sigstopped_qemu_is_an_error_and_killed(tmp_path: Path, private_tmp: Path) -> None:
    t0 = time.monotonic()
    run = run_case(tmp_path, "sigstop and Nehalem", private_tmp)
    kind, text, _ = run.cases()["test_a_sigstop_qemu[deb-6.1-cloud/Nehalem/virtio]"]
    assert kind == "error", (kind, text)
    assert "QEMU is stopped" in text
    assert qemu_pids(str(private_tmp)) == []
    assert time.monotonic() - t0 < 120


@pytest.mark.boot
def test_userspace_hang_times_out_within_deadline_plus_grace(
    tmp_path: Path, private_tmp: Path
) -> None:
    run = run_case(tmp_path, "hang and Nehalem", private_tmp)
    kind, text, _ = run.cases()["test_a_userspace_hang[deb-6.1-cloud/Nehalem/virtio]"]
    assert kind == "failure", (kind, text)
    assert "no reply within 9s (guest deadline 4s + 5s grace)" in text
    assert "stopped answering while QEMU runs" in text


@pytest.mark.boot
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_pytest_kills_every_qemu(tmp_path: Path, private_tmp: Path, sig: int) -> None:
    mine = str(private_tmp)
    reports, junit = tmp_path / "reports", tmp_path / "junit.xml"
    argv = kmatrix_pytest_argv(
        [CASES], reports, "-k", "slow_guest", "--rootdir", str(ROOT), junit=junit
    )
    cell_dir = reports / "cells" / "deb-6.1-cloud__Nehalem__virtio"
    with started(argv, private_tmp) as p:
        # The guest is inside its long command: the interrupt finds a busy agent.
        wait_for("the slow guest command", lambda: "slow-guest-running" in consoles(cell_dir), 120)
        p.send_signal(sig)
        left = qemu_left_after(mine, 10.0)  # the deadline counts from the signal
        assert left == [], f"QEMU {left} still ran 10 s after the signal"
        # Only a hang fails this: the machine may be loaded and pytest still writes reports.
        assert p.wait(timeout=120) != 0
    assert qemu_pids(mine) == []
    doc = json.loads((reports / "results.json").read_text())
    assert doc["run"]["interrupted"] is True
    junit_cases(junit)  # parses: the interrupted run's JUnit is well-formed


def test_interrupted_command_closes_the_session(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while the guest runs a command: the agent stays busy with it, so the session must
    refuse the next command at once (teardown's dmesg once held QEMU for 25 s)."""
    host, agent = socket.socketpair()
    session = GuestSession(host, "t")

    def interrupted(*args: object, **kw: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(session._child, "expect", interrupted)
    with pytest.raises(KeyboardInterrupt):
        session.run("sleep 120", timeout=150)
    assert agent.recv(100).startswith(b"KMX 1 150 ")  # the command did reach the agent
    assert session.closed is True
    with pytest.raises(GuestDied, match="session is closed"):
        session.run("dmesg", timeout=20)
    session.close()
    agent.close()


def test_console_flood_is_capped_in_memory_and_on_disk(tmp_path: Path) -> None:
    """100 MB through the recorder: file and memory bounded, the tail kept after a marker."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = tmp_path / "c.sock"
    server.bind(str(path))
    server.listen(1)
    rec = ConsoleRecorder(tmp_path / "console.log", head_cap=1 << 20, tail_cap=256 << 10)

    def feed() -> None:
        conn, _ = server.accept()
        block = b"x" * 65535 + b"\n"
        for _ in range(1600):  # 100 MiB
            conn.sendall(block)
        conn.sendall(b"THE-END\n")
        conn.close()

    t = threading.Thread(target=feed)
    t.start()
    rec.connect(path, 5.0)
    peak = 0
    while t.is_alive():
        peak = max(peak, len(rec._tail))
        time.sleep(0.001)
    t.join()
    rec.close()
    data = (tmp_path / "console.log").read_bytes()
    assert rec.total == 1600 * 65536 + 8
    assert peak <= (256 << 10) + (1 << 16)
    assert len(data) < (1 << 20) + (256 << 10) + 200
    assert b"[kmatrix: console output truncated:" in data
    assert data.endswith(b"THE-END\n")


def test_console_write_failure_keeps_draining(tmp_path: Path) -> None:
    """A full disk stops the log, not the reading: a console nobody drains blocks the guest's
    UART (once every command then ran into its deadline)."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(tmp_path / "c.sock"))
    server.listen(1)
    rec = ConsoleRecorder(tmp_path / "console.log")

    class FullDisk:
        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    rec._file = FullDisk()  # type: ignore[assignment]
    sent: list[int] = []

    def feed() -> None:
        conn, _ = server.accept()
        conn.settimeout(60)  # far more than the socket buffers hold, if nobody reads
        block = b"y" * 65536
        with conn:
            for _ in range(64):  # 4 MiB
                conn.sendall(block)
                sent.append(len(block))

    t = threading.Thread(target=feed)
    t.start()
    rec.connect(tmp_path / "c.sock", 5.0)
    t.join(90)
    rec.close()
    server.close()
    assert sum(sent) == 64 * 65536, "the recorder stopped reading after the failed write"
    assert rec.error is not None and "No space left on device" in rec.error
    assert rec.total == 64 * 65536


@pytest.mark.boot
def test_console_flood_from_a_real_guest(cloud61: Cell, tmp_path: Path) -> None:
    g = Guest(cloud61, tmp_path / "cell", accel="tcg")
    g.start()
    assert g.recorder is not None
    g.recorder.head_cap, g.recorder.tail_cap = 64 << 10, 16 << 10
    try:
        assert g.session is not None
        r = g.session.run(
            "head -c 400000 /dev/zero | tr '\\0' y > /dev/ttyS0; echo FLOOD-END > /dev/ttyS0",
            timeout=120,
        )
        assert r.exit_status == 0
        assert g.session.run("echo still-here").stdout == "still-here\n"
    finally:
        g.stop()
    text = g.console_log.read_text()
    assert g.record.console_dropped > 300000
    assert "console output truncated" in text
    assert text.rstrip().endswith("FLOOD-END")
    assert len(text) < 100 << 10


def test_private_run_directories() -> None:
    a, b = private_rundir(), private_rundir()
    try:
        assert a != b
        assert stat.S_IMODE(os.stat(a).st_mode) == 0o700
    finally:
        a.rmdir()
        b.rmdir()


@pytest.mark.boot
def test_disk_full_is_an_error_and_junit_survives(tmp_path: Path, private_tmp: Path) -> None:
    reports = tmp_path / "reports"
    reports.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "kmatrix-test", str(reports)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        run = run_case(tmp_path, "fill_the_disk and Nehalem", private_tmp)
        res = run.cases()  # JUnit lives elsewhere and is whole
        kind, text, _ = res["test_a_fill_the_disk[deb-6.1-cloud/Nehalem/virtio]"]
        assert kind == "error", (kind, text, run.log)
        assert "No space left on device" in text
        console = reports / "cells" / "deb-6.1-cloud__Nehalem__virtio" / "console.log"
        assert console.stat().st_size > 100_000  # the partial log survived
        assert qemu_pids(str(private_tmp)) == []
    finally:
        subprocess.run(["umount", "-l", str(reports)], check=False)


@pytest.mark.boot
@pytest.mark.parametrize("workers", ["1", "default"])
def test_sigterm_to_kmatrix_run_stops_the_run(
    tmp_path: Path, private_tmp: Path, workers: str
) -> None:
    """CI cancels the job by signalling `kmatrix run`, not its pytest child: sequentially, and
    with the default xdist workers (one per CPU: both cells boot at once here)."""
    mine = str(private_tmp)
    reports = tmp_path / "reports"
    argv = [sys.executable, "-m", "kmatrix.cli", "run", "-m", str(TWO), "--accel", "tcg",
            "--reports", str(reports), "--", "-k", "boot", "-p", "no:cacheprovider"]  # fmt: skip
    if workers != "default":
        argv[argv.index("--reports") : argv.index("--reports")] = ["--workers", workers]
    with started(argv, private_tmp) as p:
        wait_for("the first cell to boot", lambda: qemu_pids(mine), 120)
        p.send_signal(signal.SIGTERM)
        left = qemu_left_after(mine, 10.0)  # the deadline counts from the signal
        assert left == [], f"QEMU {left} still ran 10 s after the signal"
        assert p.wait(timeout=120) != 0  # only a hang fails this, not a slow machine
    assert qemu_pids(mine) == []
    doc = json.loads((only_run(reports) / "results.json").read_text())
    assert doc["run"]["interrupted"] is True
    assert not (reports / "latest").exists()  # an interrupted run is not the latest complete one
    if workers == "1":
        # The second cell never started: the run stopped instead of carrying on.
        assert all(r["cell"] == "deb-6.1-cloud/Nehalem/virtio" for r in doc["results"]), doc[
            "results"
        ]
