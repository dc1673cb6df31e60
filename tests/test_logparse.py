from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kmatrix.results.logparse import (
    KINDS,
    MAX_REPORT_LINES,
    Finding,
    findings_summary,
    normalise_title,
    parse_kernel_log,
)

LOGS = Path(__file__).parent / "data" / "logs"
GOLDEN = sorted(LOGS.glob("*.log"))
# Captured from a kernel booted with printk.time=0: nothing carries a timestamp.
NO_TIMESTAMP_LOGS = {"real-6.1-sysrq-c-printk-time-0.log"}


def read_text(path: Path) -> str:
    # Bytes, not read_text(): universal newlines would turn the console's "\r\n" and
    # bare "\r" into extra lines and shift line numbers.
    return path.read_bytes().decode("utf-8", errors="replace")


def read_log(name: str) -> str:
    return read_text(LOGS / name)


def parse_golden(path: Path) -> list[Finding]:
    text = read_text(path)
    return parse_kernel_log(text, require_timestamp=path.name not in NO_TIMESTAMP_LOGS)


def as_expected(findings: list[Finding]) -> list[dict[str, object]]:
    return [{"kind": f.kind, "title": f.title, "line": f.line} for f in findings]


# --- golden logs ----------------------------------------------------------------------------


def test_golden_logs_present() -> None:
    assert len(GOLDEN) >= 20
    for log in GOLDEN:
        assert log.with_suffix(".expected.json").is_file(), log.name
    for expected in LOGS.glob("*.expected.json"):
        assert expected.with_name(expected.name.replace(".expected.json", ".log")).is_file()


