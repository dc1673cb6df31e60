"""CellPool's per-cell state machine (no QEMU: a scripted guest stands in for Guest)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from kmatrix.config.specs import Cell, Matrix
from kmatrix.errors import BuildFailure, HostDeviceUnavailable, InfraError, VMError
from kmatrix.guest.guest import BootFailure
from kmatrix.guest.lifecycle import CellPool, CellState
from kmatrix.results.schema import BootRecord


class ScriptedGuest:
    """What CellPool touches on a Guest; start() raises the scripted errors in turn."""

    def __init__(self, prepare: Exception | None = None, starts: list[Any] | None = None) -> None:
        self.record = BootRecord()
        self._prepare = prepare
        self._starts = list(starts or [])
        self.running = False
        self.calls: list[str] = []
        self.outdir = Path("/nonexistent")
        self.kernel = None
        self.machine = None
        self.snapshot_taken = False

    @property
    def alive(self) -> bool:
        return self.running

    @property
    def has_snapshot(self) -> bool:
        return self.snapshot_taken

    def prepare(self) -> None:
        self.calls.append("prepare")
        if self._prepare is not None:
            raise self._prepare

    def start(self) -> None:
        self.calls.append("start")
        if self._starts:
            e = self._starts.pop(0)
            if e is not None:
                raise e
        self.running = True
        self.record.boot_seconds = 2.0

    def stop(self, collect: bool = True) -> None:
        self.calls.append("stop")
        self.running = False

    def snapshot(self) -> bool:
        self.calls.append("snapshot")
        self.snapshot_taken = True
        return True

    def restore(self, reason: str) -> float:
        self.calls.append("restore")
        self.running = True
        return 0.5

    def discard_snapshot(self) -> None:
        self.snapshot_taken = False

    def save_dmesg(self, name: str = "dmesg.log") -> None:
        self.calls.append(f"dmesg {name}")


def same(a: object, b: object) -> bool:
    return a is b


def pool_for(guests: dict[str, ScriptedGuest], tmp_path: Path, retries: int = 1) -> CellPool:
    pool = CellPool(
        tmp_path, "tcg", True, retries=retries,
        make_guest=lambda cell, outdir: guests[cell.id],  # type: ignore[arg-type,return-value]
    )  # fmt: skip
    pool.record = lambda g: None  # type: ignore[method-assign]
    return pool


@pytest.fixture
def cells(two: Matrix) -> tuple[Cell, Cell]:
    a, b = two.cells[:2]
    return a, b


def test_first_use_boots_and_a_second_cell_stops_the_first(
    cells: tuple[Cell, Cell], tmp_path: Path
) -> None:
    a, b = cells
    ga: Any = ScriptedGuest()
    gb: Any = ScriptedGuest()
    pool = pool_for({a.id: ga, b.id: gb}, tmp_path)
    assert same(pool.get(a), ga) and pool.run_of(a).state is CellState.RUNNING
    assert same(pool.get(a), ga) and ga.calls == ["prepare", "start"]  # booted once
    pool.get(b)
    assert pool.run_of(a).state is CellState.STOPPED and ga.calls[-1] == "stop"
    assert pool.run_of(b).state is CellState.RUNNING


def test_boot_failure_is_the_kernels_and_never_retried(
    cells: tuple[Cell, Cell], tmp_path: Path
) -> None:
    a, _ = cells
    g: Any = ScriptedGuest(starts=[BootFailure("no userspace")])
    pool = pool_for({a.id: g}, tmp_path, retries=3)
    assert same(pool.get(a), g)
    run = pool.run_of(a)
    assert run.state is CellState.NO_BOOT and run.failed and str(run.failure) == "no userspace"
    assert g.calls.count("start") == 1
    pool.get(a)  # later tests see the same failure, no new boot
    assert g.calls.count("start") == 1


def test_build_failure_fails_the_cell(cells: tuple[Cell, Cell], tmp_path: Path) -> None:
    a, _ = cells
    g: Any = ScriptedGuest(prepare=BuildFailure("0002 does not apply"))
    pool = pool_for({a.id: g}, tmp_path)
    pool.get(a)
    assert pool.run_of(a).failed and "start" not in g.calls


def test_infra_errors_are_retried_then_kept(cells: tuple[Cell, Cell], tmp_path: Path) -> None:
    a, b = cells
    flaky = ScriptedGuest(starts=[VMError("QEMU start-up race")])
    broken = ScriptedGuest(starts=[InfraError("disk full")] * 3)
    pool = pool_for({a.id: flaky, b.id: broken}, tmp_path, retries=1)
    pool.get(a)
    assert pool.run_of(a).state is CellState.RUNNING
    assert flaky.record.attempts == ["boot attempt 1: QEMU start-up race"]
    with pytest.raises(InfraError):
        pool.get(b)
    assert pool.run_of(b).state is CellState.ERROR
    with pytest.raises(InfraError, match="disk full"):  # the same error, no new boot
        pool.get(b)
    assert broken.calls.count("start") == 2


def test_unavailable_host_device_skips(cells: tuple[Cell, Cell], tmp_path: Path) -> None:
    a, _ = cells
    pool = pool_for(
        {a.id: ScriptedGuest(prepare=HostDeviceUnavailable("no 0000:01:00.0"))}, tmp_path
    )
    for _ in range(2):
        with pytest.raises(HostDeviceUnavailable, match=r"01:00\.0"):
            pool.get(a)
    assert pool.run_of(a).state is CellState.UNAVAILABLE


def test_death_recovery_and_poweroff(cells: tuple[Cell, Cell], tmp_path: Path) -> None:
    a, _ = cells
    g: Any = ScriptedGuest()
    pool = pool_for({a.id: g}, tmp_path)
    pool.plan_snapshot(a)
    pool.get(a)
    assert g.calls[-1] == "snapshot"
    pool.begin_test(a)
    g.running = False  # the VM went away during the test, with no poweroff
    pool.end_test(a, "t::x[a]")
    run = pool.run_of(a)
    assert run.dead and "during t::x[a]" in run.death
    assert same(pool.get(a), g) and g.calls[-1] == "snapshot"  # a dead VM is not rebooted by get()
    assert pool.recover(a)
    assert run.state is CellState.RUNNING and run.recovered.startswith("it ended during")
    assert not run.dirty
    # A test that powers off on purpose: the next test boots the cell again.
    g.running = False
    g.record.poweroff_clean = True
    pool.end_test(a, "t::poweroff[a]")
    assert run.state is CellState.RUNNING
    pool.get(a)
    assert g.calls[-3:] == ["stop", "start", "snapshot"] and not run.recovered


def test_clean_on_a_dirty_guest_restores(cells: tuple[Cell, Cell], tmp_path: Path) -> None:
    a, _ = cells
    g: Any = ScriptedGuest()
    pool = pool_for({a.id: g}, tmp_path)
    pool.plan_snapshot(a)
    pool.get(a)
    pool.begin_test(a)
    assert pool.run_of(a).dirty
    assert pool.clean(a, "rerun of t") == "restored (0.50s)"
    assert not pool.run_of(a).dirty
