"""Real boots in QEMU (TCG): the command channel, QMP, poweroff, boot failures, cleanup."""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import qemu_pids
from kmatrix.config.specs import Cell
from kmatrix.errors import ArtifactError
from kmatrix.guest.guest import BootFailure, Guest
from kmatrix.guest.session import CommandFailed, CommandResult


def test_boot_record(booted61: Guest, cloud61: Cell) -> None:
    r = booted61.record
    assert r.accel == "tcg"
    assert r.channel == "virtio"  # the 6.1 cloud kernel has virtio_console as a module
    assert r.boot_seconds is not None and 0 < r.boot_seconds < cloud61.boot_timeout
    assert r.userspace_uptime is not None and r.userspace_uptime > 0
    assert r.launches == 1
    assert booted61.kernel is not None
    assert booted61.kernel.release == "6.1.0-57-cloud-amd64"
    assert booted61.kernel.boot_image.suffix == ".elf"  # the PVH vmlinux, not the bzImage


def test_stdout_stderr_status(booted61: Guest) -> None:
    assert booted61.session is not None
    r = booted61.session.run("echo out; echo err >&2; exit 7")
    assert (r.stdout, r.stderr, r.exit_status) == ("out\n", "err\n", 7)
    with pytest.raises(CommandFailed, match="status 1"):
        booted61.session.run("false", check=True)


def test_output_is_exact_and_binary_safe(booted61: Guest) -> None:
    s = booted61.session
    assert s is not None
    # Marker-like text and every byte value pass through unchanged.
    r = s.run("printf 'KMX-END 1 0\\nKMX-OUT 2\\n'")
    assert r.stdout == "KMX-END 1 0\nKMX-OUT 2\n"
    big = s.run("head -c 300000 /dev/zero | tr '\\0' 'a'; echo")
    assert big.stdout == "a" * 300000 + "\n"
    journal: list[CommandResult] = []
    saved, s.on_command = s.on_command, lambda r, tmo: journal.append(r)
    try:
        s.write_file("/tmp/blob", bytes(range(256)))
    finally:
        s.on_command = saved
    md5 = "e2c865db4162bed963bfaa9ef6ac18f0"
    assert s.run("md5sum /tmp/blob | cut -d' ' -f1").stdout.strip() == md5
    # The journal (what reproduce.sh replays) has a shell command writing the same bytes.
    (entry,) = journal
    assert s.run(entry.command.replace("/tmp/blob", "/tmp/blob2"), check=True).ok
    assert s.run("md5sum /tmp/blob2 | cut -d' ' -f1").stdout.strip() == md5


def test_printk_never_mixes_into_output(booted61: Guest) -> None:
    s = booted61.session
    assert s is not None
    r = s.run("for i in 1 2 3 4 5; do echo kmatrix-noise-$i > /dev/kmsg; echo line$i; done")
    assert r.stdout == "".join(f"line{i}\n" for i in range(1, 6))
    assert "kmatrix-noise-3" in s.dmesg()


def test_guest_side_timeout_kills_the_command(booted61: Guest) -> None:
    s = booted61.session
    assert s is not None
    r = s.run("sleep 30", timeout=1)
    assert r.exit_status == 137  # SIGKILL from the guest-side deadline
    assert r.duration < 30  # not run to its end
    assert s.run("echo alive").stdout == "alive\n"


def test_qmp(booted61: Guest) -> None:
    status = booted61.qmp("query-status")
    assert status["status"] == "running"
    cpus = booted61.qmp("query-cpus-fast")
    assert len(cpus) == booted61.cell.smp


@pytest.mark.boot
def test_poweroff_and_no_leftover(cloud61: Cell, tmp_path: Path) -> None:
    g = Guest(cloud61, tmp_path / "cell", accel="tcg")
    g.start()
    try:
        assert g.poweroff(timeout=30) is True
        assert g.record.exitcode == 0
    finally:
        g.stop()
    assert g.machine is not None and not g.machine.is_running()
    assert not g.machine.rundir.exists()  # private sockets directory removed
    assert (tmp_path / "cell" / "console.log").is_file()


