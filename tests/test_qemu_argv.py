"""QEMU command lines against reference files in tests/data/argv/.

Regenerate after an intended change with KMATRIX_REGEN_REFS=1 and review the diff.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from kmatrix.matrix import Cell, load_matrix, load_profile
from kmatrix.qemu_argv import BootPaths, build_argv, kernel_cmdline

ROOT = Path(__file__).resolve().parent.parent
REFS = Path(__file__).parent / "data" / "argv"
PATHS = BootPaths(
    kernel=Path("/cache/vmlinux/abc.elf"),
    initrd=Path("/cache/images/initramfs-123.cpio"),
    console_log=Path("/reports/cells/x/console.log"),
    qmp_socket=Path("/tmp/kmx-run/qmp.sock"),
    agent_socket=Path("/tmp/kmx-run/agent.sock"),
    console_socket=Path("/tmp/kmx-run/console.sock"),
    scratch_disk=Path("/tmp/kmx-run/disk0.img"),
)


def _cell(cell_id: str) -> Cell:
    return load_matrix(ROOT / "matrix" / "default.yaml").cell(cell_id)


CASES = {
    "virtio-tcg": ("deb-6.12-cloud/Haswell/virtio", "tcg", "virtio", False),
    "gpu-virtio-tcg": ("deb-6.12-generic/Skylake-Server/gpu-virtio", "tcg", "virtio", False),
    "serial-channel-kvm": ("deb-6.1-cloud/Nehalem/virtio", "kvm", "serial", False),
    "shell": ("deb-6.1-cloud/Haswell/virtio", "tcg", "virtio", True),
}


def render(argv: list[str]) -> str:
    # One argument per line, options joined to their values, for readable diffs.
    lines: list[str] = []
    for a in argv:
        if lines and lines[-1].startswith("-") and not a.startswith("-"):
            lines[-1] += " " + a
        else:
            lines.append(a)
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("name", sorted(CASES))
def test_argv_matches_reference(name: str) -> None:
    cell_id, accel, channel, shell = CASES[name]
    text = render(build_argv(_cell(cell_id), PATHS, accel, channel, shell=shell))
    ref = REFS / f"{name}.txt"
    if os.environ.get("KMATRIX_REGEN_REFS"):
        ref.write_text(text)
    assert ref.is_file(), f"no reference {ref}; run with KMATRIX_REGEN_REFS=1"
    assert text == ref.read_text()


def test_memory_hotplug_argv_matches_reference() -> None:
    """-m gains slots and maxmem; the scratch disk becomes a -blockdev and its device."""
    profile = load_profile(ROOT / "matrix" / "devices" / "virtio-memhp.yaml")
    cell = dataclasses.replace(_cell("deb-6.12-cloud/Haswell/virtio"), device=profile)
    argv = build_argv(cell, PATHS, "tcg", "virtio")
    assert argv[argv.index("-m") + 1] == "1024M,slots=2,maxmem=4096M"
    text = render(argv)
    ref = REFS / "virtio-memhp-tcg.txt"
    if os.environ.get("KMATRIX_REGEN_REFS"):
        ref.write_text(text)
    assert text == ref.read_text()


def test_scratch_disk_needs_a_file() -> None:
    cell = _cell("deb-6.12-cloud/Haswell/virtio")
    assert cell.device.scratch_disk is not None
    with pytest.raises(ValueError, match="scratch disk"):
        build_argv(cell, dataclasses.replace(PATHS, scratch_disk=None), "tcg", "virtio")


def test_argv_is_pure() -> None:
    cell = _cell("deb-6.12-cloud/Haswell/virtio")
    assert build_argv(cell, PATHS, "tcg", "virtio") == build_argv(cell, PATHS, "tcg", "virtio")


def test_console_log_file_without_socket() -> None:
    cell = _cell("deb-6.12-cloud/Haswell/virtio")
    plain = BootPaths(PATHS.kernel, PATHS.initrd, PATHS.console_log, PATHS.qmp_socket,
                      PATHS.agent_socket, scratch_disk=PATHS.scratch_disk)  # fmt: skip
    argv = build_argv(cell, plain, "tcg", "virtio", sandbox=False)
    assert "file,id=con,path=/reports/cells/x/console.log" in argv
    assert "-sandbox" not in argv


def test_no_network_and_no_defaults() -> None:
    argv = build_argv(_cell("deb-6.12-cloud/Haswell/virtio"), PATHS, "tcg", "virtio")
    assert "-nodefaults" in argv
    assert not any(a.startswith(("-net", "-nic", "-netdev")) for a in argv)
    assert "-no-reboot" in argv


def test_profile_devices_in_order() -> None:
    argv = build_argv(_cell("deb-6.12-generic/Haswell/gpu-virtio"), PATHS, "tcg", "virtio")
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert devices[-2:] == [
        "pcie-root-port,id=rp1,bus=pcie.0,chassis=1,slot=1",
        "virtio-gpu-pci,id=gpu0,bus=rp1",
    ]


def test_cmdline_carries_channel_and_shell() -> None:
    cell = _cell("deb-6.1-cloud/Haswell/virtio")
    assert "kmatrix.channel=serial" in kernel_cmdline(cell, "serial").split()
    assert "kmatrix.shell=1" in kernel_cmdline(cell, "virtio", shell=True).split()
    assert "kmatrix.shell=1" not in kernel_cmdline(cell, "virtio").split()


def test_bad_accel_and_channel_rejected() -> None:
    cell = _cell("deb-6.1-cloud/Haswell/virtio")
    with pytest.raises(ValueError, match="accel"):
        build_argv(cell, PATHS, "hvf", "virtio")
    with pytest.raises(ValueError, match="channel"):
        build_argv(cell, PATHS, "tcg", "pigeon")
