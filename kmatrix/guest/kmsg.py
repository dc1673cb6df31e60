"""The guest's kernel log as /dev/kmsg records, addressed by sequence number.

Each record carries the kernel's own sequence number, its level and facility, a timestamp
in microseconds (whatever printk.time says) and, with CONFIG_PRINTK_CALLER, the id of the
task or CPU that printed it. A position in the log is a sequence number, never a time:
timestamps can be absent from the console (printk.time=0) and two records can share one.

The guest agent keeps /dev/kmsg open and runs images/programs/kmx-kmsg on it for a
KMX-KMSG request (GuestSession.kmsg); this module tracks where that descriptor stands, so
that a read after the last one costs one small program run and only the new records.
"""

from __future__ import annotations

import re
import weakref
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from kmatrix.errors import GuestError
from kmatrix.guest.session import GuestSession

__all__ = [
    "KmsgRead",
    "KmsgRecord",
    "kernel_log",
    "parse_kmsg",
    "read_kmsg",
    "render",
    "render_lines",
]

_TAIL_RE = re.compile(r"^#kmx-kmsg next=(\d+) first=(\d+) lost=(\d+)$")
_ESCAPE_RE = re.compile(r"\\x([0-9a-fA-F]{2})")
USER_FACILITY = 1  # what the kernel gives records userspace writes to /dev/kmsg (LOG_USER)


@dataclass(frozen=True)
class KmsgRecord:
    seq: int
    usec: int  # CLOCK_MONOTONIC at the printk, microseconds
    level: int  # 0 (emerg) .. 7 (debug)
    facility: int  # 0: the kernel; userspace writes always get another facility
    caller: str | None  # "T123" (task) or "C1" (CPU, in interrupt context), if the kernel says
    text: str  # unescaped; may hold several lines

    @property
    def from_kernel(self) -> bool:
        return self.facility == 0


@dataclass(frozen=True)
class KmsgRead:
    records: tuple[KmsgRecord, ...]
    next: int  # the sequence number of the next record: where to read from next time
    first: int  # the first record this read saw
    lost: int  # records from the requested one on that the ring buffer overwrote unread


def _unescape(text: str) -> str:
    # The kernel escapes bytes < 0x20, >= 0x7f and "\" as \xNN in /dev/kmsg text.
    if "\\x" not in text:
        return text
    raw = _ESCAPE_RE.sub(lambda m: chr(int(m.group(1), 16)), text)
    return raw.encode("latin-1", errors="replace").decode("utf-8", errors="replace")


def parse_kmsg(output: str) -> KmsgRead:
    """kmx-kmsg's output -> its records and its closing line; GuestError if that is missing
    (the reader died or the output was cut)."""
    records: list[KmsgRecord] = []
    tail: re.Match[str] | None = None
    for line in output.split("\n"):
        if not line or line.startswith(" "):  # dictionary lines (SUBSYSTEM=, DEVICE=)
            continue
        if line.startswith("#kmx-kmsg "):
            tail = _TAIL_RE.match(line)
            continue
        head, sep, text = line.partition(";")
        fields = head.split(",")
        if not sep or len(fields) < 4:
            continue
        try:
            prio, seq, usec = int(fields[0]), int(fields[1]), int(fields[2])
        except ValueError:
            continue
        caller = next((f[len("caller=") :] for f in fields[4:] if f.startswith("caller=")), None)
        records.append(KmsgRecord(seq, usec, prio & 7, prio >> 3, caller, _unescape(text)))
    if tail is None:
        raise GuestError(f"kmx-kmsg gave no closing line: {output[-200:]!r}")
    nxt, first, lost = (int(g) for g in tail.groups())
    return KmsgRead(tuple(records), nxt, first, lost)


def render_lines(
    records: Iterable[KmsgRecord], kernel_only: bool = False
) -> tuple[list[str], list[int]]:
    """Console-style lines, "[    1.234567][  T123] text", one per line of each record, and
    the sequence number of each line's record. Every line has a timestamp (whatever
    printk.time says), so the crash-report parser scans all of them."""
    out: list[str] = []
    seqs: list[int] = []
    for r in records:
        if kernel_only and not r.from_kernel:
            continue
        prefix = f"[{r.usec // 1_000_000:5d}.{r.usec % 1_000_000:06d}]"
        if r.caller:
            prefix += f"[{r.caller:>6}]"
        for line in r.text.split("\n"):
            out.append(f"{prefix} {line}")
            seqs.append(r.seq)
    return out, seqs


def render(records: Iterable[KmsgRecord], kernel_only: bool = False) -> str:
    """render_lines' lines as text; kernel_only leaves out what userspace wrote."""
    lines, _ = render_lines(records, kernel_only)
    return "\n".join(lines) + "\n" if lines else ""


@dataclass
class _Cursor:
    """Where the agent's /dev/kmsg descriptor stands in one session, and the records read
    so far (the newest CACHE_RECORDS), so that a mark behind that position (a test's, while
    the log guard reads on) costs no rewind."""

    pos: int
    cache: deque[KmsgRecord] = field(default_factory=deque)


CACHE_RECORDS = 20_000
# Per session: a restored or rebooted VM has a new session, and its agent a descriptor whose
# position is unknown here.
_cursors: weakref.WeakKeyDictionary[GuestSession, _Cursor] = weakref.WeakKeyDictionary()


def _fetch(session: GuestSession, seq: int, rewind: bool) -> KmsgRead:
    result = session.kmsg(seq, rewind=rewind)
    if result.exit_status != 0:
        raise GuestError(
            f"{session.name}: reading the kernel log failed (status {result.exit_status}): "
            + (result.stderr.strip() or "no /dev/kmsg in the guest")
        )
    return parse_kmsg(result.stdout)


def read_kmsg(session: GuestSession, seq: int | None = None) -> KmsgRead:
    """The records from sequence number `seq` on (None: from where the last read stopped,
    i.e. only what is new). GuestError if the guest cannot read its log."""
    cur = _cursors.get(session)
    if cur is not None:
        cached_from = cur.cache[0].seq if cur.cache else cur.pos
        want = cur.pos if seq is None else seq
        if want >= cached_from:
            got = _fetch(session, cur.pos, rewind=False)
            cur.cache.extend(got.records)
            while len(cur.cache) > CACHE_RECORDS:
                cur.cache.popleft()
            cur.pos = got.next
            newest: list[KmsgRecord] = []
            for r in reversed(cur.cache):
                if r.seq < want:
                    break
                newest.append(r)
            records = tuple(reversed(newest))
            return KmsgRead(records, got.next, records[0].seq if records else got.next, got.lost)
    # Unknown position, or a mark older than what is cached: read from the oldest record.
    got = _fetch(session, seq or 0, rewind=True)
    _cursors[session] = _Cursor(got.next, deque(got.records[-CACHE_RECORDS:]))
    return got


def kernel_log(session: GuestSession, timeout: float = 30.0) -> str:
    """The whole kernel log as dmesg-style lines: the records read so far (cached) plus the
    new ones, one small read instead of a `dmesg` of everything through the agent (0.1-0.2 s
    under TCG). `dmesg` where the guest cannot read /dev/kmsg; GuestError if that fails too."""
    try:
        return render(read_kmsg(session, 0).records)
    except GuestError:  # no /dev/kmsg, or a reader that failed
        return session.run("dmesg", timeout=timeout, check=True).stdout
