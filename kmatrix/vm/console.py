"""The console recorder: drains the guest's ttyS0 into the cell's console log, bounded.

QEMU serves the console on a unix socket; a thread connects before the guest runs (QEMU is
still paused), so no byte is lost, and writes every chunk to disk as it arrives, so the log up
to a crash or a kill is on disk. A console flood must not fill the disk or the harness's
memory: past `head_cap` bytes the file stops growing, only the last `tail_cap` bytes are kept
in a ring, and on close they are appended after an explicit truncation marker.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from pathlib import Path

HEAD_CAP = 32 << 20
TAIL_CAP = 4 << 20


class ConsoleRecorder:
    def __init__(
        self, log: Path, head_cap: int = HEAD_CAP, tail_cap: int = TAIL_CAP, append: bool = False
    ) -> None:
        self.log = log
        self.head_cap = head_cap
        self.tail_cap = tail_cap
        self.dropped = 0
        self.total = 0
        self._tail = bytearray()
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        # append: a restored VM continues the log of the one it replaced; the cap counts both.
        self._file = log.open("ab" if append else "wb")
        self.written = self._file.tell()
        self._closed = False
        self.error: str | None = None

    def connect(self, path: Path, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                break
            except OSError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self._sock = s
        self._thread = threading.Thread(target=self._drain, name=f"console:{self.log}", daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        assert self._sock is not None
        try:
            while chunk := self._sock.recv(1 << 16):
                if self.error is not None:
                    # Keep reading after a failed write: a console nobody drains blocks the
                    # guest's UART, stalling its commands until their deadlines.
                    self.total += len(chunk)
                    self.dropped += len(chunk)
                    continue
                try:
                    self._take(chunk)
                except Exception as e:  # e.g. disk full: keep the reason
                    self.error = f"console log write failed: {e}"
        except OSError as e:
            if not self._closed:
                self.error = f"console read failed: {e}"

    def _take(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_cap - self.written
        if room > 0:
            head = chunk[:room]
            self._file.write(head)
            self._file.flush()
            self.written += len(head)
            chunk = chunk[room:]
        if chunk:
            self._tail += chunk
            if len(self._tail) > self.tail_cap:
                cut = len(self._tail) - self.tail_cap
                self.dropped += cut
                del self._tail[:cut]

    def close(self, timeout: float = 5.0) -> None:
        """Waits for QEMU's side to close (or timeout), then writes the kept tail."""
        if self._thread is not None:
            self._thread.join(timeout)
        self._closed = True
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2.0)
        with contextlib.suppress(OSError, ValueError):
            if self.dropped:
                self._file.write(
                    f"\n[kmatrix: console output truncated: {self.dropped} bytes dropped here; "
                    f"{self.total} bytes in all]\n".encode()
                )
            if self._tail:
                self._file.write(bytes(self._tail))
            self._file.close()
        self._tail = bytearray()
