"""One QEMU process: launch paused, connect QMP, start, and always shut down.

Launch follows QEMU's own python machine class and labgrid: start with -S so an early exit
(bad option, missing file) is caught before the guest runs, then `cont`. Shutdown goes QMP
quit -> SIGTERM -> SIGKILL, each with a deadline; QEMU runs in its own process group with
PR_SET_PDEATHSIG so it dies with the harness even if the harness is SIGKILLed.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from kmatrix.errors import GuestTimeout, VMError
from kmatrix.host.cache import host_boot_id, remembered
from kmatrix.vm.liveness import VcpuState, parse_registers, process_cpu_seconds
from kmatrix.vm.qemuopts import unescape
from kmatrix.vm.qmp import QMP

_live: weakref.WeakSet[Machine] = weakref.WeakSet()
KILL_WAIT = 10.0  # seconds a SIGKILLed QEMU gets to be reaped (its memory is unmapped)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def kill_all(descendants: bool = False) -> None:
    """Kills every QEMU this process started; for atexit and signal handlers. With
    descendants, also every QEMU further down this process's tree (those of xdist workers or a
    pytest child), at once: CI sends its SIGTERM to the top process only, and a loaded worker
    can take many seconds to unwind to its own cleanup."""
    for m in list(_live):
        m.kill()
    if descendants:
        for pid in descendant_qemus():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def descendant_qemus(root: int | None = None) -> list[int]:
    """PIDs of the QEMU processes below root (default: this process) in the process tree."""
    root = os.getpid() if root is None else root
    children: dict[int, list[int]] = {}
    comm: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue  # gone meanwhile
        pid, rest = int(entry), stat[stat.rindex(")") + 2 :].split()
        comm[pid] = stat[stat.index("(") + 1 : stat.rindex(")")]
        children.setdefault(int(rest[1]), []).append(pid)
    found: list[int] = []
    todo = [root]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            if comm[child].startswith("qemu-system"):
                found.append(child)
    return found


atexit.register(kill_all)


def private_rundir(prefix: str = "kmx-") -> Path:
    """A 0700 directory for sockets; short, because unix socket paths are capped at 108."""
    return Path(tempfile.mkdtemp(prefix=prefix))


_TCG_MISSING = re.compile(r"TCG doesn't support requested feature: CPUID\.\w+:\w+\.([\w-]+)")


SANDBOX_ON = "on"


@lru_cache(maxsize=4)
def sandbox_state(qemu: str = "qemu-system-x86_64") -> str:
    """ "on" when this QEMU was built with seccomp (-sandbox) and the host allows it, else
    "off: why". Asked once per binary and host boot (the probe QEMU cost ~30 ms on every
    run's first boot)."""
    path = shutil.which(qemu)
    if path is None:
        return f"off: {qemu} is not installed"

    def ask() -> str:
        p = subprocess.run(
            [path, "-sandbox", "on", "-M", "none", "-display", "none", "-nodefaults",
             "-no-user-config", "-S", "-qmp", "stdio"],
            input='{"execute":"qmp_capabilities"}\n{"execute":"quit"}\n',
            capture_output=True, text=True, timeout=10, check=False,
        )  # fmt: skip
        if p.returncode == 0:
            return SANDBOX_ON
        said = [ln.strip() for ln in p.stderr.splitlines() if ln.strip()]
        return f"off: the -sandbox probe exited with {p.returncode}" + (
            f" ({said[-1][:200]})" if said else ""
        )

    try:
        return remembered("qemu-sandbox-state", Path(path), ask, extra=host_boot_id())
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"off: the -sandbox probe failed ({e})"  # not remembered: may work next time


def sandbox_supported(qemu: str = "qemu-system-x86_64") -> bool:
    return sandbox_state(qemu) == SANDBOX_ON


class Machine:
    def __init__(self, argv: Sequence[str], rundir: Path, qemu_log: Path, name: str) -> None:
        self.argv = list(argv)
        self.rundir = rundir
        self.qemu_log = qemu_log
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.qmp: QMP | None = None
        self.started_at: float | None = None
        self.exitcode: int | None = None
        self.shutdown_steps: list[str] = []

    # --- launch -----------------------------------------------------------------------------

    def launch(
        self,
        timeout: float = 20.0,
        interactive: bool = False,
        before_cont: Callable[[], None] | None = None,
    ) -> None:
        """Starts QEMU paused, connects QMP, runs before_cont (e.g. attach the console
        recorder, so no byte is lost), then lets the guest run."""
        self.qemu_log.parent.mkdir(parents=True, exist_ok=True)
        argv = [*self.argv, "-S"]
        with self.qemu_log.open("wb") as log:
            try:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=None if interactive else subprocess.DEVNULL,
                    stdout=None if interactive else log,
                    stderr=log,
                    start_new_session=not interactive,
                    preexec_fn=_die_with_parent,
                )
            except OSError as e:
                self._close()
                raise VMError(f"{self.name}: cannot start {argv[0]}: {e}", argv) from None
        _live.add(self)
        qmp_path = self._qmp_socket()
        deadline = time.monotonic() + timeout
        while not qmp_path.exists():
            if self.proc.poll() is not None:
                self._raise_exited("QEMU exited during start-up")
            if time.monotonic() > deadline:
                self.kill()
                raise VMError(f"{self.name}: QEMU made no QMP socket within {timeout:g}s", argv)
            time.sleep(0.01)
        self.qmp = QMP(f"kmatrix-{self.name}")
        try:
            self.qmp.connect(qmp_path, max(1.0, deadline - time.monotonic()))
            if before_cont is not None:
                before_cont()
            self.qmp.cmd("cont", timeout=10.0)
        except (VMError, GuestTimeout, OSError) as e:
            # QEMU may be on its way out (a bad option is reported after the QMP socket
            # exists): give it a moment, so its own message is what the user sees.
            if self.wait_exit(2.0) is not None:
                self._raise_exited(f"QEMU exited during start-up ({e})")
            self.kill()
            raise VMError(f"{self.name}: {e}", argv, None, self.output()) from None
        self.started_at = time.monotonic()

    def _qmp_socket(self) -> Path:
        for a in self.argv:
            m = re.match(r"socket,id=qmp,path=((?:[^,]|,,)+)", a)
            if m:
                return Path(unescape(m.group(1)))
        raise VMError(f"{self.name}: argv has no QMP socket", self.argv)

    def _raise_exited(self, what: str) -> None:
        assert self.proc is not None
        code = self.proc.wait()
        self.exitcode = code
        self._close()  # its private run directory goes with it
        raise VMError(f"{self.name}: {what}", self.argv, code, self.output())

    # --- state ------------------------------------------------------------------------------

    def output(self) -> str:
        try:
            return self.qemu_log.read_text(errors="replace")
        except OSError:
            return ""

    def tcg_missing_features(self) -> list[str]:
        """CPU flags the accelerator could not give this model, as QEMU warned about them."""
        return sorted(set(_TCG_MISSING.findall(self.output())))

    def is_running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def wait_exit(self, timeout: float) -> int | None:
        if self.proc is None:
            return None
        try:
            self.exitcode = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        return self.exitcode

    def vcpu_states(self, timeout: float = 5.0) -> list[VcpuState]:
        """Every vCPU's instruction pointer, flags and halt state (monitor `info registers`)."""
        if self.qmp is None or not self.is_running():
            return []
        text = self.qmp.cmd(
            "human-monitor-command", timeout=timeout, **{"command-line": "info registers -a"}
        )
        return parse_registers(str(text))

    def cpu_seconds(self) -> float:
        """QEMU's CPU time so far (all threads): how much the guest could have run."""
        return process_cpu_seconds(self.proc.pid) if self.proc is not None else 0.0

    def events(self) -> list[dict[str, Any]]:
        return self.qmp.poll_events() if self.qmp is not None else []

    # --- shutdown ---------------------------------------------------------------------------

    def shutdown(self, timeout: float = 5.0) -> int | None:
        """QMP quit, then SIGTERM, then SIGKILL; records which step ended it."""
        if self.proc is None:
            self._close()  # never launched: still remove its run directory
            return None
        # Each step is taken only while QEMU runs, and the exit is credited to the last step
        # taken, even when QEMU went just after that step's wait gave up (a loaded host).
        steps: list[tuple[str, Callable[[], None], float]] = [
            ("sigterm", lambda: self._signal(signal.SIGTERM), timeout),
            ("sigkill", lambda: self._signal(signal.SIGKILL), KILL_WAIT),
        ]
        if self.qmp is not None:
            steps.insert(0, ("qmp-quit", lambda: self._quit(timeout), timeout))
        taken = ""
        for name, step, wait in steps:
            if self.proc.poll() is not None:
                break
            step()
            taken = name
            self.wait_exit(wait)
        if taken and self.proc.poll() is not None:
            self.shutdown_steps.append(taken)
        self.exitcode = self.proc.poll()
        self._close()
        return self.exitcode

    def _quit(self, timeout: float) -> None:
        assert self.qmp is not None
        with contextlib.suppress(Exception):
            self.qmp.cmd("quit", timeout=timeout)

    def _signal(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.exitcode = self.proc.wait(timeout=KILL_WAIT)
        self._close()

    def _close(self) -> None:
        _live.discard(self)
        if self.qmp is not None:
            self.qmp.close()
            self.qmp = None
        shutil.rmtree(self.rundir, ignore_errors=True)
