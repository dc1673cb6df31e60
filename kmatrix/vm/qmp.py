"""A small synchronous QMP client over qemu.qmp with a deadline on every call.

qemu.qmp's own legacy shim has calls with no timeout (connect); a frozen QEMU must never
hang the harness, so every await here runs under asyncio.wait_for.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any, TypeVar

from qemu.qmp import QMPClient
from qemu.qmp.error import QMPError

from kmatrix.errors import GuestTimeout, VMError

T = TypeVar("T")


class QMP:
    def __init__(self, name: str) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = QMPClient(name)
        self.events: list[dict[str, Any]] = []

    def _sync(self, coro: Any, timeout: float, what: str) -> Any:
        try:
            return self._loop.run_until_complete(asyncio.wait_for(coro, timeout))
        except TimeoutError:
            raise GuestTimeout(f"QMP {what} took more than {timeout:g}s") from None
        except (QMPError, OSError, EOFError) as e:
            raise VMError(f"QMP {what} failed: {e!r}") from None

    def connect(self, path: Path, timeout: float) -> None:
        """Connects, retrying while QEMU has bound its socket but not yet listens on it
        (connection refused) — a start-up race seen on loaded hosts."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                self._sync(
                    self._client.connect(str(path)),
                    max(0.5, deadline - time.monotonic()),
                    "connect",
                )
                return
            except VMError as e:
                if "Connection refused" not in str(e) or time.monotonic() > deadline:
                    raise
            self._client = QMPClient(self._client.name)
            time.sleep(0.05)

    def cmd(self, name: str, timeout: float = 10.0, **args: Any) -> Any:
        result = self._sync(self._client.execute(name, args or None), timeout, name)
        self._drain()
        return result

    def send_fd(self, fd: int, name: str, timeout: float = 10.0) -> None:
        """Hands QEMU an open file as `name` (SCM_RIGHTS + getfd), e.g. for `fd:` migration:
        QEMU then needs neither to open paths nor to spawn a shell (its sandbox forbids it)."""
        try:
            self._client.send_fd_scm(fd)
        except (QMPError, OSError) as e:
            raise VMError(f"QMP getfd {name} failed: {e!r}") from None
        self.cmd("getfd", timeout=timeout, fdname=name)

    def _drain(self) -> None:
        for ev in self._client.events.clear():
            self.events.append(dict(ev))

    def poll_events(self) -> list[dict[str, Any]]:
        """Runs the loop briefly so arrived events are collected; returns all seen so far."""
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.sleep(0.01))
        self._drain()
        return self.events

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._loop.run_until_complete(asyncio.wait_for(self._client.disconnect(), 3.0))
        with contextlib.suppress(Exception):
            self._loop.close()
