"""The artefact cache: built once under concurrency, never a torn or half-written entry."""

from __future__ import annotations

import errno
import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from kmatrix.host import cache


def _slow_build(dest: str, log: str) -> str:
    def build(tmp: Path) -> None:
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        with tmp.open("wb") as out:
            for i in range(200):
                out.write(bytes([i % 256]) * 4096)

    return str(cache.ensure_file(Path(dest), build))


def test_concurrent_builders_build_once(tmp_path: Path) -> None:
    dest, log = tmp_path / "entry.bin", tmp_path / "builds.log"
    ctx = multiprocessing.get_context("fork")
    pool = ctx.Pool(4)
    try:
        paths = pool.starmap(_slow_build, [(str(dest), str(log))] * 8)
    finally:
        # close + join: the workers leave on the queue's sentinel. (The with-block's
        # terminate() SIGTERMs them instead, and a worker that unwinds rather than dies can
        # leave the queue lock held and another worker waiting on it for ever.)
        pool.close()
        pool.join()
    assert set(paths) == {str(dest)}
    assert len(log.read_text().split()) == 1, "built more than once"
    assert cache.is_complete(dest)
    assert dest.stat().st_size == 200 * 4096
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_half_written_entry_is_never_used(tmp_path: Path) -> None:
    dest = tmp_path / "entry.bin"

    def disk_full(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cache.ensure_file(dest, disk_full)
    assert not dest.exists()
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]
    # A file in place without its checksum (e.g. a crash between rename and sidecar) is
    # rebuilt, not trusted.
    dest.write_bytes(b"torn")
    assert not cache.is_complete(dest)
    cache.ensure_file(dest, lambda tmp: tmp.write_bytes(b"whole"))
    assert dest.read_bytes() == b"whole"
    assert cache.is_complete(dest)


def test_corrupted_entry_is_rebuilt(tmp_path: Path) -> None:
    dest = tmp_path / "entry.bin"
    cache.ensure_file(dest, lambda tmp: tmp.write_bytes(b"good"))
    dest.write_bytes(b"bad!")  # same size, different bytes
    rebuilt: list[int] = []

    def build(tmp: Path) -> None:
        rebuilt.append(1)
        tmp.write_bytes(b"good")

    cache.ensure_file(dest, build)
    assert rebuilt == [1] and dest.read_bytes() == b"good"


@pytest.fixture
def settled_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test count as settled (older than the racy window)."""
    real = cache._now_ns
    monkeypatch.setattr(cache, "_now_ns", lambda: real() + 10 * cache.RACY_NS)


@pytest.fixture
def hashes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every full SHA-256 computed from here on, by path."""
    seen: list[Path] = []
    real = cache.digest_file

    def counting(path: Path) -> str:
        seen.append(path)
        return real(path)

    monkeypatch.setattr(cache, "digest_file", counting)
    return seen


def _next_tick() -> None:
    # File times come from the kernel's coarse clock (one tick is at most 10 ms): make the
    # next change land in a later tick than the stamp just recorded.
    time.sleep(0.05)


def test_verified_entry_is_trusted_by_its_stamp(
    tmp_path: Path, settled_clock: None, hashes: list[Path]
) -> None:
    dest = tmp_path / "entry.bin"
    cache.ensure_file(dest, lambda tmp: tmp.write_bytes(b"good" * 1000))
    assert hashes == [dest.parent / f".{dest.name}.tmp-{os.getpid()}"]
    # The first use hashes the new entry once and records its stamp ...
    assert cache.is_complete(dest)
    assert hashes[1:] == [dest]
    side = (tmp_path / ".entry.bin.sha256").read_text().splitlines()
    assert side[1] == cache.file_stamp(dest.stat())
    # ... later uses trust the stamp and hash nothing.
    for _ in range(3):
        assert cache.is_complete(dest)
    assert len(hashes) == 2


