"""Snapshots of a just-booted guest: save, restore, and the kmatrix_clean marker.

The real-QEMU tests boot the 6.1 cloud cell of two.yaml (TCG); timings are printed, never
asserted (other QEMUs share the cores).
"""

from __future__ import annotations

import json
import os
import socket
import threading
from pathlib import Path
from typing import Any

import pytest

from conftest import DATA, ROOT, qemu_pids, run_kmatrix_pytest
from kmatrix.config.specs import Cell, Matrix
from kmatrix.errors import VMError
from kmatrix.guest.guest import Guest
from kmatrix.guest.lifecycle import CellPool
from kmatrix.pytest.collection import _plan_snapshots
from kmatrix.pytest.stash import POOL_KEY
from kmatrix.results.schema import BootRecord
from kmatrix.vm import snapshot
from kmatrix.vm.console import ConsoleRecorder

CLEAN_CASES = DATA / "cleancases" / "test_clean_guest.py"
FIND_DISK = (
    'for b in /sys/block/vd*; do [ "$(cat $b/serial 2>/dev/null)" = kmx-disk0 ] && '
    'echo "${b##*/}"; done'
)


# --- the pieces -------------------------------------------------------------------------------


def test_unnamed_file_leaves_no_name(tmp_path: Path) -> None:
    fd = snapshot.unnamed_file(str(tmp_path))
    try:
        os.write(fd, b"state")
        assert os.pread(fd, 5, 0) == b"state"
        assert list(tmp_path.iterdir()) == []
    finally:
        os.close(fd)


