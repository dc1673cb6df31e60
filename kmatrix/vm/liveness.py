"""Is a guest still making progress? Decided from what QEMU can tell while the guest is silent.

A booting kernel under TCG can be quiet for many seconds (`quiet`, slow probing), so silence
alone proves nothing, and a slow boot must never be cut short. What does prove a guest dead:

* every vCPU halted with interrupts off (HLT with EFLAGS.IF clear): only an NMI, SMI or INIT
  could wake it, and nothing will send one. That is how x86 Linux halts (`reboot: System
  halted`: cli; hlt on every CPU) and how its early exception path gives up;
* every vCPU's whole register state (instruction pointer, flags and general registers)
  unchanged while QEMU kept burning CPU time: a `jmp .` loop. Registers, not only the
  instruction pointer, because a long `rep movs` stays on one instruction while its counters
  move; QEMU's CPU time, because on a loaded host a vCPU that was not scheduled has not run.

Any console output, or any vCPU state change, resets the evidence. The registers come from
the monitor's `info registers -a` (QMP `query-cpus-fast` has no instruction pointer on x86).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

# Two samples of "halted with interrupts off" this far apart (wall time) are a verdict: a
# vCPU that is merely idle halts with interrupts on.
HALTED_SECONDS = 1.0
# Unchanged registers over this much QEMU CPU time (and 3 samples at least) are a verdict.
STUCK_CPU_SECONDS = 1.5
SAMPLE_INTERVAL = 0.5

_CPU_HEAD = re.compile(r"^CPU#(\d+)", re.MULTILINE)
_IP = re.compile(r"\b(?:RIP|EIP)=([0-9a-f]+)\s+(?:RFL|EFL)=([0-9a-f]+)")
_HLT = re.compile(r"\bHLT=([01])")
_GPR = re.compile(r"\b(R[A-Z0-9]{1,2}|E[A-Z]{2}) ?=([0-9a-f]+)")
EFLAGS_IF = 1 << 9


@dataclass(frozen=True)
class VcpuState:
    index: int
    ip: int
    flags: int
    halted: bool
    registers: tuple[tuple[str, int], ...]  # general registers, in the monitor's order

    @property
    def interrupts(self) -> bool:
        return bool(self.flags & EFLAGS_IF)

    @property
    def dead_halt(self) -> bool:
        return self.halted and not self.interrupts


def parse_registers(text: str) -> list[VcpuState]:
    """`info registers -a` output -> one VcpuState per vCPU (none if unparsable)."""
    text = text.replace("\r", "")
    heads = list(_CPU_HEAD.finditer(text))
    out = []
    for i, h in enumerate(heads):
        block = text[h.end() : heads[i + 1].start() if i + 1 < len(heads) else len(text)]
        ip, hlt = _IP.search(block), _HLT.search(block)
        if ip is None or hlt is None:
            continue
        regs = tuple((k, int(v, 16)) for k, v in _GPR.findall(block.split("\nES =")[0]))
        out.append(
            VcpuState(int(h.group(1)), int(ip.group(1), 16), int(ip.group(2), 16),
                      hlt.group(1) == "1", regs)
        )  # fmt: skip
    return out


@dataclass(frozen=True)
class Sample:
    at: float  # host monotonic seconds
    vcpus: tuple[VcpuState, ...]
    qemu_cpu_seconds: float  # QEMU's CPU time (all threads) so far
    console_bytes: int  # console bytes received so far


class ProgressWatch:
    """Fed one Sample at a time; says why the guest is dead once the evidence is enough."""

    def __init__(
        self,
        halted_seconds: float = HALTED_SECONDS,
        stuck_cpu_seconds: float = STUCK_CPU_SECONDS,
        symbolize: Symbolizer | None = None,
    ) -> None:
        self.halted_seconds = halted_seconds
        self.stuck_cpu_seconds = stuck_cpu_seconds
        self.symbolize = symbolize
        self._streak: list[Sample] = []  # consecutive samples with the same vCPU states

    def feed(self, s: Sample) -> str | None:
        """None while the guest may still be progressing, else what stopped it."""
        if not s.vcpus:
            self._streak = []
            return None
        first = self._streak[0] if self._streak else None
        if first is None or s.vcpus != first.vcpus or s.console_bytes != first.console_bytes:
            self._streak = [s]
            return None
        self._streak.append(s)
        if all(v.dead_halt for v in s.vcpus) and s.at - first.at >= self.halted_seconds:
            return f"every vCPU halted with interrupts off ({self._where(s.vcpus)})"
        burnt = s.qemu_cpu_seconds - first.qemu_cpu_seconds
        if len(self._streak) >= 3 and burnt >= self.stuck_cpu_seconds:
            return (
                f"every vCPU stuck: registers unchanged over {burnt:.1f}s of QEMU CPU time "
                f"({self._where(s.vcpus)})"
            )
        return None

    def _where(self, vcpus: Sequence[VcpuState]) -> str:
        parts = []
        for v in vcpus:
            state = "halted" if v.halted else "running"
            state += ", interrupts " + ("on" if v.interrupts else "off")
            sym = self.symbolize(v.ip) if self.symbolize else ""
            parts.append(f"vCPU {v.index} at {v.ip:#x}{f' {sym}' if sym else ''} ({state})")
        return "; ".join(parts)


class Symbolizer:
    """Names kernel text addresses from a System.map (only valid for an unrelocated kernel)."""

    def __init__(self, symbols: Sequence[tuple[int, str]]) -> None:
        self._syms = sorted(symbols)

    @classmethod
    def from_system_map(cls, path: Path) -> Symbolizer | None:
        try:
            lines = path.read_text(errors="replace").splitlines()
        except OSError:
            return None
        syms = []
        for ln in lines:
            parts = ln.split()
            if len(parts) == 3 and parts[1] in "tTwW" and len(parts[1]) == 1:
                try:
                    syms.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        return cls(syms) if syms else None

    def __call__(self, addr: int) -> str:
        """'func+0x12' when addr is in kernel text, else ''."""
        lo, hi = 0, len(self._syms)
        while lo < hi:
            mid = (lo + hi) // 2
            if self._syms[mid][0] <= addr:
                lo = mid + 1
            else:
                hi = mid
        if lo == 0 or lo == len(self._syms):
            return ""  # before the first text symbol or past the last: not kernel text
        base, name = self._syms[lo - 1]
        return f"{name}+{addr - base:#x}"


def process_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc; 0.0 if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
