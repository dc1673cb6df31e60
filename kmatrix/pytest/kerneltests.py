"""The kernel's own tests as pytest items: every kselftest case and KUnit case of a cell is a
test of its own, `kselftest/cgroup/test_cpu/test_cpucg_stats[cell]`, that -k, -m
kselftest / -m kunit, expect rules, JUnit, results.json and the reports treat like any other.

Items are made at collection from what is known before any boot (a testcase module holds
`kselftest = KernelTests("kselftest")` and `kunit = KernelTests("kunit")`; see
testcases/test_kselftest.py):

* kselftest: for each target of the cell's `suites.kselftest`, its programs (the built
  install's kselftest-list.txt, else the source's Makefile), and under each program the
  cases an earlier run of the same build printed (kmatrix.results.cases.CaseIndex);
* KUnit: for a kernel that runs KUnit at boot (`CONFIG_KUNIT=y` in its config or its
  build's fragments, or `suites.kunit` in the matrix), a `kunit` item for the whole run and
  the suites, cases and parameters an earlier boot printed.

Results are filled in when the cell runs: the first selected item of a kselftest target
runs the target's selected programs in the guest (one call of kselftest's runner); the
first KUnit item reads the boot's KTAP from the kernel log; every item of the unit then
reports its own part (kmatrix.results.cases.verdict). Before the boot, each target's
`config` file is checked against the kernel's config: a target that needs options the
kernel lacks is not applicable, naming them, and is neither built nor run.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

from kmatrix.config.specs import Cell, KselftestTarget
from kmatrix.errors import BuildFailure, KmatrixError
from kmatrix.guest.guest import Guest
from kmatrix.guest.kmsg import kernel_log
from kmatrix.kernels.artifact import KernelArtifact, resolve
from kmatrix.kernels.kconfig import parse_config
from kmatrix.pytest import applicability
from kmatrix.pytest.outcomes import BuildFailed, NoBootFailed
from kmatrix.pytest.stash import MATRIX_KEY, pool_of
from kmatrix.results import ktap
from kmatrix.results.cases import (
    FAILED,
    PASSED,
    SKIPPED,
    XFAILED,
    CaseIndex,
    Path_,
    Unit,
    case_id,
    item_paths,
    running_chain,
    sanitized_tree,
    verdict,
)

if TYPE_CHECKING:
    from kmatrix.build.kselftest import SelftestSource
    from kmatrix.guest import kselftest as ksft
    from kmatrix.results.logparse import Finding

# The builder, the patch reader, kselftest's build code and the log parser load when first
# used: a run without kernel tests (or build: kernels) does not pay for them before its
# first boot (tests/test_light_start.py).

KSELFTEST, KUNIT = "kselftest", "kunit"
UnitKey = tuple[str, str, str]  # (cell id, suite, target or "")


def not_applicable(reason: str) -> NoReturn:
    """A test that cannot apply to this cell: the not-applicable outcome, saying why."""
    applicability.not_applicable(reason)


class KernelTests:
    """Put in a testcase module (`kselftest = KernelTests("kselftest")`): the module
    collects the matrix's kselftest (or KUnit) items there."""

    def __init__(self, suite: str) -> None:
        if suite not in (KSELFTEST, KUNIT):
            raise ValueError(f"suite must be {KSELFTEST} or {KUNIT}, not {suite!r}")
        self.suite = suite
        # Where it is defined: the tests' location in reports (0-based, as pytest counts).
        caller = inspect.currentframe()
        self.lineno = caller.f_back.f_lineno - 1 if caller and caller.f_back else 0


@dataclass
class _UnitRun:
    unit: Unit
    seconds: float = 0.0
    findings: list[tuple[Path_ | None, Finding]] = field(default_factory=list)
    ran_by: str = ""  # node id of the item whose run it was
    reported: set[str] = field(default_factory=set)  # node ids that took their verdict


