"""Attribution: is a red (cell, test) of a patched kernel the series' doing, or was it there
before?

A kernel with a `baseline:` runs beside its baseline twin (the same build without, or with
part of, its series) on the same cells in the same run. Each (cell, test) of the patched
kernel is then (schema.Verdict):

* **series** — caused by the series: fails patched, passes on the baseline (or the kernel
  does not build / boot with the series while the baseline does);
* **pre-existing** — fails on both (also: neither builds, or neither boots);
* **fixed** — fixed by the series: passes patched, fails on the baseline;
* **flaky** — the samples of one side disagree (a flaky outcome, or repeated runs that
  both pass and fail), so neither verdict can be trusted;
* **pass** — passes on both (or passes patched while the baseline gave no verdict);
* **undetermined** — fails patched, but the baseline gave no verdict: it did not build,
  did not boot, errored (host or harness), skipped the test, or did not run it. A baseline
  that fails to build or boot is reported as such, never turned into a verdict on the patch.

Only results.json is read (cells carry `baseline_cell` / `baseline_of` and their boot
record's `failure`), so a report can be regenerated, and runs merged, at any time.

It is computed where results.json is produced — the run's collector and `kmatrix merge`
(over the merged document: a baseline cell may come from another shard) — and stored there
(`attach`). Every reader reads the stored attribution (`stored`); a file written before
kmatrix stored it gets it computed once, when it is loaded (`with_attribution`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from kmatrix.results.failures import failure_message
from kmatrix.results.schema import (
    CellAttribution,
    CellResult,
    Outcome,
    RunDocument,
    TestAttribution,
    TestResult,
    Verdict,
)

SERIES, UNDETERMINED, PRE_EXISTING = Verdict.SERIES, Verdict.UNDETERMINED, Verdict.PRE_EXISTING
FLAKY, FIXED, PASS = Verdict.FLAKY, Verdict.FIXED, Verdict.PASS
VERDICTS = tuple(Verdict)  # most telling first
# What a test outcome says about the kernel's behaviour (by its name, so that outcomes other
# kmatrix versions add, such as "flaky" or "known", read right).
_BEHAVIOUR = {
    "failed": "fail",
    "xfailed": "fail",  # failed, as declared
    "known": "fail",  # failed; every finding a known issue
    "passed": "pass",
    "xpassed": "pass",
    "flaky": "flaky",
    "error": "error",  # the host or the harness: says nothing about the kernel
}
RED = frozenset({Outcome.FAILED, Outcome.ERROR})  # the outcomes that make pytest's status 1
STAGES = {"build": "did not build", "boot": "did not boot"}


class Results(Protocol):
    """What attribution reads of a run: a runs.Run, or the RunDocument about to be written."""

    @property
    def cells(self) -> list[CellResult]: ...

    @property
    def results(self) -> list[TestResult]: ...


def behaviour(outcome: str) -> str:
    """fail | pass | flaky | error | skip (skipped, not applicable, anything else)."""
    return _BEHAVIOUR.get(str(outcome), "skip")


def test_key(rec: TestResult) -> str:
    """The node id with its cell id taken out: equal for a test and its baseline twin."""
    return rec.nodeid.replace(rec.cell, "{cell}")


@dataclass
class Attribution:
    """One attributed (cell, test), with what it was decided from."""

    cell: str
    nodeid: str
    verdict: Verdict
    reason: str
    baseline_cell: str
    baseline_nodeid: str = ""
    patched: list[str] = field(default_factory=list)  # outcomes, one per run
    baseline: list[str] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=dict)  # [patched, baseline]
    stage: str = ""  # "build" / "boot": the patched kernel itself failed there

    @property
    def label(self) -> str:
        return self.verdict.label

    def record(self) -> TestAttribution:
        last = self.baseline[-1] if self.baseline else None
        return TestAttribution(
            verdict=self.verdict,
            reason=self.reason,
            baseline_nodeid=self.baseline_nodeid,
            baseline_outcome=Outcome.named(last) if last in {str(o) for o in Outcome} else None,
            metrics=self.metrics,
        )


def _stage(cell: CellResult | None) -> str:
    failure = cell.boot.failure if cell is not None else ""
    return failure if failure in STAGES else ""


def _mixed(behaviours: list[str]) -> bool:
    return "flaky" in behaviours or {"fail", "pass"} <= set(behaviours)


def _first(behaviours: list[str]) -> str:
    """One behaviour for a side whose samples agree (errors and skips lose to verdicts)."""
    for b in ("fail", "pass", "error", "skip"):
        if b in behaviours:
            return b
    return "skip"


def decide(
    patched: list[str],
    baseline: list[str] | None,
    patched_stage: str = "",
    baseline_stage: str = "",
    baseline_ran: bool = True,
    baseline_reason: str = "",
) -> tuple[Verdict, str] | None:
    """(verdict, reason) of one (cell, test) from the outcomes of each side (one per run);
    None when the patched test has no verdict to attribute (skipped on every run)."""
    pb = [behaviour(o) for o in patched]
    if not pb or all(b == "skip" for b in pb):
        return None
    if _mixed(pb):
        return FLAKY, "the patched kernel both failed and passed it"
    p = _first(pb)
    if p == "error":
        return UNDETERMINED, "it errored on the patched kernel (host or harness, not the kernel)"
    if not baseline_ran:
        why = baseline_reason or "the baseline cell did not run"
        return (PASS, why) if p == "pass" else (UNDETERMINED, why)
    if patched_stage and not baseline_stage:
        # The kernel itself fails (every test of the cell with it), the baseline's does not.
        return SERIES, f"it does not {patched_stage} with the series; the baseline {patched_stage}s"
    if baseline_stage:
        what = f"the baseline {STAGES[baseline_stage]}"
        if p == "pass":
            return PASS, f"{what}; no comparison"
        if patched_stage == baseline_stage:
            return PRE_EXISTING, f"{what} either"
        return UNDETERMINED, f"{what}, so it cannot tell"
    bb = [behaviour(o) for o in baseline or []]
    if not bb:
        why = "the baseline did not run this test"
        return (PASS, why) if p == "pass" else (UNDETERMINED, why)
    if _mixed(bb):
        return FLAKY, "the baseline both failed and passed it"
    b = _first(bb)
    if b in ("error", "skip"):
        why = "it errored on the baseline" if b == "error" else "the baseline skipped it"
        why += f" ({baseline_reason})" if baseline_reason else ""
        return (PASS, why) if p == "pass" else (UNDETERMINED, why)
    if p == "fail":
        if b == "fail":
            return PRE_EXISTING, "it fails on the baseline too"
        return SERIES, "it passes on the baseline"
    if b == "fail":
        return FIXED, "it fails on the baseline"
    return PASS, "it passes on both"


def _cells(runs: Sequence[Results]) -> dict[str, CellResult]:
    out: dict[str, CellResult] = {}
    for run in runs:
        for c in run.cells:
            out[c.id] = c  # the latest run's entry
    return out


def attribute(runs: Sequence[Results]) -> dict[tuple[str, str], Attribution]:
    """Every (patched cell, node id) of the runs with a baseline twin, attributed."""
    cells = _cells(runs)
    samples: dict[tuple[str, str], list[TestResult]] = {}
    for run in runs:
        for r in run.results:
            samples.setdefault((r.cell, test_key(r)), []).append(r)
    out: dict[tuple[str, str], Attribution] = {}
    for (cell_id, key), recs in samples.items():
        entry = cells.get(cell_id)
        twin = entry.baseline_cell if entry is not None else ""
        if not twin:
            continue
        twin_entry = cells.get(twin)
        base_recs = samples.get((twin, key), [])
        last = recs[-1]
        reason = ""
        if base_recs and behaviour(base_recs[-1].outcome) in ("skip", "error"):
            reason = failure_message(base_recs[-1])[:200]
        verdict = decide(
            [str(r.outcome) for r in recs],
            [str(r.outcome) for r in base_recs],
            patched_stage=_stage(entry),
            baseline_stage=_stage(twin_entry),
            baseline_ran=twin_entry is not None,
            baseline_reason=reason if twin_entry is not None else f"{twin} did not run",
        )
        if verdict is None:
            continue
        bmetrics = base_recs[-1].metrics if base_recs else {}
        metrics: dict[str, list[float | None]] = {
            name: [v, bmetrics.get(name)] for name, v in last.metrics.items()
        }
        out[(cell_id, last.nodeid)] = Attribution(
            cell=cell_id,
            nodeid=last.nodeid,
            verdict=verdict[0],
            reason=verdict[1],
            baseline_cell=twin,
            baseline_nodeid=base_recs[-1].nodeid if base_recs else "",
            patched=[str(r.outcome) for r in recs],
            baseline=[str(r.outcome) for r in base_recs],
            metrics=metrics,
            stage=_stage(entry),
        )
    return out


def cell_verdicts(
    runs: Sequence[Results], found: dict[tuple[str, str], Attribution] | None = None
) -> dict[str, CellAttribution]:
    """Each patched cell's verdict (its most telling test's), with counts per verdict."""
    found = attribute(runs) if found is None else found
    cells = _cells(runs)
    out: dict[str, CellAttribution] = {}
    for cid, entry in cells.items():
        if not entry.baseline_cell:
            continue
        mine = [a for a in found.values() if a.cell == cid]
        counts = {str(v): n for v in VERDICTS if (n := sum(a.verdict is v for a in mine))}
        verdict = next((v for v in VERDICTS if str(v) in counts), PASS)
        twin = cells.get(entry.baseline_cell)
        if twin is None:
            status = "not run"
        elif _stage(twin):
            status = STAGES[_stage(twin)]
        else:
            status = str(twin.status)
        out[cid] = CellAttribution(verdict=verdict, counts=counts, baseline_status=status)
    return out


def attach(doc: RunDocument) -> RunDocument:
    """A new document with its attribution computed from its results and written in: on
    each result of a patched cell and on the cell (baseline cells are the reference and
    carry none). doc and its records are left as they were."""
    found = attribute([doc])
    per_cell = cell_verdicts([doc], found)
    results = []
    for r in doc.results:
        a = found.get((r.cell, r.nodeid))
        rec = a.record() if a is not None else None
        # A record whose attribution is already right is shared, not copied: the collector
        # attaches on every result it writes, and most records are not of patched cells.
        results.append(r if r.attribution == rec else dataclasses.replace(r, attribution=rec))
    cells = [dataclasses.replace(c, attribution=per_cell.get(c.id)) for c in doc.cells]
    return dataclasses.replace(doc, cells=cells, results=results)


def missing(doc: Results) -> bool:
    """Whether doc was written before kmatrix stored attribution (schema /1, or an early /2):
    it has a patched cell without one (attach gives every patched cell one)."""
    return any(c.baseline_cell and c.attribution is None for c in doc.cells)


def with_attribution(doc: RunDocument) -> RunDocument:
    """doc as read: its stored attribution, or (written before kmatrix stored it) computed."""
    return attach(doc) if missing(doc) else doc


def stored(run: Results) -> dict[tuple[str, str], Attribution]:
    """The attribution a run's document carries, per (patched cell, node id): what every
    report shows. Never recomputed here, so a report shows what results.json says even when
    the rules have changed since (or the file was edited, or merged)."""
    cells = {c.id: c for c in run.cells}
    out: dict[tuple[str, str], Attribution] = {}
    for r in run.results:
        a = r.attribution
        if a is None:
            continue
        entry = cells.get(r.cell)
        base = str(a.baseline_outcome) if a.baseline_outcome is not None else ""
        out[(r.cell, r.nodeid)] = Attribution(
            cell=r.cell,
            nodeid=r.nodeid,
            verdict=a.verdict,
            reason=a.reason,
            baseline_cell=entry.baseline_cell if entry is not None else "",
            baseline_nodeid=a.baseline_nodeid,
            patched=[str(r.outcome)],  # a document holds one sample of each test
            baseline=[base] if base else [],
            metrics=a.metrics,
            stage=_stage(entry),
        )
    return out


def gating(doc: Results) -> list[TestResult]:
    """The red results that fail a run gated on the series (`--kmatrix-gate series`): red
    results of kernels without a baseline, and red results of patched kernels that are
    caused by the series or undetermined. Baseline cells never gate; pre-existing and
    flaky failures do not.

    It reads the attribution stored in doc (the collector's document, attached just
    before), not a fresh computation: the exit status then follows the very verdicts the
    run's results.json and reports show, whatever may change in how they are computed."""
    cells = {c.id: c for c in doc.cells}
    out = []
    for r in doc.results:
        if r.outcome not in RED:
            continue
        entry = cells.get(r.cell)
        if entry is not None and entry.baseline_of:
            continue
        a = r.attribution
        patched = entry is not None and bool(entry.baseline_cell)
        if patched and a is not None and a.verdict not in (SERIES, UNDETERMINED):
            continue
        out.append(r)
    return out
