"""Find kernel crash reports (oopses, WARNs, lockups, sanitizer reports) in console logs.

The parser is a single forward pass over the log, so its cost is linear in the log size.
Titles follow syzkaller's conventions (pkg/report/linux.go) so that they stay stable across
runs of the same bug: the kind of report plus the first function of the report that is not
a helper (``divide error in kmx_crash_div``, ``BUG: unable to handle kernel NULL pointer
dereference in f``, ``WARNING: refcount bug in f``, ``possible deadlock in f``); addresses,
numbers, pids, CPU numbers and durations are removed, ``func+0x1a/0x40`` becomes ``func``;
a report with no symbol names the file and line (``WARNING in kernel/foo.c:12``).

Only kernel lines are scanned by default: those carrying a printk timestamp or a printk
caller id (``[    T123]``, ``[     C1]``), so userspace text printed on the same console is
never mistaken for a kernel report.  Lines that userspace writes to ``/dev/kmsg`` *are* part
of the kernel log and get a timestamp, so they are scanned like any other kernel line: the
parser cannot tell them apart (the /dev/kmsg reader in kmatrix.guest.kmsg can, by facility),
and a test that writes "BUG: ..." into the kernel log is treated as reporting a bug.  Use
``suppress`` to drop such titles.

Reports from two CPUs can interleave line by line.  When the kernel prints caller ids
(CONFIG_PRINTK_CALLER), the lines are split by caller first, so each report keeps its own
lines, excerpt and function; lines of another caller that continue a report (the NMI
backtraces an RCU stall asks other CPUs for) join the report that is open.  Without caller
ids, a new report header ends the open report; each still gets its own title.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "KINDS",
    "MAX_REPORT_LINES",
    "Finding",
    "findings_summary",
    "normalise_title",
    "parse_kernel_log",
]

KINDS: tuple[str, ...] = (
    "panic",
    "oops",
    "bug",
    "warning",
    "kasan",
    "kfence",
    "lockdep",
    "rcu_stall",
    "hung_task",
    "soft_lockup",
    "gpf",
    "ubsan",
    "invalid_opcode",
    "divide_error",
    "int3",
    "double_fault",
    "stack_overflow",
    "page_fault",
    "atomic_sleep",
    "refcount",
    "list_corruption",
    "oom",
)

MAX_REPORT_LINES = 200
_TITLE_MAX = 120
# Header text beyond this cannot reach a capped title; bounding it keeps regexes cheap.
_HEADER_MAX = 1000
# Lines after a header that may be free-form text (WARN messages, "echo 0 > ..." hints,
# bad-page dumps) before the report is expected to look like a register/stack dump.
_PREAMBLE_LINES = 10
# How many scanned lines a "cut here" marker waits for its WARNING/BUG header.
_CUT_HERE_WINDOW = 10


@dataclass(frozen=True)
class Finding:
    """One kernel report found in a log."""

    kind: str  # one of KINDS
    title: str  # normalised, stable across runs of the same bug, at most 120 characters
    line: int  # 1-based number of the report's first line; lines are split on "\n" only
    timestamp: float | None  # printk timestamp of that first line, if it has one
    excerpt: str  # the report's lines as in the log (without "\r"), at most MAX_REPORT_LINES
    caller: str | None = None  # printk caller id of the report ("T123", "C1"), if printed


# --- line splitting -----------------------------------------------------------------------

# "[   12.345678]" optionally followed by a CONFIG_PRINTK_CALLER id such as "[    T1]".
# Searched, not anchored: console prefixes, "<4>" levels and half-printed userspace lines
# can precede it.
_TS_RE = re.compile(r"\[\s*(\d+\.\d+)\](?:\[\s*([TC]\d+)\])?")
# printk.time=0 with caller ids: "[    T1] text" (anchored: a caller id alone is short).
_CALLER_RE = re.compile(r"^\s*(?:<\d>)?\[\s*([TC]\d+)\]")
_LEVEL_RE = re.compile(r"^\s*<\d>")


def _strip_space(msg: str) -> str:
    # printk separates the prefix from the message with exactly one space; further
    # indentation belongs to the message (stack frames).
    return (msg[1:] if msg.startswith(" ") else msg).rstrip()


def _split(line: str) -> tuple[bool, float | None, str | None, str]:
    """(is a kernel line, timestamp, caller id, message)."""
    m = _TS_RE.search(line)
    if m is not None:
        return True, float(m.group(1)), m.group(2), _strip_space(line[m.end() :])
    m = _CALLER_RE.match(line)
    if m is not None:
        return True, None, m.group(1), _strip_space(line[m.end() :])
    return False, None, None, _LEVEL_RE.sub("", line, count=1).rstrip()


# --- report headers -----------------------------------------------------------------------

# The die() headers of x86 traps (6.12 prefixes "Oops: "); after a BUG line they are part of
# the same report.
_DIE_KINDS = frozenset({"oops", "gpf", "invalid_opcode", "divide_error", "int3", "double_fault"})
# Kinds whose report goes on with a die() header line before its dump.
_ABSORBS_DIE = frozenset({"page_fault", "stack_overflow", "list_corruption", *_DIE_KINDS})

_HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"^Kernel panic - not syncing: ")),
    ("kasan", re.compile(r"^BUG: KASAN: ")),
    ("kfence", re.compile(r"^BUG: KFENCE: ")),
    ("soft_lockup", re.compile(r"^(?:watchdog: )?BUG: soft lockup\b")),
    # Hard lockups have no kind of their own; they come from the same lockup detector.
    ("soft_lockup", re.compile(r"^(?:watchdog: )?Watchdog detected hard LOCKUP\b")),
    ("stack_overflow", re.compile(r"^BUG: (?:\w+ )?stack guard page was hit at\b")),
    (
        "stack_overflow",
        re.compile(r"^(?:Oops: )?(?:kernel stack overflow \(double-fault\)|stack guard page): "),
    ),
    ("double_fault", re.compile(r"^PANIC: double fault\b")),
    (
        "page_fault",
        re.compile(
            r"^BUG: (?:unable to handle (?:kernel|page fault)|kernel NULL pointer dereference"
            r"|Kernel NULL pointer dereference)"
        ),
    ),
    (
        "atomic_sleep",
        re.compile(
            r"^BUG: (?:scheduling while atomic|sleeping function called from invalid context)"
        ),
    ),
    ("list_corruption", re.compile(r"^list_\w+ (?:corruption|double add)\b")),
    (
        "list_corruption",
        re.compile(r"^(?:kernel BUG at |WARNING: .*?\bat )(?:\S*/)?lib/list_debug\.c:"),
    ),
    ("refcount", re.compile(r"^WARNING: .*?\bat (?:\S*/)?lib/refcount\.c:")),
    ("bug", re.compile(r"^(?:kernel BUG at |BUG: )")),
    (
        "lockdep",
        re.compile(
            r"^WARNING: (?:possible circular locking dependency detected"
            r"|possible recursive locking detected"
            r"|possible irq lock inversion dependency detected"
            r"|inconsistent lock state"
            r"|\S+-safe -> \S+-unsafe lock order detected"
            r"|bad unlock balance detected"
            r"|held lock freed"
            r"|suspicious RCU usage"
            r"|lock held when returning to user space"
            r"|Nested lock was not taken)"
        ),
    ),
    ("warning", re.compile(r"^WARNING: ")),
    (
        "rcu_stall",
        re.compile(
            r"^(?:rcu: )?INFO: rcu_(?:preempt|sched|bh|tasks\w*) (?:self-)?detected"
            r"(?: expedited)? stall"
        ),
    ),
    ("hung_task", re.compile(r"^INFO: task \S.* blocked (?:in I/O wait )?for more than \d+ sec")),
    ("gpf", re.compile(r"^(?:Oops: )?general protection fault\b")),
    ("invalid_opcode", re.compile(r"^(?:Oops: )?invalid opcode:")),
    ("divide_error", re.compile(r"^(?:Oops: )?divide(?:_| )error: ")),
    ("int3", re.compile(r"^(?:Oops: )?int3: ")),
    ("double_fault", re.compile(r"^(?:Oops: )?double fault: ")),
    ("oops", re.compile(r"^(?:Internal error: )?Oops(?: -|:)")),
    # arm64's first oops line, followed by "Internal error: Oops: ...".
    ("oops", re.compile(r"^Unable to handle kernel ")),
    ("ubsan", re.compile(r"^UBSAN: ")),
    ("oom", re.compile(r"^\S.* invoked oom-killer: ")),
    ("oom", re.compile(r"^(?:Memory cgroup )?[Oo]ut of memory(?: \(\w+\))?: Kill")),
)

# Lines that start like a report but are plain informational messages (list from syzkaller).
_NOT_HEADERS = re.compile(
    r"^WARNING: (?:/etc/ssh/moduli does not exist"
    r"|workqueue cpumask: online intersect > possible intersect"
    r"|[Tt]he mand mount option"
    r"|Unsupported flag value"
    r"|Unprivileged eBPF is enabled"
    r"|fbcon: Driver"
    r"|See https"
    r"|kernel not compiled with CPU_SRSO)"
    r"|^BUG: no syscalls can create resource"
)

# Cheap pre-filter so most lines cost one regex search instead of a dozen.
_HINT_RE = re.compile(
    r"BUG|WARNING|Oops|panic|INFO: |protection fault|opcode|UBSAN|LOCKUP|Unable to handle"
    r"|error: |int3: |fault|stack guard|^list_|oom-killer|[Oo]ut of memory"
)

_CUT_HERE_RE = re.compile(r"^-+\[ cut here \]-+\s*$")
_CUT_HERE_ANY_RE = re.compile(r"-+\[ cut here \]-+")
_END_TRACE_RE = re.compile(r"^-+\[ end trace\b")
_END_PANIC_RE = re.compile(r"^-+\[ end Kernel panic\b")
_DELIM_RE = re.compile(r"^={20,}\s*$")
_BUG_AT_RE = re.compile(r"^kernel BUG at ")
_SANITIZER_RE = re.compile(r"^BUG: (?:KASAN|KFENCE|KMSAN|KCSAN): ")
_OOM_END_RE = re.compile(r"^(?:Memory cgroup )?[Oo]ut of memory(?: \(\w+\))?: Kill")


def _classify(msg: str) -> str | None:
    if _HINT_RE.search(msg) is None or _NOT_HEADERS.search(msg):
        return None
    for kind, pattern in _HEADERS:
        if pattern.search(msg):
            return kind
    return None


# --- report bodies ------------------------------------------------------------------------

_CONTINUATION_RE = re.compile(
    r"^(?:\s|$"
    r"|Call [Tt]race:|Modules linked in:|CPU:|Hardware name:|Tainted:|Not tainted"
    r"|R[A-Z0-9]{1,2}:|FS:|CS:|CR\d:|DR\d:|PKRU:|EFLAGS:|Code:|Workqueue:|task:|Stack:"
    r"|#PF:|PGD |P4D |PUD |PMD |PTE |Oops|Kernel Offset|Rebooting in|Shutting down cpus"
    r"|Sending NMI|NMI backtrace|Task dump for CPU|Dumping ftrace|\(ftrace buffer empty\)"
    r"|irq event stamp:|hardirqs |softirqs |Showing |INFO: lockdep is turned off"
    r"|stack backtrace:|Backtrace:|rcu:|\"echo 0 >|\? |-+\[ "
    r"|</?(?:TASK|IRQ|NMI|SOFTIRQ|EOI)>"
    r"|pc :|lr :|sp :|x\d+ *:|Internal error:|Mem abort info:|Data abort info:"
    r"|[A-Za-z_][\w.]*\+0x[0-9a-f]+/0x[0-9a-f]+)"
)
_DUMP_START_RE = re.compile(
    r"^(?:CPU:|Call [Tt]race:|Modules linked in:|Hardware name:|RIP:|stack backtrace:"
    r"|\s*<TASK>|task:)"
)
_TRACE_START_RE = re.compile(r"Call [Tt]race:|<TASK>|<IRQ>|stack backtrace:|Backtrace:")
_FRAME_RE = re.compile(r"^\s*(\? )?([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+")
_RIP_RE = re.compile(r"^\s*(?:RIP|pc) ?: ?(?:0010:)?(?:\[<[0-9a-f]+>\] )?([A-Za-z_][\w.]*)\+0x")
_LOCK_AT_RE = re.compile(r"\bat: ([A-Za-z_][\w.]*)\+0x")
_IRQ_OPEN_RE = re.compile(r"^\s*<(?:IRQ|NMI|SOFTIRQ)>")
_IRQ_CLOSE_RE = re.compile(r"^\s*</(?:IRQ|NMI|SOFTIRQ)>")

# Frames that report a bug rather than cause it (a subset of syzkaller's skip list): the
# first function of a report that matches none of these names it.
_HELPER_RE = re.compile(
    r"__sanitizer|__asan|kasan|kmsan|kcsan|check_memory_region|print_address_description"
    r"|print_report|panic|invalid_op|report_bug|fixup_bug|handle_bug|do_error|_trap$|do_trap"
    r"|^exc_|^asm_exc_|show_stack|dump_stack|walk_stack|dump_backtrace|warn_slowpath|^__warn"
    r"|warn_alloc|__might_resched|__might_sleep|might_sleep|might_fault|lockdep|lock_acquire"
    r"|lock_release|^refcount_|^kref_|list_add|list_del|list_replace|list_move|list_splice"
    r"|check_data_corruption|printk|^mem(?:cpy|set|move|cmp|chr)$|^str(?:len|cpy|ncpy|scpy|cmp)$"
    r"|copy_to_user|copy_from_user|^_raw_spin|^raw_spin|spin_lock|spin_unlock|^mutex_|^__mutex_"
    r"|^ubsan|__ubsan|^__schedule_bug|^schedule_debug"
)
# Where a task sleeps, not why (for scheduling while atomic and hung tasks).
_SLEEP_HELPER_RE = re.compile(
    r"schedul|^msleep|^ssleep|^usleep|^fsleep|sleep_range|^__cond_resched"
)
# Frames that say where the CPU was stuck or sleeping, not why (subset of syzkaller's lists).
_STALL_SKIP_RE = re.compile(
    r"^(?:asm_|sysvec_|__sysvec_|irq|rcu_|__rcu|watchdog|hrtimer|__hrtimer|tick_|update_process"
    r"|native_safe_halt|pv_native_safe_halt|default_idle|arch_cpu_idle|cpu_idle|do_idle"
    r"|acpi_idle|intel_idle|poll_idle|mwait_idle|cpu_startup_entry|delay_tsc|delay_halt"
    r"|__const_udelay|__udelay|__delay|cpu_relax|dump_stack|show_stack|nmi_|lapic_|smp_call"
    r"|_raw_spin|queued_spin|native_queued|__pv_queued|do_raw_spin)"
)
_HUNG_SKIP_RE = re.compile(
    r"sched|_lock|_slowlock|down|rwsem|completion|kthread|wait|synchronize|context_switch"
    r"|__switch_to|cancel_delayed_work|rcu_barrier|^msleep$|^ssleep$|^usleep|^fsleep$"
)
_FUNC_SUFFIX_RE = re.compile(r"(?:\.(?:isra|constprop|part|cold|llvm|lto_priv)(?:\.\w+)?)+$")


@dataclass
class _Report:
    kind: str
    start: int  # 0-based index of the first raw line of the excerpt
    header: str
    timestamp: float | None
    caller: str | None
    msgs: list[str] = field(default_factory=list)
    members: list[int] = field(default_factory=list)  # raw line indexes of this report
    last: int = 0
    in_trace: bool = False
    # Sanitizer/lockdep/OOM reports are free-form text up to a known delimiter.
    strict: bool = False
    strict_end: re.Pattern[str] | None = None
    absorbs_die: bool = False

    def add(self, index: int, msg: str) -> None:
        self.msgs.append(msg)
        self.members.append(index)
        self.last = index
        if not self.in_trace and _TRACE_START_RE.search(msg):
            self.in_trace = True


def _clean_func(name: str) -> str:
    return _FUNC_SUFFIX_RE.sub("", name)


def _task_frames(msgs: Sequence[str]) -> list[str]:
    """Reliable stack frames outside interrupt context, in print order."""
    frames: list[str] = []
    depth = 0
    for msg in msgs:
        if _IRQ_OPEN_RE.match(msg):
            depth += 1
            continue
        if _IRQ_CLOSE_RE.match(msg):
            depth = max(0, depth - 1)
            continue
        m = _FRAME_RE.match(msg)
        if m and depth == 0 and m.group(1) is None:
            frames.append(_clean_func(m.group(2)))
    return frames


def _rip_func(msgs: Sequence[str]) -> str | None:
    for msg in msgs:
        if "RIP: 0033:" in msg:  # user-mode registers
            continue
        m = _RIP_RE.match(msg)
        if m:
            return _clean_func(m.group(1))
    return None


def _first_frame(msgs: Sequence[str], skip: re.Pattern[str] | None = None) -> str | None:
    """The first stack frame that is no helper (nor matches skip)."""
    for frame in _task_frames(msgs):
        if not _HELPER_RE.search(frame) and not (skip and skip.search(frame)):
            return frame
    return None


def _fault_func(msgs: Sequence[str], skip: re.Pattern[str] | None = None) -> str | None:
    """Where a trap hit: the RIP's function, or the first real frame when that is a helper."""
    rip = _rip_func(msgs)
    if rip and not _HELPER_RE.search(rip) and not (skip and skip.search(rip)):
        return rip
    return _first_frame(msgs, skip) or rip