@pytest.mark.parametrize("log", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden(log: Path) -> None:
    expected = json.loads(log.with_suffix(".expected.json").read_text())
    findings = parse_golden(log)
    assert as_expected(findings) == expected, findings_summary(findings)


@pytest.mark.parametrize("log", GOLDEN, ids=[p.name for p in GOLDEN])
def test_golden_excerpts(log: Path) -> None:
    lines = read_text(log).split("\n")
    for f in parse_golden(log):
        assert f.kind in KINDS
        assert len(f.title) <= 120
        excerpt = f.excerpt.split("\n")
        assert excerpt[0] == lines[f.line - 1].rstrip("\r")
        assert len(excerpt) <= MAX_REPORT_LINES
        assert "\r" not in f.excerpt
        # Titles must be free of addresses and offsets, or they would differ between runs.
        assert not re.search(r"0x[0-9a-f]|\+0x|\b[0-9a-f]{8,}\b", f.title), f.title
        if f.timestamp is not None:
            assert f"{f.timestamp:.6f}" in excerpt[0]


def test_clean_boots_of_all_kernels_are_clean() -> None:
    clean = [p for p in GOLDEN if p.name.endswith("-clean.log")]
    kernels = {p.name.split("-")[1] for p in clean}
    assert {"6.1", "6.12"} <= kernels
    for log in clean:
        assert parse_golden(log) == [], log.name


def test_clean_boot_mitigation_warnings_are_not_findings() -> None:
    # Real lines from TCG boots with these CPU models; anchored headers must skip them.
    skylake = read_log("real-6.1-cpu-skylake-client-clean.log")
    assert "RETBleed: WARNING: Spectre v2 mitigation leaves CPU vulnerable" in skylake
    epyc = read_log("real-6.12-cpu-epyc-clean.log")
    assert "Speculative Return Stack Overflow: WARNING: See https://" in epyc
    assert parse_kernel_log(skylake) == parse_kernel_log(epyc) == []


def test_warning_inside_cut_here_is_one_finding() -> None:
    text = read_log("real-6.1-warn.log")
    (f,) = parse_kernel_log(text)
    assert (f.kind, f.title) == ("warning", "WARNING in kmtrig_warn")
    excerpt = f.excerpt.split("\n")
    assert excerpt[0].endswith("------------[ cut here ]------------")
    assert "WARNING: CPU: 1 PID: 95 at" in excerpt[1]
    assert re.search(r"---\[ end trace [0-9a-f]+ \]---$", excerpt[-1])
    assert f.timestamp == pytest.approx(2.188747)


def test_null_deref_oops_and_panic_are_two_findings() -> None:
    findings = parse_kernel_log(read_log("real-6.1-null-deref-panic.log"))
    assert [(f.kind, f.title) for f in findings] == [
        ("page_fault", "BUG: unable to handle kernel NULL pointer dereference in kmtrig_nullptr"),
        ("panic", "Kernel panic - not syncing: Fatal exception"),
    ]
    oops = findings[0].excerpt
    assert "Oops: 0000 [#1]" in oops  # absorbed, not a finding of its own
    assert oops.rstrip().endswith("]---")


def test_panic_end_marker_closes_the_panic() -> None:
    findings = parse_kernel_log(read_log("real-6.12-null-deref-panic-hold.log"))
    panic = findings[-1]
    assert panic.kind == "panic"
    assert panic.excerpt.split("\n")[-1].endswith(
        "---[ end Kernel panic - not syncing: Fatal exception ]---"
    )


def test_sysrq_backtrace_is_not_a_finding() -> None:
    text = read_log("real-6.12-sysrq-l.log")
    assert "NMI backtrace for cpu" in text and "Call Trace:" in text
    assert parse_kernel_log(text) == []


def test_userspace_console_text_is_not_scanned() -> None:
    text = read_log("real-6.12-userspace-bug-lines.log")
    findings = parse_kernel_log(text)
    # Only the line written through /dev/kmsg is kernel log; it starts with "BUG:".
    assert [(f.kind, f.title) for f in findings] == [
        ("bug", "BUG: written to /dev/kmsg by userspace")
    ]
    assert findings[0].timestamp is not None
    # Without the timestamp requirement the console echoes count too.
    loose = parse_kernel_log(text, require_timestamp=False)
    assert {f.title for f in loose} >= {
        "BUG: not a kernel line (written to the console by userspace)",
        "WARNING in fake_func",
    }


def test_lone_header_line_is_a_one_line_report() -> None:
    # The kmsg line is followed by unrelated kernel lines, not by a register/stack dump.
    (f,) = parse_kernel_log(read_log("real-6.12-userspace-bug-lines.log"))
    assert f.excerpt.endswith("] BUG: written to /dev/kmsg by userspace")
    assert "\n" not in f.excerpt


@pytest.mark.parametrize("log", GOLDEN, ids=[p.name for p in GOLDEN])
def test_timestamp_requirement_only_matters_for_untimestamped_lines(log: Path) -> None:
    text = read_text(log)
    strict = [(f.kind, f.title, f.line) for f in parse_kernel_log(text)]
    loose = [(f.kind, f.title, f.line) for f in parse_kernel_log(text, require_timestamp=False)]
    if log.name in NO_TIMESTAMP_LOGS or log.name == "real-6.12-userspace-bug-lines.log":
        assert len(loose) > len(strict)
    else:
        assert loose == strict


def test_printk_time_0_log_needs_the_flag() -> None:
    text = read_log("real-6.1-sysrq-c-printk-time-0.log")
    assert parse_kernel_log(text) == []
    (f,) = parse_kernel_log(text, require_timestamp=False)
    assert (f.kind, f.title, f.timestamp) == (
        "panic",
        "Kernel panic - not syncing: sysrq triggered crash",
        None,
    )


def test_kinds_of_lockups_and_sanitizers() -> None:
    def kinds(name: str) -> list[str]:
        return [f.kind for f in parse_golden(LOGS / name)]

    assert kinds("real-6.12-soft-lockup.log") == ["soft_lockup"]
    assert kinds("real-6.1-rcu-stall.log") == ["rcu_stall"]
    assert kinds("synthetic-6.12-kasan.log") == ["kasan", "kasan"]
    assert kinds("synthetic-6.1-lockdep.log") == ["lockdep"]
    assert kinds("real-6.1-hung-task.log")[0] == "hung_task"


def test_kasan_report_spans_its_delimiters() -> None:
    first = parse_kernel_log(read_log("synthetic-6.12-kasan.log"))[0]
    excerpt = first.excerpt.split("\n")
    assert excerpt[0].endswith("=" * 66)
    assert "BUG: KASAN: slab-use-after-free in kmtrig_uaf" in excerpt[1]
    assert excerpt[-1].endswith("=" * 66)
    assert "Memory state around the buggy address:" in first.excerpt
    # The untimestamped userspace line in the middle is kept in the excerpt, not scanned.
    assert "insmod: still waiting" in first.excerpt


# --- robustness -----------------------------------------------------------------------------


def test_crlf_and_lf_give_the_same_findings() -> None:
    crlf = read_log("real-6.12-kernel-bug.log")
    assert "\r\n" in crlf
    lf = crlf.replace("\r\n", "\n")
    assert parse_kernel_log(crlf) == parse_kernel_log(lf)


def test_console_prefixes_levels_and_caller_ids() -> None:
    plain = parse_kernel_log(read_log("real-6.1-warn.log"))
    lines = read_log("real-6.1-warn.log").split("\n")

    def decorate(line: str) -> str:
        m = re.match(r"^(\[\s*\d+\.\d+\])(.*)$", line)
        if not m:
            return line
        return f"vm0 | <4>{m.group(1)}[   T95]{m.group(2)}"

    decorated = parse_kernel_log("\n".join(decorate(line) for line in lines))
    assert [(f.kind, f.title, f.line, f.timestamp) for f in decorated] == [
        (f.kind, f.title, f.line, f.timestamp) for f in plain
    ]


def test_report_truncated_at_end_of_log_still_found() -> None:
    lines = read_log("real-6.12-gpf.log").split("\n")
    (full,) = parse_kernel_log("\n".join(lines))
    start = full.line - 1
    # Cut right after the RIP line, and again right after the header line itself.
    rip = next(i for i in range(start, len(lines)) if "RIP: 0010:" in lines[i])
    (cut,) = parse_kernel_log("\n".join(lines[: rip + 1]))
    assert (cut.kind, cut.title, cut.line) == (full.kind, full.title, full.line)
    (bare,) = parse_kernel_log("\n".join(lines[: start + 1]))
    assert (bare.kind, bare.title) == ("gpf", "general protection fault")
    # A half-written last line without a newline is still scanned.
    (half,) = parse_kernel_log("[    1.000000] BUG: kernel NULL pointer dereference, addr")
    assert half.kind == "page_fault"


def test_report_length_is_bounded() -> None:
    head = "[    1.000000] BUG: soft lockup - CPU#0 stuck for 22s! [kworker/0:1:12]"
    frames = [f"[    1.{i:06d}]  frame_{i}+0x1/0x2" for i in range(1000)]
    (f,) = parse_kernel_log("\n".join([head, "[    1.000001] Call Trace:", *frames]))
    assert f.excerpt.count("\n") + 1 == MAX_REPORT_LINES


def test_flood_of_200k_lines_parses() -> None:
    # A linear scan handles this in about a second; a quadratic one would not finish.
    chatter = [f"[{i / 1000:12.6f}] eth0: link is up, {i} packets seen" for i in range(100_000)]
    trace = [f"[{i / 1000:12.6f}]  some_func_{i % 97}+0x1/0x20" for i in range(100_000)]
    warn = read_log("real-6.1-warn.log").split("\n")
    body = [*chatter, *warn, *trace, *warn]
    findings = parse_kernel_log("\n".join(body))
    assert [f.title for f in findings] == ["WARNING in kmtrig_warn"] * 2
    # Many short reports in a row are all found.
    burst = [
        f"[{i / 1000:12.6f}] BUG: Bad rss-counter state mm:{i:016x} type:MM_ANONPAGES val:{i}"
        for i in range(20_000)
    ]
    findings = parse_kernel_log("\n".join(burst))
    assert len(findings) == 20_000
    assert {f.title for f in findings} == {"BUG: Bad rss-counter state type:MM_ANONPAGES"}


def test_long_lines_are_handled() -> None:
    junk = "x" * 1_000_000
    text = f"{junk}\n[    1.000000] WARNING: CPU: 0 PID: 1 at kernel/a.c:1 f+0x1/0x2 {junk}\n"
    (f,) = parse_kernel_log(text)
    assert f.title == "WARNING in f"


# --- titles and options ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "title"),
    [
        (
            "WARNING: CPU: 1 PID: 123 at mm/page_alloc.c:5524 __alloc_pages+0x2f1/0x330",
            "WARNING in __alloc_pages",
        ),
        (
            "[    2.189000] WARNING: CPU: 1 PID: 95 at /tmp/m/kmtrig.c:20 "
            "kmtrig_warn.isra.0+0x5/0xc [kmtrig]",
            "WARNING in kmtrig_warn",
        ),
        # No symbol: the file and line name the place.
        ("WARNING: CPU: 0 PID: 1 at kernel/foo.c:12", "WARNING in kernel/foo.c:12"),
        ("WARNING: mm/slub.c:4711 at kfree+0x12/0x40, CPU#0: swapper/0", "WARNING in kfree"),
        ("WARNING: mm/slub.c:4711 at 0x0, CPU#0: swapper/0", "WARNING in mm/slub.c:4711"),
        (
            "WARNING: The mand mount option has been deprecated and",
            "WARNING: The mand mount option has been deprecated and",
        ),
        (
            "BUG: kernel NULL pointer dereference, address: 0000000000000000",
            "BUG: unable to handle kernel NULL pointer dereference",
        ),
        (
            "BUG: unable to handle page fault for address: ffffc90000a3f000",
            "BUG: unable to handle kernel paging request",
        ),
        (
            "Kernel panic - not syncing: sysrq triggered crash",
            "Kernel panic - not syncing: sysrq triggered crash",
        ),
        (
            "Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000009",
            "Kernel panic - not syncing: Attempted to kill init",
        ),
        (
            "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block(0,0)",
            "Kernel panic - not syncing: VFS: Unable to mount root fs on unknown-block",
        ),
        (
            "INFO: task kworker/0:1:45 blocked for more than 120 seconds.",
            "INFO: task hung in kworker",
        ),
        (
            "INFO: task syz-executor.3:4242 blocked for more than 143 seconds.",
            "INFO: task hung in syz-executor",
        ),
        ("------------[ cut here ]------------", ""),
        ("watchdog: BUG: soft lockup - CPU#1 stuck for 22s! [insmod:70]", "BUG: soft lockup"),
        ("rcu: INFO: rcu_preempt self-detected stall on CPU", "INFO: rcu detected stall"),
        ("rcu: INFO: rcu_sched detected stalls on CPUs/tasks:", "INFO: rcu detected stall"),
        (
            "general protection fault, probably for non-canonical address "
            "0xdead000000000100: 0000 [#1] PREEMPT SMP NOPTI",
            "general protection fault",
        ),
        ("Oops: invalid opcode: 0000 [#1] PREEMPT SMP NOPTI", "invalid opcode"),
        ("Oops: int3: 0000 [#1] PREEMPT SMP NOPTI", "int3"),
        ("int3: 0000 [#1] PREEMPT SMP PTI", "int3"),
        ("divide error: 0000 [#1] PREEMPT SMP PTI", "divide error"),
        ("Oops: divide error: 0000 [#1] PREEMPT SMP NOPTI", "divide error"),
        ("double fault: 0000 [#1] PREEMPT SMP NOPTI", "double fault"),
        ("PANIC: double fault, error_code: 0x0", "PANIC: double fault"),
        ("Oops: stack segment: 0000 [#1] PREEMPT SMP", "Oops: stack segment"),
        (
            "BUG: TASK stack guard page was hit at 00000000192c781e "
            "(stack is 000000006456e6f5..000000005e355950)",
            "BUG: stack guard page was hit",
        ),
        ("stack guard page: 0000 [#1] PREEMPT SMP PTI", "kernel stack overflow"),
        (
            "BUG: sleeping function called from invalid context at kernel/locking/mutex.c:580",
            "BUG: sleeping function called from invalid context",
        ),
        (
            "list_add double add: new=ffffc9000046ba28, prev=ffffc9000046ba18, "
            "next=ffffc9000046ba28.",
            "BUG: corrupted list",
        ),
        (
            "WARNING: CPU: 0 PID: 108 at lib/refcount.c:28 refcount_warn_saturate+0xba/0x110",
            "WARNING: refcount bug",
        ),
        (
            "stress-ng-vm invoked oom-killer: gfp_mask=0x140dca(GFP_HIGHUSER_MOVABLE|__GFP_COMP"
            "|__GFP_ZERO), order=0, oom_score_adj=1000",
            "out of memory",
        ),
        (
            "Out of memory: Killed process 181 (stress-ng-vm) total-vm:1067488kB, "
            "anon-rss:940032kB, file-rss:256kB, shmem-rss:0kB, UID:0 pgtables:1892kB "
            "oom_score_adj:1000",
            "out of memory",
        ),
        (
            "Memory cgroup out of memory: Killed process 5 (x) total-vm:1kB",
            "memory cgroup out of memory",
        ),
        ("Oops: Oops: 0002 [#1] PREEMPT SMP NOPTI", "Oops"),
        ("kernel BUG at lib/list_debug.c:33!", "BUG: corrupted list"),
        ("kernel BUG at mm/slub.c:33!", "kernel BUG at mm/slub.c:33"),
        ("BUG: scheduling while atomic: insmod/94/0x00000002", "BUG: scheduling while atomic"),
        (
            "BUG: KASAN: slab-out-of-bounds in kmtrig_oob.isra.0+0x41/0x60 [kmtrig]",
            "BUG: KASAN: slab-out-of-bounds in kmtrig_oob",
        ),
        (
            "UBSAN: shift-out-of-bounds in lib/foo.c:88:12",
            "UBSAN: shift-out-of-bounds in lib/foo.c:88",
        ),
    ],
)
def test_normalise_title(raw: str, title: str) -> None:
    assert normalise_title(raw) == title


