"""Dead-guest verdicts: the monitor's registers parsed, the progress rules, and real QEMU
boots of four-byte "kernels" (multiboot images made here) that halt, spin on one
instruction, idle, or keep computing: only the first two may be cut short."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from conftest import kernel_args_61, two_with
from kmatrix.config.specs import Cell, Matrix
from kmatrix.guest.guest import BootFailure, Guest
from kmatrix.kernels import load_matrix
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.vm.liveness import (
    EFLAGS_IF,
    ProgressWatch,
    Sample,
    Symbolizer,
    VcpuState,
    parse_registers,
)

# Two vCPUs as QEMU 7.2 prints them: CPU 0 in 64-bit mode, halted with interrupts off;
# CPU 1 an AP still waiting for its start-up IPI (real mode, EIP, halted).
REGISTERS = """\r
CPU#0\r
RAX=0000000000000000 RBX=0000000000000001 RCX=0000000000000000 RDX=0000000000000000\r
RSI=0000000000000000 RDI=0000000000000000 RBP=0000000000000000 RSP=ffffc90000003f10\r
R8 =0000000000000000 R9 =0000000000000000 R10=0000000000000000 R11=0000000000000000\r
R12=0000000000000000 R13=0000000000000000 R14=0000000000000000 R15=0000000000000000\r
RIP=ffffffff8103d023 RFL=00000046 [---Z-P-] CPL=0 II=0 A20=1 SMM=0 HLT=1\r
ES =0000 0000000000000000 00000000 00000000\r
\r
CPU#1\r
EAX=00000000 EBX=00000000 ECX=00000000 EDX=00060fb1\r
ESI=00000000 EDI=00000000 EBP=00000000 ESP=00000000\r
EIP=0000fff0 EFL=00000202 [-------] CPL=0 II=0 A20=1 SMM=0 HLT=1\r
ES =0000 00000000 0000ffff 00009300\r
"""


def test_parse_registers() -> None:
    cpu0, cpu1 = parse_registers(REGISTERS)
    assert (cpu0.index, cpu0.ip, cpu0.halted, cpu0.interrupts) == (
        0,
        0xFFFFFFFF8103D023,
        True,
        False,
    )
    assert cpu0.dead_halt and dict(cpu0.registers)["RBX"] == 1 and "R8" in dict(cpu0.registers)
    assert (cpu1.index, cpu1.ip, cpu1.interrupts, cpu1.dead_halt) == (1, 0xFFF0, True, False)
    assert parse_registers("garbage") == []


def vcpu(ip: int, halted: bool = False, interrupts: bool = True, rax: int = 0) -> VcpuState:
    return VcpuState(0, ip, EFLAGS_IF if interrupts else 0, halted, (("RAX", rax),))


def feed(watch: ProgressWatch, *samples: tuple[float, VcpuState, float, int]) -> list[str | None]:
    return [watch.feed(Sample(at, (v,), cpu, con)) for at, v, cpu, con in samples]


def test_halted_with_interrupts_off_is_dead_after_a_second() -> None:
    dead = vcpu(0x1000, halted=True, interrupts=False)
    got = feed(ProgressWatch(), (0.0, dead, 0.0, 10), (0.5, dead, 0.0, 10), (1.0, dead, 0.0, 10))
    assert got[:2] == [None, None] and "halted with interrupts off" in str(got[2])


def test_idle_or_moving_guests_are_never_dead() -> None:
    idle = vcpu(0x1000, halted=True, interrupts=True)
    w = ProgressWatch()
    assert not any(feed(w, *[(t, idle, 0.01 * t, 0) for t in range(20)]))
    # Registers that change (a counter in RAX) are progress, however long it takes.
    w = ProgressWatch()
    assert not any(feed(w, *[(t, vcpu(0x2000, rax=t), 1.0 * t, 0) for t in range(20)]))


def test_stuck_needs_cpu_time_and_silence() -> None:
    spin = vcpu(0x3000)
    # A host too loaded to run QEMU: no CPU time spent, no verdict.
    assert not any(feed(ProgressWatch(), *[(t, spin, 0.0, 0) for t in range(10)]))
    # Console output between samples resets the evidence.
    assert not any(feed(ProgressWatch(), *[(t, spin, 2.0 * t, t) for t in range(10)]))
    got = feed(ProgressWatch(), *[(t, spin, 2.0 * t, 0) for t in range(3)])
    assert got[-1] is not None and "registers unchanged over 4.0s" in got[-1]


def test_symbolizer(tmp_path: Path) -> None:
    m = tmp_path / "System.map"
    m.write_text(
        "ffffffff81000000 T _stext\nffffffff81000100 t helper\nffffffff81000200 D data\n"
        "ffffffff81000300 T _etext\n"
    )
    sym = Symbolizer.from_system_map(m)
    assert sym is not None
    assert sym(0xFFFFFFFF81000123) == "helper+0x23"
    assert sym(0x1000) == "" and sym(0xFFFFFFFF81000400) == ""
    stub = tmp_path / "stub.map"  # Debian's: one line pointing at the -dbg package
    stub.write_text("ffffffffffffffff B The real System.map is in the linux-image-dbg package\n")
    assert Symbolizer.from_system_map(stub) is None


# --- real QEMU: tiny multiboot "kernels" -------------------------------------------------------

LOAD = 0x100000
PROGRAMS = {
    "halt": bytes.fromhex("faf4ebfd"),  # cli; hlt; jmp back: how Linux halts
    "spin": bytes.fromhex("ebfe"),  # jmp . (interrupts off: multiboot enters with IF=0)
    # PIC masked (no IDT to take the BIOS timer), then sti; hlt: idle, waiting for an interrupt.
    "idle": bytes.fromhex("b0ffe621e6a1fbf4ebfd"),
    "count": bytes.fromhex("40ebfd"),  # inc eax; jmp back: busy and changing: progress
}


def multiboot_image(path: Path, code: bytes) -> Path:
    """A flat multiboot v1 image (the a.out kludge: load and entry addresses in the header)."""
    magic, flags = 0x1BADB002, 1 << 16
    header = struct.pack(
        "<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF, LOAD, LOAD, 0, 0, LOAD + 32
    )
    path.write_bytes(header + code)
    return path


def guest_for(cell: Cell, program: str, tmp_path: Path) -> Guest:
    image = multiboot_image(tmp_path / f"{program}.bin", PROGRAMS[program])
    g = Guest(cell, tmp_path / program, accel="tcg")
    g.kernel = KernelArtifact(program, image, image, "multiboot", "", None, None)
    g.initrd = image  # any file: the "kernel" never reads it
    g.record.channel = "virtio"
    return g


def boot_verdict(g: Guest, timeout: float) -> str:
    try:
        g._boot("tcg", timeout)
    except BootFailure as e:
        return str(e)
    finally:
        g.stop(collect=False)
    raise AssertionError("a four-byte kernel reached userspace")


@pytest.fixture
def cell(two: Matrix) -> Cell:
    return two.cell("deb-6.1-cloud/Nehalem/virtio")


@pytest.mark.boot
@pytest.mark.parametrize(
    ("program", "verdict"),
    [
        ("halt", "every vCPU halted with interrupts off"),
        ("spin", "every vCPU stuck: registers unchanged"),
    ],
)
def test_dead_boot_gets_its_verdict_before_the_timeout(
    cell: Cell, tmp_path: Path, program: str, verdict: str
) -> None:
    why = boot_verdict(guest_for(cell, program, tmp_path), timeout=300)
    assert "stopped making progress before userspace" in why and verdict in why, why
    assert "no answer from userspace within" not in why
    print(why.splitlines()[0])


@pytest.mark.boot
@pytest.mark.parametrize("program", ["idle", "count"])
def test_live_boot_is_waited_for_until_the_timeout(
    cell: Cell, tmp_path: Path, program: str
) -> None:
    why = boot_verdict(guest_for(cell, program, tmp_path), timeout=8)
    assert "no answer from userspace within 8s" in why, why


@pytest.mark.boot
@pytest.mark.parametrize(
    ("args", "why"),
    [
        # Without ACPI, Linux cannot power off: it prints "reboot: System halted" and halts.
        ("[acpi=off]", "the kernel halted instead of powering off: '[ "),
        # The same without the console line (loglevel=0): the vCPU states tell.
        ("[acpi=off, loglevel=0]", "every vCPU halted with interrupts off"),
    ],
)
def test_a_kernel_that_halts_at_poweroff_is_stopped(tmp_path: Path, args: str, why: str) -> None:
    m = load_matrix(two_with(tmp_path / "m.yaml", kernel_args_61(args)))
    g = Guest(m.cell("deb-6.1-cloud/Nehalem/virtio"), tmp_path / "out", accel="tcg")
    g.start()
    try:
        assert not g.poweroff(timeout=600)
    finally:
        g.stop()
    assert why in g.record.stopped, g.record.stopped
    assert g.record.poweroff_clean is False
    print(
        f"stopped {g.record.poweroff_seconds:.2f}s after the poweroff request: {g.record.stopped}"
    )
