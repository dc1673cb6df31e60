"""QEMU command lines against reference files in tests/data/argv/.

Regenerate after an intended change with KMATRIX_REGEN_REFS=1 and review the diff.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import time
from pathlib import Path

import pytest

from kmatrix.config.profiles import load_profile
from kmatrix.config.specs import Cell
from kmatrix.kernels import load_matrix
from kmatrix.vm.argv import BootPaths, build_argv, kernel_cmdline

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
    # intel-iommu + split irqchip, a 1 GiB ivshmem BAR behind a root port, the 64-bit window
    "gpu-bar-stub-tcg": ("deb-6.12-generic/Haswell/gpu-bar-stub", "tcg", "virtio", False),
    # two NUMA nodes (memory backends, -numa), a pxb-pcie per node, four stubs spread over them
    "gpu-multi-tcg": ("deb-6.12-generic/Skylake-Server/gpu-multi", "tcg", "virtio", False),
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


def test_vfio_host_argv_matches_reference() -> None:
    """A host device goes behind its own root port as vfio-pci, after the vIOMMU."""
    profile = load_profile(ROOT / "matrix" / "devices" / "vfio-host.yaml")
    cell = dataclasses.replace(_cell("deb-6.12-generic/Haswell/gpu-bar-stub"), device=profile)
    argv = build_argv(cell, PATHS, "tcg", "virtio")
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    iommu = next(i for i, d in enumerate(devices) if d.startswith("intel-iommu"))
    vfio = next(i for i, d in enumerate(devices) if d.startswith("vfio-pci"))
    assert iommu < vfio and "host=0000:01:00.0" in devices[vfio]
    text = render(argv)
    ref = REFS / "vfio-host-tcg.txt"
    if os.environ.get("KMATRIX_REGEN_REFS"):
        ref.write_text(text)
    assert text == ref.read_text()


@pytest.mark.parametrize(
    ("memory", "smp", "nodes", "want"),
    [
        (1024, 2, 2, ["512M,cpus=0", "512M,cpus=1"]),
        (1000, 1, 3, ["334M,cpus=0", "333M", "333M"]),  # node 0 takes the remainder; no-CPU nodes
        (2048, 4, 2, ["1024M,cpus=0-1", "1024M,cpus=2-3"]),
    ],
)
def test_numa_split(memory: int, smp: int, nodes: int, want: list[str]) -> None:
    base = _cell("deb-6.12-generic/Skylake-Server/gpu-multi")
    cell = dataclasses.replace(
        base, memory=memory, smp=smp, device=dataclasses.replace(base.device, numa_nodes=nodes)
    )
    argv = build_argv(cell, PATHS, "tcg", "virtio")
    sizes = [a.split("size=")[1] for a in argv if a.startswith("memory-backend-ram,id=kmx-numa")]
    cpus = [a.partition("cpus=")[2] for a in argv if a.startswith("node,nodeid=")]
    got = [s + (f",cpus={c}" if c else "") for s, c in zip(sizes, cpus, strict=True)]
    assert got == want


def test_read_only_disks_for_the_cells_that_ask() -> None:
    """Each extra disk (kmatrix.guest.disks) is a read-only raw blockdev behind a virtio-blk
    device the guest finds by its serial; without one the command line is as before."""
    cell = _cell("deb-6.12-cloud/Haswell/virtio")
    disk = Path("/cache/disks/kmx-kselftest-1,2.cpio")
    argv = build_argv(cell, dataclasses.replace(PATHS, extra_disks=(("kmx-kselftest", disk),)),
                      "tcg", "virtio")  # fmt: skip
    plain = build_argv(cell, PATHS, "tcg", "virtio")
    assert argv[: len(plain)] == plain
    assert argv[len(plain) :] == [
        "-blockdev",
        "node-name=kmx-ro0,driver=raw,read-only=on,file.driver=file,"
        "file.filename=/cache/disks/kmx-kselftest-1,,2.cpio,file.read-only=on",
        "-device",
        "virtio-blk-pci,drive=kmx-ro0,serial=kmx-kselftest",
    ]


def test_paths_and_values_with_commas_are_escaped() -> None:
    """A reports or temporary directory with a comma stays one value (QEMU doubles commas)."""
    from kmatrix.config.specs import QemuDevice
    from kmatrix.vm.machine import Machine

    cell = _cell("deb-6.12-cloud/Haswell/virtio")
    dev = dataclasses.replace(
        cell.device, devices=(QemuDevice("virtio-rng-pci", "r9", (("bus", "a,b=c"),)),)
    )
    cell = dataclasses.replace(cell, device=dev)
    paths = BootPaths(
        kernel=PATHS.kernel, initrd=PATHS.initrd, console_log=Path("/rep,x/cells/c/console.log"),
        qmp_socket=Path("/tmp/kmx,run/qmp.sock"), agent_socket=Path("/tmp/kmx,run/agent.sock"),
        console_socket=Path("/tmp/kmx,run/console.sock"), scratch_disk=Path("/tmp/kmx,run/d.img"),
    )  # fmt: skip
    argv = build_argv(cell, paths, "tcg", "virtio")
    assert "socket,id=qmp,path=/tmp/kmx,,run/qmp.sock,server=on,wait=off" in argv
    assert "socket,id=agent,path=/tmp/kmx,,run/agent.sock,server=on,wait=off" in argv
    assert "virtio-rng-pci,id=r9,bus=a,,b=c" in argv
    assert any("file.filename=/tmp/kmx,,run/d.img" in a for a in argv)
    shell = build_argv(cell, paths, "tcg", "virtio", shell=True)
    assert "stdio,id=con,mux=on,signal=off,logfile=/rep,,x/cells/c/console.log" in shell
    # The machine finds its QMP socket in the escaped option.
    assert Machine(argv, Path("/x"), Path("/x/l"), "c")._qmp_socket() == paths.qmp_socket


def test_argv_builder_refuses_what_the_loader_would() -> None:
    """Options built in code get the same key check as profiles read from YAML."""
    from kmatrix.config.specs import QemuDevice

    cell = _cell("deb-6.12-cloud/Haswell/virtio")
    bad = QemuDevice("virtio-rng-pci", None, (("chardev=agent,x", "1"),))
    cell = dataclasses.replace(cell, device=dataclasses.replace(cell.device, devices=(bad,)))
    with pytest.raises(ValueError, match="not a QEMU property name"):
        build_argv(cell, PATHS, "tcg", "virtio")


def test_qemu_reads_an_escaped_path_as_one(tmp_path: Path) -> None:
    """QEMU itself: a chardev file path with a comma is created where it says."""
    from kmatrix.vm.qemuopts import escape, option

    d = tmp_path / "a,b=c"
    d.mkdir()
    log = d / "console.log"
    p = subprocess.Popen(
        ["qemu-system-x86_64", "-M", "none", "-display", "none", "-nodefaults", "-S",
         "-chardev", option("file", (("id", "c"), ("path", log))), "-serial", "chardev:c"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(200):
            if log.exists() or p.poll() is not None:
                break
            time.sleep(0.05)
        assert log.exists(), p.poll()
        assert list(tmp_path.iterdir()) == [d] and escape(log).count(",,") == 1
    finally:
        p.kill()
        p.wait()
