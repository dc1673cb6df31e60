"""The QMP client: deadlines on every call, and the bound-but-not-listening start-up race."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from kmatrix.errors import GuestTimeout, VMError
from kmatrix.vm.qmp import QMP

GREETING = {"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""},
                    "capabilities": []}}  # fmt: skip


def fake_qemu(path: Path, listen_after: float, answer: bool = True) -> threading.Thread:
    """Binds at once (as QEMU does early) and listens only after listen_after seconds."""
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))

    def serve() -> None:
        time.sleep(listen_after)
        srv.listen(1)
        conn, _ = srv.accept()
        conn.sendall(json.dumps(GREETING).encode() + b"\n")
        buf, dec = "", json.JSONDecoder()
        while True:
            chunk = conn.recv(4096)
            if not chunk:
                break
            buf += chunk.decode()
            while buf.strip():
                # Clients need not end a request with a newline: decode the stream.
                req, end = dec.raw_decode(buf.lstrip())
                buf = buf.lstrip()[end:]
                if not answer and req["execute"] != "qmp_capabilities":
                    time.sleep(5)
                    conn.close()
                    srv.close()
                    return
                reply: dict[str, object] = {"return": {"status": "running"}}
                if "id" in req:
                    reply["id"] = req["id"]
                conn.sendall(json.dumps(reply).encode() + b"\n")
        conn.close()
        srv.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return t


def test_connect_retries_until_qemu_listens(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    fake_qemu(sock, listen_after=0.5)
    q = QMP("t")
    try:
        q.connect(sock, timeout=5.0)
        assert q.cmd("query-status")["status"] == "running"
    finally:
        q.close()


def test_connect_gives_up_at_the_deadline(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(sock))  # bound, never listening
    t0 = time.monotonic()
    with pytest.raises(VMError, match="Connection refused"):
        QMP("t").connect(sock, timeout=0.5)
    assert time.monotonic() - t0 < 5
    s.close()


def test_a_command_without_answer_times_out(tmp_path: Path) -> None:
    sock = tmp_path / "qmp.sock"
    fake_qemu(sock, listen_after=0.0, answer=False)
    q = QMP("t")
    try:
        q.connect(sock, timeout=5.0)
        with pytest.raises(GuestTimeout, match=r"QMP query-status took more than 0\.5s"):
            q.cmd("query-status", timeout=0.5)
    finally:
        q.close()
