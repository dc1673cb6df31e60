#!/usr/bin/env python3
"""kmatrix boot-speed benchmark: the floor (raw QEMU), kmatrix and virtme-ng, side by side.

    .venv/bin/python benchmarks/run.py                 # every section, 5 repetitions
    .venv/bin/python benchmarks/run.py --reps 3 --sections floor,pvh --json /tmp/b.json

Everything runs sequentially in one process on the same kernels and guest image
(benchmarks/matrix.yaml), the compared variants interleaved repetition by repetition, so
machine noise (other QEMUs, compilers) spreads over all of them alike; the report gives
medians, the spread and ratios, and the load average seen during each section.

Sections:
  whole     what users feel, as whole processes: raw QEMU booting the kernel with a busybox-only
            initramfs that prints its uptime and powers off, against `pytest -p kmatrix -n 0
            testcases/test_boot.py -k userspace` on a one-cell matrix of the same kernel (same
            machine, CPU, vCPUs, memory and -accel flags), interleaved A B A B; spawn to the
            first boot result and to exit; the same with a device profile of no devices (the
            floor's hardware: what is left is the harness's own); with --compare-tree, the same
            pytest run from another checkout (e.g. the previous release) as a further variant
  floor     raw qemu-system-x86_64 boots the kernel + the kmatrix initramfs to a guest command
            (uname -r) and poweroff: a minimal argv, and kmatrix's own argv; against them the
            kmatrix library (Guest: boot, command, poweroff) and pytest (time to the first boot
            result, to the guest command's result, to the end of the process), with the boot
            taken apart (QEMU start, kernel to init, init to agent, command, poweroff)
  cell      one whole cell with every suite (pytest testcases -k CELL), time per suite
  vng       virtme-ng (benchmarks/.venv, `vng --run KERNEL --exec 'uname -r'`) on the same kernel
  pvh       bzImage vs the extracted PVH vmlinux, every kernel of the benchmark matrix
  initrd    the initramfs with the suite tools (as before the tools disk) uncompressed vs gzip
            vs zstd, the base image cells boot now, and busybox alone
  xdist     the default matrix's boot suite with -n 1 and -n 2
  snapshot  restoring a migration snapshot of a booted guest vs booting it again: raw QEMU
            (exec: migration, no sandbox) and the runner's Guest.snapshot()/restore()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from kmatrix.config.specs import Cell  # noqa: E402
from kmatrix.guest.datadisk import DiskPlan, staged_tree  # noqa: E402
from kmatrix.guest.guest import Guest  # noqa: E402
from kmatrix.guest.image import (  # noqa: E402
    TOOLS_DISK,
    base_modules,
    build_image,
    load_recipe,
    tools_content,
)
from kmatrix.guest.session import GuestSession  # noqa: E402
from kmatrix.kernels import load_matrix  # noqa: E402
from kmatrix.kernels.artifact import KernelArtifact  # noqa: E402
from kmatrix.results.runs import load_run  # noqa: E402
from kmatrix.vm.argv import QEMU_BINARY, BootPaths, build_argv  # noqa: E402
from kmatrix.vm.devices import lower  # noqa: E402
from kmatrix.vm.machine import Machine, private_rundir, sandbox_supported  # noqa: E402

MATRIX = ROOT / "benchmarks" / "matrix.yaml"
DEFAULT_MATRIX = ROOT / "matrix" / "default.yaml"
VNG_VENV = ROOT / "benchmarks" / ".venv"
PY = sys.executable
SECTIONS = ("whole", "floor", "cell", "vng", "pvh", "initrd", "xdist", "snapshot")
FLOOR_KERNELS = ("deb-6.1-cloud", "deb-6.12-generic")  # cheap cloud; generic = vng's kernel
TARGET_FLOOR = 1.15
TARGET_FIRST_RESULT = 1.10  # whole section: first boot result / raw QEMU whole process
WHOLE_KERNEL = "deb-6.1-cloud"
TARGET_VNG = 0.25
TARGET_XDIST = 1.8
T = TypeVar("T")
BENCH_INIT = """#!/bin/sh
mount -t proc proc /proc
echo "bench: $(uname -r) up $(cut -d' ' -f1 /proc/uptime)"
poweroff -f
"""

# --- bookkeeping ------------------------------------------------------------------------------


class Samples:
    def __init__(self) -> None:
        self.data: dict[str, list[float]] = {}
        self.notes: dict[str, str] = {}
        self.loads: dict[str, list[float]] = {}
        self.last_uptime = 0.0  # the last floor boot's guest uptime at its command
        self.others: dict[str, float] = {}  # section -> cores used by other processes

    def add(self, key: str, value: float | None) -> None:
        if value is not None:
            self.data.setdefault(key, []).append(float(value))

    def med(self, key: str) -> float | None:
        xs = self.data.get(key)
        return statistics.median(xs) if xs else None

    def load(self, section: str) -> None:
        self.loads.setdefault(section, []).append(os.getloadavg()[0])


S = Samples()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.1f}] {msg}", flush=True)


def other_qemus() -> int:
    n = 0
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            with contextlib.suppress(OSError):
                if (p / "comm").read_text().startswith("qemu-system"):
                    n += 1
    return n


def cpu_mark() -> tuple[float, float, float]:
    """(wall, CPU seconds busy on the whole machine, CPU seconds of this process tree)."""
    vals = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(vals) - vals[3] - vals[4]  # all but idle and iowait
    ours = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        ru = resource.getrusage(who)
        ours += ru.ru_utime + ru.ru_stime
    return time.monotonic(), busy / os.sysconf("SC_CLK_TCK"), ours


def others_cores(a: tuple[float, float, float], b: tuple[float, float, float]) -> float:
    """Cores' worth of CPU that other processes (not this benchmark) used between a and b."""
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / max(1e-6, b[0] - a[0]))


def fmt(x: float | None, unit: str = "s") -> str:
    return "n/a" if x is None else f"{x:.2f}{unit}"


def spread(key: str) -> str:
    xs = S.data.get(key)
    if not xs:
        return "n/a"
    return f"{statistics.median(xs):6.2f}s  [{min(xs):.2f}-{max(xs):.2f}] n={len(xs)}"


def ratio(a: str, b: str) -> float | None:
    x, y = S.med(a), S.med(b)
    return None if x is None or y is None or y == 0 else x / y


# --- artefacts --------------------------------------------------------------------------------


class Prepared:
    def __init__(self, cell: Cell, kernel: KernelArtifact, initrd: Path, channel: str) -> None:
        self.cell, self.kernel, self.initrd, self.channel = cell, kernel, initrd, channel