def _stall_func(msgs: Sequence[str]) -> str | None:
    rip = _rip_func(msgs)
    if rip and not _STALL_SKIP_RE.match(rip):
        return rip
    for frame in _task_frames(msgs):
        if not _STALL_SKIP_RE.match(frame):
            return frame
    return None


def _hung_func(msgs: Sequence[str]) -> str | None:
    for frame in _task_frames(msgs):
        if not _HUNG_SKIP_RE.search(frame):
            return frame
    return None


def _lockdep_func(msgs: Sequence[str]) -> str | None:
    for msg in msgs:
        m = _LOCK_AT_RE.search(msg)
        if m:
            return _clean_func(m.group(1))
    return None


_REFCOUNT_SKIP = re.compile(r"^_*refcount_|^kobject_")
_UBSAN_SKIP = re.compile(r"ubsan|overflow")
_LOCKDEP_TITLES = (
    (
        re.compile(r"possible (?:circular|recursive) locking|irq lock inversion|-safe -> "),
        "possible deadlock",
    ),
    (re.compile(r"inconsistent lock state"), "inconsistent lock state"),
    (re.compile(r"bad unlock balance"), "WARNING: bad unlock balance"),
    (re.compile(r"held lock freed"), "WARNING: held lock freed"),
    (re.compile(r"Nested lock was not taken"), "WARNING: nested lock was not taken"),
)


