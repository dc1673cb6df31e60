"""Paths and files from inputs kmatrix does not trust: confined to a root, read without blocking.

`confine` is the one check every path that comes from an artefact or a results file goes
through (a module named by modules.dep, a member of an unpacked package, an artefact a
results.json names): resolved with every symbolic link followed, it must stay inside the
root it came from, or the caller's error names the entry and where it pointed.

`read_regular` is how a file named by the user is read: a FIFO, a device, a socket or a
directory is refused before it is opened (opening a FIFO blocks until a writer comes, a
device may have side effects) and the size is capped before anything is read.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from kmatrix.errors import InputError


class PathEscape(InputError):
    """A path from an input leads outside the root it must stay in."""

    def __init__(self, what: str, target: str, root: Path) -> None:
        self.what = what
        self.target = target
        self.root = root
        super().__init__(f"{what}: leads to {target}, outside {root}")


class FileRefused(InputError):
    """A file named by an input cannot be read: missing, not a regular file, too large."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def is_within(path: Path, root: Path) -> bool:
    """Whether path (already resolved) is root or below it (root resolved too)."""
    return path == root or root in path.parents


def confine(root: Path, member: str | Path, what: str) -> Path:
    """root/member with every symbolic link resolved; PathEscape (naming `what`) unless the
    result lies inside root. An absolute member, `..` components and links (absolute or
    relative, at any depth) are all judged by where they finally lead. The path need not
    exist: a missing tail is judged lexically after its existing prefix is resolved."""
    base = root.resolve()
    try:
        target = (base / member).resolve()
    except RuntimeError:  # a symbolic link loop (Python < 3.13 raises this for it)
        raise PathEscape(what, "a symbolic link loop", base) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PathEscape(what, "a symbolic link loop", base) from None
        raise
    if not is_within(target, base):
        raise PathEscape(what, str(target), base)
    return target


def file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def check_regular(path: Path, limit: int | None = None) -> os.stat_result:
    """stat(path) when it is a regular file no larger than limit; FileRefused otherwise.
    Never opens the file, so it cannot block on a FIFO or touch a device."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileRefused(path, "file not found") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise FileRefused(path, "a symbolic link loop") from None
        raise FileRefused(path, f"cannot read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise FileRefused(path, f"is {file_kind(st.st_mode)}, not a regular file")
    if limit is not None and st.st_size > limit:
        raise FileRefused(path, f"is {_size(st.st_size)}; at most {_size(limit)} is read")
    return st


def read_regular(path: Path, limit: int) -> bytes:
    """The content of a regular file of at most limit bytes; FileRefused otherwise.

    Checked with stat first, then opened with O_NONBLOCK (a FIFO swapped in between does
    not block) and checked again on the open descriptor; at most limit + 1 bytes are read
    whatever the file claims, so a file that grows meanwhile is refused too."""
    check_regular(path, limit)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError as e:
        raise FileRefused(path, f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise FileRefused(path, f"is {file_kind(st.st_mode)}, not a regular file")
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as e:
        raise FileRefused(path, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if total > limit:
        raise FileRefused(path, f"is larger than {_size(limit)}, the most that is read")
    return b"".join(chunks)


def read_text(path: Path, limit: int) -> str:
    """read_regular decoded as UTF-8; FileRefused when it is not text."""
    data = read_regular(path, limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FileRefused(path, f"is not UTF-8 text (byte {e.start})") from None


def _size(n: int) -> str:
    for shift, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.3g} {unit}"
    return f"{n} bytes"
