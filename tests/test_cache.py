"""The artefact cache: built once under concurrency, never a torn or half-written entry."""

from __future__ import annotations

import errno
import multiprocessing
import os
from pathlib import Path

import pytest

from kmatrix import cache


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
    with ctx.Pool(4) as pool:
        paths = pool.starmap(_slow_build, [(str(dest), str(log))] * 8)
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
