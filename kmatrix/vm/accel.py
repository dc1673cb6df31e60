"""Choosing the accelerator: KVM only once a probe boot has proved it works, else TCG.

/dev/kvm can exist and open while nested guests hang (as on these CI machines), so `auto`
boots the cell's own kernel under KVM with a short deadline and falls back to TCG, saying
why. The verdict is cached per host boot and QEMU binary, shared by all xdist workers.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kmatrix.host.cache import cache_root, digest_bytes, host_boot_id, locked, remembered

PROBE_TIMEOUT = 20.0


@dataclass(frozen=True)
class AccelChoice:
    accel: str  # "kvm" | "tcg"
    reason: str


def kvm_openable() -> str | None:
    """None when /dev/kvm opens read-write, else why not."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR)
    except OSError as e:
        return f"/dev/kvm cannot be opened ({e.strerror})"
    os.close(fd)
    return None


def qemu_version(qemu: str = "qemu-system-x86_64") -> str:
    """The version line of this QEMU binary; asked once per binary, not per test or run
    (spawning it cost 30-100 ms, and every test's JUnit properties carry it)."""
    path = shutil.which(qemu)
    if path is None:
        return "not installed"

    def ask() -> str:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        return out.splitlines()[0].removeprefix("QEMU emulator version ").strip() if out else ""

    try:
        return remembered("qemu-version", Path(path), ask) or "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def _probe_key() -> str:
    return digest_bytes(host_boot_id(), qemu_version())[:16]


def choose(requested: str, probe: Callable[[], str | None]) -> AccelChoice:
    """requested: auto|kvm|tcg. probe() boots under KVM and returns None or why it failed."""
    if requested == "tcg":
        return AccelChoice("tcg", "requested")
    why = kvm_openable()
    if requested == "kvm":
        # An explicit kvm is obeyed; a failure then shows up as the boot's own error.
        return AccelChoice("kvm", "requested" if why is None else f"requested, but {why}")
    if why is not None:
        return AccelChoice("tcg", f"KVM unavailable: {why}")
    verdict_file = cache_root() / "accel" / f"kvm-probe-{_probe_key()}.json"
    verdict_file.parent.mkdir(parents=True, exist_ok=True)
    with locked(verdict_file, timeout=PROBE_TIMEOUT * 6):
        if verdict_file.is_file():
            try:
                data = json.loads(verdict_file.read_text())
                return AccelChoice(str(data["accel"]), str(data["reason"]))
            except (ValueError, KeyError):
                pass
        failure = probe()
        if failure is None:
            choice = AccelChoice("kvm", "KVM probe boot succeeded")
        else:
            choice = AccelChoice("tcg", f"KVM probe boot failed ({failure}); using TCG")
        tmp = verdict_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"accel": choice.accel, "reason": choice.reason}))
        os.replace(tmp, verdict_file)
        return choice