def test_copy_sparse_keeps_data_and_holes(tmp_path: Path) -> None:
    src = tmp_path / "disk.img"
    with src.open("wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"a" * 4096)
        f.seek(40 << 20)
        f.write(os.urandom(70000))
    dst = snapshot.unnamed_file(str(tmp_path))
    try:
        os.write(dst, b"old contents, longer than nothing" * 1000)  # must not survive
        with src.open("rb") as f:
            snapshot.copy_sparse(f.fileno(), dst)
        st = os.fstat(dst)
        assert st.st_size == 64 << 20
        assert os.pread(dst, 64 << 20, 0) == src.read_bytes()
        # Holes stay holes: far less than 64 MiB is allocated (tmpfs/ext4 count 512 B blocks).
        assert st.st_blocks * 512 < 4 << 20, st.st_blocks
    finally:
        os.close(dst)


def test_console_recorder_appends(tmp_path: Path) -> None:
    log = tmp_path / "console.log"
    log.write_bytes(b"before the restore\n")
    sock_path = tmp_path / "c.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)

    def feed() -> None:
        conn, _ = server.accept()
        conn.sendall(b"after\n")
        conn.close()

    t = threading.Thread(target=feed)
    t.start()
    rec = ConsoleRecorder(log, append=True)
    rec.connect(sock_path, 5.0)
    t.join()
    rec.close()
    server.close()
    assert log.read_bytes() == b"before the restore\nafter\n"


# --- CellPool's choice between restore and reboot (no QEMU) --------------------------------------


class FakeGuest:
    """What CellPool.clean touches on a Guest, with the restore's outcome scripted."""

    def __init__(self, restore: float | Exception | None, boot: float = 2.5) -> None:
        self.record = BootRecord(boot_seconds=boot, launches=1)
        self._restore = restore
        self.calls: list[str] = []

    @property
    def has_snapshot(self) -> bool:
        return self._restore is not None

    @property
    def alive(self) -> bool:
        return True

    def restore(self, reason: str) -> float:
        self.calls.append("restore")
        if isinstance(self._restore, Exception):
            raise self._restore
        assert self._restore is not None
        return self._restore

    def discard_snapshot(self) -> None:
        self.calls.append("discard")
        self._restore = None

    def save_dmesg(self, name: str) -> None:
        self.calls.append(f"dmesg {name}")

    def stop(self, collect: bool = True) -> None:
        self.calls.append("stop")

    def start(self) -> None:
        self.calls.append("start")

    def snapshot(self) -> bool:
        self.calls.append("snapshot")
        return False


def pool_with(cell: Cell, g: FakeGuest, tmp_path: Path) -> CellPool:
    pool = CellPool(tmp_path, accel="tcg", direct_boot=True)
    run = pool.run_of(cell)
    run.guest = g  # type: ignore[assignment]
    run.to_running()
    return pool


def test_clean_restores_while_faster_than_a_boot(cloud61: Cell, tmp_path: Path) -> None:
    g = FakeGuest(restore=0.4)
    pool = pool_with(cloud61, g, tmp_path)
    assert pool.clean(cloud61, "t1") == "restored (0.40s)"
    assert pool.clean(cloud61, "t2") == "restored (0.40s)"
    assert g.calls == ["restore", "restore"]


def test_clean_reboots_once_a_restore_was_slower(cloud61: Cell, tmp_path: Path) -> None:
    g = FakeGuest(restore=3.0, boot=2.5)
    pool = pool_with(cloud61, g, tmp_path)
    assert pool.clean(cloud61, "t1") == "restored (3.00s)"
    how = pool.clean(cloud61, "t2")
    assert how == "rebooted (a restore took 3.00s, the boot 2.50s: rebooting instead)"
    # The old boot's kernel log is kept; no second snapshot for a cell that reboots.
    assert g.calls == ["restore", "dmesg dmesg-boot-1.log", "stop", "start"]


def test_clean_reboots_when_a_restore_fails(cloud61: Cell, tmp_path: Path) -> None:
    g = FakeGuest(restore=VMError("restoring the snapshot failed: boom"))
    pool = pool_with(cloud61, g, tmp_path)
    how = pool.clean(cloud61, "t1")
    assert how == "rebooted (restoring failed: restoring the snapshot failed: boom)"
    assert g.calls[:2] == ["restore", "discard"] and g.calls[-2:] == ["stop", "start"]


def test_clean_without_snapshot_reboots(cloud61: Cell, tmp_path: Path) -> None:
    g = FakeGuest(restore=None)
    g.record.snapshot_error = "migration blocked by vfio-pci"
    pool = pool_with(cloud61, g, tmp_path)
    pool.plan_snapshot(cloud61)
    assert pool.clean(cloud61, "t1") == "rebooted (migration blocked by vfio-pci)"
    assert g.calls == ["dmesg dmesg-boot-1.log", "stop", "start", "snapshot"]


class FakeItem:
    def __init__(self, cell: Cell, clean: bool) -> None:
        self.callspec = type("CallSpec", (), {"params": {"cell": cell}})()
        self.clean = clean

    def get_closest_marker(self, name: str) -> object:
        return name if name == "kmatrix_clean" and self.clean else None


def test_snapshot_only_where_a_marked_test_follows_another(two: Matrix, tmp_path: Path) -> None:
    a, b = two.cells
    pool = CellPool(tmp_path, accel="tcg", direct_boot=True)
    config: Any = type("Config", (), {"stash": {POOL_KEY: pool}})()
    # Cell a: its marked test comes first (the fresh boot is clean); cell b: second.
    items = [FakeItem(a, True), FakeItem(a, False), FakeItem(b, False), FakeItem(b, True)]
    _plan_snapshots(config, items)  # type: ignore[arg-type]
    assert [c for c, r in pool.cells.items() if r.wants_snapshot] == [b.id]


# --- real QEMU ----------------------------------------------------------------------------------


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


@pytest.mark.boot
def test_restore_gives_the_just_booted_guest(cloud61: Cell, tmp_path: Path) -> None:
    g = Guest(cloud61, tmp_path / "cell", accel="tcg")
    g.start()
    pids: list[int] = []
    try:
        assert g.machine is not None and g.machine.proc is not None and g.session is not None
        pids.append(g.machine.proc.pid)
        assert g.snapshot(), g.record.snapshot_error
        assert g.record.snapshot_mib is not None and g.record.snapshot_mib > 1
        # Dirt in memory (a file in /tmp), on the console and on the scratch disk.
        dev = g.session.run(FIND_DISK, check=True).stdout.strip()
        assert dev, "no scratch disk with serial kmx-disk0"
        g.session.run(
            "echo dirt > /tmp/kmx-dirt; echo before-the-restore > /dev/ttyS0; "
            f"echo disk-dirt | dd of=/dev/{dev} conv=fsync 2>/dev/null",
            check=True,
        )
        assert g.scratch_disk is not None and g.scratch_disk.read_bytes()[:9] == b"disk-dirt"
        took = g.restore("a test")
        assert g.machine.proc is not None
        pids.append(g.machine.proc.pid)
        assert _gone(pids[0]), "the replaced QEMU still runs"
        print(f"boot {g.record.boot_seconds:.2f}s, restore {took:.2f}s")
        s = g.session
        assert s is not None
        assert s.run("test -e /tmp/kmx-dirt").exit_status == 1, "/tmp survived the restore"
        assert s.run("uname -r", check=True).stdout.strip() == "6.1.0-57-cloud-amd64"
        assert s.run(f"head -c 9 /dev/{dev}").stdout == "\0" * 9
        assert g.scratch_disk.read_bytes()[:9] == b"\0" * 9  # the disk as at the snapshot
        assert g.record.restores == 1 and g.record.restore_reasons == ["a test"]
        assert g.poweroff(timeout=60), g.record.exitcode
        # A state that does not load is an infra error, and its QEMU does not linger.
        assert g._snapshot is not None
        os.ftruncate(g._snapshot, 1 << 20)
        with pytest.raises(VMError, match="restoring the snapshot failed"):
            g.restore("a cut snapshot")
        assert not g.alive and g.record.restores == 1
        if g.machine is not None and g.machine.proc is not None:
            pids.append(g.machine.proc.pid)
    finally:
        g.stop()
    assert all(_gone(p) for p in pids)
    text = g.console_log.read_text()
    assert "before-the-restore" in text  # nothing written before the restore is lost
    assert text.index("before-the-restore") < text.index("[kmatrix: restore 1 (a test)")
    assert "reboot: Power down" in text.split("[kmatrix: restore 1")[1]
    assert (tmp_path / "cell" / "dmesg-before-restore-1.log").is_file()


@pytest.mark.boot
def test_marked_test_gets_a_clean_guest(tmp_path: Path, private_tmp: Path, two: Matrix) -> None:
    reports = tmp_path / "reports"
    run = run_kmatrix_pytest(
        [CLEAN_CASES], reports, "-k", "Nehalem", "--rootdir", str(ROOT),
        junit=tmp_path / "junit.xml", tmpdir=private_tmp, timeout=300,
    )  # fmt: skip
    cases = run.cases()
    cell = "deb-6.1-cloud/Nehalem/virtio"
    assert {n: c.outcome for n, c in cases.items()} == {
        f"test_a_dirty[{cell}]": "passed",
        f"test_b_clean[{cell}]": "passed",
        f"test_c_after[{cell}]": "passed",
    }, run.log
    how = cases[f"test_b_clean[{cell}]"].properties["kmatrix.clean_guest"]
    assert how.startswith("restored ("), how
    cell_dir = reports / "cells" / two.cell(cell).slug
    boot: dict[str, Any] = json.loads((cell_dir / "boot.json").read_text())
    print(f"runner: boot {boot['boot_seconds']:.2f}s, restore {boot['restore_seconds']}")
    assert boot["launches"] == 1 and boot["restores"] == 1
    assert boot["snapshot_error"] == "" and boot["snapshot_mib"] > 1
    assert "before-the-restore" in (cell_dir / "console.log").read_text()
    assert qemu_pids(str(private_tmp)) == []


def test_restore_without_snapshot_is_an_error(cloud61: Cell, tmp_path: Path) -> None:
    g = Guest(cloud61, tmp_path / "cell", accel="tcg")
    with pytest.raises(VMError, match="no snapshot to restore"):
        g.restore("a test")