def _title_and_func(report: _Report) -> tuple[str, str | None]:
    """The report's title without its function, and the function (None: none found)."""
    base = _title_from_msg(report.header)
    kind, msgs = report.kind, report.msgs
    finders: dict[str, Callable[[], str | None]] = {
        "soft_lockup": lambda: _stall_func(msgs),
        "rcu_stall": lambda: _stall_func(msgs),
        "atomic_sleep": lambda: _first_frame(msgs, _SLEEP_HELPER_RE),
        "refcount": lambda: _fault_func(msgs, _REFCOUNT_SKIP),
        "list_corruption": lambda: _first_frame(msgs),
        "ubsan": lambda: _first_frame(msgs, _UBSAN_SKIP),
    }
    if kind == "hung_task":
        func = _hung_func(msgs)
        return ("INFO: task hung", func) if func else (base, None)
    if kind == "lockdep":
        for pattern, title in _LOCKDEP_TITLES:
            if pattern.search(report.header):
                base = title
                break
        return base, _lockdep_func(msgs)
    if kind == "list_corruption":
        warn = any(m.startswith("WARNING:") for m in msgs)
        base = "WARNING: corrupted list" if warn else "BUG: corrupted list"
    if kind == "ubsan":
        func = _first_frame(msgs, _UBSAN_SKIP)
        return (base.split(" in ", 1)[0], func) if func else (base, None)
    if kind in finders:
        return base, finders[kind]()
    if kind in _DIE_KINDS or kind in ("page_fault", "stack_overflow"):
        return base, _fault_func(msgs)
    if kind == "bug" and _BUG_AT_RE.match(report.header):
        func = _fault_func(msgs)
        return ("kernel BUG", func) if func else (base, None)
    if kind == "warning" and not _warning_has_func(report.header):
        func = _rip_func(msgs)
        return ("WARNING", func) if func else (base, None)
    if kind == "oom" and any(
        "CONSTRAINT_MEMCG" in m or m.startswith("Memory cgroup out") for m in msgs
    ):
        return "memory cgroup out of memory", None
    return base, None