def test_titles_are_capped() -> None:
    raw = "Kernel panic - not syncing: " + "very long reason " * 20
    assert len(normalise_title(raw)) <= 120
    (f,) = parse_kernel_log(f"[    1.000000] {raw}")
    assert len(f.title) <= 120


def test_titles_from_stacks() -> None:
    def titles(name: str) -> list[str]:
        return [f.title for f in parse_golden(LOGS / name)]

    assert titles("real-6.1-hung-task.log")[0] == "INFO: task hung in kmtrig_init"
    assert titles("real-6.12-soft-lockup.log") == ["BUG: soft lockup in kmtrig_spin"]
    assert titles("real-6.12-rcu-stall.log") == ["INFO: rcu detected stall in kmtrig_spin"]
    assert titles("real-6.12-kernel-bug.log") == ["kernel BUG in kmtrig_bug"]
    assert titles("real-6.12-gpf.log") == ["general protection fault in kmtrig_gpf"]
    assert titles("synthetic-6.1-lockdep.log") == ["possible deadlock in kmtrig_abba"]
    assert titles("synthetic-6.1-ubsan.log") == ["UBSAN: shift-out-of-bounds in kmtrig_shift"]
    assert titles("real-6.1-list-corruption.log") == ["BUG: corrupted list in kmtrig_list"]
    assert titles("real-6.12-null-deref.log") == [
        "BUG: unable to handle kernel NULL pointer dereference in kmtrig_nullptr"
    ]


