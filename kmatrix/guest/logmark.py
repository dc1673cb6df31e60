"""Log marks: where the guest's kernel log stood before an action, so a test judges only the
lines its action caused.

A mark is a /dev/kmsg record sequence number (kmatrix.guest.kmsg), not a timestamp: it
works with printk.time=0, with caller ids in the lines, and when two records share a time.
"""

from __future__ import annotations

from dataclasses import dataclass

from kmatrix.guest.kmsg import read_kmsg, render
from kmatrix.guest.session import GuestSession


@dataclass(frozen=True)
class LogMark:
    """Where the kernel log stood before an action, so only newer records are judged."""

    seq: int  # the sequence number the first record after the mark gets


def log_mark(guest: GuestSession) -> LogMark:
    return LogMark(read_kmsg(guest).next)


def new_log(guest: GuestSession, mark: LogMark) -> str:
    """The kernel log records printed after the mark (those userspace wrote to /dev/kmsg
    too, as dmesg shows them), as "[seconds] text" lines."""
    return render(read_kmsg(guest, mark.seq).records)
