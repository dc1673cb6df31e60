"""The QEMU command line of a cell: a pure function, checked against reference files.

Nothing here reads the disk or the environment, so the same inputs always give the same
argv and tests/data/argv/*.txt pin it down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kmatrix.config.specs import Cell
from kmatrix.vm.devices import lower, memory_arg, numa_args, scratch_disk_args
from kmatrix.vm.qemuopts import cpu, escape, option

AGENT_PORT_NAME = "org.kmatrix.agent"
QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class BootPaths:
    kernel: Path
    initrd: Path
    console_log: Path
    qmp_socket: Path
    agent_socket: Path
    console_socket: Path | None = None  # None: QEMU writes console_log itself (shell mode)
    scratch_disk: Path | None = None  # the host file behind the profile's scratch disk
    # Read-only disks for the cells that need them (kmatrix.guest.datadisk, kmatrix.guest.disks):
    # (serial, image file).
    extra_disks: tuple[tuple[str, Path], ...] = ()


def kernel_cmdline(cell: Cell, channel: str, shell: bool = False) -> str:
    args = [
        "console=ttyS0",
        # quiet keeps TCG from spending seconds on emulated UART writes; the whole ring
        # buffer is still read over the agent (dmesg), and panics reach the console anyway.
        "quiet",
        "panic=-1",  # with -no-reboot, a panic ends QEMU at once instead of hanging
        # On a loaded host an emulated guest can miss the 8254 timer check and panic
        # ("IO-APIC + timer doesn't work!"); the check proves nothing about the kernel.
        "no_timer_check",
        "rdinit=/init",
        f"kmatrix.channel={channel}",
    ]
    if shell:
        args.append("kmatrix.shell=1")
    # The matrix's, the kernel's and the profile's, then what the profile's devices need.
    extra = lower(cell.device).kernel_args[len(cell.device.kernel_args) :]
    args.extend(cell.kernel_args)
    args.extend(extra)
    return " ".join(args)


def _socket(chardev_id: str, path: Path) -> str:
    return option("socket", (("id", chardev_id), ("path", path), ("server", "on"), ("wait", "off")))


def build_argv(
    cell: Cell,
    paths: BootPaths,
    accel: str,
    channel: str,
    shell: bool = False,
    qemu: str = QEMU_BINARY,
    sandbox: bool = True,
) -> list[str]:
    """argv for one boot of the cell. accel is 'kvm' or 'tcg'; channel 'virtio' or 'serial'."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, got {accel!r}")
    if channel not in ("virtio", "serial"):
        raise ValueError(f"channel must be virtio or serial, got {channel!r}")
    dev = cell.device
    layout = lower(dev)
    argv = [
        qemu,
        "-name",
        option(f"kmatrix:{cell.id}", (("debug-threads", "on"),)),
        "-machine",
        option(dev.machine, layout.machine_props),
        "-accel",
        # One host thread for all vCPUs under TCG: multi-threaded TCG lets vCPUs see
        # half-patched kernel text (int3 oopses in static-key patching during boot were
        # seen here), and it was also faster on these loaded 2-core hosts.
        "tcg,thread=single" if accel == "tcg" else accel,
        "-cpu",
        cpu(cell.cpu.model),
        "-smp",
        str(cell.smp),
        "-m",
        memory_arg(cell),
        *numa_args(cell),
        # No default NIC, VGA, floppy or CD-ROM: nothing the profile did not ask for.
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
    ]
    if sandbox:
        # seccomp: QEMU may not exec, change privileges or use obsolete syscalls.
        argv += [
            "-sandbox",
            "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny",
        ]
    argv += [
        "-kernel",
        str(paths.kernel),
        "-initrd",
        str(paths.initrd),
        "-append",
        kernel_cmdline(cell, channel, shell),
    ]
    if shell:
        # The developer's terminal is the console; QEMU still logs every byte to the file.
        argv += [
            "-chardev",
            option(
                "stdio",
                (("id", "con"), ("mux", "on"), ("signal", "off"), ("logfile", paths.console_log)),
            ),
        ]
    elif paths.console_socket is not None:
        # The harness drains the console through this socket into a size-capped log.
        argv += ["-chardev", _socket("con", paths.console_socket)]
    else:
        argv += ["-chardev", option("file", (("id", "con"), ("path", paths.console_log)))]
    argv += [
        "-serial",
        "chardev:con",
        "-chardev",
        _socket("qmp", paths.qmp_socket),
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        _socket("agent", paths.agent_socket),
    ]
    if channel == "virtio":
        argv += [
            "-device",
            "virtio-serial-pci,id=kmx-vser",
            "-device",
            f"virtserialport,bus=kmx-vser.0,chardev=agent,name={AGENT_PORT_NAME}",
        ]
    else:
        argv += ["-serial", "chardev:agent"]  # ttyS1, never the printk console
    for g in layout.globals:
        # DRIVER.PROP=VALUE: QEMU takes everything after the first '=' as the value, so
        # it is not escaped; the loader checked driver and property names.
        argv += ["-global", g]
    for o in layout.objects:
        argv += ["-object", option(o.qom_type, (("id", o.id), *o.props))]
    for d in layout.devices:
        argv += ["-device", option(d.driver, ((("id", d.id),) if d.id else ()) + d.props)]
    disk = dev.scratch_disk
    if disk is not None:
        if paths.scratch_disk is None:
            raise ValueError(f"profile {dev.name} has a scratch disk but no file was given for it")
        argv += scratch_disk_args(disk, paths.scratch_disk)
    # Left to itself QEMU plugs a device into the last bus made, which on a profile with
    # NUMA host bridges (pxb-pcie) takes only bridges: the data disks go on the root bus.
    on_root = ",bus=pcie.0" if any(d.driver == "pxb-pcie" for d in layout.devices) else ""
    for i, (serial, image) in enumerate(paths.extra_disks):
        node = f"kmx-ro{i}"
        argv += [
            "-blockdev",
            f"node-name={node},driver=raw,read-only=on,file.driver=file,"
            f"file.filename={escape(image)},file.read-only=on",
            "-device",
            f"virtio-blk-pci,drive={node},serial={escape(serial)}{on_root}",
        ]
    return argv
