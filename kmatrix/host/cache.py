"""The artefact cache: content-addressed entries, built once, safe across xdist workers.

Each entry is produced under an exclusive lock into a temporary name and renamed into
place, and a file entry carries a checksum sidecar written last: an entry without a
matching sidecar is half-written (disk full, killed builder) and is rebuilt, never used.

Verifying is cheap after the first time: the sidecar also records the file's stat stamp
(size, mtime, ctime, inode, device) once its SHA-256 matched, and while the stamp still
matches the hash is trusted instead of recomputed (re-hashing ~90 MB of kernel and image
cost 0.12-0.2 s per cell and run). Any change to the stamp means a full re-hash.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from kmatrix.errors import InfraError

LOCK_TIMEOUT = 1800.0  # a kernel build under the lock can take many minutes


def cache_root() -> Path:
    env = os.environ.get("KMATRIX_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "kmatrix"


def digest_bytes(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        b = p.encode() if isinstance(p, str) else p
        h.update(len(b).to_bytes(8, "little"))
        h.update(b)
    return h.hexdigest()


def digest_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def locked(target: Path, timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Exclusive lock beside target; polls so that the wait has a deadline."""
    target.parent.mkdir(parents=True, exist_ok=True)
    lock_path = target.parent / f".{target.name}.lock"
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise InfraError(
                        f"waited {timeout:g}s for the cache lock {lock_path}"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


# A file whose mtime or ctime is this recent may still be written within the same
# timestamp tick (the kernel's clock for them is coarse): its stamp is not trusted yet.
RACY_NS = 2_000_000_000


def file_stamp(st: os.stat_result) -> str:
    """What changes whenever a file's content is changed through the filesystem.

    ctime is in it because utime() cannot set it: an in-place edit that restores the size
    and mtime still moves the ctime. Not caught: corruption below the filesystem (bit rot,
    writes to the raw device), which changes no metadata; delete the entry, or its
    sidecar, to force a re-hash.
    """
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ctime_ns} {st.st_ino} {st.st_dev}"


_now_ns = time.time_ns  # the tests move the clock


def _settled(st: os.stat_result) -> bool:
    return _now_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > RACY_NS


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


_memo: dict[tuple[str, str, str, str], str] = {}  # this process's answers, see remembered()


def remembered(kind: str, path: Path, compute: Callable[[], str], extra: str = "") -> str:
    """compute()'s one-line answer about a file, kept across runs while its stamp holds.

    For what every run would otherwise recompute from an unchanged file: the SHA-256 of
    kernel packages, images, modules and guest tools that go into cache keys, or what a
    QEMU binary says about itself. One small file per (kind, path, extra) under the cache
    root; extra is anything else the answer depends on (e.g. the host's boot id).
    """
    st = path.stat()
    resolved = str(path.resolve())
    stamp = file_stamp(st)
    key = (kind, resolved, extra, stamp)
    if key in _memo:
        return _memo[key]
    memo = cache_root() / kind / digest_bytes(resolved, extra)[:32]
    try:
        saved, value = memo.read_text().split("\n")[:2]
        if saved == stamp and value:
            _memo[key] = value
            return value
    except (OSError, ValueError):
        pass
    value = compute()
    if value and "\n" not in value and _settled(st) and file_stamp(path.stat()) == stamp:
        _memo[key] = value
        with contextlib.suppress(OSError):  # only a speed-up
            memo.parent.mkdir(parents=True, exist_ok=True)
            _write_atomic(memo, f"{stamp}\n{value}\n")
    return value


def host_boot_id() -> str:
    """Changes at every boot of the host: for answers that may not outlive one."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def stamped_digest(path: Path) -> str:
    """digest_file(path), remembered across runs while the file's stamp is unchanged."""
    return remembered("digests", path, lambda: digest_file(path))


def _sidecar(path: Path) -> Path:
    return path.parent / f".{path.name}.sha256"


def _write_sidecar(path: Path, digest: str, st: os.stat_result | None) -> None:
    """Line 1 the SHA-256, line 2 (when known to be settled) the stamp it was verified at."""
    _write_atomic(_sidecar(path), digest + "\n" + (file_stamp(st) + "\n" if st else ""))


def is_complete(path: Path) -> bool:
    """True when a file entry exists and matches the checksum written after it.

    The full hash runs when the sidecar has no stamp or the file's stamp differs from it
    (a torn, truncated, replaced or edited file); a verified match records the stamp.
    """
    side = _sidecar(path)
    try:
        st = path.stat()
        lines = side.read_text().split("\n")
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or not lines[0]:
        return False
    if len(lines) > 1 and lines[1] == file_stamp(st):
        return True
    try:
        if lines[0] != digest_file(path):
            return False
        after = path.stat()
    except OSError:
        return False
    if file_stamp(after) == file_stamp(st) and _settled(st):
        with contextlib.suppress(OSError):  # only a speed-up; the entry is verified
            _write_sidecar(path, lines[0], st)
    return True


def ensure_file(dest: Path, build: Callable[[Path], object]) -> Path:
    """Returns dest, building it first with build(tmp_path) unless a verified copy exists."""
    if is_complete(dest):
        return dest
    with locked(dest):
        if is_complete(dest):
            return dest
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        try:
            build(tmp)
            if not tmp.is_file():
                raise InfraError(f"building {dest} produced no file")
            digest = digest_file(tmp)
            with tmp.open("rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dest)
            # No stamp yet: the new file's times are too recent to tell a later write in the
            # same tick from this one. The first use re-hashes it once and records one.
            _write_sidecar(dest, digest, None)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    return dest


def ensure_dir(dest: Path, build: Callable[[Path], object]) -> Path:
    """Like ensure_file for a directory; a marker file written last says it is whole."""
    marker = dest / ".kmatrix-complete"
    if marker.is_file():
        return dest
    with locked(dest):
        if marker.is_file():
            return dest
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            (tmp / ".kmatrix-complete").write_text("ok\n")
            shutil.rmtree(dest, ignore_errors=True)  # a half-built leftover
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