def prepare(cell: Cell, work: Path) -> Prepared:
    g = Guest(cell, work / "prep" / cell.slug, accel="tcg")
    g.prepare()
    assert g.kernel is not None and g.initrd is not None
    return Prepared(cell, g.kernel, g.initrd, g.record.channel)


def floor_initrd(base: Path, work: Path, compress: str | None = None) -> Path:
    """The kmatrix image with a second cpio appended holding /bench-init (the kernel unpacks
    concatenated archives in order), optionally compressed as a whole."""
    out = work / f"floor-{base.stem}.cpio"
    if not out.exists():
        extra = work / "bench-init-root"
        extra.mkdir(exist_ok=True)
        (extra / "bench-init").write_text(BENCH_INIT)
        (extra / "bench-init").chmod(0o755)
        out.write_bytes(base.read_bytes() + newc_archive(extra, b"bench-init\n"))
    if compress is None:
        return out
    dest = out.with_suffix(f".cpio.{compress}")
    if not dest.exists():
        tool = {"gz": ["gzip", "-6", "-c"], "zst": ["zstd", "-3", "-q", "-c"]}[compress]
        with dest.open("wb") as f:
            subprocess.run([*tool, str(out)], stdout=f, check=True)
    return dest


def busybox_initrd(work: Path) -> Path:
    """Only busybox and /bench-init: what the floor costs without kmatrix's suite tools."""
    out = work / "busybox-only.cpio"
    root = work / "busybox-root"
    for d in ("bin", "sbin", "proc"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    for applet in ("sh", "mount", "echo", "uname", "cut"):
        (root / "bin" / applet).unlink(missing_ok=True)
        (root / "bin" / applet).symlink_to("busybox")
    (root / "sbin" / "poweroff").unlink(missing_ok=True)
    (root / "sbin" / "poweroff").symlink_to("../bin/busybox")
    (root / "bench-init").write_text(BENCH_INIT)
    (root / "bench-init").chmod(0o755)
    names = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    out.write_bytes(newc_archive(root, names))
    return out


def newc_archive(root: Path, names: bytes) -> bytes:
    """A newc cpio of the newline-separated names under root, owned by root."""
    return subprocess.run(
        ["cpio", "-o", "-H", "newc", "--owner", "0:0", "--quiet"],
        input=names, cwd=root, capture_output=True, check=True,
    ).stdout  # fmt: skip


def floor_argv_min(cell: Cell, kernel: Path, initrd: Path, console: Path) -> list[str]:
    return [
        QEMU_BINARY, "-machine", cell.device.machine, "-accel", "tcg,thread=single",
        "-cpu", cell.cpu.model, "-smp", str(cell.smp), "-m", f"{cell.memory}M",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", "console=ttyS0 quiet panic=-1 rdinit=/bench-init",
        "-serial", f"file:{console}",
    ]  # fmt: skip


def kmx_paths(p: Prepared, rundir: Path, initrd: Path | None = None) -> BootPaths:
    disk = None
    if p.cell.device.scratch_disk is not None:
        disk = rundir / "disk.img"
        with disk.open("wb") as f:
            f.truncate(p.cell.device.scratch_disk.size << 20)
    return BootPaths(
        kernel=p.kernel.boot_image,
        initrd=initrd or p.initrd,
        console_log=rundir / "console.log",
        qmp_socket=rundir / "qmp.sock",
        agent_socket=rundir / "agent.sock",
        console_socket=None,
        scratch_disk=disk,
    )


def floor_argv_kmx(p: Prepared, initrd: Path, rundir: Path) -> list[str]:
    """kmatrix's own argv for the cell (devices, QMP, agent channel, sandbox), init swapped."""
    argv = build_argv(
        p.cell, kmx_paths(p, rundir, initrd), "tcg", p.channel, sandbox=sandbox_supported()
    )
    i = argv.index("-append")
    argv[i + 1] = argv[i + 1].replace("rdinit=/init", "rdinit=/bench-init")
    return argv


def retried_once(note: str, run: Callable[[], T]) -> T:
    """run(), and once more if it raised RuntimeError; the first failure's most telling line
    is counted under S.notes[note] (the report lists them)."""
    try:
        return run()
    except RuntimeError as e:
        lines = str(e).splitlines() or ["(no message)"]
        why = next((ln for ln in lines if "not syncing" in ln or "noapic" in ln), lines[0])
        S.notes[note] = S.notes.get(note, "") + why.strip()[:200] + "\n"
        log(f"{note}: a run failed, retrying: {why.strip()[:120]}")
        return run()


def run_floor(argv: list[str], console: Path, release: str, timeout: float = 180) -> float:
    """Wall time from spawn to exit, retried once if the guest failed (then counted: under
    heavy load TCG guests sometimes panic in the IO-APIC timer check)."""
    return retried_once("floor_failures", lambda: _run_floor(argv, console, release, timeout))


def floor_min(p: Prepared, image: Path, initrd: Path, console: Path) -> float:
    """One raw-QEMU boot of p's kernel image and initrd with the minimal argv."""
    return run_floor(floor_argv_min(p.cell, image, initrd, console), console, p.kernel.release)


def _run_floor(argv: list[str], console: Path, release: str, timeout: float) -> float:
    """The guest's uptime at the command goes to S.last_uptime."""
    console.unlink(missing_ok=True)
    t0 = time.monotonic()
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    wall = time.monotonic() - t0
    text = console.read_text(errors="replace") if console.exists() else ""
    m = re.search(rf"bench: {re.escape(release)} up ([0-9.]+)", text)
    if p.returncode != 0 or m is None:
        raise RuntimeError(f"floor boot failed ({p.returncode}): {p.stderr[-500:]}{text[-3000:]}")
    S.last_uptime = float(m.group(1))
    return wall


# --- kmatrix ----------------------------------------------------------------------------------

# The kernel's own timestamp for starting /init (in the dmesg kept at poweroff): the split
# point between the kernel's boot and kmatrix's init (mounts, modules, agent).
_RUN_INIT = re.compile(r"\[\s*([0-9.]+)\] Run /init as init process")


def run_guest_api(p: Prepared, work: Path) -> dict[str, float]:
    """The library without pytest: boot, one command, poweroff, with the boot taken apart."""
    out = work / "api" / p.cell.slug
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.monotonic()
    g = Guest(p.cell, out, accel="tcg")
    g.prepare()
    t1 = time.monotonic()
    try:
        g.start()
        t2 = time.monotonic()
        assert g.session is not None
        r = g.session.run("uname -r", timeout=60, check=True)
        assert r.stdout.strip() == p.kernel.release, r.stdout
        t3 = time.monotonic()
        clean = g.poweroff(timeout=60)
        t4 = time.monotonic()
    finally:
        g.stop(collect=False)
    if not clean:
        raise RuntimeError(f"{p.cell.id}: poweroff was not clean")
    rec = g.record
    assert rec.boot_seconds is not None and rec.userspace_uptime is not None
    dmesg = g.outdir / "dmesg.log"
    m = _RUN_INIT.search(dmesg.read_text(errors="replace") if dmesg.is_file() else "")
    init_up = float(m.group(1)) if m else None
    res = {
        "prepare": t1 - t0,
        "start": t2 - t1,
        "launch": (t2 - t1) - rec.boot_seconds,  # QEMU start, QMP, console attach, cont
        "boot_seconds": rec.boot_seconds,  # cont -> agent hello
        "agent_uptime": rec.userspace_uptime,
        "command": t3 - t2,
        "poweroff": t4 - t3,
        "total": t4 - t0,
        "boot_cmd_off": t4 - t1,  # what the floor measures: start, command, poweroff
    }
    if init_up is not None:
        res["init_uptime"] = init_up
        res["init_to_agent"] = rec.userspace_uptime - init_up
    # Before the guest clock starts: firmware, loading the kernel and initramfs.
    res["pre_kernel"] = rec.boot_seconds - rec.userspace_uptime
    return res


def timed_process(
    argv: Sequence[str],
    marks: dict[str, str],
    timeout: float = 1800,
    env: dict[str, str] | None = None,
    cwd: Path = ROOT,
) -> tuple[dict[str, float], str, int]:
    """Runs argv, timestamping (from spawn) the first appearance of each mark in its output."""
    # This workplace sets PYTHONDONTWRITEBYTECODE, so every pytest would recompile kmatrix
    # and redo its assertion rewriting (~0.5 s); users' machines cache both.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    t0 = time.monotonic()
    proc = subprocess.Popen(
        argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    seen: dict[str, float] = {}
    buf = bytearray()

    def reader() -> None:
        assert proc.stdout is not None
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return
            now = time.monotonic() - t0
            buf.extend(chunk)
            text = buf.decode(errors="replace")
            for name, pat in marks.items():
                if name not in seen and re.search(pat, text):
                    seen[name] = now

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        rc = proc.wait()
    except BaseException:
        # Stopped (SIGTERM, Ctrl-C): let pytest stop its guests, then make sure it is gone.
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    th.join(10)
    seen["exit"] = time.monotonic() - t0
    return seen, buf.decode(errors="replace"), rc


def pytest_argv(matrix: Path, reports: Path, *args: str) -> list[str]:
    return [
        PY, "-m", "pytest", "-p", "kmatrix", f"--kmatrix-matrix={matrix}",
        f"--kmatrix-run-dir={reports}", "-p", "no:cacheprovider", *args,
    ]  # fmt: skip


def run_pytest_cell(p: Prepared, work: Path) -> dict[str, float]:
    """pytest on one cell: boot result, the guest command's result, poweroff, process end."""
    reports = work / "pytest-one"
    shutil.rmtree(reports, ignore_errors=True)
    cid = p.cell.id
    marks = {
        "booting": rf"kmatrix: {re.escape(cid)}: booting",
        "booted": rf"kmatrix: {re.escape(cid)}: booted in",
        "first_result": r"test_userspace_reached\[[^\]]*\] (PASSED|FAILED|ERROR)",
        "command_result": r"test_release_matches_artifact\[[^\]]*\] (PASSED|FAILED|ERROR)",
        "cell_done": rf"kmatrix: {re.escape(cid)}: done in",
    }
    argv = pytest_argv(
        MATRIX, reports, str(ROOT / "testcases" / "test_boot.py"), "-v",
        "--kmatrix-progress=plain", "-k", f"{cid} and (userspace or release or poweroff)",
    )  # fmt: skip
    seen, out, rc = timed_process(argv, marks)
    if rc != 0 or "3 passed" not in out:
        raise RuntimeError(f"pytest on {cid} failed (exit {rc}):\n{out[-3000:]}")
    return seen


def suite_split(results: Path) -> dict[str, float]:
    out: dict[str, float] = {}
    for r in load_run(results).results:
        mod = r.nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
        out[mod] = out.get(mod, 0.0) + r.duration
    return out


def run_collect_only(p: Prepared, work: Path) -> float:
    """pytest's own start-up and collection for the same selection: no VM."""
    argv = pytest_argv(
        MATRIX, work / "pytest-co", str(ROOT / "testcases" / "test_boot.py"), "--co", "-q",
        "-k", f"{p.cell.id} and (userspace or release or poweroff)",
    )  # fmt: skip
    seen, out, rc = timed_process(argv, {})
    if rc != 0:
        raise RuntimeError(f"pytest --co failed:\n{out[-2000:]}")
    return seen["exit"]


def run_whole_cell(p: Prepared, work: Path) -> tuple[float, dict[str, float], dict[str, int]]:
    reports = work / "pytest-cell"
    shutil.rmtree(reports, ignore_errors=True)
    argv = pytest_argv(MATRIX, reports, str(ROOT / "testcases"), "-q", "-k", p.cell.id)
    seen, out, rc = timed_process(argv, {})
    counts: dict[str, int] = {}
    for r in load_run(reports).results:
        counts[str(r.outcome)] = counts.get(str(r.outcome), 0) + 1
        if r.outcome.failing:
            S.notes.setdefault("cell.failures", "")
            S.notes["cell.failures"] += f"{r.nodeid}: {r.message[:200]}\n"
    if rc not in (0, 1):
        raise RuntimeError(f"whole cell {p.cell.id}: exit {rc}\n{out[-3000:]}")
    return seen["exit"], suite_split(reports / "results.json"), counts


# --- virtme-ng --------------------------------------------------------------------------------


def vng_reason(p: Prepared) -> str | None:
    """Why virtme-ng cannot boot this kernel here, or None."""
    if not (VNG_VENV / "bin" / "vng").exists():
        return f"virtme-ng is not installed in {VNG_VENV} (run with --install-vng)"
    if not p.kernel.has("NET_9P") and not p.kernel.has("9P_FS"):
        return (
            "this kernel has no 9p (CONFIG_NET_9P is not set), and virtme-ng's virtiofs root "
            "needs the Rust virtiofsd: Debian 12 only has QEMU 7.2's C virtiofsd "
            "(/usr/lib/qemu/virtiofsd), which rejects virtme-ng's options, so the guest "
            "cannot mount its root"
        )
    return None


def run_vng(p: Prepared, verbose: bool = False) -> tuple[float, str]:
    """One vng run, retried once (it exited 255 with no output once here), and counted."""
    return retried_once("vng_failures", lambda: _run_vng(p, verbose))


def _run_vng(p: Prepared, verbose: bool = False) -> tuple[float, str]:
    env = {"PATH": f"{VNG_VENV / 'bin'}:{os.environ['PATH']}"}
    argv = [str(VNG_VENV / "bin" / "vng"), "--disable-kvm", "--run", str(p.kernel.image)]
    argv += ["--exec", "uname -r"] + (["-v"] if verbose else [])
    seen, out, rc = timed_process(argv, {}, timeout=300, env=env, cwd=Path("/tmp"))
    if rc != 0 or p.kernel.release not in out:
        raise RuntimeError(f"vng failed (exit {rc}):\n{out[-2000:]}")
    return seen["exit"], out


_VNG_STEP = re.compile(r"\[\s*([0-9.]+)\] (virtme[-\w]*(?: initramfs)?:? .*)")


def vng_steps(out: str) -> list[tuple[float, str]]:
    return [(float(m.group(1)), m.group(2).strip()) for m in _VNG_STEP.finditer(out)]


# --- snapshot ---------------------------------------------------------------------------------


def run_snapshot(p: Prepared, work: Path) -> dict[str, float]:
    """Boots the cell, saves it with QMP migrate to a file, then restores it in a new QEMU
    (-incoming) and runs a command: that against a fresh boot plus the same command."""
    snap = work / "snapshot.mig"
    rundir = private_rundir("kmxb-")
    # exec: migration spawns a shell, which kmatrix's seccomp sandbox (spawn=deny) forbids.
    argv = build_argv(p.cell, kmx_paths(p, rundir), "tcg", p.channel, sandbox=False)
    keep = rundir.parent / (rundir.name + "-disk")
    res: dict[str, float] = {}
    m = Machine(argv, rundir, work / "snap-qemu.log", "snap")
    t0 = time.monotonic()
    m.launch()
    try:
        s = GuestSession.connect(rundir / "agent.sock", 10, m.is_running, "snap", None)
        s.wait_ready(180)
        s.run("uname -r", timeout=60, check=True)
        res["boot_and_command"] = time.monotonic() - t0
        assert m.qmp is not None
        t1 = time.monotonic()
        m.qmp.cmd("stop")
        m.qmp.cmd("migrate", uri=f"exec:cat > {snap}")
        while True:
            st = m.qmp.cmd("query-migrate")
            if st.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.02)
        if st.get("status") != "completed":
            raise RuntimeError(f"migration {st}")
        res["save"] = time.monotonic() - t1
        res["snapshot_mib"] = snap.stat().st_size / 2**20
        s.close()
        # The restored guest needs the same disk file; the rundir goes with the machine.
        if (rundir / "disk.img").exists():
            shutil.copy(rundir / "disk.img", keep)
    finally:
        m.shutdown()
    for _ in range(3):
        rundir2 = private_rundir("kmxb-")
        if keep.exists():
            shutil.copy(keep, rundir2 / "disk.img")
        argv2 = [a.replace(str(rundir), str(rundir2)) for a in argv] + [
            "-incoming",
            f"exec:cat {snap}",
        ]
        m2 = Machine(argv2, rundir2, work / "restore-qemu.log", "restore")
        t2 = time.monotonic()
        m2.launch(timeout=60)
        try:
            assert m2.qmp is not None
            # The source was stopped before saving, so the restored VM stays paused: cont.
            while m2.qmp.cmd("query-status").get("status") == "inmigrate":
                time.sleep(0.01)
            m2.qmp.cmd("cont")
            s2 = GuestSession.connect(rundir2 / "agent.sock", 10, m2.is_running, "restore", None)
            r = s2.run("uname -r", timeout=60, check=True)
            assert r.stdout.strip() == p.kernel.release
            S.add("snapshot.restore_and_command", time.monotonic() - t2)
            s2.close()
        finally:
            m2.shutdown()
    keep.unlink(missing_ok=True)
    return res


# --- sections ---------------------------------------------------------------------------------


def one_cell_matrix(p: Prepared, work: Path, bare: bool = False) -> Path:
    """A matrix of p's cell alone (kernel, CPU model, profile, sizes, accel as benchmarked);
    bare: with a device profile of no devices (the floor's hardware: what is left is the
    harness's own, its agent channel included)."""
    c = p.cell
    path = work / ("one-cell-bare.yaml" if bare else "one-cell.yaml")
    profile = ROOT / "matrix" / "devices" / f"{c.device.name}.yaml"
    assert profile.is_file(), profile
    device = "{name: bare, machine: q35}" if bare else str(profile)
    path.write_text(
        "name: one-cell\n"
        f"defaults: {{memory: {c.memory}, smp: {c.smp}, boot_timeout: {c.boot_timeout:g}, "
        f"test_timeout: {c.test_timeout:g}, accel: tcg}}\n"
        f"kernels:\n  - name: {c.kernel.name}\n    deb: {c.kernel.location}\n"
        f"cpus:\n  - {{name: {c.cpu.name}, model: {c.cpu.model}}}\n"
        f"devices:\n  - {device}\n"
    )
    return path


def whole_pytest_argv(tree: Path, matrix: Path, reports: Path, work: Path) -> list[str]:
    """The issue's command: `pytest -p kmatrix -n 0 testcases/test_boot.py -k userspace`, with
    pytest's cache kept (as on a user's machine) out of the checkout."""
    return [
        PY, "-m", "pytest", "-p", "kmatrix", "-n", "0", str(tree / "testcases" / "test_boot.py"),
        "-k", "userspace", "-v", f"--kmatrix-matrix={matrix}", f"--kmatrix-reports={reports}",
        "-o", f"cache_dir={work / 'pytest-cache'}",
    ]  # fmt: skip


def run_whole_pytest(tree: Path, matrix: Path, work: Path, label: str) -> dict[str, float]:
    reports = work / f"whole-{label}"
    shutil.rmtree(reports, ignore_errors=True)
    marks = {"first_result": r"test_userspace_reached\[[^\]]*\] (PASSED|FAILED|ERROR)"}
    # Another checkout's kmatrix comes first on the path (the editable install's finder
    # comes after sys.path).
    env = {"PYTHONPATH": str(tree)} if tree != ROOT else None
    seen, out, rc = timed_process(whole_pytest_argv(tree, matrix, reports, work), marks, env=env)
    if rc != 0 or "1 passed" not in out:
        raise RuntimeError(f"pytest ({label}) failed (exit {rc}):\n{out[-3000:]}")
    return seen


def section_whole(preps: dict[str, Prepared], work: Path, reps: int, compare: Path | None) -> None:
    p = preps[WHOLE_KERNEL]
    busybox = busybox_initrd(work)
    matrix = one_cell_matrix(p, work)
    console = work / "whole-console.log"
    S.notes["whole.busybox_mib"] = f"{busybox.stat().st_size / 2**20:.1f}"
    S.notes["whole.argv"] = " ".join(floor_argv_min(p.cell, p.kernel.boot_image, busybox, console))
    S.notes["whole.pytest"] = " ".join(whole_pytest_argv(ROOT, matrix, work / "r", work)[1:])
    bare = one_cell_matrix(p, work, bare=True)
    variants = [("kmx", ROOT, matrix), ("bare", ROOT, bare)]
    variants += [("old", compare, matrix)] if compare else []
    log(f"whole: {p.cell.id}, busybox floor {S.notes['whole.busybox_mib']} MiB, {reps} rounds")
    for i in range(reps):
        S.load("whole")
        S.add("whole.load", os.getloadavg()[0])
        S.add("whole.floor", floor_min(p, p.kernel.boot_image, busybox, console))
        line = f"  round {i + 1}: floor {S.data['whole.floor'][-1]:.2f}s"
        # A B, then B A: neither variant always runs right after the floor.
        for label, tree, cells in variants if i % 2 == 0 else variants[::-1]:
            seen = run_whole_pytest(tree, cells, work, label)
            for key in ("first_result", "exit"):
                S.add(f"whole.{label}.{key}", seen.get(key))
                S.add(f"whole.{label}.{key}.pair", seen[key] / S.data["whole.floor"][-1])
            line += f", {label} first result {seen['first_result']:.2f}s exit {seen['exit']:.2f}s"
        log(line)


def section_floor(preps: dict[str, Prepared], work: Path, reps: int) -> None:
    for name in FLOOR_KERNELS:
        p = preps[name]
        k = f"floor.{name}"
        initrd = floor_initrd(p.initrd, work)
        console = work / "floor-console.log"
        size = initrd.stat().st_size >> 20
        log(f"floor: {p.cell.id} ({p.kernel.boot_image.name}, initrd {size} MiB)")
        for i in range(reps):
            S.load("floor")
            S.add("other_qemus", other_qemus())
            S.add(f"{k}.raw_min", floor_min(p, p.kernel.boot_image, initrd, console))
            S.add(f"{k}.raw_min_uptime", S.last_uptime)
            rundir = private_rundir("kmxb-")
            try:
                S.add(
                    f"{k}.raw_kmx_argv",
                    run_floor(
                        floor_argv_kmx(p, initrd, rundir), rundir / "console.log", p.kernel.release
                    ),
                )
            finally:
                shutil.rmtree(rundir, ignore_errors=True)
            api = run_guest_api(p, work)
            for key, v in api.items():
                S.add(f"{k}.api.{key}", v)
            S.add(f"{k}.pytest.collect_only", run_collect_only(p, work))
            seen = run_pytest_cell(p, work)
            for key, v in seen.items():
                S.add(f"{k}.pytest.{key}", v)
            log(
                f"  rep {i + 1}: raw {S.data[f'{k}.raw_min'][-1]:.2f}s, kmx argv "
                f"{S.data[f'{k}.raw_kmx_argv'][-1]:.2f}s, api {api['boot_cmd_off']:.2f}s, "
                f"pytest first result {seen.get('first_result', -1):.2f}s exit {seen['exit']:.2f}s"
            )  # fmt: skip


def section_cell(preps: dict[str, Prepared], work: Path, reps: int) -> None:
    for name in FLOOR_KERNELS:
        p = preps[name]
        for _ in range(reps):
            S.load("cell")
            wall, split, counts = run_whole_cell(p, work)
            S.add(f"cell.{name}.wall", wall)
            for mod, v in split.items():
                S.add(f"cell.{name}.suite.{mod}", v)
            prev = S.notes.get(f"cell.{name}.outcomes")
            S.notes[f"cell.{name}.outcomes"] = (prev + "; " if prev else "") + json.dumps(counts)
            log(f"cell {p.cell.id}: {wall:.1f}s {counts}")


def section_vng(preps: dict[str, Prepared], work: Path, reps: int) -> None:
    for name in FLOOR_KERNELS:
        p = preps[name]
        why = vng_reason(p)
        if why:
            S.notes[f"vng.{name}"] = why
            log(f"vng {name}: cannot run: {why}")
            continue
        for i in range(reps):
            # kmatrix on the same kernel right beside each vng run: the machine's load swings
            # over minutes, so only pairs measured together make a fair ratio.
            S.load("vng")
            wall, _ = run_vng(p)
            S.add(f"vng.{name}", wall)
            seen = run_pytest_cell(p, work)
            for key in ("first_result", "command_result", "cell_done", "exit"):
                S.add(f"vng.{name}.kmx.{key}", seen.get(key))
            log(f"vng {name} rep {i + 1}: {wall:.1f}s; kmatrix beside it {seen['exit']:.1f}s")
        _, out = run_vng(p, verbose=True)
        S.notes[f"vng.{name}.steps"] = json.dumps(vng_steps(out))


def section_pvh(preps: dict[str, Prepared], work: Path, reps: int) -> None:
    console = work / "pvh-console.log"
    for name, p in preps.items():
        initrd = floor_initrd(p.initrd, work)
        if p.kernel.boot_image == p.kernel.image:
            S.notes[f"pvh.{name}"] = "no PVH vmlinux (booted as bzImage)"
        for _ in range(reps):
            S.load("pvh")
            for label, img in (("bzimage", p.kernel.image), ("pvh", p.kernel.boot_image)):
                S.add(f"pvh.{name}.{label}", floor_min(p, img, initrd, console))
        log(
            f"pvh {name}: bzImage {fmt(S.med(f'pvh.{name}.bzimage'))}"
            f" vmlinux {fmt(S.med(f'pvh.{name}.pvh'))}"
        )


def tools_initrd(p: Prepared) -> Path:
    """p's image with the suite tools in it: what every cell booted before the tools disk
    (and what a kernel that cannot mount it still boots)."""
    tools = DiskPlan(TOOLS_DISK, staged_tree(tools_content(load_recipe())), True, reason="bench")
    modules = base_modules(p.channel) + lower(p.cell.device).modules
    return build_image(p.kernel, modules, disks=[tools])


def section_initrd(preps: dict[str, Prepared], work: Path, reps: int) -> None:
    p = preps["deb-6.1-cloud"]
    console = work / "initrd-console.log"
    tools = tools_initrd(p)
    variants = {"tools": floor_initrd(tools, work), "tools gzip": floor_initrd(tools, work, "gz"),
                "tools zstd": floor_initrd(tools, work, "zst"),
                "base": floor_initrd(p.initrd, work), "busybox": busybox_initrd(work)}  # fmt: skip
    for label, path in variants.items():
        S.notes[f"initrd.{label}.mib"] = f"{path.stat().st_size / 2**20:.1f}"
    for _ in range(reps):
        S.load("initrd")
        for label, path in variants.items():
            S.add(f"initrd.{label}", floor_min(p, p.kernel.boot_image, path, console))
    log("initrd: " + ", ".join(f"{k} {fmt(S.med(f'initrd.{k}'))}" for k in variants))


def section_xdist(work: Path, reps: int) -> None:
    accel_cache = Path.home() / ".cache" / "kmatrix" / "accel"
    S.notes["xdist.accel_cache"] = (
        "; ".join(f.read_text() for f in sorted(accel_cache.glob("*.json")))
        or "none (the first run pays the KVM probe boot, up to 20 s)"
    )
    for i in range(reps):
        for n in ("1", "2"):
            S.load("xdist")
            reports = work / f"xdist-{n}"
            shutil.rmtree(reports, ignore_errors=True)
            argv = pytest_argv(
                DEFAULT_MATRIX, reports, str(ROOT / "testcases"), "-q", "-k", "boot", "-n", n
            )
            recorded = work / "xdist-1" / "results.json"
            if n == "2" and recorded.is_file():
                # Durations recorded by the -n 1 run just before: the longest cells go first.
                argv.append(f"--kmatrix-durations={recorded}")
            a = cpu_mark()
            seen, out, rc = timed_process(argv, {})
            b = cpu_mark()
            S.add(f"xdist.n{n}.others", others_cores(a, b))
            S.add(f"xdist.n{n}.ours", (b[2] - a[2]) / (b[0] - a[0]))
            if rc not in (0, 1):
                raise RuntimeError(f"-n {n}: exit {rc}\n{out[-3000:]}")
            S.add(f"xdist.n{n}", seen["exit"])
            cells = load_run(reports).cells
            boots = [c.boot.boot_seconds for c in cells if c.boot.boot_seconds]
            S.add(f"xdist.n{n}.boot_mean", statistics.mean(boots) if boots else None)
            S.notes[f"xdist.n{n}.cells"] = str(len(cells))
            log(
                f"xdist rep {i + 1} -n {n}: {seen['exit']:.1f}s ({len(cells)}"
                f" cells, mean boot {statistics.mean(boots):.2f}s)"
            )


def section_snapshot(preps: dict[str, Prepared], work: Path, reps: int) -> None:
    p = preps["deb-6.1-cloud"]
    S.load("snapshot")
    res = run_snapshot(p, work)
    for k, v in res.items():
        S.add(f"snapshot.{k}", v)
    for _ in range(3):
        api = run_guest_api(p, work)
        S.add("snapshot.reboot_and_command", api["start"] + api["command"])
    run_guest_restore(p, work)
    log(f"snapshot: {res}; restore {spread('snapshot.restore_and_command')}")


def run_guest_restore(p: Prepared, work: Path, reps: int = 3) -> None:
    """The runner's own path (what a kmatrix_clean test costs): Guest.snapshot() after boot,
    then Guest.restore() (fd: migration under the seccomp sandbox, console and agent
    reconnected, the outgoing kernel log kept, one command answered) plus `uname -r`."""
    out = work / "guest-restore" / p.cell.slug
    shutil.rmtree(out, ignore_errors=True)
    g = Guest(p.cell, out, accel="tcg")
    g.prepare()
    try:
        g.start()
        if not g.snapshot():
            raise RuntimeError(f"Guest.snapshot() failed: {g.record.snapshot_error}")
        assert g.record.snapshot_seconds is not None
        S.add("snapshot.guest_save", g.record.snapshot_seconds)
        for _ in range(reps):
            assert g.session is not None
            g.session.run("echo dirt > /tmp/dirt", timeout=60, check=True)
            t0 = time.monotonic()
            g.restore("benchmark")
            assert g.session is not None
            r = g.session.run("uname -r", timeout=60, check=True)
            assert r.stdout.strip() == p.kernel.release, r.stdout
            S.add("snapshot.guest_restore_and_command", time.monotonic() - t0)
    finally:
        g.stop(collect=False)


# --- report -----------------------------------------------------------------------------------


def verdict(value: float | None, target: float, higher_is_better: bool = False) -> str:
    if value is None:
        return "n/a"
    ok = value >= target if higher_is_better else value <= target
    return "met" if ok else "MISSED"


def report(sections: Sequence[str], reps: int, started: float) -> str:
    out: list[str] = []
    w = out.append

    def head(title: str) -> None:
        w("")
        w(f"== {title} ==")

    loads = {k: f"{statistics.median(v):.1f} (max {max(v):.1f})" for k, v in S.loads.items()}
    w(
        f"kmatrix benchmark, {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()}"
        f" CPUs, TCG, {reps} repetitions, medians [min-max]"
    )
    w(
        f"load average (1 min) per section: {loads}"
        f"; other QEMUs running at samples: median {fmt(S.med('other_qemus'), '')}"
    )
    others = ", ".join(f"{k} {v:.1f}" for k, v in S.others.items())
    w(f"CPU used by other processes (cores of {os.cpu_count()}) per section: {others}")
    if "whole" in sections:
        c = f"{WHOLE_KERNEL}/Haswell/virtio"
        head(f"whole process, one boot test ({c}: q35, Haswell-noTSX, 2 vCPUs, 1 GiB, TCG)")
        loads = S.data.get("whole.load", [])
        w(f"  load average (1 min) at each round: {', '.join(f'{x:.1f}' for x in loads)}")
        w(f"  floor: raw QEMU + busybox-only initramfs ({S.notes.get('whole.busybox_mib')} MiB),"
          f" spawn to exit        {spread('whole.floor')}")  # fmt: skip
        labels = [("kmx", "kmatrix"), ("bare", "kmatrix, no profile devices")]
        labels += [("old", "--compare-tree")] * ("whole.old.exit" in S.data)
        for label, name in labels:
            first, end = spread(f"whole.{label}.first_result"), spread(f"whole.{label}.exit")
            w(f"  {name}: pytest spawn to first boot result      {first}")
            w(f"  {name}: pytest spawn to process exit           {end}")
        for label, name in labels:
            r1 = ratio(f"whole.{label}.first_result", "whole.floor")
            r2 = ratio(f"whole.{label}.exit", "whole.floor")
            p1, p2 = S.med(f"whole.{label}.first_result.pair"), S.med(f"whole.{label}.exit.pair")
            t1 = TARGET_FIRST_RESULT
            w(
                f"  {name}: ratio first boot result / floor  {fmt(r1, 'x')} (median of pairs "
                f"{fmt(p1, 'x')})  target <= {t1}x: {verdict(r1, t1)}"
            )
            w(
                f"  {name}: ratio process exit / floor       {fmt(r2, 'x')} (median of pairs "
                f"{fmt(p2, 'x')})  target <= {TARGET_FLOOR}x: {verdict(r2, TARGET_FLOOR)}"
            )
        w(f"  floor:   {S.notes.get('whole.argv', '')}")
        w(f"  kmatrix: python {S.notes.get('whole.pytest', '')}")
    if "floor" in sections:
        for name in FLOOR_KERNELS:
            k = f"floor.{name}"
            head(f"{name}: boot to `uname -r` and poweroff")
            w(f"  floor: raw QEMU, minimal argv           {spread(k + '.raw_min')}")
            w(f"  floor: raw QEMU, kmatrix's argv         {spread(k + '.raw_kmx_argv')}")
            w(f"  kmatrix library (Guest, no pytest)      {spread(k + '.api.boot_cmd_off')}")
            w(f"  pytest: first boot result from spawn    {spread(k + '.pytest.first_result')}")
            w(f"  pytest: `uname -r` test result          {spread(k + '.pytest.command_result')}")
            w(f"  pytest: cell done (poweroff)            {spread(k + '.pytest.cell_done')}")
            w(f"  pytest: process exit (+ reports)        {spread(k + '.pytest.exit')}")
            w("  where kmatrix's time goes (medians):")
            w(f"    resolve + verify cached artefacts    {fmt(S.med(k + '.api.prepare'))}")
            w(f"    pytest start-up and collection       {fmt(S.med(k + '.pytest.booting'))}"
              f"  (alone, `pytest --co`: {fmt(S.med(k + '.pytest.collect_only'))})")  # fmt: skip
            w(f"    QEMU start, QMP, console attach      {fmt(S.med(k + '.api.launch'))}")
            w(f"    before the guest clock (fw, load)    {fmt(S.med(k + '.api.pre_kernel'))}")
            w(f"    kernel start to /init (guest uptime) {fmt(S.med(k + '.api.init_uptime'))}"
              f"  (floor: {fmt(S.med(k + '.raw_min_uptime'))} to its command)")  # fmt: skip
            w(f"    /init to agent hello (mounts, mods)  {fmt(S.med(k + '.api.init_to_agent'))}")
            w(f"    `uname -r` over the agent            {fmt(S.med(k + '.api.command'))}")
            w(f"    poweroff                             {fmt(S.med(k + '.api.poweroff'))}")
            r1 = ratio(k + ".pytest.first_result", k + ".raw_min")
            r2 = ratio(k + ".api.boot_cmd_off", k + ".raw_min")
            r3 = ratio(k + ".pytest.cell_done", k + ".raw_min")
            r4 = ratio(k + ".raw_kmx_argv", k + ".raw_min")
            w(
                f"  ratio first boot result / floor        {fmt(r1, 'x')}"
                f"  target <= {TARGET_FLOOR}x: {verdict(r1, TARGET_FLOOR)}"
            )
            w(f"  ratio library boot+cmd+off / floor     {fmt(r2, 'x')}")
            w(f"  ratio pytest cell done / floor         {fmt(r3, 'x')}")
            w(f"  ratio kmatrix argv / minimal argv      {fmt(r4, 'x')}")
    if "vng" in sections:
        head("virtme-ng: `vng --disable-kvm --run KERNEL --exec 'uname -r'`")
        for name in FLOOR_KERNELS:
            k = f"vng.{name}"
            if k in S.notes:
                w(f"  {name}: cannot run here: {S.notes[k]}")
                continue
            w(f"  {name}: vng                          {spread(k)}")
            w(f"  {name}: kmatrix (pytest) beside it    {spread(k + '.kmx.command_result')}"
              "  to the `uname -r` result")  # fmt: skip
            for label, key in (("pytest first boot result", f"{k}.kmx.first_result"),
                               ("pytest uname -r result", f"{k}.kmx.command_result"),
                               ("pytest cell done", f"{k}.kmx.cell_done"),
                               ("pytest process exit", f"{k}.kmx.exit")):  # fmt: skip
                r = ratio(key, k)
                w(
                    f"  ratio kmatrix {label:<25} / vng {fmt(r, 'x')}  target <= {TARGET_VNG}"
                    f"x: {verdict(r, TARGET_VNG)}"
                )
            steps = json.loads(S.notes.get(f"{k}.steps", "[]"))
            if steps:
                w("  where vng's time goes (guest uptime, one verbose run):")
                for t, msg in steps:
                    if any(
                        s in msg
                        for s in (
                            "mounting hostfs",
                            "switching to real root",
                            "basic initialization",
                            "coldplug",
                            "udev is done",
                            "starting script",
                            "loading virtio_pci",
                        )
                    ):
                        w(f"    {t:7.2f}s  {msg[:90]}")
    if "cell" in sections:
        head("one whole cell, every suite (pytest testcases -k CELL)")
        for name in FLOOR_KERNELS:
            k = f"cell.{name}"
            suites = {
                key.rsplit(".suite.", 1)[1]: S.med(key)
                for key in S.data
                if key.startswith(k + ".suite.")
            }
            w(f"  {name}: wall {spread(k + '.wall')}  outcomes {S.notes.get(k + '.outcomes', '')}")
            w("    time per suite (sum of test durations, boot in the first test): "
              + ", ".join(f"{m} {fmt(v)}" for m, v in sorted(suites.items())))  # fmt: skip
        for line in S.notes.get("cell.failures", "").splitlines():
            w(f"  failed under load: {line}")
    if "pvh" in sections:
        head("bzImage vs extracted PVH vmlinux (raw QEMU floor, minimal argv)")
        found = (re.fullmatch(r"pvh\.(.+)\.(?:bzimage|pvh)", key) for key in S.data)
        names = sorted({m.group(1) for m in found if m})
        for name in names:
            r = ratio(f"pvh.{name}.bzimage", f"pvh.{name}.pvh")
            note = S.notes.get(f"pvh.{name}", "")
            w(
                f"  {name:<18} bzImage {spread(f'pvh.{name}.bzimage')}"
                f"   vmlinux {spread(f'pvh.{name}.pvh')}   {fmt(r, 'x')} faster {note}"
            )
    if "initrd" in sections:
        head("initramfs (deb-6.1-cloud, PVH, raw QEMU): with the tools, compressed or not; base")
        for label in ("tools", "tools gzip", "tools zstd", "base", "busybox"):
            w(
                f"  {label:<10} {S.notes.get(f'initrd.{label}.mib', '?'):>6}"
                f" MiB  {spread(f'initrd.{label}')}"
            )
    if "xdist" in sections:
        head("default matrix, boot suite (-k boot): -n 1 vs -n 2")
        w(
            f"  -n 1  {spread('xdist.n1')}  mean boot per cell {fmt(S.med('xdist.n1.boot_mean'))}"
            f"  ({S.notes.get('xdist.n1.cells', '?')} cells)"
        )
        w(f"  -n 2  {spread('xdist.n2')}  mean boot per cell {fmt(S.med('xdist.n2.boot_mean'))}")
        o1, o2 = S.med("xdist.n1.others"), S.med("xdist.n2.others")
        u1, u2 = S.med("xdist.n1.ours"), S.med("xdist.n2.ours")
        w(
            f"  CPU in use (of {os.cpu_count()} cores): kmatrix {fmt(u1, '')} with -n 1, "
            f"{fmt(u2, '')} with -n 2; other processes meanwhile {fmt(o1, '')} and {fmt(o2, '')}"
        )
        r = ratio("xdist.n1", "xdist.n2")
        w(
            f"  speed-up -n 2 over -n 1  {fmt(r, 'x')}  target >= {TARGET_XDIST}"
            f"x: {verdict(r, TARGET_XDIST, True)}"
        )
        w("  (-n 2 hands out the longest cells first, by the -n 1 run's recorded durations)")
        w(f"  KVM probe verdict cache: {S.notes.get('xdist.accel_cache', '')}")
    if "snapshot" in sections:
        head("snapshot restore vs reboot (deb-6.1-cloud, to a `uname -r` answer)")
        w(f"  reboot (QEMU start, boot, command)     {spread('snapshot.reboot_and_command')}")
        w(f"  restore (-incoming from file, command) {spread('snapshot.restore_and_command')}")
        w(
            f"  save once (QMP migrate to file)        {spread('snapshot.save')}"
            f"  size {fmt(S.med('snapshot.snapshot_mib'), ' MiB')}"
        )
        r = ratio("snapshot.restore_and_command", "snapshot.reboot_and_command")
        w(f"  restore / reboot                       {fmt(r, 'x')}")
        guest_restore = spread("snapshot.guest_restore_and_command")
        w(f"  restore (Guest.restore(), command)     {guest_restore}")
        w(f"  save once (Guest.snapshot())           {spread('snapshot.guest_save')}")
        r = ratio("snapshot.guest_restore_and_command", "snapshot.reboot_and_command")
        w(f"  Guest.restore() / reboot               {fmt(r, 'x')}")
    vng_failures = S.notes.get("vng_failures", "").strip()
    if vng_failures:
        w("")
        w(f"vng runs that failed and were retried: {vng_failures.count(chr(10)) + 1}")
    failures = S.notes.get("floor_failures", "").splitlines()
    if failures:
        w("")
        w(f"raw QEMU boots that failed and were retried: {len(failures)}")
        for line in failures:
            w(f"  {line[:150]}")
    w("")
    w(f"total benchmark time {time.monotonic() - started:.0f}s")
    return "\n".join(out)


def install_vng() -> None:
    if not (VNG_VENV / "bin" / "python").exists():
        subprocess.run(
            [sys.executable.replace("python", "python3"), "-m", "venv", str(VNG_VENV)], check=True
        )
    subprocess.run([str(VNG_VENV / "bin" / "pip"), "install", "-q", "virtme-ng"], check=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--reps", type=int, default=5, help="repetitions of the short measurements")
    ap.add_argument(
        "--long-reps", type=int, default=2, help="repetitions of whole cells, vng, -n runs"
    )
    ap.add_argument(
        "--sections", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS)}"
    )
    ap.add_argument("--json", type=Path, help="also write every sample as JSON")
    ap.add_argument(
        "--compare-tree",
        type=Path,
        help="whole section: also time the same pytest run from this kmatrix checkout",
    )
    ap.add_argument(
        "--install-vng", action="store_true", help=f"pip install virtme-ng into {VNG_VENV}"
    )
    args = ap.parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the QEMU or pytest child of the moment is stopped too
    # (subprocess.run kills its child on the way out; timed_process terminates its own).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown sections {bad}; known: {', '.join(SECTIONS)}")
    if args.install_vng:
        install_vng()
    started = time.monotonic()
    matrix = load_matrix(MATRIX)
    work = Path(tempfile.mkdtemp(prefix="kmx-bench-"))
    try:
        log(f"preparing {len(matrix.cells)} cells (kernels, PVH vmlinux, initramfs) in {work}")
        preps = {c.kernel.name: prepare(c, work) for c in matrix.cells}
        runners: dict[str, Callable[[], None]] = {
            "whole": lambda: section_whole(preps, work, args.reps, args.compare_tree),
            "floor": lambda: section_floor(preps, work, args.reps),
            "vng": lambda: section_vng(preps, work, args.long_reps),
            "cell": lambda: section_cell(preps, work, args.long_reps),
            "pvh": lambda: section_pvh(preps, work, args.reps),
            "initrd": lambda: section_initrd(preps, work, args.reps),
            "xdist": lambda: section_xdist(work, args.long_reps),
            "snapshot": lambda: section_snapshot(preps, work, args.reps),
        }
        for s in SECTIONS:
            if s in sections:
                a = cpu_mark()
                runners[s]()
                S.others[s] = others_cores(a, cpu_mark())
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = report(sections, args.reps, started)
    print("\n" + text, flush=True)
    if args.json:
        dump = {"samples": S.data, "notes": S.notes, "loads": S.loads, "others": S.others}
        args.json.write_text(json.dumps({**dump, "report": text}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