@dataclass
class _State:
    """Per process: what collection found, what ran."""

    index: CaseIndex = field(default_factory=CaseIndex)
    index_keys: dict[UnitKey, str] = field(default_factory=dict)
    programs: dict[UnitKey, list[str]] = field(default_factory=dict)  # kselftest targets
    targets: dict[UnitKey, KselftestTarget] = field(default_factory=dict)
    selected: dict[UnitKey, set[Path_]] = field(default_factory=dict)
    prepared: dict[str, ksft.Prepared] = field(default_factory=dict)  # cell id
    missing: dict[UnitKey, list[str]] = field(default_factory=dict)  # target prerequisites
    runs: dict[UnitKey, _UnitRun] = field(default_factory=dict)
    kernels: dict[str, KernelArtifact | None] = field(default_factory=dict)  # cell id


STATE_KEY = pytest.StashKey[_State]()


def state_of(config: pytest.Config) -> _State:
    if STATE_KEY not in config.stash:
        config.stash[STATE_KEY] = _State()
    return config.stash[STATE_KEY]


class KernelTestItem(pytest.Item):
    """One kselftest or KUnit test of one cell."""

    def __init__(
        self,
        *,
        cell: Cell,
        suite: str,
        target: str,
        path: Path_,
        testname: str,
        lineno: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.lineno = lineno
        self.cell = cell
        self.suite = suite
        self.target = target
        self.unit_path = path
        self.originalname = testname  # what expect rules' `test:` globs match
        self.kmatrix_cell = cell  # what kmatrix.pytest.stash.cell_of reads
        # The console tail goes with a failure unless the unit ran to its end (then the
        # test's own output says it all; see kmatrix.pytest.outcomes).
        self.kmatrix_console_tail = True
        # It charges kernel reports to the case that was running (the log guard leaves them).
        self.kmatrix_attributes_reports = True
        self.add_marker(suite)

    @property
    def unit_key(self) -> UnitKey:
        return (self.cell.id, self.suite, self.target)

    @property
    def kmatrix_offline(self) -> bool:
        """Its unit already ran: the result is in hand, the guest is not needed."""
        return self.unit_key in state_of(self.config).runs

    def reportinfo(self) -> tuple[Path, int | None, str]:
        # pytest shows a test's domain with its dots as '::' (it takes it for a qualified
        # Python name); a domain that is not the node id's tail is shown as the node id.
        return self.path, self.lineno, f"{self.name} "

    def runtest(self) -> None:
        state = state_of(self.config)
        pool = pool_of(self.config)
        run = state.runs.get(self.unit_key)
        # Run again (a rerun of this test, e.g. on a clean guest): its own program only.
        again = run is not None and self.nodeid in run.reported
        if run is None or again:
            cell_run = pool.run_of(self.cell)
            failure = cell_run.failure if cell_run.failed else None
            if failure is not None:
                run = self._after_failed_boot(failure)
            else:
                run = self._run(pool.get(self.cell), self.unit_path[:1] if again else ())
            state.runs[self.unit_key] = run
        assert run is not None
        run.reported.add(self.nodeid)
        selected = state.selected.get(self.unit_key, {self.unit_path})
        v = verdict(run.unit, self.unit_path, selected)
        self.kmatrix_console_tail = run.unit.ended is not None
        if run.ran_by == self.nodeid and run.seconds:
            self.user_properties.append((f"{self.suite}.unit_seconds", f"{run.seconds:.2f}"))
        prepared = state.prepared.get(self.cell.id)
        if self.suite == KSELFTEST and prepared is not None and prepared.source is not None:
            self.user_properties.append(("kselftest.source", prepared.source.source))
            if prepared.note:
                self.user_properties.append(("kselftest.source_note", prepared.note))
        if v.directive:
            self.user_properties.append(("ktap.directive", v.directive))
        if v.note:
            self.user_properties.append(("ktap.note", v.note))
        found = [f for p, f in run.findings if _owner(p, selected) == self.unit_path]
        message = v.message
        outcome = v.outcome
        if found and outcome in (PASSED, XFAILED, SKIPPED):
            outcome = FAILED
            message = "the kernel reported while this test ran: " + "; ".join(
                f"{f.kind}: {f.title}" for f in found
            )
        if found:
            message += "\n\n" + "\n\n".join(f.excerpt for f in found)
        if outcome == PASSED:
            return
        if outcome == SKIPPED:
            # Reported at the test, not at this line (as pytest does for skip markers).
            raise pytest.skip.Exception(message, _use_item_location=True)
        if outcome == XFAILED:
            pytest.xfail(message)
        log = f"\n\n--- {self.name.split('[')[0]} printed ---\n{v.log}" if v.log.strip() else ""
        pytest.fail(message + log, pytrace=False)

    def _after_failed_boot(self, failure: BaseException) -> _UnitRun:
        """The cell did not build or boot. KUnit runs during the boot: if the console has
        its output (matrix `suites.kunit` raises the console log level), the case that was
        running fails with the boot failure and the others keep their results."""
        if isinstance(failure, BuildFailure):
            raise BuildFailed(str(failure), pytrace=False)
        expected = self.cell.expected(self.originalname)
        if self.suite == KUNIT and (expected is None or expected.outcome != "no-boot"):
            pool = pool_of(self.config)
            g = pool.guest_of(self.cell)
            log = g.console_log if g is not None else pool.outdir(self.cell) / "console.log"
            tree = ktap.kernel_log_ktap(_read(log))
            if tree.subtests:
                why = str(failure).splitlines()[0]
                known = self._known()
                return _UnitRun(Unit(sanitized_tree(tree), known, ended=why), ran_by=self.nodeid)
        raise NoBootFailed(str(failure), pytrace=False)

    def _known(self) -> dict[Path_, list[str]]:
        state = state_of(self.config)
        key = state.index_keys.get(self.unit_key)
        known = state.index.known(key) if key else {}
        if self.suite == KSELFTEST:
            known[()] = list(state.programs.get(self.unit_key, []))
        return known

    def _run(self, g: Guest, only: Path_ = ()) -> _UnitRun:
        if self.suite == KUNIT:
            return self._read_kunit(g)
        return self._run_kselftest(g, only)

    def _read_kunit(self, g: Guest) -> _UnitRun:
        assert g.session is not None
        text = kernel_log(g.session)
        tree = ktap.kernel_log_ktap(text)
        if not tree.subtests:
            console = ktap.kernel_log_ktap(_read(g.console_log))
            tree, text = (console, _read(g.console_log)) if console.subtests else (tree, text)
        unit = Unit(sanitized_tree(tree), self._known())
        if not tree.subtests:
            unit.error = (
                "the kernel printed no KUnit results (kunit.enable=0? a filter that matches "
                "no suite? suites built as modules run when loaded, not at boot)"
            )
        else:
            key = state_of(self.config).index_keys.get(self.unit_key)
            if key:
                state_of(self.config).index.learn(key, tree)
        findings = _attribute_kunit(text, unit)
        return _UnitRun(unit, findings=findings, ran_by=self.nodeid)

    def _run_kselftest(self, g: Guest, only: Path_ = ()) -> _UnitRun:
        from kmatrix.guest import kselftest as ksft

        state = state_of(self.config)
        prepared = state.prepared.get(self.cell.id)
        failure = prepared.failures.get(self.target) if prepared is not None else None
        if failure is not None:
            return _UnitRun(Unit(ktap.KtapTest(""), error=str(failure)), ran_by=self.nodeid)
        if prepared is None or prepared.disk is None or self.target not in prepared.builds:
            why = "the cell booted without its kselftest disk (its targets were not prepared)"
            return _UnitRun(Unit(ktap.KtapTest(""), error=why), ran_by=self.nodeid)
        build = prepared.builds[self.target]
        order = state.programs.get(self.unit_key, list(build.programs))
        wanted = {p[0] for p in state.selected.get(self.unit_key, set()) if p}
        programs = [p for p in order if p in wanted] or list(order)
        if only:
            programs = [p for p in programs if p in only] or list(only)
        spec = self.cell.suites.kselftest
        target = state.targets[self.unit_key]
        assert spec is not None
        timeout = ksft.target_timeout(target, spec.timeout, build)
        override = None
        if target.timeout is not None or spec.timeout is not None:
            override = timeout
        self.user_properties.append(("kselftest.timeout", str(timeout)))
        known = self._known()
        res = ksft.run_target(g, prepared.disk, self.target, programs, timeout, override, known)
        key = state.index_keys.get(self.unit_key)
        if key and res.unit.error is None:
            for prog in res.unit.tree.subtests:
                if prog.ok is not None and prog.status != ktap.TIMEOUT and prog.subtests:
                    state.index.learn(key, res.unit.tree, scope=(prog.name,))
        if res.unit.ended is not None:
            chain = running_chain(res.unit)
            where = ksft.case_of(chain, self.target) if chain else f"kselftest/{self.target}"
            pool_of(self.config).run_of(self.cell).to_dead(f"{res.unit.ended} (during {where})")
        return _UnitRun(res.unit, res.seconds, res.findings, ran_by=self.nodeid)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        if isinstance(excinfo.value, KmatrixError):
            return f"{type(excinfo.value).__name__}: {excinfo.value}"
        return super().repr_failure(excinfo)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _owner(path: Path_ | None, selected: set[Path_]) -> Path_ | None:
    """The selected item that answers for a kernel report printed while path ran."""
    if path is not None:
        for i in range(len(path), -1, -1):
            if path[:i] in selected:
                return path[:i]
    return min(selected, key=lambda p: (len(p), p)) if selected else None


def _attribute_kunit(text: str, unit: Unit) -> list[tuple[Path_ | None, Finding]]:
    """Kernel reports in the boot log, each with the KUnit case that was printing then."""
    from kmatrix.results.logparse import parse_kernel_log

    lines = text.split("\n")
    out: list[tuple[Path_ | None, Finding]] = []
    for f in parse_kernel_log(text):
        before = ktap.kernel_log_ktap("\n".join(lines[: f.line - 1]))
        if not before.subtests and not before.version:
            continue  # before KUnit started: the boot's own business
        partial = Unit(sanitized_tree(before), unit.known, ended="a kernel report")
        out.append((running_chain(partial), f))
    return out


# --- collection -------------------------------------------------------------------------------


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makeitem(collector: pytest.Collector, name: str, obj: object) -> Any:
    if not isinstance(obj, KernelTests):
        return None
    matrix = collector.config.stash.get(MATRIX_KEY, None)
    if matrix is None:
        return []
    items: list[KernelTestItem] = []
    for cell in matrix.cells:
        if obj.suite == KSELFTEST and cell.suites.kselftest is not None:
            items += _kselftest_items(collector, cell)
        elif obj.suite == KUNIT and _kunit_expected(cell):
            items += _kunit_items(collector, cell)
    for it in items:
        it.lineno = obj.lineno
    return items


def _item(
    parent: pytest.Collector, cell: Cell, suite: str, target: str, path: Path_
) -> KernelTestItem:
    test = f"{suite}/{target}" if target else suite
    if path:
        test += "/" + case_id(path)
    return KernelTestItem.from_parent(
        parent, name=f"{test}[{cell.id}]", cell=cell, suite=suite, target=target, path=path,
        testname=test,
    )  # fmt: skip


_programs_memo: dict[tuple[SelftestSource, str], tuple[tuple[str, ...], bool] | None] = {}
_keys_memo: dict[tuple[SelftestSource, str], str | None] = {}


def _programs(sel: SelftestSource, target: str) -> tuple[tuple[str, ...], bool] | None:
    from kmatrix.build.kselftest import emit_programs, known_programs, source_root

    key = (sel, target)
    if key not in _programs_memo:
        try:
            found = known_programs(sel, target)
            if found is None and not sel.in_place:
                # The source is needed for the run anyway: fetch and unpack it now (once).
                root = source_root(sel, fetch=True)
                progs = emit_programs(root, target) if root is not None else ()
                found = (progs, False) if progs else None
        except KmatrixError:
            found = None
        _programs_memo[key] = found
    return _programs_memo[key]


def _index_key(sel: SelftestSource, target: str) -> str | None:
    from kmatrix.build.kselftest import index_key

    k = (sel, target)
    if k not in _keys_memo:
        try:
            _keys_memo[k] = index_key(sel, target)
        except KmatrixError:
            _keys_memo[k] = None
    return _keys_memo[k]


def _kselftest_items(parent: pytest.Collector, cell: Cell) -> list[KernelTestItem]:
    from kmatrix.guest import kselftest as ksft

    spec = cell.suites.kselftest
    assert spec is not None
    state = state_of(parent.config)
    sel, _ = ksft.selftest_source(cell)
    items: list[KernelTestItem] = []
    for target in spec.targets:
        ukey: UnitKey = (cell.id, KSELFTEST, target.name)
        state.targets[ukey] = target
        found = _programs(sel, target.name) if sel is not None else None
        if found is None:
            # Nothing known yet (no source): one item stands for the target until it ran.
            items.append(_item(parent, cell, KSELFTEST, target.name, ()))
            continue
        programs = ksft.select_programs(target, found[0])
        for glob in target.tests:
            if not any(fnmatch.fnmatchcase(p, glob) for p in found[0]):
                raise pytest.UsageError(
                    f"kmatrix: {target.origin}: suites.kselftest target {target.name}: "
                    f"{glob!r} matches no program (programs: {', '.join(found[0])})"
                )
        state.programs[ukey] = programs
        key = _index_key(sel, target.name) if sel is not None else None
        known = state.index.known(key) if key else {}
        if key:
            state.index_keys[ukey] = key
        for path in item_paths(known, [(p,) for p in programs]):
            items.append(_item(parent, cell, KSELFTEST, target.name, path))
    return items


def _kunit_key(cell: Cell) -> str | None:
    from kmatrix.build.builder import build_key, toolchain_id
    from kmatrix.build.patches import load_series
    from kmatrix.build.sources import cached_source

    k = cell.kernel
    filt = cell.suites.kunit.filter if cell.suites.kunit is not None else None
    ident: str | None = None
    try:
        if k.build is not None:
            src = cached_source(k.build.source, k.build.ref)
            series = load_series(k.build.patches) if k.build.patches is not None else None
            if src is not None:
                ident = build_key(k.build, src, series, toolchain_id(k.build.make_vars))
        elif k.source == "deb":
            ident = k.location
        else:
            ident = f"{k.source}:{k.location}"
    except KmatrixError:
        ident = None
    return None if ident is None else f"kunit:{ident}:{filt or ''}"


def _declared_config(cell: Cell) -> dict[str, str] | None:
    """The kernel's config if known without building or fetching anything."""
    from kmatrix.build.builder import cached_build, fragment_texts, parse_options
    from kmatrix.build.sources import cached_source

    k = cell.kernel
    if k.build is not None:
        try:
            built = cached_build(k.build)
            if built is not None:
                return parse_config(built.config_path.read_text(errors="replace"))
            src = cached_source(k.build.source, k.build.ref)
            tree = src.root if src is not None else Path("/nonexistent")
            out: dict[str, str] = {}
            for label, text in fragment_texts(k.build, tree):
                del label
                out.update(parse_options(text))
            return out
        except (KmatrixError, OSError):
            return None
    path = k.config
    if path is None and k.source == "tree":
        path = Path(k.location) / ".config"
    if path is not None and path.is_file():
        return parse_config(path.read_text(errors="replace"))
    return None


def _kunit_expected(cell: Cell) -> bool:
    spec = cell.suites.kunit
    if spec is not None:
        return spec.enabled
    config = _declared_config(cell)
    return config is not None and config.get("CONFIG_KUNIT") == "y"


def _kunit_items(parent: pytest.Collector, cell: Cell) -> list[KernelTestItem]:
    state = state_of(parent.config)
    ukey: UnitKey = (cell.id, KUNIT, "")
    key = _kunit_key(cell)
    known = state.index.known(key) if key else {}
    if key:
        state.index_keys[ukey] = key
    return [_item(parent, cell, KUNIT, "", p) for p in item_paths(known, [()])]


def pytest_collection_finish(session: pytest.Session) -> None:
    """What each unit's selected items are, and the kselftest disks of the cells that need one."""
    state = state_of(session.config)
    state.selected.clear()
    for it in session.items:
        if isinstance(it, KernelTestItem):
            state.selected.setdefault(it.unit_key, set()).add(it.unit_path)
    pool = pool_of(session.config)
    cells = {it.cell.id: it.cell for it in session.items if isinstance(it, KernelTestItem)}
    for cid, cell in cells.items():
        targets = [t for (c, s, t) in state.selected if c == cid and s == KSELFTEST]
        if targets:
            pool.disk_providers.setdefault(cid, []).append(_provider(session.config, cell, targets))


def _provider(config: pytest.Config, cell: Cell, targets: Sequence[str]) -> Any:
    def provide(g: Guest) -> Any:
        from kmatrix.guest import kselftest as ksft

        state = state_of(config)
        assert g.kernel is not None
        state.kernels[cell.id] = g.kernel
        runnable = [t for t in targets if not _missing(config, cell, t, g.kernel)]
        prepared = ksft.prepare(cell, runnable)
        if prepared.source is not None and cell.kernel.source == "deb":
            prepared.note = ksft.deb_version_note(prepared.source, g.kernel)
        state.prepared[cell.id] = prepared
        return prepared.disk

    return provide


def _missing(config: pytest.Config, cell: Cell, target: str, kernel: KernelArtifact) -> list[str]:
    """Options the target's config file asks for that the kernel lacks (memoized)."""
    from kmatrix.build.kselftest import missing_options, requirements, target_files
    from kmatrix.guest import kselftest as ksft

    state = state_of(config)
    ukey: UnitKey = (cell.id, KSELFTEST, target)
    if ukey not in state.missing:
        sel, _ = ksft.selftest_source(cell)
        where = target_files(sel, target) if sel is not None else None
        if where is None or not kernel.config_known:
            state.missing[ukey] = []
        else:
            state.missing[ukey] = missing_options(requirements(where / "config"), kernel.config)
    return state.missing[ukey]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before the cell boots: a kselftest target whose config the kernel does not meet is
    not applicable (and its items never need the guest); so is KUnit on a kernel without
    it. Registered after the kmatrix plugin, so this runs before its set-up (which boots
    the cell)."""
    if not isinstance(item, KernelTestItem) or item.kmatrix_offline:
        return
    if item.suite == KUNIT:
        kernel = _kernel_before_boot(item)
        if kernel is not None and kernel.config_known and kernel.option("KUNIT") != "y":
            not_applicable(
                f"kernel {item.cell.kernel.name} has no CONFIG_KUNIT=y: no KUnit suite runs "
                "at its boot"
            )
    if item.suite == KSELFTEST:
        kernel = _kernel_before_boot(item)
        if kernel is not None:
            missing = _missing(item.config, item.cell, item.target, kernel)
            if missing:
                not_applicable(
                    f"kselftest target {item.target} needs {', '.join(missing)}, which "
                    f"kernel {item.cell.kernel.name} does not have (its config file lists "
                    "what the target needs)"
                )


def _kernel_before_boot(item: KernelTestItem) -> KernelArtifact | None:
    state = state_of(item.config)
    if item.cell.id in state.kernels:
        return state.kernels[item.cell.id]
    pool = pool_of(item.config)
    g = pool.guest_of(item.cell)
    kernel = g.kernel if g is not None else None
    if kernel is None:
        try:
            kernel = resolve(item.cell.kernel, direct_boot=pool.direct_boot)
        except KmatrixError:
            kernel = None  # the boot reports it
    state.kernels[item.cell.id] = kernel
    return kernel


def pytest_report_collectionfinish(config: pytest.Config, items: Sequence[pytest.Item]) -> Any:
    del config
    n = sum(1 for it in items if isinstance(it, KernelTestItem))
    return f"kmatrix: {n} kselftest/KUnit tests" if n else None
