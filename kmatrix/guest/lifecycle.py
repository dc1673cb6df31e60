"""The cells a worker boots: one VM per cell at a time, booted on its first test, restored
or rebooted for clean guests, stopped after its last test. Knows nothing of pytest."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from dataclasses import asdict, replace
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
from kmatrix.results.charges import attribute
from kmatrix.results.runs import write_json_atomic
from kmatrix.results.schema import FindingRecord


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
    ) -> None:
        self.reports = reports
        self.allow_host_access = allow_host_access
        self.require_sandbox = require_sandbox
        self.accel = accel
        self.direct_boot = direct_boot
        self.guests: dict[str, Guest] = {}
        self.failures: dict[str, BaseException] = {}  # cell id -> boot failure (kernel's fault)
        self.deaths: dict[str, str] = {}  # cell id -> how its VM died mid-run
        self.errors: dict[str, KmatrixError] = {}  # cell id -> set-up error (input, infra)
        self.skips: dict[str, str] = {}  # cell id -> why its host cannot run it
        self.retries = retries
        self.snapshot_cells: set[str] = set()  # cells saved after boot (see collection._plan_cells)
        self.dirty: set[str] = set()  # cells whose guest ran a test since its boot or restore
        self.no_restore: dict[str, str] = {}  # cell id -> why its clean guests are reboots
        self.recovered: dict[str, str] = {}  # cell id -> the VM death its guest replaced
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

    def outdir(self, cell: Cell) -> Path:
        return self.reports / "cells" / cell.slug

    def get(self, cell: Cell) -> Guest:
        """The cell's running guest, booting it if needed. Infra and input errors propagate
        (the same error for every test of the cell); kernel boot failures are recorded."""
        if cell.id in self.errors:
            raise self.errors[cell.id]
        if cell.id in self.skips:
            raise HostDeviceUnavailable(self.skips[cell.id])
        g = self.guests.get(cell.id)
        if g is not None and (
            cell.id in self.failures
            or cell.id in self.deaths
            or g.alive
            or g.record.poweroff_clean is None
        ):
            return g
        # Not booted yet, or powered off on purpose by an earlier test: boot (again).
        for other in list(self.guests):
            if other != cell.id:
                self.stop(other)
        if g is None:
            g = Guest(
                cell, self.outdir(cell), accel=self.accel, direct_boot=self.direct_boot,
                allow_host_access=self.allow_host_access, require_sandbox=self.require_sandbox,
                disks=sorted(self.cell_disks.get(cell.id, ())),
            )  # fmt: skip
            g.disk_providers = list(self.disk_providers.get(cell.id, ()))
            if self.warmup:
                g.while_booting = self._warm_up
            self.guests[cell.id] = g
            try:
                g.prepare()
            except BuildFailure as e:
                # The kernel did not build from its patches and config: its cells fail.
                self.failures[cell.id] = e
                g.record.failure = "build"
                return g
            except HostDeviceUnavailable as e:
                self.skips[cell.id] = str(e)  # this host cannot run the cell: not a failure
                raise
            except KmatrixError as e:
                self.errors[cell.id] = e
                raise
        else:
            g.stop(collect=False)
        self._start(cell, g)
        return g

    def _warm_up(self) -> None:
        names, self.warmup = self.warmup, ()
        for name in names:
            with contextlib.suppress(ImportError):  # only a speed-up
                importlib.import_module(name)

    def _start(self, cell: Cell, g: Guest) -> None:
        for attempt in range(1, self.retries + 2):
            try:
                g.start()
                break
            except BootFailure as e:
                self.failures[cell.id] = e  # the kernel's fault: never retried into a pass
                g.record.failure = "boot"
                g.stop(collect=False)
                break
            except InfraError as e:
                g.record.attempts.append(f"boot attempt {attempt}: {e}".splitlines()[0])
                g.stop(collect=False)
                if attempt > self.retries:
                    self.errors[cell.id] = e
                    raise
        self.dirty.discard(cell.id)
        self.recovered.pop(cell.id, None)
        if cell.id in self.snapshot_cells and cell.id not in self.no_restore and g.alive:
            g.snapshot()  # a failure is recorded (snapshot_error); clean guests then reboot

    def clean(self, cell: Cell, nodeid: str) -> str:
        """A just-booted guest for a kmatrix_clean test: the post-boot snapshot restored, or
        a reboot when there is none or a restore was measured slower than the cell's boot.
        Returns how, for the test's properties."""
        g = self.guests[cell.id]
        self.recovered.pop(cell.id, None)
        self._vm_ends(g, "replace")
        if g.has_snapshot and cell.id not in self.no_restore:
            try:
                took = g.restore(f"clean guest for {nodeid}")
            except InfraError as e:
                g.discard_snapshot()
                self.no_restore[cell.id] = f"restoring failed: {str(e).splitlines()[0]}"
            else:
                self.dirty.discard(cell.id)
                boot = g.record.boot_seconds
                if boot is not None and took >= boot:
                    self.no_restore[cell.id] = (
                        f"a restore took {took:.2f}s, the boot {boot:.2f}s: rebooting instead"
                    )
                return f"restored ({took:.2f}s)"
        why = self.no_restore.get(cell.id) or g.record.snapshot_error or "no snapshot"
        # The outgoing boot's kernel log, as a poweroff would keep it.
        g.save_dmesg(f"dmesg-boot-{g.record.launches}.log")
        g.stop(collect=False)
        self._start(cell, g)
        return f"rebooted ({why})"

    def recover(self, cell: Cell) -> bool:
        """After the cell's VM died mid-run (its test's failure and diagnosis already
        reported), the remaining tests get the post-boot snapshot restored; False if there
        is none or it does not come up, and they error as "the VM is gone"."""
        g = self.guests.get(cell.id)
        death = self.deaths.get(cell.id)
        if g is None or death is None or not g.has_snapshot:
            return False
        try:
            g.restore(f"after the VM died: {death}")
        except InfraError as e:
            g.discard_snapshot()
            self.deaths[cell.id] = f"{death}; restoring its snapshot failed: {e}".splitlines()[0]
            return False
        del self.deaths[cell.id]
        self.recovered[cell.id] = death
        self.dirty.discard(cell.id)
        return True

    def stop(self, cell_id: str) -> None:
        g = self.guests.pop(cell_id, None)
        if g is None:
            return
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
        for cid in list(self.guests):
            self.stop(cid)
