"""The artefact cache: content-addressed entries, built once, safe across xdist workers.

Each entry is produced under an exclusive lock into a temporary name and renamed into
place, and a file entry carries a checksum sidecar written last: an entry without a
matching sidecar is half-written (disk full, killed builder) and is rebuilt, never used.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
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


def _sidecar(path: Path) -> Path:
    return path.parent / f".{path.name}.sha256"


def is_complete(path: Path) -> bool:
    """True when a file entry exists and matches the checksum written after it."""
    side = _sidecar(path)
    if not path.is_file() or not side.is_file():
        return False
    try:
        return side.read_text().strip() == digest_file(path)
    except OSError:
        return False


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
            side_tmp = _sidecar(dest).with_name(_sidecar(dest).name + f".tmp-{os.getpid()}")
            side_tmp.write_text(digest + "\n")
            os.replace(side_tmp, _sidecar(dest))
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
