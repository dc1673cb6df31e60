"""Fault injection with real QEMU: each fault is named, classified, and nothing is lost."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import DATA, ROOT, qemu_pids
from kmatrix.console import ConsoleRecorder
from kmatrix.guest import Guest
from kmatrix.machine import private_rundir
from kmatrix.matrix import Cell

CASES = DATA / "faultcases" / "test_faults_guest.py"
TWO = DATA / "matrices" / "two.yaml"


def run_case(
    tmp_path: Path, k: str, tmpdir: Path
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    reports, junit = tmp_path / "reports", tmp_path / "junit.xml"
    argv = [
        sys.executable, "-m", "pytest", str(CASES), "-p", "kmatrix", f"--kmatrix-matrix={TWO}",
        f"--kmatrix-reports={reports}", f"--junitxml={junit}", "-p", "no:cacheprovider",
        "-o", "junit_family=xunit1", "-k", k, "--rootdir", str(ROOT),
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    p = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    return p, reports, junit


def outcomes(junit: Path) -> dict[str, tuple[str, str]]:
    out = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        kind, text = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                kind, text = child.tag, (child.get("message") or "") + (child.text or "")
        out[str(tc.get("name"))] = (kind, text)
    return out


def test_sigkilled_qemu_errors_and_keeps_the_console(tmp_path: Path, private_tmp: Path) -> None:
    p, reports, junit = run_case(tmp_path, "sigkill or test_b_after", private_tmp)
    res = outcomes(junit)  # parses: the JUnit file is well-formed
    for cell in ("deb-6.1-cloud/Nehalem/virtio", "deb-6.12-cloud/Haswell/virtio"):
        kind, text = res[f"test_a_sigkill_qemu[{cell}]"]
        assert kind == "error", (kind, text)
        assert "killed by signal 9" in text
        kind, text = res[f"test_b_after[{cell}]"]
        assert kind == "error", (kind, text)
        assert "the VM is gone" in text
    cell_dir = reports / "cells" / "deb-6.1-cloud__Nehalem__virtio"
    consoles = "".join(p.read_text() for p in sorted(cell_dir.glob("console*.log")))
    assert "before-the-kill" in consoles
    assert qemu_pids(str(private_tmp)) == []
    assert p.returncode == 1
    doc = json.loads((reports / "results.json").read_text())
    assert {r["outcome"] for r in doc["results"]} == {"error"}


def test_panic_fails_with_title_and_trace(tmp_path: Path, private_tmp: Path) -> None:
    _, reports, junit = run_case(tmp_path, "panic and 6.12", private_tmp)
    kind, text = outcomes(junit)["test_a_panic[deb-6.12-cloud/Haswell/virtio]"]
    assert kind == "failure", (kind, text)
    assert "panic: Kernel panic - not syncing: sysrq triggered crash" in text
    findings = json.loads(
        (reports / "cells" / "deb-6.12-cloud__Haswell__virtio" / "findings.json").read_text()
    )
    panic = [f for f in findings if f["kind"] == "panic"]
    assert panic and "Call Trace" in panic[0]["excerpt"], findings


def test_sigstopped_qemu_is_an_error_and_killed(tmp_path: Path, private_tmp: Path) -> None:
    t0 = time.monotonic()
    _, _, junit = run_case(tmp_path, "sigstop and 6.1", private_tmp)
    kind, text = outcomes(junit)["test_a_sigstop_qemu[deb-6.1-cloud/Nehalem/virtio]"]
    assert kind == "error", (kind, text)
    assert "QEMU is stopped" in text
    assert qemu_pids(str(private_tmp)) == []
    assert time.monotonic() - t0 < 120


def test_userspace_hang_times_out_within_deadline_plus_grace(
    tmp_path: Path, private_tmp: Path
) -> None:
    _, _, junit = run_case(tmp_path, "hang and 6.1", private_tmp)
    kind, text = outcomes(junit)["test_a_userspace_hang[deb-6.1-cloud/Nehalem/virtio]"]
    assert kind == "failure", (kind, text)
    assert "no reply within 9s (guest deadline 4s + 5s grace)" in text
    assert "stopped answering while QEMU runs" in text


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_to_pytest_kills_every_qemu(tmp_path: Path, private_tmp: Path, sig: int) -> None:
    mine = str(private_tmp)
    reports = tmp_path / "reports"
    argv = [
        sys.executable, "-m", "pytest", str(CASES), "-p", "kmatrix", f"--kmatrix-matrix={TWO}",
        f"--kmatrix-reports={reports}", f"--junitxml={tmp_path / 'junit.xml'}",
        "-p", "no:cacheprovider", "-k", "slow_guest", "--rootdir", str(ROOT),
    ]  # fmt: skip
    env = {**os.environ, "TMPDIR": mine}
    p = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.monotonic() + 120
    while not list(reports.glob("cells/*/commands.log")) or not qemu_pids(mine):
        assert time.monotonic() < deadline, "the first cell never booted"
        time.sleep(0.2)
    time.sleep(1.0)
    p.send_signal(sig)
    t0 = time.monotonic()
    p.wait(timeout=30)
    while qemu_pids(mine) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert qemu_pids(mine) == [], "QEMU outlived pytest by 10 s"
    doc = json.loads((reports / "results.json").read_text())
    assert doc["run"]["interrupted"] is True
    ET.parse(tmp_path / "junit.xml")


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
        p, _, junit = run_case(tmp_path, "fill_the_disk and 6.1", private_tmp)
        res = outcomes(junit)  # JUnit lives elsewhere and is whole
        kind, text = res["test_a_fill_the_disk[deb-6.1-cloud/Nehalem/virtio]"]
        assert kind == "error", (kind, text, p.stdout[-2000:])
        assert "No space left on device" in text
        console = reports / "cells" / "deb-6.1-cloud__Nehalem__virtio" / "console.log"
        assert console.stat().st_size > 100_000  # the partial log survived
        assert qemu_pids(str(private_tmp)) == []
    finally:
        subprocess.run(["umount", "-l", str(reports)], check=False)


def test_sigterm_to_kmatrix_run_stops_the_run(tmp_path: Path, private_tmp: Path) -> None:
    """CI cancels the job by signalling `kmatrix run`, not its pytest child."""
    mine = str(private_tmp)
    reports = tmp_path / "reports"
    argv = [sys.executable, "-m", "kmatrix.cli", "run", "-m", str(TWO), "--accel", "tcg",
            "--reports", str(reports), "--", "-k", "boot", "-p", "no:cacheprovider"]  # fmt: skip
    env = {**os.environ, "TMPDIR": mine}
    p = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.monotonic() + 120
    while not qemu_pids(mine):
        assert time.monotonic() < deadline, "the first cell never booted"
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) != 0
    t0 = time.monotonic()
    while qemu_pids(mine) and time.monotonic() - t0 < 10:
        time.sleep(0.1)
    assert qemu_pids(mine) == [], "QEMU outlived the run by 10 s"
    doc = json.loads((reports / "results.json").read_text())
    assert doc["run"]["interrupted"] is True
    # The second cell never started: the run stopped instead of carrying on.
    assert all(r["cell"] == "deb-6.1-cloud/Nehalem/virtio" for r in doc["results"]), doc["results"]