@pytest.mark.boot
def test_kill_leaves_nothing(
    cloud61: Cell, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    g = Guest(cloud61, tmp_path / "cell", accel="tcg")
    g.start()
    assert g.machine is not None and g.machine.proc is not None
    pid = g.machine.proc.pid
    # A loaded host can hold the harness back for a while between two steps of stop(). The
    # guest must still be running when QEMU is told to quit: closing the agent channel first
    # made the guest power itself off in that gap, and the quit was never recorded.
    shutdown = g.machine.shutdown

    def held_back_shutdown(timeout: float = 5.0) -> int | None:
        time.sleep(2)
        return shutdown(timeout)

    monkeypatch.setattr(g.machine, "shutdown", held_back_shutdown)
    g.stop()  # the guest still runs: quit via QMP
    assert g.machine.shutdown_steps == ["qmp-quit"]
    assert pid not in qemu_pids()


@pytest.mark.boot
def test_unbootable_kernel_fails_with_console_tail(cloud61: Cell, tmp_path: Path) -> None:
    # No init in the initramfs and no root device: the kernel panics before userspace.
    cell = replace(cloud61, kernel_args=("rdinit=/nonexistent",), boot_timeout=60)
    g = Guest(cell, tmp_path / "cell", accel="tcg")
    with pytest.raises(BootFailure) as e:
        g.start()
    g.stop()
    text = str(e.value)
    assert "did not reach userspace" in text
    assert "Kernel panic - not syncing" in text
    assert g.machine is not None and not g.machine.is_running()


def test_missing_and_corrupt_kernel_are_input_errors(cloud61: Cell, tmp_path: Path) -> None:
    junk = tmp_path / "bzImage"
    junk.write_bytes(b"#!/bin/sh\necho not a kernel\n" * 100)
    spec = replace(cloud61.kernel, source="image", location=str(junk), release=None)
    g = Guest(replace(cloud61, kernel=spec), tmp_path / "cell", accel="tcg")
    with pytest.raises(ArtifactError, match="not a Linux kernel image"):
        g.prepare()
    assert g.machine is None  # nothing was launched
    gone = replace(spec, location=str(tmp_path / "absent"))
    g = Guest(replace(cloud61, kernel=gone), tmp_path / "cell2", accel="tcg")
    with pytest.raises(ArtifactError, match="not found"):
        g.prepare()


def test_declared_release_is_checked(cloud61: Cell, tmp_path: Path) -> None:
    spec = replace(cloud61.kernel, release="6.1.0-99-cloud-amd64")
    g = Guest(replace(cloud61, kernel=spec), tmp_path / "cell", accel="tcg")
    with pytest.raises(ArtifactError, match=r"declares release '6\.1\.0-99-cloud-amd64'"):
        g.prepare()


@pytest.mark.boot
def test_build_tree_and_image_sources_boot(cloud61: Cell, tmp_path: Path) -> None:
    """A kernel build tree (arch/x86/boot/bzImage + .config) and a bare image path with
    modules and config both resolve and boot; the release comes from the image header."""
    import shutil

    from kmatrix.kernels.artifact import resolve

    deb = resolve(cloud61.kernel)
    assert deb.modules_dir is not None and deb.config_path is not None
    tree = tmp_path / "linux"
    (tree / "arch/x86/boot").mkdir(parents=True)
    shutil.copyfile(deb.image, tree / "arch/x86/boot/bzImage")
    shutil.copyfile(deb.config_path, tree / ".config")
    tree_spec = replace(
        cloud61.kernel, source="tree", location=str(tree), modules=deb.modules_dir, release=None
    )
    image_spec = replace(
        cloud61.kernel,
        source="image",
        location=str(deb.image),
        modules=deb.modules_dir.parent,
        config=deb.config_path,
        release=None,
    )
    for spec in (tree_spec, image_spec):
        g = Guest(replace(cloud61, kernel=spec), tmp_path / spec.source, accel="tcg")
        g.start()
        try:
            assert g.session is not None
            assert g.session.run("uname -r").stdout.strip() == "6.1.0-57-cloud-amd64"
            assert g.record.channel == "virtio"  # modules found: virtio_console loaded
        finally:
            g.stop()