def test_edited_truncated_or_replaced_entry_is_rebuilt(
    tmp_path: Path, settled_clock: None, hashes: list[Path]
) -> None:
    dest = tmp_path / "entry.bin"
    good = b"good" * 1000
    builds: list[int] = []

    def build(tmp: Path) -> None:
        builds.append(1)
        tmp.write_bytes(good)

    def corrupt_in_place() -> None:
        # Same size, old mtime restored: only the ctime (which utime cannot set) moves.
        st = dest.stat()
        with dest.open("r+b") as f:
            f.write(b"BAD!")
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        assert (dest.stat().st_size, dest.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)

    def truncate() -> None:
        with dest.open("r+b") as f:
            f.truncate(100)

    def replace() -> None:
        other = tmp_path / "other.bin"
        other.write_bytes(b"evil" * 1000)
        os.replace(other, dest)

    cache.ensure_file(dest, build)
    for damage in (corrupt_in_place, truncate, replace):
        assert cache.is_complete(dest)  # verified, stamp recorded
        _next_tick()
        damage()
        assert not cache.is_complete(dest), damage.__name__
        cache.ensure_file(dest, build)
        assert dest.read_bytes() == good, damage.__name__
    assert len(builds) == 4


def test_recent_file_gets_no_stamp(tmp_path: Path, hashes: list[Path]) -> None:
    """A file changed within the racy window is re-hashed until it has settled."""
    dest = tmp_path / "entry.bin"
    cache.ensure_file(dest, lambda tmp: tmp.write_bytes(b"fresh"))
    for _ in range(2):
        assert cache.is_complete(dest)
    assert hashes[1:] == [dest, dest]
    assert (tmp_path / ".entry.bin.sha256").read_text().splitlines()[1:] == []


def test_old_sidecar_without_stamp_is_verified_then_upgraded(
    tmp_path: Path, settled_clock: None, hashes: list[Path]
) -> None:
    dest = tmp_path / "entry.bin"
    dest.write_bytes(b"payload")
    side = tmp_path / ".entry.bin.sha256"
    side.write_text(cache.digest_file(dest) + "\n")  # what earlier versions wrote
    assert cache.is_complete(dest)
    assert side.read_text().splitlines()[1] == cache.file_stamp(dest.stat())
    side.write_text("0" * 64 + "\n")  # a wrong checksum is still caught
    assert not cache.is_complete(dest)


def test_stamped_digest_is_remembered_across_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settled_clock: None, hashes: list[Path]
) -> None:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "kernel.deb"
    src.write_bytes(b"v1" * 1000)
    first = cache.stamped_digest(src)
    assert first == hashlib.sha256(b"v1" * 1000).hexdigest()
    cache._memo.clear()  # a new process: only the memo file is left
    assert cache.stamped_digest(src) == first
    assert hashes == [src]
    _next_tick()
    src.write_bytes(b"v2" * 1000)  # same size, new content
    assert cache.stamped_digest(src) == hashlib.sha256(b"v2" * 1000).hexdigest()
    assert hashes == [src, src]


def test_ensure_dir_is_atomic(tmp_path: Path) -> None:
    dest = tmp_path / "tree"

    def broken(tmp: Path) -> None:
        (tmp / "a").write_text("x")
        raise RuntimeError("unpack failed")

    with pytest.raises(RuntimeError):
        cache.ensure_dir(dest, broken)
    assert not dest.exists()
    cache.ensure_dir(dest, lambda tmp: (tmp / "a").write_text("y"))
    assert (dest / "a").read_text() == "y"
    assert (dest / ".kmatrix-complete").is_file()


def test_lock_wait_has_a_deadline(tmp_path: Path) -> None:
    target = tmp_path / "x"
    with cache.locked(target):
        ctx = multiprocessing.get_context("fork")
        q: multiprocessing.Queue[str] = ctx.Queue()

        def waiter() -> None:
            try:
                with cache.locked(target, timeout=0.5):
                    q.put("got it")
            except Exception as e:
                q.put(type(e).__name__ + ": " + str(e))

        p = ctx.Process(target=waiter)
        p.start()
        p.join(10)
        msg = q.get(timeout=5)
    assert msg.startswith("InfraError: waited 0.5s for the cache lock"), msg