def test_same_bug_same_title_across_kernels() -> None:
    for scenario in ("warn", "kernel-bug", "soft-lockup", "rcu-stall", "hung-task"):
        old = parse_golden(LOGS / f"real-6.1-{scenario}.log")[0]
        new = parse_golden(LOGS / f"real-6.12-{scenario}.log")[0]
        assert (old.kind, old.title) == (new.kind, new.title), scenario


def test_suppress() -> None:
    text = read_log("real-6.1-multi.log")
    every = parse_kernel_log(text)
    assert len(every) == 4
    kept = parse_kernel_log(text, suppress=[r"^WARNING in ", r"scheduling while atomic"])
    assert [f.kind for f in kept] == ["panic"]
    with pytest.raises(re.error):
        parse_kernel_log(text, suppress=["("])


def test_findings_summary() -> None:
    findings = parse_kernel_log(read_log("real-6.1-gpf-oops-panic.log"))
    assert findings_summary(findings) == (
        "gpf: general protection fault in kmtrig_gpf (line 354)\n"
        "panic: Kernel panic - not syncing: Fatal exception (line 407)"
    )
    assert findings_summary([]) == ""


def test_finding_is_frozen() -> None:
    f = Finding(kind="bug", title="t", line=1, timestamp=None, excerpt="x")
    with pytest.raises(AttributeError):
        f.title = "u"  # type: ignore[misc]


