"""The guest command channel: run a command in the guest, get stdout, stderr and exit status.

The channel is a virtio-serial port (or ttyS1 for kernels without a virtio console), never
the printk console, driven with pexpect. The guest agent (images/agent) frames each reply
with markers around base64 payloads, so command output cannot be mistaken for framing.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import shlex
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO

import pexpect
import pexpect.fdpexpect

from kmatrix.errors import GuestDied, GuestError, GuestTimeout

GRACE = 5.0  # the host waits this much longer than the guest-side timeout


@dataclass(frozen=True)
class CommandResult:
    command: str
    stdout: str
    stderr: str
    exit_status: int
    duration: float

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class CommandFailed(GuestError):
    def __init__(self, result: CommandResult) -> None:
        self.result = result
        tail = (result.stderr or result.stdout).strip()[-1500:]
        super().__init__(
            f"guest command {result.command!r} exited with status {result.exit_status}"
            + (f":\n{tail}" if tail else "")
        )


class GuestSession:
    def __init__(self, sock: socket.socket, name: str, transcript: IO[str] | None = None) -> None:
        self._sock = sock
        self.name = name
        self._child = pexpect.fdpexpect.fdspawn(sock.fileno(), timeout=30, maxread=1 << 16)
        self._seq = 0
        self._transcript = transcript
        self.ready_uptime: float | None = None
        self.closed = False
        # Called with each finished command and its guest-side deadline (the journal a
        # cell's reproducer replays).
        self.on_command: Callable[[CommandResult, int], None] | None = None

    @classmethod
    def connect(
        cls, path: Path, timeout: float, alive: object, name: str, transcript: IO[str] | None
    ) -> GuestSession:
        """Connects to QEMU's agent socket; alive() says whether QEMU still runs."""
        deadline = time.monotonic() + timeout
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(str(path))
                return cls(s, name, transcript)
            except OSError:
                s.close()
                if callable(alive) and not alive():
                    raise GuestDied(f"{name}: QEMU exited before the agent socket opened") from None
                if time.monotonic() > deadline:
                    raise GuestTimeout(f"{name}: agent socket {path} did not open") from None
                time.sleep(0.02)

    @property
    def requests(self) -> int:
        """How many requests this session has sent (a change means the guest did something)."""
        return self._seq

    def wait_ready(self, timeout: float) -> float:
        """Waits for the agent's hello; returns the guest uptime it reported."""
        try:
            self._child.expect(rb"KMX-READY ([0-9.]+)\r?\n", timeout=timeout)
        except pexpect.TIMEOUT:
            raise GuestTimeout(
                f"{self.name}: the guest agent did not start within {timeout:g}s"
            ) from None
        except pexpect.EOF:
            raise GuestDied(f"{self.name}: the VM went away before userspace answered") from None
        match = self._child.match
        assert isinstance(match, re.Match)
        self.ready_uptime = float(match.group(1))
        return self.ready_uptime

    def run(self, command: str, timeout: float = 60.0, check: bool = False) -> CommandResult:
        """Runs a shell command in the guest under a guest-side and a host-side deadline."""
        payload = base64.b64encode(command.encode()).decode()
        tmo = max(1, int(timeout + 0.999))
        result = self._request(command, lambda ident: f"KMX {ident} {tmo} {payload}", tmo)
        # Shell commands only: they are what a reproducer can replay (kmsg reads and file
        # writes are the agent's own requests).
        if self.on_command is not None:
            self.on_command(result, tmo)
        if check and result.exit_status != 0:
            raise CommandFailed(result)
        return result

    def kmsg(self, seq: int, rewind: bool = False) -> CommandResult:
        """The kernel log records from sequence number `seq` on, as images/programs/kmx-kmsg
        prints them; the agent runs it directly on its open /dev/kmsg, whose position is
        where the previous call stopped (`rewind` starts from the oldest record instead)."""
        flag = " -r" if rewind else ""
        # kmx-kmsg's own deadline (alarm) is 20 s.
        return self._request(
            f"[kmsg from {seq}{flag}]", lambda i: f"KMX-KMSG {i} {seq}{flag}", 20, log=False
        )

    def _request(
        self, command: str, line: Callable[[str], str], tmo: int, log: bool = True
    ) -> CommandResult:
        """Sends one request line (made from its id) and waits tmo + GRACE for its reply;
        the transcript gets the output unless log is False."""
        if self.closed:
            raise GuestDied(f"{self.name}: the guest session is closed")
        self._seq += 1
        ident = f"{self._seq}"
        start = time.monotonic()
        end = re.compile(rf"KMX-END {ident} (-?\d+)\r?\n".encode())
        try:
            # sendall: a file's worth of payload may not go in one write.
            self._sock.sendall(f"{line(ident)}\n".encode())
            self._child.expect(end, timeout=tmo + GRACE)
        except pexpect.TIMEOUT:
            self.closed = True  # the agent is stuck in this command: nothing else can run
            raise GuestTimeout(
                f"{self.name}: guest command {command!r} gave no reply within "
                f"{tmo + GRACE:g}s (guest deadline {tmo}s + {GRACE:g}s grace)"
            ) from None
        except (pexpect.EOF, OSError) as e:
            # A reset socket is QEMU going away just as surely as an orderly EOF.
            self.closed = True
            why = "" if isinstance(e, pexpect.EOF) else f" ({e.__class__.__name__})"
            raise GuestDied(
                f"{self.name}: the VM went away while running {command!r}{why}"
            ) from None
        except BaseException:
            # Interrupted (Ctrl-C) mid-command: the agent still runs it and answers nothing
            # else, so teardown must not wait on it (dmesg would hold QEMU for 25 s).
            self.closed = True
            raise
        match = self._child.match
        assert isinstance(match, re.Match)
        status = int(match.group(1))
        before = self._child.before
        assert isinstance(before, bytes)
        stdout, stderr = self._decode(before, ident, command)
        result = CommandResult(command, stdout, stderr, status, time.monotonic() - start)
        if self._transcript is not None:
            output = f"{stdout}{stderr}" if log else ""
            self._transcript.write(
                f"$ {command}\n{output}[exit {status}, {result.duration:.2f}s]\n"
            )
            self._transcript.flush()
        return result

    def _decode(self, before: bytes, ident: str, command: str) -> tuple[str, str]:
        text = before.replace(b"\r", b"")
        out_mark = f"KMX-OUT {ident}\n".encode()
        err_mark = f"\nKMX-ERR {ident}\n".encode()
        i = text.rfind(out_mark)
        j = text.rfind(err_mark)
        if i < 0 or j < i:
            raise GuestError(f"{self.name}: malformed reply to {command!r}: {text[-200:]!r}")
        try:
            out = base64.b64decode(b"".join(text[i + len(out_mark) : j].split()))
            err = base64.b64decode(b"".join(text[j + len(err_mark) :].split()))
        except binascii.Error as e:
            raise GuestError(f"{self.name}: corrupt reply to {command!r}: {e}") from None
        return out.decode(errors="replace"), err.decode(errors="replace")

    def read_file(self, path: str, timeout: float = 30.0) -> str:
        return self.run(f"cat {shlex.quote(path)}", timeout=timeout, check=True).stdout

    def write_file(self, path: str, data: str | bytes, timeout: float = 30.0) -> None:
        """Writes data to a guest file. The bytes follow the request line as base64 of a
        declared length, which the agent reads in blocks (fast enough for a module)."""
        raw = data.encode() if isinstance(data, str) else data
        b64 = base64.b64encode(raw)
        name = base64.b64encode(path.encode()).decode()
        tmo = max(1, int(timeout + 0.999))

        def line(ident: str) -> str:
            return f"KMX-PUT {ident} {len(b64)} {name}\n{b64.decode()}"

        result = self._request(f"[write {path}, {len(raw)} bytes]", line, tmo)
        if self.on_command is not None:
            # The journal gets the shell command that writes the same bytes: a reproducer
            # replays it like any other (slower than KMX-PUT, but only there).
            shell = f"echo {b64.decode()} | base64 -d > {shlex.quote(path)}"
            self.on_command(replace(result, command=shell), tmo)
        if result.exit_status != 0:
            raise CommandFailed(result)

    def dmesg(self, timeout: float = 30.0) -> str:
        return self.run("dmesg", timeout=timeout, check=True).stdout

    def poweroff(self, timeout: float = 10.0) -> None:
        """Asks the agent to power the guest off; returns once it acknowledged."""
        self._seq += 1
        self._child.send(f"KMX-POWEROFF {self._seq}\n".encode())
        try:
            self._child.expect(rf"KMX-BYE {self._seq}".encode(), timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            raise GuestTimeout(f"{self.name}: the guest did not acknowledge poweroff") from e
        finally:
            self.closed = True

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self._sock.close()