def _report_title(report: _Report) -> str:
    base, func = _title_and_func(report)
    title = f"{base} in {func}" if func else base
    return title[:_TITLE_MAX].rstrip()


# --- titles -------------------------------------------------------------------------------

_SYMBOL_RE = re.compile(
    r"(?<![\w.])([A-Za-z_][\w.]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+(?: \[[\w-]+\])?"
)
_SRC_RE = re.compile(r"(?<![\w./+-])([\w./+-]*\w\.(?:c|h|S|rs))(?::\d+)+")
# The same with its line ("kernel/foo.c:12"), for reports without a symbol.
_SRC_LINE_RE = re.compile(r"(?<![\w./+-])([\w./+-]*\w\.(?:c|h|S|rs):\d+)")
# "WARNING: CPU: 1 PID: 2 at mm/x.c:5 func+0x1/0x2" and the 2025 "WARNING: mm/x.c:5 at func+..."
_WARN_FUNC_RE = re.compile(r"^WARNING: (?:.*?\bat \S+? |\S+:\d+ at )([A-Za-z_][\w.]*)\+0x")
_WARN_SRC_RE = re.compile(r"^WARNING: (?:.*?\bat )?(\S+?\.(?:c|h|S|rs):\d+)")
_OOPS_DESC_RE = re.compile(
    r"^(?:Internal error: )?(?:Oops(?: -|:) ?)+(.*?)(?::? ?[0-9a-fA-F]{4,16}\b.*)?$"
)
_HUNG_TASK_RE = re.compile(r"^INFO: task (.+?)(?::\d+)? blocked")

