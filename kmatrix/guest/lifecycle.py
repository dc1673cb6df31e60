"""The cells a worker boots: one VM per cell at a time, booted on its first test, restored
or rebooted for clean guests, stopped after its last test. Knows nothing of pytest.

Each cell the worker meets has one CellRun: its guest, an explicit CellState and the facts
that state carries (why it failed to boot, how its VM died, why it cannot be run here).
Every change of state goes through a CellRun method, so the rules live in one place:

    NEW ──boot──▶ RUNNING ──a test powers it off──▶ OFF ──the next test boots──▶ RUNNING
    RUNNING ──the VM died──▶ DEAD ──snapshot restored──▶ RUNNING
    RUNNING ──clean guest wanted: restore or reboot──▶ RUNNING
    NEW/RUNNING ──the kernel did not build or boot──▶ NO_BOOT   (its tests fail)
    NEW/RUNNING ──input or infra error──▶ ERROR                 (its tests error)
    NEW ──this host cannot run it──▶ UNAVAILABLE                (its tests skip)
    any ──after its last test──▶ STOPPED
"""

from __future__ import annotations

import contextlib
import enum
import importlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from kmatrix.config.specs import Cell
from kmatrix.errors import (
    BuildFailure,
    HostDeviceUnavailable,
    InfraError,
    KmatrixError,
)
from kmatrix.guest.disks import ExtraDisk
from kmatrix.guest.guest import BootFailure, Guest
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.results.charges import attribute
from kmatrix.results.runs import write_json_atomic
from kmatrix.results.schema import FindingRecord


class CellState(enum.Enum):
    NEW = "new"  # nothing prepared or booted yet
    RUNNING = "running"  # a guest is up (or is believed up until a test says otherwise)
    OFF = "off"  # a test powered the guest off on purpose; the next test boots it again
    DEAD = "dead"  # the VM ended or stopped answering mid-run (death says how)
    NO_BOOT = "no-boot"  # the kernel did not build or did not reach userspace
    ERROR = "error"  # an input or infrastructure error; every test of the cell errors
    UNAVAILABLE = "unavailable"  # this host cannot run the cell (e.g. a host device)
    STOPPED = "stopped"  # after the cell's last test; its records are written


@dataclass
class CellRun:
    """One cell on this worker: its guest and where it stands."""

    cell: Cell
    guest: Guest | None = None
    state: CellState = CellState.NEW
    failure: BaseException | None = None  # NO_BOOT: the build or boot failure
    error: KmatrixError | None = None  # ERROR
    unavailable: str = ""  # UNAVAILABLE: why this host cannot run it
    death: str = ""  # DEAD: how the VM died
    wants_snapshot: bool = False  # save the first boot for restores (see the planner)
    dirty: bool = False  # a test ran on the guest since its boot or restore
    no_restore: str = ""  # why clean guests of this cell are reboots, once known
    recovered: str = ""  # the VM death a restore replaced, for the next test's record

    @property
    def failed(self) -> bool:
        """The kernel's fault: the cell's tests fail (never retried into a pass)."""
        return self.state is CellState.NO_BOOT

    @property
    def dead(self) -> bool:
        return self.state is CellState.DEAD

    def to_no_boot(self, failure: BaseException) -> None:
        self.state, self.failure = CellState.NO_BOOT, failure

    def to_error(self, error: KmatrixError) -> None:
        self.state, self.error = CellState.ERROR, error

    def to_unavailable(self, why: str) -> None:
        self.state, self.unavailable = CellState.UNAVAILABLE, why

    def to_dead(self, why: str) -> None:
        """The first account of a death is kept (a later test only sees the VM gone); a
        cell whose kernel failed, or that errored, keeps that state."""
        if self.state in (CellState.RUNNING, CellState.OFF):
            self.state, self.death = CellState.DEAD, why

    def to_running(self, recovered: str = "") -> None:
        """A fresh boot or a restored snapshot: a clean guest."""
        self.state, self.death, self.dirty, self.recovered = (
            CellState.RUNNING, "", False, recovered,
        )  # fmt: skip

    def needs_boot(self) -> bool:
        """Whether the next test must boot the cell: never booted, or powered off on
        purpose by an earlier test (a guest that died stays dead; a failure stays failed)."""
        if self.state in (CellState.NEW, CellState.STOPPED, CellState.OFF):
            return True
        if self.state is CellState.RUNNING and self.guest is not None:
            g = self.guest
            if not g.alive and g.record.poweroff_clean is not None:
                self.state = CellState.OFF
                return True
        return False


