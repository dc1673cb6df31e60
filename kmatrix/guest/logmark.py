"""Log marks: where the guest's kernel log stood before an action, so a test judges only the
lines its action caused."""

from __future__ import annotations

import re
from dataclasses import dataclass

from kmatrix.guest.session import GuestSession

_TS = re.compile(r"^\[\s*(\d+\.\d+)\]")


@dataclass(frozen=True)
class LogMark:
    """Where the kernel log stood before an action, so only newer lines are judged."""

    timestamp: float


def log_mark(guest: GuestSession) -> LogMark:
    last = 0.0
    for line in guest.dmesg().splitlines():
        m = _TS.match(line)
        if m:
            last = float(m.group(1))
    return LogMark(last)


def new_log(guest: GuestSession, mark: LogMark) -> str:
    """Kernel-log lines printed after the mark."""
    lines = []
    for line in guest.dmesg().splitlines():
        m = _TS.match(line)
        if m and float(m.group(1)) > mark.timestamp:
            lines.append(line)
    return "\n".join(lines) + "\n"
