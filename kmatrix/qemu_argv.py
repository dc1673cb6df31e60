"""The QEMU command line of a cell: a pure function, checked against reference files.

Nothing here reads the disk or the environment, so the same inputs always give the same
argv and tests/data/argv/*.txt pin it down.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kmatrix.matrix import Cell

AGENT_PORT_NAME = "org.kmatrix.agent"
QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class BootPaths:
    kernel: Path
    initrd: Path
    console_log: Path
    qmp_socket: Path
    agent_socket: Path


def _props(pairs: tuple[tuple[str, str], ...]) -> str:
    # QEMU escapes a comma inside an option value by doubling it.
    return "".join(f",{k}={v.replace(',', ',,')}" for k, v in pairs)


def kernel_cmdline(cell: Cell, channel: str, shell: bool = False) -> str:
    args = [
        "console=ttyS0",
        # quiet keeps TCG from spending seconds on emulated UART writes; the whole ring
        # buffer is still read over the agent (dmesg), and panics reach the console anyway.
        "quiet",
        "panic=-1",  # with -no-reboot, a panic ends QEMU at once instead of hanging
        "rdinit=/init",
        f"kmatrix.channel={channel}",
    ]
    if shell:
        args.append("kmatrix.shell=1")
    args.extend(cell.kernel_args)
    return " ".join(args)


def build_argv(
    cell: Cell,
    paths: BootPaths,
    accel: str,
    channel: str,
    shell: bool = False,
    qemu: str = QEMU_BINARY,
) -> list[str]:
    """argv for one boot of the cell. accel is 'kvm' or 'tcg'; channel 'virtio' or 'serial'."""
    if accel not in ("kvm", "tcg"):
        raise ValueError(f"accel must be kvm or tcg, got {accel!r}")
    if channel not in ("virtio", "serial"):
        raise ValueError(f"channel must be virtio or serial, got {channel!r}")
    dev = cell.device
    argv = [
        qemu,
        "-name",
        f"kmatrix:{cell.id},debug-threads=on",
        "-machine",
        dev.machine + _props(dev.machine_props),
        "-accel",
        accel,
        "-cpu",
        cell.cpu.model,
        "-smp",
        str(cell.smp),
        "-m",
        f"{cell.memory}M",
        # No default NIC, VGA, floppy or CD-ROM: nothing the profile did not ask for.
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
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
            f"stdio,id=con,mux=on,signal=off,logfile={paths.console_log}",
        ]
    else:
        argv += ["-chardev", f"file,id=con,path={paths.console_log}"]
    argv += [
        "-serial",
        "chardev:con",
        "-chardev",
        f"socket,id=qmp,path={paths.qmp_socket},server=on,wait=off",
        "-mon",
        "chardev=qmp,mode=control",
        "-chardev",
        f"socket,id=agent,path={paths.agent_socket},server=on,wait=off",
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
    for g in dev.globals:
        argv += ["-global", g]
    for o in dev.objects:
        argv += ["-object", f"{o.qom_type},id={o.id}{_props(o.props)}"]
    for d in dev.devices:
        ident = f",id={d.id}" if d.id else ""
        argv += ["-device", f"{d.driver}{ident}{_props(d.props)}"]
    return argv