class CellPool:
    """Boots a cell on first use, keeps one VM per worker, stops a cell after its last test."""

    def __init__(
        self,
        reports: Path,
        accel: str | None,
        direct_boot: bool,
        retries: int = 1,
        allow_host_access: bool = False,
        require_sandbox: bool = False,
        make_guest: Callable[[Cell, Path], Guest] | None = None,
    ) -> None:
        self.reports = reports
        self.allow_host_access = allow_host_access
        self.require_sandbox = require_sandbox
        self.accel = accel
        self.direct_boot = direct_boot
        self.retries = retries
        self.cells: dict[str, CellRun] = {}
        self._make_guest = make_guest or self._new_guest
        # Kernel reports the log guard charged to tests or to the cell (results.charges).
        self.charges: dict[str, list[FindingRecord]] = {}
        # Called with a cell's Guest and "stop" or "replace" before its VM stops or is
        # replaced by a clean one (the log guard reads what is left of its kernel log).
        self.before_vm_ends: list[Callable[[Guest, str], None]] = []
        # cell id -> what provides its read-only disks (kmatrix.guest.disks), set before boot
        self.disk_providers: dict[str, list[Callable[[Guest], ExtraDisk | None]]] = {}
        # cell id -> the read-only data disks (kmatrix.guest.datadisk) its tests need
        self.cell_disks: dict[str, set[str]] = {}
        # Modules the run needs only after its first boot (log parser, report writers):
        # imported while that boot runs, on the core the single-threaded guest leaves idle.
        self.warmup: tuple[str, ...] = ()

    def _new_guest(self, cell: Cell, outdir: Path) -> Guest:
        return Guest(
            cell,
            outdir,
            accel=self.accel,
            direct_boot=self.direct_boot,
            allow_host_access=self.allow_host_access,
            require_sandbox=self.require_sandbox,
            disks=sorted(self.cell_disks.get(cell.id, ())),
        )

    def outdir(self, cell: Cell) -> Path:
        return self.reports / "cells" / cell.slug

    def run_of(self, cell: Cell) -> CellRun:
        """The cell's CellRun (made on first use)."""
        r = self.cells.get(cell.id)
        if r is None:
            r = self.cells[cell.id] = CellRun(cell)
        return r

    def guest_of(self, cell: Cell) -> Guest | None:
        """The cell's guest, if one was made."""
        r = self.cells.get(cell.id)
        return r.guest if r is not None else None

    def plan_snapshot(self, cell: Cell) -> None:
        """Saves the cell's first boot, so clean guests can be restored rather than rebooted."""
        self.run_of(cell).wants_snapshot = True

    def get(self, cell: Cell) -> Guest:
        """The cell's running guest, booting it if needed. Infra and input errors propagate
        (the same error for every test of the cell); kernel boot failures are recorded."""
        r = self.run_of(cell)
        if r.state is CellState.ERROR:
            assert r.error is not None
            raise r.error
        if r.state is CellState.UNAVAILABLE:
            raise HostDeviceUnavailable(r.unavailable)
        if r.guest is not None and not r.needs_boot():
            return r.guest
        # Not booted yet, or powered off on purpose by an earlier test: boot (again).
        for other in list(self.cells):
            if other != cell.id:
                self.stop(other)
        booted_before = r.state not in (CellState.NEW, CellState.STOPPED)
        g = self._prepared(r)
        if r.failed:
            return g
        if booted_before:
            g.stop(collect=False)
        self._start(r, g)
        return g

    def _warm_up(self) -> None:
        names, self.warmup = self.warmup, ()
        for name in names:
            with contextlib.suppress(ImportError):  # only a speed-up
                importlib.import_module(name)

    def kernel_of(self, cell: Cell) -> KernelArtifact | None:
        """The cell's kernel artefact, resolved (fetched, built) without booting anything;
        None if that failed (the cell's first test then reports why)."""
        r = self.run_of(cell)
        if r.state in (CellState.ERROR, CellState.UNAVAILABLE):
            return None
        try:
            return self._prepared(r).kernel
        except KmatrixError:
            return None

    def _prepared(self, r: CellRun) -> Guest:
        """The cell's Guest with its kernel and image ready (made and prepared once); records
        a build failure, raises set-up errors."""
        if r.guest is not None:
            # A stopped cell booted again (a rerun of its last test) keeps its Guest: its
            # record and logs continue (console-2.log, ...) instead of being overwritten.
            return r.guest
        g = self._make_guest(r.cell, self.outdir(r.cell))
        g.disk_providers = list(self.disk_providers.get(r.cell.id, ()))
        if self.warmup:
            g.while_booting = self._warm_up
        r.guest, r.state = g, CellState.NEW
        try:
            g.prepare()
        except BuildFailure as e:
            r.to_no_boot(e)  # the kernel did not build from its patches and config
            g.record.failure = "build"
        except HostDeviceUnavailable as e:
            r.to_unavailable(str(e))  # this host cannot run the cell: not a failure
            raise
        except KmatrixError as e:
            r.to_error(e)
            raise
        return g

    def _start(self, r: CellRun, g: Guest) -> None:
        for attempt in range(1, self.retries + 2):
            try:
                g.start()
                break
            except BootFailure as e:
                r.to_no_boot(e)  # the kernel's fault: never retried into a pass
                g.record.failure = "boot"
                g.stop(collect=False)
                return
            except InfraError as e:
                g.record.attempts.append(f"boot attempt {attempt}: {e}".splitlines()[0])
                g.stop(collect=False)
                if attempt > self.retries:
                    r.to_error(e)
                    raise
        r.to_running()
        if r.wants_snapshot and not r.no_restore and g.alive:
            g.snapshot()  # a failure is recorded (snapshot_error); clean guests then reboot

    def begin_test(self, cell: Cell) -> None:
        """A test is about to use the guest: it is no longer just booted."""
        self.run_of(cell).dirty = True

    def end_test(self, cell: Cell, nodeid: str) -> None:
        """After a test: a VM that ended without a clean poweroff died during it."""
        r = self.run_of(cell)
        g = r.guest
        if (
            r.state is CellState.RUNNING
            and g is not None
            and not g.alive
            and g.record.poweroff_clean is None
        ):
            code = g.machine.exitcode if g.machine else None
            r.to_dead(f"it ended during {nodeid} (QEMU exit code {code})")

    def clean(self, cell: Cell, reason: str) -> str:
        """A just-booted guest (for a kmatrix_clean test, or a rerun): the post-boot snapshot
        restored, or a reboot when there is none or a restore was measured slower than the
        cell's boot. Returns how, for the test's properties."""
        r = self.run_of(cell)
        g = r.guest
        assert g is not None
        r.recovered = ""
        self._vm_ends(g, "replace")
        if g.has_snapshot and not r.no_restore:
            try:
                took = g.restore(f"clean guest for {reason}")
            except InfraError as e:
                g.discard_snapshot()
                r.no_restore = f"restoring failed: {str(e).splitlines()[0]}"
            else:
                r.to_running()
                boot = g.record.boot_seconds
                if boot is not None and took >= boot:
                    r.no_restore = (
                        f"a restore took {took:.2f}s, the boot {boot:.2f}s: rebooting instead"
                    )
                return f"restored ({took:.2f}s)"
        why = r.no_restore or g.record.snapshot_error or "no snapshot"
        # The outgoing boot's kernel log, as a poweroff would keep it.
        g.save_dmesg(f"dmesg-boot-{g.record.launches}.log")
        g.stop(collect=False)
        self._start(r, g)
        return f"rebooted ({why})"

    def recover(self, cell: Cell) -> bool:
        """After the cell's VM died mid-run (its test's failure and diagnosis already
        reported), the remaining tests get the post-boot snapshot restored; False if there
        is none or it does not come up, and they error as "the VM is gone"."""
        r = self.run_of(cell)
        g = r.guest
        if g is None or not r.dead or not g.has_snapshot:
            return False
        try:
            g.restore(f"after the VM died: {r.death}")
        except InfraError as e:
            g.discard_snapshot()
            r.death = f"{r.death}; restoring its snapshot failed: {e}".splitlines()[0]
            return False
        r.to_running(recovered=r.death)
        return True

    def stop(self, cell_id: str) -> None:
        r = self.cells.get(cell_id)
        if r is None or r.guest is None or r.state is CellState.STOPPED:
            return
        g = r.guest
        r.state = CellState.STOPPED
        try:
            self._vm_ends(g, "stop")
            g.stop()
        finally:
            self.record(g)

    def _vm_ends(self, g: Guest, why: str) -> None:
        for callback in self.before_vm_ends:
            callback(g, why)

    def record(self, g: Guest) -> None:
        """Leaves the cell's boot record and kernel-log findings beside its logs."""
        # The log parser's patterns compile on import: not before the first boot.
        from kmatrix.results.logparse import parse_kernel_log

        boot = g.record
        if g.kernel is not None:
            boot = replace(
                boot,
                release=g.kernel.release,
                kernel_image=str(g.kernel.image),
                boot_image=str(g.kernel.boot_image),
                initrd=str(g.initrd),
                config=str(g.kernel.config_path or ""),
            )
        findings: list[FindingRecord] = []
        # dmesg-*.log: kernel logs of guests a restore or a reboot replaced.
        logs = [p.name for pat in ("dmesg*.log", "console*.log") for p in g.outdir.glob(pat)]
        for name in sorted(logs, key=lambda n: (n != "dmesg.log", n)):
            path = g.outdir / name
            if path.is_file():
                # dmesg holds kernel records only: its lines need no timestamp to count
                # (printk.time=0); the console mixes in userspace output, so they do there.
                text = path.read_text(errors="replace")
                dmesg = name.startswith("dmesg")
                for f in parse_kernel_log(text, require_timestamp=not dmesg):
                    findings.append(FindingRecord(**asdict(f), source=name))
        findings = attribute(findings, self.charges.pop(g.cell.id, []))
        with contextlib.suppress(OSError):
            write_json_atomic(g.outdir / "boot.json", boot.to_json())
            write_json_atomic(g.outdir / "findings.json", [f.to_json() for f in findings])

    def stop_all(self) -> None:
        for cid in list(self.cells):
            self.stop(cid)