def test_arm64_oops_is_one_finding() -> None:
    # Hand-written in the arm64 layout; these kernels are x86 only.
    text = "\n".join(
        f"[    3.{i:06d}] {line}"
        for i, line in enumerate(
            [
                "Unable to handle kernel NULL pointer dereference at virtual address "
                "0000000000000008",
                "Mem abort info:",
                "  ESR = 0x0000000096000005",
                "Internal error: Oops: 0000000096000005 [#1] PREEMPT SMP",
                "Modules linked in: kmtrig(OE+)",
                "CPU: 0 PID: 95 Comm: insmod Tainted: G           OE      6.1.0-57-arm64 #1",
                "pc : kmtrig_nullptr+0x14/0x30 [kmtrig]",
                "lr : kmtrig_init+0x90/0x1000 [kmtrig]",
                "Call trace:",
                " kmtrig_nullptr+0x14/0x30 [kmtrig]",
                " kmtrig_init+0x90/0x1000 [kmtrig]",
                "---[ end trace 0000000000000000 ]---",
                "Kernel panic - not syncing: Oops: Fatal exception",
            ]
        )
    )
    assert [(f.kind, f.title, f.line) for f in parse_kernel_log(text)] == [
        ("oops", "Unable to handle kernel NULL pointer dereference in kmtrig_nullptr", 1),
        ("panic", "Kernel panic - not syncing: Oops: Fatal exception", 13),
    ]


