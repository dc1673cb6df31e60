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
    console_socket: Path | None = None  # None: QEMU writes console_log itself (shell mode)
    scratch_disk: Path | None = None  # the host file behind the profile's scratch disk


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
        # On a loaded host an emulated guest can miss the 8254 timer check and panic
        # ("IO-APIC + timer doesn't work!"); the check proves nothing about the kernel.
        "no_timer_check",
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
    sandbox: bool = True,
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
        # One host thread for all vCPUs under TCG: multi-threaded TCG lets vCPUs see
        # half-patched kernel text (int3 oopses in static-key patching during boot were
        # seen here), and it was also faster on these loaded 2-core hosts.
        "tcg,thread=single" if accel == "tcg" else accel,
        "-cpu",
        cell.cpu.model,
        "-smp",
        str(cell.smp),
        "-m",
        _memory(cell),
        *_numa(cell),
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
            f"stdio,id=con,mux=on,signal=off,logfile={paths.console_log}",
        ]
    elif paths.console_socket is not None:
        # The harness drains the console through this socket into a size-capped log.
        argv += ["-chardev", f"socket,id=con,path={paths.console_socket},server=on,wait=off"]
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
    disk = dev.scratch_disk
    if disk is not None:
        if paths.scratch_disk is None:
            raise ValueError(f"profile {dev.name} has a scratch disk but no file was given for it")
        node = f"{disk.id}-blk"
        path = str(paths.scratch_disk).replace(",", ",,")
        argv += ["-blockdev", f"node-name={node},driver=raw,file.driver=file,file.filename={path}"]
        props = disk.props
        if not any(k == "serial" for k, _ in props):
            props += (("serial", f"kmx-{disk.id}"),)  # how the guest finds the disk
        argv += ["-device", f"{disk.driver},id={disk.id},drive={node}{_props(props)}"]
    return argv


def _memory(cell: Cell) -> str:
    hp = cell.device.memory_hotplug
    if hp is None:
        return f"{cell.memory}M"
    return f"{cell.memory}M,slots={hp.slots},maxmem={hp.maxmem}M"


def _numa(cell: Cell) -> list[str]:
    """Guest NUMA nodes: memory split evenly (node 0 takes the remainder), vCPUs in blocks.

    A node may get no vCPU (smp < nodes): a memory-only node, as on some real machines."""
    nodes = cell.device.numa_nodes
    if not nodes:
        return []
    argv: list[str] = []
    share = cell.memory // nodes
    for k in range(nodes):
        mib = share + (cell.memory - share * nodes if k == 0 else 0)
        argv += ["-object", f"memory-backend-ram,id=kmx-numa{k},size={mib}M"]
        # Ceiling division: with fewer vCPUs than nodes the low nodes get them.
        first, last = -(-k * cell.smp // nodes), -(-(k + 1) * cell.smp // nodes) - 1
        cpus = (
            "" if last < first else f",cpus={first}" if first == last else f",cpus={first}-{last}"
        )
        argv += ["-numa", f"node,nodeid={k},memdev=kmx-numa{k}{cpus}"]
    return argv