_NOISE_RES: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r", address: \S+"), ""),
    # "mm:00000000deadbeef", "val:1", "exitcode=0x00000009": the label means nothing alone.
    (re.compile(r"(?<![\w./-])[A-Za-z_]\w*[:=](?:0x)?[0-9a-fA-F]*\d[0-9a-fA-F]*\b"), ""),
    (re.compile(r"\bCPU: \d+(?: UID: \d+)? PID: \d+"), ""),
    (re.compile(r"\bCPU#?\s?\d+"), ""),
    (re.compile(r"\b(?:PID|pid|UID|uid)[:=]? ?\d+"), ""),
    (re.compile(r"\[#\d+\]"), ""),
    (re.compile(r"(?<!\S)[^\s/]+/\d+/0x[0-9a-fA-F]+"), ""),  # comm/pid/preempt_count
    (re.compile(r"\[[^\]\s:]+:\d+\]"), ""),  # [comm:pid]
    (re.compile(r"0x[0-9a-fA-F]+"), ""),
    (re.compile(r"\b[0-9a-fA-F]{8,}\b"), ""),
    (re.compile(r"(?<![\w.+/-])\d+(?:\.\d+)*(?![\w+/-]|\.\w)"), ""),
    (re.compile(r"\(\s*[,:\s]*\)|\[\s*[,:\s]*\]"), ""),
    (re.compile(r"\s+([,;:!])"), r"\1"),
    (re.compile(r"[,;:]+(?=[,;:])"), ""),
    (re.compile(r"\s{2,}"), " "),
)