# --- reports from two CPUs at once --------------------------------------------------------


def test_interleaved_reports_are_split_by_caller_id() -> None:
    """Two WARNs from two CPUs, interleaved as the 6.12 kernel printed them (one record of
    the first, the whole second, the rest of the first), with the caller ids a
    CONFIG_PRINTK_CALLER kernel adds: each report keeps its own lines and function."""
    a, b = parse_golden(LOGS / "synthetic-6.12-twin-callers.log")
    assert (a.title, a.caller, b.title, b.caller) == (
        "WARNING in kmx_crash_twin_a", "T188", "WARNING in kmx_crash_twin_b", "T189",
    )  # fmt: skip
    assert "RIP: 0010:kmx_crash_twin_a" in a.excerpt and "twin_b" not in a.excerpt
    assert "RIP: 0010:kmx_crash_twin_b" in b.excerpt and "twin_a" not in b.excerpt
    assert a.excerpt.count("---[ end trace") == b.excerpt.count("---[ end trace") == 1


def test_interleaved_reports_without_caller_ids_keep_their_titles() -> None:
    """The same interleaving as printed (no caller ids): a new header ends the open
    report, and each report is still titled from its own header."""
    text = read_log("synthetic-6.12-twin-callers.log")
    plain = re.sub(r"\]\[\s*T\d+\]", "]", text)
    assert [(f.title, f.caller) for f in parse_kernel_log(plain)] == [
        ("WARNING in kmx_crash_twin_a", None), ("WARNING in kmx_crash_twin_b", None),
    ]  # fmt: skip


def test_another_cpus_backtrace_joins_the_open_report() -> None:
    """An RCU stall seen from CPU 0 asks CPU 1 for its backtrace, printed from NMI context
    (caller C1): it joins the stall report, whose function it names."""
    lines = read_log("real-6.12-rcu-stall-irqs-off.log").split("\n")
    nmi = next(i for i, line in enumerate(lines) if "NMI backtrace for cpu 1" in line)

    def caller(i: int, line: str) -> str:
        return re.sub(r"^(\[\s*\d+\.\d+\])", rf"\1[{'C1' if i >= nmi else 'C0':>6}]", line)

    (f,) = parse_kernel_log("\n".join(caller(i, line) for i, line in enumerate(lines)))
    assert (f.kind, f.title, f.caller) == (
        "rcu_stall", "INFO: rcu detected stall in kmtrig_spin_irqoff", "C0",
    )  # fmt: skip
    assert "NMI backtrace for cpu 1" in f.excerpt


def test_caller_ids_without_timestamps_are_kernel_lines() -> None:
    """printk.time=0 with CONFIG_PRINTK_CALLER: "[  T95] text". The caller id marks a
    kernel line as well as a timestamp does."""
    lines = read_log("real-6.1-warn.log").split("\n")
    bare = "\n".join(re.sub(r"^\[\s*\d+\.\d+\]", "[   T95]", line) for line in lines)
    (f,) = parse_kernel_log(bare)
    assert (f.title, f.timestamp, f.caller) == ("WARNING in kmtrig_warn", None, "T95")


@pytest.mark.parametrize("kernel", ["6.1", "6.12"])
def test_every_provoked_report_class_is_found(kernel: str) -> None:
    """The /dev/kmsg records of kmx_crash's provocations on Debian's kernels (captured by
    tests/test_provoke.py): each report class once, named after its kmx_crash_ function."""
    findings = parse_golden(LOGS / f"kmsg-{kernel}-provoked.log")
    kinds = {f.kind for f in findings}
    assert kinds >= {
        "warning", "refcount", "atomic_sleep", "hung_task", "soft_lockup", "rcu_stall",
        "list_corruption", "bug", "page_fault", "divide_error", "invalid_opcode", "gpf",
    }  # fmt: skip
    assert all("kmx_crash_" in f.title for f in findings), findings_summary(findings)
    fatal = parse_golden(LOGS / f"real-{kernel}-provoked-fatal.log")
    assert {f.kind for f in fatal} == {"panic", "int3", "stack_overflow"}
