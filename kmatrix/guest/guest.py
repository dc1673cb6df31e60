"""A booted cell: artefacts resolved, image packed, QEMU launched, agent answering.

This is where the pipeline meets: Cell -> KernelArtifact + initramfs -> argv -> Machine ->
GuestSession. It classifies boot problems: a kernel that does not reach userspace is a
BootFailure (the kernel's fault); QEMU or host trouble is an InfraError.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from kmatrix.config.hostaccess import ALLOW_OPTION
from kmatrix.config.specs import Cell
from kmatrix.errors import (
    GuestDied,
    GuestError,
    GuestTimeout,
    HostDeviceUnavailable,
    InfraError,
    InputError,
    KmatrixError,
    VMError,
)
from kmatrix.guest.datadisk import (
    DiskPlan,
    DiskProvider,
    kernel_support,
    mount_command,
    plan_disk,
    registered,
)
from kmatrix.guest.disks import ExtraDisk, attachable, layered_initrd
from kmatrix.guest.image import ModuleIndex, base_modules, build_image, channel_for, module_name
from kmatrix.guest.kmsg import kernel_log
from kmatrix.guest.session import CommandResult, GuestSession
from kmatrix.host.cache import stamped_digest
from kmatrix.kernels.artifact import KernelArtifact, resolve
from kmatrix.results.schema import (  # boot.json, typed where results.json reads it
    BootRecord,
    DiskRecord,
)
from kmatrix.vm import accel as accel_mod
from kmatrix.vm import snapshot as snap
from kmatrix.vm.argv import BootPaths, build_argv
from kmatrix.vm.console import ConsoleRecorder
from kmatrix.vm.devices import lower
from kmatrix.vm.hostpci import check_host_devices
from kmatrix.vm.liveness import SAMPLE_INTERVAL, ProgressWatch, Sample, Symbolizer
from kmatrix.vm.machine import SANDBOX_ON, Machine, private_rundir, sandbox_state

CONSOLE_TAIL_LINES = 60
JOURNAL = "commands.jsonl"  # one JSON line per guest command, for reproduce.sh
PANIC_GRACE = 2.0  # seconds a panicked kernel gets to reboot (and so end QEMU) by itself
_PRINTK_TIME = re.compile(r"\[\s*(\d+\.\d+)\]")
# What x86 Linux prints when asked to power off without a way to (no ACPI): it halts.
_HALTED = re.compile(rb"reboot: System halted|^System halted\.?\s*$", re.MULTILINE)
# The end of a panic that will not reboot (panic=0 or a negative timeout without -no-reboot).
_PANIC_END = re.compile(rb"---\[ end Kernel panic")


class BootFailure(KmatrixError):
    """The kernel did not reach userspace (panic, hang, reset): a kernel failure."""


class GuestStalled(KmatrixError):
    """The VM runs but its guest provably makes no more progress (see kmatrix.vm.liveness)."""


def console_tail(path: Path, lines: int = CONSOLE_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.replace("\r", "").splitlines()[-lines:])


def _process_state(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[0]


def _tail_note(console: Path) -> str:
    tail = console_tail(console)
    return f"; console tail:\n{tail}" if tail.strip() else " (the console is empty)"


class Guest:
    def __init__(
        self,
        cell: Cell,
        outdir: Path,
        accel: str | None = None,
        direct_boot: bool = True,
        allow_host_access: bool = False,
        require_sandbox: bool = False,
        disks: Sequence[str] = (),
        data_disk_providers: Mapping[str, DiskProvider] | None = None,
    ) -> None:
        self.cell = cell
        self.allow_host_access = allow_host_access
        self.require_sandbox = require_sandbox
        self.outdir = outdir
        self.requested_accel = accel or cell.accel
        self.direct_boot = direct_boot
        self.kernel: KernelArtifact | None = None
        self.modules: ModuleIndex | None = None
        self.initrd: Path | None = None
        self.machine: Machine | None = None
        self.session: GuestSession | None = None
        self.record = BootRecord()
        self._transcript: IO[str] | None = None
        self.recorder: ConsoleRecorder | None = None
        self.console_log = outdir / "console.log"
        self.scratch_disk: Path | None = None  # host file behind the scratch disk, this boot
        self._snapshot: int | None = None  # unnamed file holding the just-booted VM state
        self._snapshot_disk: int | None = None  # the scratch disk as it was at that moment
        self.current_test = ""  # the node id of the test whose commands run now
        # Read-only disks this cell asks for (kmatrix.guest.disks), from the providers the
        # pool sets before prepare(); those the kernel cannot read go into the initramfs.
        self.disk_providers: list[Callable[[Guest], ExtraDisk | None]] = []
        self.disks: list[ExtraDisk] = []
        # Read-only data disks (kmatrix.guest.datadisk) this cell's tests need, by name;
        # providers default to the registered ones (the tools disk).
        self.disk_names = tuple(dict.fromkeys(disks))
        self.data_disk_providers = (
            dict(data_disk_providers) if data_disk_providers is not None else None
        )
        self.disk_plans: dict[str, DiskPlan] = {}
        self.mounted: set[str] = set()  # data disks mounted in the running guest
        # Called once, while the first boot runs (QEMU started, the agent's hello not yet
        # there): host work the run needs later costs nothing then (see CellPool.warmup).
        self.while_booting: Callable[[], None] | None = None

    # --- preparing ----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Checks host access, the sandbox and host devices, resolves the kernel and packs
        the image; raises HostDeviceUnavailable/InputError/InfraError, boots nothing."""
        uses = self.cell.device.host_uses
        if uses and not self.allow_host_access:
            # The plugin and the CLI refuse such a run up front; this is the last gate.
            raise InputError(
                f"{self.cell.id}: reaches {uses[0].describe()} ({uses[0].path}:{uses[0].line} "
                f"{uses[0].key}) and host access is not allowed ({ALLOW_OPTION})"
            )
        if self.cell.device.host_devices:
            # Real passthrough is checked on the host first, never tried blindly.
            reason = check_host_devices(h.address for h in self.cell.device.host_devices)
            if reason:
                raise HostDeviceUnavailable(f"{self.cell.id}: {reason}")
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.kernel = resolve(self.cell.kernel, direct_boot=self.direct_boot)
        self.modules = ModuleIndex.load(self.kernel.modules_dir)
        self.record.channel = channel_for(self.kernel, self.modules)
        wanted = base_modules(self.record.channel) + lower(self.cell.device).modules
        self.disk_plans = self._plan_disks()
        self.initrd = build_image(self.kernel, wanted, disks=list(self.disk_plans.values()))
        disks = [d for p in self.disk_providers if (d := p(self)) is not None]
        self.disks = [d for d in disks if attachable(self.kernel)]
        self.initrd = layered_initrd(self.initrd, [d for d in disks if d not in self.disks])
        # Remembered per file stamp (host/cache), so this hashes each artefact once.
        files = {"kernel": self.kernel.boot_image, "initrd": self.initrd}
        if self.kernel.config_path is not None:
            files["config"] = self.kernel.config_path
        self.record.digests = {k: stamped_digest(p) for k, p in files.items()}
        # Asked last: every input is checked before any QEMU (even the probe) runs.
        self.record.sandbox = sandbox_state()
        if self.record.sandbox != SANDBOX_ON and self.require_sandbox:
            raise InfraError(
                f"{self.cell.id}: QEMU cannot run under its seccomp sandbox "
                f"({self.record.sandbox.removeprefix('off: ')}) and the run requires it"
            )

    def _plan_disks(self) -> dict[str, DiskPlan]:
        """Each wanted data disk as an attached image, or in the initramfs (reason kept)."""
        if not self.disk_names:
            return {}
        assert self.kernel is not None and self.modules is not None
        providers = self.data_disk_providers
        if providers is None:
            providers = registered()
        index = self.modules
        support = kernel_support(self.kernel, lambda m: index.state(m) == "module")
        plans = {}
        for name in self.disk_names:
            provider = providers.get(name)
            if provider is None:
                known = ", ".join(sorted(providers)) or "none"
                raise InputError(f"{self.cell.id}: no data disk named {name!r} (known: {known})")
            plan = plan_disk(
                provider(self.kernel, self.cell),
                support,
                lambda names: [module_name(p) for p in index.closure(names, soft=True)],
            )
            plans[name] = plan
            self.record.disks[name] = DiskRecord(
                how=plan.summary(), image=str(plan.image or plan.tree)
            )
        return plans

    def _argv(self, accel: str, rundir: Path, console: Path, shell: bool = False) -> list[str]:
        assert self.kernel is not None and self.initrd is not None
        paths = BootPaths(
            kernel=self.kernel.boot_image,
            initrd=self.initrd,
            console_log=console,
            qmp_socket=rundir / "qmp.sock",
            agent_socket=rundir / "agent.sock",
            console_socket=None if shell else rundir / "console.sock",
            scratch_disk=self._scratch_disk(rundir),
            extra_disks=(
                *((p.serial, p.image) for p in self.disk_plans.values() if p.image is not None),
                *((d.serial, d.image) for d in self.disks),
            ),
        )
        return build_argv(
            self.cell,
            paths,
            accel,
            self.record.channel,
            shell=shell,
            sandbox=self.record.sandbox == SANDBOX_ON,
        )

    def _machine(
        self, accel: str, console: Path, log: str, shell: bool = False, extra: tuple[str, ...] = ()
    ) -> Machine:
        """A Machine with its private run directory; the directory goes if this fails (and
        with the Machine when it ends, however its launch goes)."""
        rundir = private_rundir()
        try:
            argv = [*self._argv(accel, rundir, console, shell=shell), *extra]
        except BaseException:
            shutil.rmtree(rundir, ignore_errors=True)
            raise
        self.machine = Machine(argv, rundir, self.outdir / log, self.cell.id)
        return self.machine

    def _scratch_disk(self, rundir: Path) -> Path | None:
        """A fresh sparse file for the profile's scratch disk, private to this boot."""
        disk = self.cell.device.scratch_disk
        if disk is None:
            return None
        path = rundir / f"{disk.id}.img"
        with path.open("wb") as f:
            f.truncate(disk.size << 20)
        self.scratch_disk = path
        return path

    def _probe_kvm(self) -> str | None:
        """Boots this cell under KVM with a short deadline; None if the agent answered."""
        probe = Guest(self.cell, self.outdir / "kvm-probe", accel="kvm", direct_boot=False)
        probe.kernel, probe.modules, probe.initrd = self.kernel, self.modules, self.initrd
        probe.record.channel, probe.record.sandbox = self.record.channel, self.record.sandbox
        try:
            probe._boot("kvm", accel_mod.PROBE_TIMEOUT)
            return None
        except (KmatrixError, OSError) as e:
            return str(e).splitlines()[0]
        finally:
            probe.stop(collect=False)

    # --- booting ------------------------------------------------------------------------------

    def start(self) -> None:
        """Boots the cell; BootFailure if the kernel never reaches userspace."""
        if self.kernel is None:
            self.prepare()
        choice = accel_mod.choose(self.requested_accel, self._probe_kvm)
        self.record.accel, self.record.accel_reason = choice.accel, choice.reason
        self._boot(choice.accel, self.cell.boot_timeout)

    def _boot(self, accel: str, timeout: float) -> None:
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.mounted.clear()
        self.record.launches += 1
        if self.record.launches > 1:  # a later boot of the cell must not truncate the first's log
            self.console_log = self.outdir / f"console-{self.record.launches}.log"
        machine = self._machine(accel, self.console_log, "qemu.log")
        rundir = machine.rundir
        if self.record.launches == 1:
            self.record.qemu_argv, self.record.rundir = machine.argv, str(rundir)
            self.record.boot_timeout = timeout
            disk = self.cell.device.scratch_disk
            if disk is not None and self.scratch_disk is not None:
                self.record.scratch_disk = {self.scratch_disk.name: disk.size}
        recorder = ConsoleRecorder(self.console_log)
        self.recorder = recorder
        machine.launch(before_cont=lambda: recorder.connect(rundir / "console.sock", 10.0))
        self.record.tcg_missing = machine.tcg_missing_features()
        t0 = time.monotonic()
        self._transcript = (self.outdir / "commands.log").open("a", encoding="utf-8")
        try:
            self.session = GuestSession.connect(
                rundir / "agent.sock", 10.0, machine.is_running, self.cell.id, self._transcript
            )
            self.session.on_command = self._journal
            hook, self.while_booting = self.while_booting, None
            if hook is not None:
                hook()
            self.record.userspace_uptime = self._wait_userspace(self.session, timeout)
        except GuestStalled as e:
            self.record.stopped = str(e)
            raise BootFailure(
                f"{self.cell.id}: the kernel stopped making progress before userspace, "
                f"{time.monotonic() - t0:.1f}s into the boot: {e}" + _tail_note(self.console_log)
            ) from e
        except GuestDied as e:
            code = machine.wait_exit(5.0)
            self._close_recorder()  # QEMU is gone: flush the kept tail before reading the log
            raise BootFailure(
                f"{self.cell.id}: the kernel did not reach userspace; QEMU exited "
                f"with code {code}" + _tail_note(self.console_log)
            ) from e
        except GuestTimeout as e:
            raise BootFailure(
                f"{self.cell.id}: no answer from userspace within {timeout:g}s"
                + _tail_note(self.console_log)
            ) from e
        self.record.boot_seconds = time.monotonic() - t0

    def _wait_userspace(self, session: GuestSession, timeout: float) -> float:
        """The agent's hello (the guest uptime it reports), watching the VM meanwhile: a
        kernel that provably stopped progressing gets its verdict now (GuestStalled), not
        at the boot timeout; one that is slow but moving is waited for up to `timeout`."""
        deadline = time.monotonic() + timeout
        watch = ProgressWatch(symbolize=self._symbolizer())
        panic: str | None = None  # the end-of-panic line, once seen
        scanned, panicked_at = 0, 0.0
        while True:
            left = deadline - time.monotonic()
            try:
                return session.wait_ready(max(0.01, min(SAMPLE_INTERVAL, left)))
            except GuestTimeout:
                if time.monotonic() >= deadline:
                    raise GuestTimeout(
                        f"{self.cell.id}: the guest agent did not start within {timeout:g}s"
                    ) from None
            why = watch.feed(self._sample())
            if why:
                raise GuestStalled(why)
            if panic is None:
                found = self._console_match(_PANIC_END, max(0, scanned - 256))
                scanned = self._console_size()
                if found:
                    panic, panicked_at = found, time.monotonic()
            elif time.monotonic() - panicked_at > PANIC_GRACE:
                # A panic that would reboot has done so by now (QEMU exits: -no-reboot).
                raise GuestStalled(f"the kernel panicked and stays down: {panic!r}")

    def _sample(self) -> Sample:
        m = self.machine
        try:
            vcpus = m.vcpu_states() if m is not None else []
        except KmatrixError:
            vcpus = []  # QEMU busy or on its way out: no evidence either way
        console = self.recorder.total if self.recorder is not None else 0
        cpu = m.cpu_seconds() if m is not None else 0.0
        return Sample(time.monotonic(), tuple(vcpus), cpu, console)

    def _symbolizer(self) -> Symbolizer | None:
        """Names addresses from the kernel's System.map when it runs where it was linked:
        booted as its ELF (no decompressor, no KASLR) or built without KASLR."""
        k = self.kernel
        if k is None or k.system_map is None:
            return None
        relocated = k.boot_image == k.image and k.option("RANDOMIZE_BASE") == "y"
        if relocated and "nokaslr" not in self.cell.kernel_args:
            return None
        return Symbolizer.from_system_map(k.system_map)

    def shell(self) -> int:
        """Boots the cell with the developer's terminal as its console; returns QEMU's exit code."""
        if self.kernel is None:
            self.prepare()
        choice = accel_mod.choose(self.requested_accel, self._probe_kvm)
        self.record.accel, self.record.accel_reason = choice.accel, choice.reason
        machine = self._machine(choice.accel, self.console_log, "qemu.log", shell=True)
        machine.launch(interactive=True)
        try:
            code = machine.proc.wait() if machine.proc is not None else 1
        finally:
            machine.shutdown()
        return code

    # --- using ------------------------------------------------------------------------------

    def begin_test(self, nodeid: str) -> None:
        """Marks where a test's guest commands start, in commands.log and the journal."""
        self.current_test = nodeid
        if self._transcript is not None:
            with contextlib.suppress(OSError):
                self._transcript.write(f"# test {nodeid}\n")
                self._transcript.flush()

    def _journal(self, result: CommandResult, timeout: int) -> None:
        """One JSON line per guest command (commands.jsonl): what a reproducer replays."""
        line = {
            "test": self.current_test,
            "command": result.command,
            "timeout": timeout,
            "exit_status": result.exit_status,
            "stdout_sha256": hashlib.sha256(result.stdout.encode()).hexdigest(),
            "seconds": round(result.duration, 3),
        }
        with contextlib.suppress(OSError), (self.outdir / JOURNAL).open("a") as f:
            f.write(json.dumps(line) + "\n")

    @property
    def alive(self) -> bool:
        return (
            self.session is not None
            and not self.session.closed
            and self.machine is not None
            and self.machine.is_running()
        )

    def qmp(self, command: str, timeout: float = 10.0, **args: Any) -> Any:
        if self.machine is None or self.machine.qmp is None:
            raise VMError(f"{self.cell.id}: the VM is not running")
        return self.machine.qmp.cmd(command, timeout=timeout, **args)

    def mount_disk(self, name: str, timeout: float = 60.0) -> float:
        """Makes the data disk's files present in the running guest (the agent mounts it,
        once per boot); returns the seconds it took (0 when it was already there).
        InputError for a disk this cell was not prepared with, InfraError if it fails."""
        plan = self.disk_plans.get(name)
        if plan is None:
            raise InputError(
                f"{self.cell.id}: the data disk {name!r} was not attached to this cell "
                f"(attached: {', '.join(self.disk_plans) or 'none'})"
            )
        if name in self.mounted:
            return 0.0
        if self.session is None or not self.alive:
            raise VMError(f"{self.cell.id}: the VM is not running")
        t0 = time.monotonic()
        res = self.session.run(mount_command(name), timeout=timeout)
        took = time.monotonic() - t0
        if res.exit_status != 0:
            raise InfraError(
                f"{self.cell.id}: mounting the {name} data disk ({plan.summary()}) failed: "
                + (res.stderr or res.stdout).strip()
            )
        self.mounted.add(name)
        entry = self.record.disks.setdefault(name, DiskRecord(how=plan.summary()))
        if entry.mount_seconds is None:  # the first mount of the cell: what it costs
            entry.mount_seconds = round(took, 3)
        return took

    def held_modules(self) -> set[str]:
        """Modules the mounted data disks hold (they cannot be unloaded while mounted)."""
        return {m for n in self.mounted if n in self.disk_plans for m in self.disk_plans[n].holds}

    def poweroff(self, timeout: float = 30.0) -> bool:
        """Asks the guest to power off and waits for QEMU to exit by itself."""
        if self.session is None or self.machine is None:
            return False
        self.save_dmesg()
        t0 = time.monotonic()
        offset = self._console_size()
        try:
            self.session.poweroff(timeout=min(10.0, timeout))
        except GuestError:
            self.record.poweroff_clean = False
            return False
        code, why = self._wait_poweroff(timeout, offset)
        self.record.poweroff_seconds = time.monotonic() - t0
        if why:
            self.record.stopped = why
            self.machine.shutdown()
            self.record.poweroff_clean = False
            self.record.exitcode = self.machine.exitcode
            return False
        self.record.poweroff_clean = code == 0
        self.record.exitcode = code
        return bool(self.record.poweroff_clean)

    def _wait_poweroff(self, timeout: float, offset: int) -> tuple[int | None, str]:
        """QEMU's exit code once the guest powered off, or (None, why) as soon as the kernel
        halted instead (it said so on the console, or every vCPU sits halted with
        interrupts off): such a guest would keep QEMU up until the timeout."""
        assert self.machine is not None
        deadline = time.monotonic() + timeout
        watch = ProgressWatch(symbolize=self._symbolizer())
        while True:
            code = self.machine.wait_exit(
                max(0.0, min(SAMPLE_INTERVAL / 2, deadline - time.monotonic()))
            )
            if code is not None or time.monotonic() >= deadline:
                return code, ""
            line = self._console_match(_HALTED, offset)
            if line:
                return None, f"the kernel halted instead of powering off: {line!r}"
            why = watch.feed(self._sample())
            if why:
                return None, f"the kernel stopped without powering off: {why}"

    def _console_size(self) -> int:
        try:
            return self.console_log.stat().st_size
        except OSError:
            return 0

    def _console_match(self, pattern: re.Pattern[bytes], offset: int) -> str:
        """The first console line from byte `offset` on that matches, or ''."""
        try:
            with self.console_log.open("rb") as f:
                f.seek(offset)
                data = f.read(1 << 20)
        except OSError:
            return ""
        m = pattern.search(data)
        if m is None:
            return ""
        start = data.rfind(b"\n", 0, m.start()) + 1
        end = data.find(b"\n", m.end())
        return data[start : end if end >= 0 else len(data)].decode(errors="replace").strip()

    def diagnose(self) -> tuple[str, str]:
        """After a guest command timed out or the VM vanished: ('infra'|'kernel', why).

        A QEMU killed by a signal, stopped, or deaf to QMP is the host's problem; a guest
        that panicked (QEMU exited by itself) or hangs under a responsive QEMU is the kernel's.
        """
        m = self.machine
        if m is None or m.proc is None:
            return "infra", "no VM was started"
        # The channel can close a moment before a dying QEMU can be reaped: let it finish.
        code = m.wait_exit(1.0)
        if code is not None:
            self._close_recorder()
            if code < 0:
                return "infra", f"QEMU was killed by signal {-code}"
            return "kernel", f"the guest went down (QEMU exited with code {code})"
        if _process_state(m.proc.pid) == "T":
            return "infra", "QEMU is stopped (SIGSTOP/ptrace); killed it"
        try:
            status = m.qmp.cmd("query-status", timeout=5.0) if m.qmp else None
        except KmatrixError as e:
            code = m.wait_exit(2.0)
            if code is not None and code < 0:
                return "infra", f"QEMU was killed by signal {-code}"
            if code is not None:
                return "kernel", f"the guest went down (QEMU exited with code {code})"
            return "infra", f"QEMU does not answer QMP ({e})"
        state = status.get("status") if isinstance(status, dict) else None
        if state in ("guest-panicked", "internal-error", "shutdown"):
            return "kernel", f"the VM is in state {state!r}"
        return "kernel", f"the guest stopped answering while QEMU runs (state {state!r})"

    def _close_recorder(self) -> None:
        if self.recorder is not None:
            self.recorder.close()
            # += : a restored VM's recorder continues the same log.
            self.record.console_bytes += self.recorder.total
            self.record.console_dropped += self.recorder.dropped
            self.recorder = None

    def save_dmesg(self, name: str = "dmesg.log") -> None:
        """Keeps the whole kernel ring buffer (the console is quiet) beside the console log:
        the /dev/kmsg records the log guard read already plus the new ones (one small read;
        a `dmesg` of the whole log costs ~0.15 s under TCG), else `dmesg`."""
        if self.alive and self.session is not None:
            with contextlib.suppress(KmatrixError, OSError):
                (self.outdir / name).write_text(kernel_log(self.session, timeout=20))

    # --- snapshots ------------------------------------------------------------------------

    @property
    def has_snapshot(self) -> bool:
        return self._snapshot is not None

    def snapshot(self, timeout: float = 60.0) -> bool:
        """Saves the running guest's state for restore(), with a copy of the scratch disk
        made at the same instant: the saved memory caches the disk's blocks, so a restored
        guest needs the disk as it was then (a copy of a mostly sparse file costs
        milliseconds; refusing would leave every profile with a disk without snapshots).
        The guest is paused while saving. False, with record.snapshot_error, if QEMU
        cannot save it (e.g. a migration blocker such as a passed-through host device)."""
        m = self.machine
        if not self.alive or m is None or m.qmp is None:
            self.record.snapshot_error = "the guest was not running"
            return False
        self.discard_snapshot()
        t0 = time.monotonic()
        state = snap.unnamed_file()
        disk: int | None = None
        try:
            snap.save(m.qmp, state, timeout)
            if self.scratch_disk is not None:
                disk = snap.unnamed_file()
                with self.scratch_disk.open("rb") as f:
                    snap.copy_sparse(f.fileno(), disk)
        except (KmatrixError, OSError) as e:
            os.close(state)
            if disk is not None:
                os.close(disk)
            self.record.snapshot_error = str(e).splitlines()[0]
        else:
            self._snapshot, self._snapshot_disk = state, disk
            self.record.snapshot_mib = round(os.fstat(state).st_size / 2**20, 1)
            self.record.snapshot_error = ""
        # Saved or not, the guest runs on (after a migration QEMU waits in postmigrate).
        m.qmp.cmd("cont")
        self.record.snapshot_seconds = round(time.monotonic() - t0, 3)
        return self._snapshot is not None

    def discard_snapshot(self) -> None:
        for fd in (self._snapshot, self._snapshot_disk):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._snapshot = self._snapshot_disk = None

    def restore(self, reason: str, timeout: float = 60.0) -> float:
        """Replaces the VM with one started from the snapshot (-incoming), so the guest is as
        it was right after boot; QMP, the console recorder (appending to the same log, after
        a marker line) and the agent session are reconnected. The outgoing guest's kernel
        log is kept as dmesg-before-restore-N.log. Returns the seconds taken (old VM out to
        the new guest answering a command); VMError if the new VM does not come up."""
        if self._snapshot is None:
            raise VMError(f"{self.cell.id}: there is no snapshot to restore")
        t0 = time.monotonic()
        n = self.record.restores + 1
        self._keep_dmesg_since_boot(f"dmesg-before-restore-{n}.log")
        self._end_vm()
        self.mounted.clear()  # the snapshot was taken before any data disk was mounted
        # The restored kernel's timestamps go back to the snapshot's: say so in the log.
        with contextlib.suppress(OSError), self.console_log.open("a") as f:
            f.write(
                f"\n[kmatrix: restore {n} ({reason}): the VM restarts from the state saved "
                "after boot; kernel timestamps below continue from that moment]\n"
            )
        sessions: list[GuestSession] = []
        try:
            self._launch_restored(n, reason, timeout, sessions)
        except (KmatrixError, OSError) as e:
            for s in sessions:
                s.close()
            self._end_vm()
            raise VMError(f"{self.cell.id}: restoring the snapshot failed: {e}") from e
        self.record.exitcode = None  # that of the VM which ends the cell, not of a replaced one
        dt = time.monotonic() - t0
        self.record.restores = n
        self.record.restore_seconds.append(round(dt, 3))
        self.record.restore_reasons.append(reason)
        return dt

    def _launch_restored(
        self, n: int, reason: str, timeout: float, sessions: list[GuestSession]
    ) -> None:
        state = self._snapshot
        assert state is not None
        machine = self._machine(
            self.record.accel, self.console_log, "qemu-restore.log", extra=("-incoming", "defer")
        )
        rundir = machine.rundir
        if self._snapshot_disk is not None and self.scratch_disk is not None:
            with self.scratch_disk.open("r+b") as disk:
                snap.copy_sparse(self._snapshot_disk, disk.fileno())
        recorder = ConsoleRecorder(self.console_log, append=True)
        self.recorder = recorder
        if self._transcript is None:
            self._transcript = (self.outdir / "commands.log").open("a", encoding="utf-8")
        self._transcript.write(f"# restore {n}: {reason}\n")

        def before_cont() -> None:
            # Console and agent are connected before the guest runs: virtio-serial tells the
            # guest when the host end closes, and the agent would take that for EOF and quit.
            recorder.connect(rundir / "console.sock", 10.0)
            try:
                sessions.append(
                    GuestSession.connect(
                        rundir / "agent.sock", 10.0, machine.is_running, self.cell.id,
                        self._transcript,
                    )
                )  # fmt: skip
            except GuestError as e:
                raise VMError(f"{self.cell.id}: {e}") from None
            assert machine.qmp is not None
            snap.load(machine.qmp, state, timeout)

        machine.launch(before_cont=before_cont)
        self.session = sessions[0]
        self.session.on_command = self._journal
        # The saved agent was waiting for a request: one answer proves the guest runs.
        self.session.run("true", timeout=30, check=True)

    def _keep_dmesg_since_boot(self, name: str) -> None:
        """The outgoing guest's kernel log from the agent's hello on (the boot part stays in
        the snapshot and reaches dmesg.log at the end): nothing a test caused is lost."""
        if not self.alive or self.session is None:
            return
        since = self.record.userspace_uptime or 0.0
        with contextlib.suppress(KmatrixError, OSError):
            keep, on = [], False
            for line in kernel_log(self.session, timeout=20).splitlines():
                m = _PRINTK_TIME.match(line)
                if m:
                    on = float(m.group(1)) > since
                if on:
                    keep.append(line + "\n")
            (self.outdir / name).write_text("".join(keep))

    def _end_vm(self) -> None:
        """Ends QEMU and the channels to it; transcript and snapshot stay for the next VM."""
        if self.machine is not None:
            self.machine.shutdown()  # before the channel closes: see stop()
        if self.session is not None:
            self.session.close()
            self.session = None
        self._close_recorder()

    def stop(self, collect: bool = True) -> None:
        """Saves the kernel log if the guest still answers, then ends QEMU whatever state."""
        try:
            if collect:
                self.save_dmesg()
        finally:
            # QEMU goes first: once the host closes the agent channel, the agent reads EOF and
            # powers the guest off, and that would race the QMP quit this records.
            if self.machine is not None:
                self.machine.shutdown()
                self.record.shutdown_steps += self.machine.shutdown_steps
                if self.record.exitcode is None:
                    self.record.exitcode = self.machine.exitcode
            if self.session is not None:
                self.session.close()
            self._close_recorder()
            self.discard_snapshot()
            if self._transcript is not None:
                self._transcript.close()
                self._transcript = None
