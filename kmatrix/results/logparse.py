"""Find kernel crash reports (oopses, WARNs, lockups, sanitizer reports) in console logs.

The parser is a single forward pass over the log, so its cost is linear in the log size.
Titles follow syzkaller's conventions (pkg/report/linux.go) where that helps keep them
stable across runs of the same bug: addresses, numbers, pids and CPU numbers are removed and
``func+0x1a/0x40`` becomes ``func``.

Only lines carrying a printk timestamp are scanned by default, so userspace text printed on
the same console is never mistaken for a kernel report.  Lines that userspace writes to
``/dev/kmsg`` *are* part of the kernel log and get a timestamp, so they are scanned like any
other kernel line: the parser cannot tell them apart, and a test that writes "BUG: ..." into
the kernel log is treated as reporting a bug.  Use ``suppress`` to drop such titles.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence
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
    "lockdep",
    "rcu_stall",
    "hung_task",
    "soft_lockup",
    "gpf",
    "ubsan",
    "invalid_opcode",
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


# --- line splitting -----------------------------------------------------------------------

# "[   12.345678]" optionally followed by a CONFIG_PRINTK_CALLER id such as "[    T1]".
# Searched, not anchored: console prefixes, "<4>" levels and half-printed userspace lines
# can precede it.
_TS_RE = re.compile(r"\[\s*(\d+\.\d+)\](?:\[\s*[TC]\d+\])?")
_LEVEL_RE = re.compile(r"^\s*<\d>")


def _split(line: str) -> tuple[float | None, str]:
    m = _TS_RE.search(line)
    if m is None:
        return None, _LEVEL_RE.sub("", line, count=1).rstrip()
    msg = line[m.end() :]
    # printk separates the timestamp from the message with exactly one space; further
    # indentation belongs to the message (stack frames).
    if msg.startswith(" "):
        msg = msg[1:]
    return float(m.group(1)), msg.rstrip()


# --- report headers -----------------------------------------------------------------------

_OOPS_LINE_KINDS = frozenset({"oops", "gpf", "invalid_opcode"})

_HEADERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("panic", re.compile(r"^Kernel panic - not syncing: ")),
    ("kasan", re.compile(r"^BUG: KASAN: ")),
    ("soft_lockup", re.compile(r"^(?:watchdog: )?BUG: soft lockup\b")),
    # Hard lockups have no kind of their own; they come from the same lockup detector.
    ("soft_lockup", re.compile(r"^(?:watchdog: )?Watchdog detected hard LOCKUP\b")),
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
    ("oops", re.compile(r"^(?:Internal error: )?Oops(?: -|:)")),
    # arm64's first oops line, followed by "Internal error: Oops: ...".
    ("oops", re.compile(r"^Unable to handle kernel ")),
    ("ubsan", re.compile(r"^UBSAN: ")),
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
)

_CUT_HERE_RE = re.compile(r"^-+\[ cut here \]-+\s*$")
_CUT_HERE_ANY_RE = re.compile(r"-+\[ cut here \]-+")
_END_TRACE_RE = re.compile(r"^-+\[ end trace\b")
_END_PANIC_RE = re.compile(r"^-+\[ end Kernel panic\b")
_DELIM_RE = re.compile(r"^={20,}\s*$")
_BUG_OOPS_RE = re.compile(
    r"^(?:kernel BUG at |BUG: (?:unable to handle|kernel NULL pointer|Kernel NULL pointer))"
)
_SANITIZER_RE = re.compile(r"^BUG: (?:KASAN|KFENCE|KMSAN|KCSAN): ")


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
    msgs: list[str] = field(default_factory=list)
    last: int = 0
    in_trace: bool = False
    # Sanitizer/lockdep reports are free-form text up to a known delimiter.
    strict: bool = False
    strict_end: re.Pattern[str] | None = None
    absorbs_oops_lines: bool = False

    def add(self, index: int, msg: str) -> None:
        self.msgs.append(msg)
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


def _report_title(report: _Report) -> str:
    base = _title_from_msg(report.header)
    kind, msgs = report.kind, report.msgs
    func: str | None = None
    if kind == "hung_task":
        func = _hung_func(msgs)
        if func:
            base = "INFO: task hung"
    elif kind in ("soft_lockup", "rcu_stall"):
        func = _stall_func(msgs)
    elif kind in _OOPS_LINE_KINDS:
        func = _rip_func(msgs) or next(iter(_task_frames(msgs)), None)
    elif kind == "lockdep":
        func = _lockdep_func(msgs)
    elif kind == "bug" and base.startswith("kernel BUG at "):
        func = _rip_func(msgs)
        if func:
            base = "kernel BUG"
    elif kind == "warning" and not _warning_has_func(report.header):
        func = _rip_func(msgs)
        if func:
            base = "WARNING"
    if func:
        base = f"{base} in {func}"
    return base[:_TITLE_MAX].rstrip()


# --- titles -------------------------------------------------------------------------------

_SYMBOL_RE = re.compile(
    r"(?<![\w.])([A-Za-z_][\w.]*)\+0x[0-9a-fA-F]+/0x[0-9a-fA-F]+(?: \[[\w-]+\])?"
)
_SRC_RE = re.compile(r"(?<![\w./+-])([\w./+-]*\w\.(?:c|h|S|rs))(?::\d+)+")
# "WARNING: CPU: 1 PID: 2 at mm/x.c:5 func+0x1/0x2" and the 2025 "WARNING: mm/x.c:5 at func+..."
_WARN_FUNC_RE = re.compile(r"^WARNING: (?:.*?\bat \S+? |\S+:\d+ at )([A-Za-z_][\w.]*)\+0x")
_WARN_SRC_RE = re.compile(r"^WARNING: (?:.*?\bat )?(\S+?\.(?:c|h|S|rs))(?::\d+)")
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
    return _title_from_msg(_split(raw[:_HEADER_MAX])[1])


@functools.lru_cache(maxsize=1024)  # floods often repeat the same header verbatim
def _title_from_msg(msg: str) -> str:
    msg = _CUT_HERE_ANY_RE.sub("", msg[:_HEADER_MAX]).strip()
    kind = _classify(msg)
    title: str
    if kind == "warning":
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
    elif kind == "rcu_stall":
        title = "INFO: rcu detected stall"
    elif kind == "gpf":
        title = "general protection fault"
    elif kind == "invalid_opcode":
        title = "invalid opcode"
    elif kind == "oops" and msg.startswith("Unable to handle kernel "):
        title = _generic_title(msg.split(" at virtual address", 1)[0])
    elif kind == "oops":
        # Keep the trap name of 6.12-style headers ("Oops: int3: 0000 [#1]"), drop the code.
        m = _OOPS_DESC_RE.match(msg)
        desc = _generic_title(m.group(1)) if m else ""
        title = f"Oops: {desc}" if desc else "Oops"
    elif kind == "bug" and msg.startswith("kernel BUG at "):
        src = _SRC_RE.search(msg)
        where = src.group(1) if src else _generic_title(msg[len("kernel BUG at ") :])
        title = f"kernel BUG at {where}"
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
        ts, msg = _split(raw)
        if ts is None and require_timestamp:
            continue
        if _DUMP_START_RE.match(msg):
            return True
        if _classify(msg) is not None or _CUT_HERE_RE.match(msg):
            return False
        seen += 1
        if seen >= _PREAMBLE_LINES:
            break
    return False


def _start_report(
    kind: str,
    index: int,
    msg: str,
    ts: float | None,
    cut_here: tuple[int, float | None] | None,
    prev_delim: tuple[int, float | None] | None,
) -> _Report:
    start, start_ts = index, ts
    if cut_here is not None:
        start, start_ts = cut_here
    strict = False
    strict_end: re.Pattern[str] | None = None
    if kind == "lockdep":
        # Lockdep reports are free-form until their final "stack backtrace:" dump.
        strict, strict_end = True, re.compile(r"^stack backtrace:")
        if prev_delim is not None:
            start, start_ts = prev_delim
    elif (kind in ("kasan", "ubsan") or _SANITIZER_RE.match(msg)) and prev_delim is not None:
        start, start_ts = prev_delim
        strict, strict_end = True, _DELIM_RE
    report = _Report(
        kind=kind,
        start=start,
        header=msg,
        timestamp=start_ts,
        strict=strict,
        strict_end=strict_end,
        absorbs_oops_lines=kind in _OOPS_LINE_KINDS
        or (kind == "bug" and _BUG_OOPS_RE.match(msg) is not None),
    )
    report.add(index, msg)
    return report


def parse_kernel_log(
    text: str, suppress: Sequence[str] = (), *, require_timestamp: bool = True
) -> list[Finding]:
    """Return the kernel reports found in ``text``, in log order.

    ``suppress`` holds regexes searched in each normalised title; matching findings are
    dropped.  With ``require_timestamp=False`` (for kernels booted with printk.time=0) every
    line is scanned, including any userspace output on the console.
    """
    suppressors = [re.compile(p) for p in suppress]
    lines = text.split("\n")
    findings: list[Finding] = []
    cur: _Report | None = None
    cut_here: tuple[int, float | None] | None = None
    cut_here_age = 0
    prev_delim: tuple[int, float | None] | None = None

    def close(report: _Report) -> None:
        title = _report_title(report)
        if any(s.search(title) for s in suppressors):
            return
        excerpt = "\n".join(raw.rstrip("\r") for raw in lines[report.start : report.last + 1])
        findings.append(
            Finding(
                kind=report.kind,
                title=title,
                line=report.start + 1,
                timestamp=report.timestamp,
                excerpt=excerpt,
            )
        )

    for index, raw in enumerate(lines):
        ts, msg = _split(raw)
        if ts is None and require_timestamp:
            continue

        if cur is not None and index - cur.start >= MAX_REPORT_LINES:
            close(cur)
            cur = None

        if cur is not None:
            if cur.strict:
                if msg.startswith("Kernel panic - not syncing: "):
                    close(cur)
                    cur = None
                else:
                    cur.add(index, msg)
                    if cur.strict_end is not None and cur.strict_end.search(msg):
                        if cur.kind == "lockdep":
                            cur.strict = False  # the rest is an ordinary stack dump
                            cur.in_trace = True
                        else:
                            close(cur)
                            cur = None
                    continue
            else:
                kind = _classify(msg)
                if kind is not None:
                    if kind in _OOPS_LINE_KINDS and cur.absorbs_oops_lines and not cur.in_trace:
                        cur.add(index, msg)  # "Oops: 0002 [#1]" after "BUG: ... NULL pointer"
                        continue
                    close(cur)
                    cur = None
                elif _CUT_HERE_RE.match(msg):
                    close(cur)
                    cur = None
                elif _END_TRACE_RE.match(msg) or _END_PANIC_RE.match(msg):
                    cur.add(index, msg)
                    close(cur)
                    cur = None
                    continue
                elif _CONTINUATION_RE.match(msg) or (
                    not cur.in_trace
                    and len(cur.msgs) < _PREAMBLE_LINES
                    and _dump_follows(lines, index, require_timestamp)
                ):
                    cur.add(index, msg)
                    continue
                else:
                    close(cur)
                    cur = None

        # No report is open: look for the start of one.
        if _CUT_HERE_RE.match(msg):
            cut_here, cut_here_age = (index, ts), 0
            prev_delim = None
            continue
        kind = _classify(msg)
        if kind is not None:
            cur = _start_report(kind, index, msg, ts, cut_here, prev_delim)
            cut_here = None
            prev_delim = None
            continue
        if cut_here is not None:
            cut_here_age += 1
            if cut_here_age > _CUT_HERE_WINDOW:
                cut_here = None
        if _DELIM_RE.match(msg):
            prev_delim = (index, ts)
        elif msg.strip():
            prev_delim = None

    if cur is not None:
        close(cur)  # truncated at the end of the log: still a finding
    return findings


def findings_summary(findings: Sequence[Finding]) -> str:
    """One line per finding, for assertion messages."""
    return "\n".join(f"{f.kind}: {f.title} (line {f.line})" for f in findings)