def _generic_title(msg: str) -> str:
    text = _SYMBOL_RE.sub(lambda m: _clean_func(m.group(1)), msg)
    text = _SRC_RE.sub(r"\1", text)
    for pattern, repl in _NOISE_RES:
        text = pattern.sub(repl, text)
    return text.strip().rstrip(" ,;:.=!-").strip()


def _warning_has_func(header: str) -> bool:
    return _WARN_FUNC_RE.search(header[:_HEADER_MAX]) is not None


def _clean_task(name: str) -> str:
    # "kworker/0:1", "ksoftirqd/1", "kworker/u4:2+events": per-CPU suffixes are not identity.
    name = re.sub(r"/u?\d.*$", "", name)
    name = re.sub(r"(?:[.:_-]?\d+)+$", "", name) or name
    return _generic_title(name) or name


def normalise_title(raw: str) -> str:
    """Normalise one report header line into a stable title (see the module docstring).

    ``raw`` may still carry its timestamp.  Titles of findings can be more specific than
    this, because ``parse_kernel_log`` also looks at the report body (e.g. the stack).
    """
    return _title_from_msg(_split(raw[:_HEADER_MAX])[3])


# Fixed titles of header-only kinds (the function, when found, is added by _report_title).
_FIXED_TITLES: dict[str, str] = {
    "gpf": "general protection fault",
    "invalid_opcode": "invalid opcode",
    "divide_error": "divide error",
    "int3": "int3",
    "rcu_stall": "INFO: rcu detected stall",
    "refcount": "WARNING: refcount bug",
    "list_corruption": "BUG: corrupted list",
}


@functools.lru_cache(maxsize=1024)  # floods often repeat the same header verbatim
def _title_from_msg(msg: str) -> str:
    msg = _CUT_HERE_ANY_RE.sub("", msg[:_HEADER_MAX]).strip()
    kind = _classify(msg)
    title: str
    if kind in _FIXED_TITLES:
        title = _FIXED_TITLES[kind]
    elif kind == "warning":
        m = _WARN_FUNC_RE.search(msg)
        if m:
            title = f"WARNING in {_clean_func(m.group(1))}"
        else:
            src = _WARN_SRC_RE.search(msg)
            title = f"WARNING in {src.group(1)}" if src else _generic_title(msg)
    elif kind == "hung_task":
        m = _HUNG_TASK_RE.search(msg)
        task = _clean_task(m.group(1)) if m else "unknown"
        title = f"INFO: task hung in {task}"
    elif kind == "soft_lockup":
        title = "BUG: soft lockup" if "soft lockup" in msg else "watchdog: hard LOCKUP"
    elif kind == "page_fault":
        null = "NULL pointer" in msg
        what = "NULL pointer dereference" if null else "paging request"
        title = f"BUG: unable to handle kernel {what}"
    elif kind == "stack_overflow":
        guard = "guard page was hit" in msg
        title = "BUG: stack guard page was hit" if guard else "kernel stack overflow"
    elif kind == "double_fault":
        title = "PANIC: double fault" if msg.startswith("PANIC") else "double fault"
    elif kind == "atomic_sleep":
        sleeping = "sleeping function called from invalid context" in msg
        what = "sleeping function called from invalid context" if sleeping else "scheduling"
        title = f"BUG: {what}" + ("" if sleeping else " while atomic")
    elif kind == "oom":
        title = (
            "memory cgroup out of memory" if msg.startswith("Memory cgroup") else "out of memory"
        )
    elif kind == "oops" and msg.startswith("Unable to handle kernel "):
        title = _generic_title(msg.split(" at virtual address", 1)[0])
    elif kind == "oops":
        # Keep a trap name this parser has no kind for ("Oops: stack segment: 0000 [#1]").
        m = _OOPS_DESC_RE.match(msg)
        desc = _generic_title(m.group(1)) if m else ""
        title = f"Oops: {desc}" if desc else "Oops"
    elif kind == "bug" and _BUG_AT_RE.match(msg):
        src = _SRC_LINE_RE.search(msg)
        where = src.group(1) if src else _generic_title(msg[len("kernel BUG at ") :])
        title = f"kernel BUG at {where}"
    elif kind == "ubsan":
        # "UBSAN: shift-out-of-bounds in lib/foo.c:88:12": the file and line, not the column.
        src = _SRC_LINE_RE.search(msg)
        head = msg.split(" in ", 1)[0]
        title = f"{_generic_title(head)} in {src.group(1)}" if src else _generic_title(msg)
    else:
        title = _generic_title(msg)
    return title[:_TITLE_MAX].rstrip()


