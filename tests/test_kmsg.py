"""The kernel log by /dev/kmsg sequence number: kmx-kmsg's output parsed and rendered
(kmatrix.guest.kmsg), log marks (kmatrix.guest.logmark), and both on a real guest."""

from __future__ import annotations

import pytest

from kmatrix.errors import GuestError
from kmatrix.guest.guest import Guest
from kmatrix.guest.kmsg import kernel_log, parse_kmsg, read_kmsg, render, render_lines
from kmatrix.guest.logmark import log_mark, new_log
from kmatrix.guest.session import CommandResult
from kmatrix.results.ktap import strip_printk
from kmatrix.results.logparse import parse_kernel_log

OUTPUT = (
    "6,100,1234567,-;virtio_blk virtio2: [vda] 131072 512-byte logical blocks\n"
    " SUBSYSTEM=virtio\n"
    " DEVICE=+virtio:virtio2\n"
    "4,101,2000001,-,caller=T95;WARNING: CPU: 1 PID: 95 at a.c:1 f+0x1/0x2\n"
    "12,102,2500000,-;written by userspace\\x09with a tab\n"
    "0,103,3000000,c,caller=C1;caf\\xc3\\xa9 \\x5c backslash\\x0asecond line\n"
    "#kmx-kmsg next=104 first=100 lost=0\n"
)


def test_records_are_parsed_with_their_sequence_number_level_facility_and_caller() -> None:
    read = parse_kmsg(OUTPUT)
    assert (read.next, read.first, read.lost) == (104, 100, 0)
    r = read.records
    assert [x.seq for x in r] == [100, 101, 102, 103]
    assert [(x.level, x.facility, x.caller) for x in r] == [
        (6, 0, None), (4, 0, "T95"), (4, 1, None), (0, 0, "C1"),
    ]  # fmt: skip
    assert [x.from_kernel for x in r] == [True, True, False, True]
    assert r[2].text == "written by userspace\twith a tab"
    assert r[3].text == "café \\ backslash\nsecond line"


def test_rendering_gives_console_lines_every_one_timestamped() -> None:
    read = parse_kmsg(OUTPUT)
    lines, seqs = render_lines(read.records, kernel_only=True)
    assert lines == [
        "[    1.234567] virtio_blk virtio2: [vda] 131072 512-byte logical blocks",
        "[    2.000001][   T95] WARNING: CPU: 1 PID: 95 at a.c:1 f+0x1/0x2",
        "[    3.000000][    C1] café \\ backslash",
        "[    3.000000][    C1] second line",
    ]
    assert seqs == [100, 101, 103, 103]
    assert "written by userspace" in render(read.records)  # as dmesg shows them
    (f,) = parse_kernel_log(render(read.records, kernel_only=True))
    assert (f.title, f.caller) == ("WARNING in f", "T95")


def test_output_without_its_closing_line_is_an_error() -> None:
    with pytest.raises(GuestError, match="no closing line"):
        parse_kmsg(OUTPUT.rsplit("#", 1)[0])


# --- a real guest ---------------------------------------------------------------------------


def test_marks_and_reads_on_a_real_guest(booted61: Guest, monkeypatch: pytest.MonkeyPatch) -> None:
    s = booted61.session
    assert s is not None
    rewinds: list[int] = []
    real = s.kmsg

    def counted(seq: int, rewind: bool = False) -> CommandResult:
        if rewind:
            rewinds.append(seq)
        return real(seq, rewind)

    monkeypatch.setattr(s, "kmsg", counted)
    first = read_kmsg(s, 0)
    assert first.first == 0 and first.records and first.records[0].seq == 0
    assert "Linux version" in first.records[0].text
    mark = log_mark(s)
    assert mark.seq == read_kmsg(s).next  # nothing new: the position stays
    s.run("echo 'kmatrix: marked line' > /dev/kmsg", check=True)
    text = new_log(s, mark)
    assert text.endswith("kmatrix: marked line\n") and text.count("\n") == 1
    # Behind the agent's position, but read before: from the host's cache, no rewind.
    (rec,) = read_kmsg(s, mark.seq).records
    assert (rec.seq, rec.from_kernel) == (mark.seq, False)
    assert read_kmsg(s).records == ()  # and on from there: nothing new
    assert new_log(s, mark) == text  # a mark can be read again
    assert rewinds == [] or rewinds == [0]  # only the first read, if this session had none


def test_kmx_kmsg_on_its_own_reads_from_the_oldest_record(booted61: Guest) -> None:
    """Without the agent's descriptor (stdin not /dev/kmsg) it opens the log itself."""
    s = booted61.session
    assert s is not None
    out = s.run("kmx-kmsg 0 </dev/null", check=True).stdout
    read = parse_kmsg(out)
    assert read.records[0].seq == 0 and read.next == read.records[-1].seq + 1
    nothing = parse_kmsg(s.run(f"kmx-kmsg {read.next} </dev/null", check=True).stdout)
    assert nothing.records == () and nothing.next >= read.next


def test_kernel_log_is_dmesg_from_records(booted61: Guest) -> None:
    """kernel_log, which the kept dmesg.log and the kselftest and KUnit readers use, gives the
    lines `dmesg` gives (text after the printk prefix), new ones included, without a `dmesg`."""
    s = booted61.session
    assert s is not None
    s.run("printf 'kmatrix: two\\nlines\\n' > /dev/kmsg", check=True)
    ours = kernel_log(s)
    theirs = s.run("dmesg", check=True).stdout
    assert [strip_printk(ln) for ln in ours.splitlines()] == [
        strip_printk(ln) for ln in theirs.splitlines()
    ]
    assert "kmatrix: two\n" in ours and ours.splitlines()[0].startswith("[    0.000000]")
