"""QEMU's option syntax: the one escaper and key check every option kmatrix builds goes through.

In `-device DRIVER,key=value,...` (and -object, -machine, -chardev, -blockdev, -numa) a comma
ends a value unless it is doubled, so a path or value with a comma in it - a reports or
temporary directory, a profile's property - would otherwise end the option there and start
another (`chardev=agent,x=1`). Keys must follow QEMU's property-name grammar; profiles are
checked when they are read (kmatrix.config.hostaccess), and again here so that options built
in code cannot slip past.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kmatrix.config.hostaccess import CPU_RE, PROP_KEY_RE


def escape(value: str | Path) -> str:
    """A value (or path) for a comma-separated QEMU option: every comma doubled."""
    text = str(value)
    if "\x00" in text:
        raise ValueError(f"{text!r}: a QEMU option value cannot contain a NUL byte")
    return text.replace(",", ",,")


def unescape(value: str) -> str:
    return value.replace(",,", ",")


def check_key(key: str) -> str:
    if not PROP_KEY_RE.fullmatch(key):
        raise ValueError(f"{key!r} is not a QEMU property name")
    return key


def props(pairs: Iterable[tuple[str, str]]) -> str:
    """ ",key=value" for each pair, keys checked and values escaped."""
    return "".join(f",{check_key(k)}={escape(v)}" for k, v in pairs)


def option(head: str, pairs: Iterable[tuple[str, str | Path]]) -> str:
    """HEAD,key=value,...: head is a driver, type or backend name (a fixed word, checked)."""
    if not head or "," in head or "=" in head:
        raise ValueError(f"{head!r} cannot start a QEMU option")
    return head + props((k, str(v)) for k, v in pairs)


def cpu(model: str) -> str:
    """-cpu MODEL[,flags]: the matrix loader checked the grammar; checked again here."""
    if not CPU_RE.fullmatch(model):
        raise ValueError(f"{model!r} is not a QEMU CPU model with flags")
    return model