# --- the scanner --------------------------------------------------------------------------


def _dump_follows(lines: Sequence[str], index: int, require_timestamp: bool) -> bool:
    """Whether a register/stack dump starts within the next few kernel lines.

    Decides if a free-form line after a header (a UBSAN detail, a bad-page dump) belongs
    to the report or the report was a lone line.  Bounded look-ahead keeps the scan linear.
    """
    seen = 0
    for raw in lines[index + 1 : index + 1 + 4 * _PREAMBLE_LINES]:
        kernel, _, _, msg = _split(raw)
        if not kernel and require_timestamp:
            continue
        if _DUMP_START_RE.match(msg):
            return True
        if _classify(msg) is not None or _CUT_HERE_RE.match(msg):
            return False
        seen += 1
        if seen >= _PREAMBLE_LINES:
            break
    return False


@dataclass
class _Stream:
    """The scanner's state for the lines of one printk caller (or of all, without ids)."""

    caller: str | None
    cur: _Report | None = None
    # A "cut here" line (and the lines after it) waiting for its header.
    cut_here: tuple[int, float | None] | None = None
    pending: list[int] = field(default_factory=list)
    prev_delim: tuple[int, float | None] | None = None


class _Scanner:
    def __init__(self, lines: list[str], suppress: Sequence[str], require_timestamp: bool) -> None:
        self.lines = lines
        self.suppressors = [re.compile(p) for p in suppress]
        self.require_timestamp = require_timestamp
        self.findings: list[Finding] = []
        self.streams: dict[str | None, _Stream] = {}
        self.active: _Stream | None = None  # the stream whose report got the latest line

    def close(self, st: _Stream) -> None:
        report = st.cur
        st.cur = None
        if report is None:
            return
        title = _report_title(report)
        if any(s.search(title) for s in self.suppressors):
            return
        if report.caller is None:
            # The whole span, with any userspace lines printed in between.
            span = self.lines[report.start : report.last + 1]
        else:
            span = [self.lines[i] for i in sorted(set(report.members))]
        excerpt = "\n".join(raw.rstrip("\r") for raw in span[:MAX_REPORT_LINES])
        self.findings.append(
            Finding(
                kind=report.kind,
                title=title,
                line=report.start + 1,
                timestamp=report.timestamp,
                excerpt=excerpt,
                caller=report.caller,
            )
        )

    def start(self, st: _Stream, kind: str, index: int, msg: str, ts: float | None) -> None:
        start, start_ts = index, ts
        before = []
        if st.cut_here is not None:
            start, start_ts = st.cut_here
            before = st.pending
        strict = False
        strict_end: re.Pattern[str] | None = None
        if kind == "lockdep":
            # Lockdep reports are free-form until their final "stack backtrace:" dump.
            strict, strict_end = True, re.compile(r"^stack backtrace:")
            if st.prev_delim is not None:
                start, start_ts = st.prev_delim
                before = [start]
        elif (kind in ("kasan", "ubsan") or _SANITIZER_RE.match(msg)) and st.prev_delim:
            start, start_ts = st.prev_delim
            before = [start]
            strict, strict_end = True, _DELIM_RE
        elif kind == "oom" and not _OOM_END_RE.match(msg):
            # The OOM killer's report (meminfo, task list) is free-form up to its verdict.
            strict, strict_end = True, _OOM_END_RE
        report = _Report(
            kind=kind,
            start=start,
            header=msg,
            timestamp=start_ts,
            caller=st.caller,
            strict=strict,
            strict_end=strict_end,
            absorbs_die=kind in _ABSORBS_DIE
            or (kind == "bug" and _BUG_AT_RE.match(msg) is not None),
        )
        report.members += before
        report.add(index, msg)
        st.cur = report
        st.cut_here, st.pending, st.prev_delim = None, [], None

    def feed(self, st: _Stream, index: int, ts: float | None, msg: str) -> None:
        cur = st.cur
        if cur is not None and index - cur.start >= MAX_REPORT_LINES:
            self.close(st)
            cur = None
        if cur is not None:
            if cur.strict:
                if msg.startswith("Kernel panic - not syncing: "):
                    self.close(st)
                else:
                    cur.add(index, msg)
                    if cur.strict_end is not None and cur.strict_end.search(msg):
                        if cur.kind == "lockdep":
                            cur.strict = False  # the rest is an ordinary stack dump
                            cur.in_trace = True
                        else:
                            self.close(st)
                    return
            else:
                kind = _classify(msg)
                if kind is not None:
                    if cur.absorbs_die and not cur.in_trace and self._absorbs(cur, kind, msg):
                        cur.add(index, msg)  # "Oops: 0002 [#1]" after "BUG: ... NULL pointer"
                        return
                    self.close(st)
                elif _CUT_HERE_RE.match(msg):
                    if cur.kind == "list_corruption" and not cur.in_trace:
                        cur.add(index, msg)  # "list_add double add: ..." then its BUG/WARN
                        return
                    self.close(st)
                elif _END_TRACE_RE.match(msg) or _END_PANIC_RE.match(msg):
                    cur.add(index, msg)
                    self.close(st)
                    return
                elif _CONTINUATION_RE.match(msg) or (
                    not cur.in_trace
                    and len(cur.msgs) < _PREAMBLE_LINES
                    and _dump_follows(self.lines, index, self.require_timestamp)
                ):
                    cur.add(index, msg)
                    return
                else:
                    self.close(st)

        # No report is open: look for the start of one.
        if _CUT_HERE_RE.match(msg):
            st.cut_here, st.pending = (index, ts), [index]
            st.prev_delim = None
            return
        kind = _classify(msg)
        if kind is not None:
            self.start(st, kind, index, msg, ts)
            return
        if st.cut_here is not None:
            st.pending.append(index)
            if len(st.pending) > _CUT_HERE_WINDOW:
                st.cut_here, st.pending = None, []
        if _DELIM_RE.match(msg):
            st.prev_delim = (index, ts)
        elif msg.strip():
            st.prev_delim = None

    @staticmethod
    def _absorbs(cur: _Report, kind: str, msg: str) -> bool:
        if kind in _DIE_KINDS or kind == "stack_overflow":
            return True
        # A corrupted list: the "kernel BUG at lib/list_debug.c" or WARNING after the message.
        return cur.kind == "list_corruption" and kind == "list_corruption"

    def line(self, index: int, raw: str) -> None:
        kernel, ts, caller, msg = _split(raw)
        if not kernel and self.require_timestamp:
            return
        st = self.streams.get(caller)
        if st is None:
            st = self.streams[caller] = _Stream(caller)
        other = self.active
        if (
            st.cur is None
            and caller is not None
            and other is not None
            and other is not st
            and other.cur is not None
            and st.cut_here is None
            and _classify(msg) is None
            and not _CUT_HERE_RE.match(msg)
            and _CONTINUATION_RE.match(msg)
        ):
            # Another CPU's part of the open report (e.g. the NMI backtrace a stall asked for).
            other.cur.add(index, msg)
            return
        self.feed(st, index, ts, msg)
        if st.cur is not None:
            self.active = st

    def finish(self) -> list[Finding]:
        for st in self.streams.values():
            self.close(st)  # truncated at the end of the log: still a finding
        self.findings.sort(key=lambda f: f.line)
        return self.findings


def parse_kernel_log(
    text: str, suppress: Sequence[str] = (), *, require_timestamp: bool = True
) -> list[Finding]:
    """Return the kernel reports found in ``text``, in log order.

    ``suppress`` holds regexes searched in each normalised title; matching findings are
    dropped.  With ``require_timestamp=False`` (for kernels booted with printk.time=0 and no
    caller ids) every line is scanned, including any userspace output on the console.
    """
    lines = text.split("\n")
    scanner = _Scanner(lines, suppress, require_timestamp)
    for index, raw in enumerate(lines):
        scanner.line(index, raw)
    return scanner.finish()


def findings_summary(findings: Sequence[Finding]) -> str:
    """One line per finding, for assertion messages."""
    return "\n".join(f"{f.kind}: {f.title} (line {f.line})" for f in findings)
