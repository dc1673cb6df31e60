"""Regression verdicts: one or more BASE runs against one or more NEW runs.

Tests: each (cell, test) is a *new failure* (failed or errored in a NEW run, in no BASE run),
*fixed* (the reverse), *still failing* (in both), *new* (only in NEW), *gone* (only in BASE)
or unchanged. With several runs a side, a test counts as failing on that side if it failed in
any of them (so a flaky test never hides a new failure) and is marked flaky when the runs
disagree. A new failure that a known issue explains is reported as *known* instead.

Metrics (the boot time of each cell and every ``metric.*`` a test recorded): the rule is an
exact two-sided Mann–Whitney U test over the per-run values of each side, with ties handled
exactly by permuting mid-ranks; a metric *regressed* (or *improved*) only when p < alpha
(0.05) AND the medians differ by at least min_change (5 %) in the worse (better) direction.
The exact test cannot reach p < 0.05 with fewer than 4 runs a side (3 + 5, or 2 + 8), so a
single run, or two, never turns a noise-sized change into a regression: repeat runs to get
verdicts. Lower is better unless the metric's name says otherwise (HIGHER_IS_BETTER).

Outcomes decided during a run: a test *flaky* in a NEW run (it failed, then passed on a
clean rerun) is counted neither as a new failure nor as fixed: its verdict is *flaky*; one
*known* in a NEW run (it failed only on kernel reports a known issue explains) is *known*.
Every test carries its flake rate: the share of the runs given (BASE and NEW) in which it
was flaky, so a test that flakes now and then shows up before it wastes anyone's time.

A regression — exit status 1 from ``kmatrix compare`` — is a new failure, a new test that
fails, or a regressed metric.
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from kmatrix.results.known_issues import KnownIssues
from kmatrix.results.runs import (
    Run,
    failure_message,
    is_failing,
    metric_label,
    metric_values,
    result_name,
)
from kmatrix.results.schema import CellResult, Outcome, TestResult

ALPHA = 0.05
MIN_CHANGE = 0.05
HIGHER_IS_BETTER = re.compile(
    r"(throughput|bandwidth|ops|iops|per_s(ec)?|_bps|score|rate|hz)$", re.IGNORECASE
)
RULE = (
    "metric verdicts: exact two-sided Mann-Whitney U over per-run values, "
    "p < {alpha:g} and median change >= {min_change:.0%}; lower is better unless the name "
    "ends in throughput/bandwidth/ops/iops/per_s/_bps/score/rate/hz"
)
# Above this many values the exact distribution costs too much; the normal approximation
# (with tie correction) is accurate there.
_EXACT_MAX = 30

TEXT_LIST_MAX = 20
TEST_VERDICTS = (
    "new_failure", "known", "flaky", "fixed", "still_failing", "new", "gone", "unchanged",
)  # fmt: skip
FLAKY = Outcome.FLAKY  # the outcome of a test that failed, then passed on a clean rerun
KNOWN = Outcome.KNOWN  # the outcome of a test that failed only on known kernel reports
METRIC_VERDICTS = ("regressed", "improved", "unchanged")


# --- statistics -----------------------------------------------------------------------------


def _midranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney_p(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided p-value of the Mann–Whitney U test (exact for small samples, ties included).

    The statistic is the rank sum of `a`; its null distribution is that of the sum of len(a)
    mid-ranks drawn without replacement from all mid-ranks, counted by dynamic programming
    (ranks doubled to stay integers).
    """
    m, n = len(a), len(b)
    if m == 0 or n == 0:
        return 1.0
    ranks = _midranks([*a, *b])
    doubled = [round(2 * r) for r in ranks]
    observed = sum(doubled[:m])
    mean2 = m * (m + n + 1)  # E[2W]
    if m + n > _EXACT_MAX:
        return _normal_p(ranks, m, n)
    # ways[k][s]: subsets of size k of the doubled ranks with sum s.
    total = sum(doubled)
    ways = [[0] * (total + 1) for _ in range(m + 1)]
    ways[0][0] = 1
    for r in doubled:
        for k in range(min(m, len(doubled)), 0, -1):
            row, prev = ways[k], ways[k - 1]
            for s in range(total, r - 1, -1):
                if prev[s - r]:
                    row[s] += prev[s - r]
    dist = ways[m]
    count = sum(dist)
    extreme = abs(observed - mean2)
    tail = sum(c for s, c in enumerate(dist) if c and abs(s - mean2) >= extreme)
    return min(1.0, tail / count)


def _normal_p(ranks: Sequence[float], m: int, n: int) -> float:
    w = sum(ranks[:m])
    mean = m * (m + n + 1) / 2
    counts: dict[float, int] = {}
    for r in ranks:
        counts[r] = counts.get(r, 0) + 1
    ties = sum(t**3 - t for t in counts.values())
    var = m * n / 12 * ((m + n + 1) - ties / ((m + n) * (m + n - 1)))
    if var <= 0:
        return 1.0
    z = (abs(w - mean) - 0.5) / math.sqrt(var)
    return min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def higher_is_better(name: str) -> bool:
    return HIGHER_IS_BETTER.search(name) is not None


# --- verdicts ------------------------------------------------------------------------------


@dataclass
class TestVerdict:
    cell: str
    nodeid: str
    name: str
    verdict: str  # one of TEST_VERDICTS
    base: list[Outcome]  # outcome per BASE run that had the test
    new: list[Outcome]  # outcome per NEW run that had the test
    message: str = ""
    known_issue: str = ""
    flaky: bool = False  # its runs disagree, or it was flaky in one of them
    flaky_runs: int = 0  # runs (BASE and NEW) in which its outcome was flaky

    @property
    def flake_rate(self) -> float:
        runs = len(self.base) + len(self.new)
        return self.flaky_runs / runs if runs else 0.0

    @property
    def regression(self) -> bool:
        return self.verdict == "new_failure" or (
            self.verdict == "new" and any(is_failing(o) for o in self.new) and not self.known_issue
        )


@dataclass
class MetricVerdict:
    cell: str
    nodeid: str
    name: str
    label: str
    verdict: str  # one of METRIC_VERDICTS
    base: list[float]
    new: list[float]
    base_median: float
    new_median: float
    change: float  # relative change of the median, NEW vs BASE
    p_value: float
    higher_is_better: bool
    note: str = ""

    @property
    def regression(self) -> bool:
        return self.verdict == "regressed"


@dataclass
class Comparison:
    base_runs: list[str]
    new_runs: list[str]
    tests: list[TestVerdict]
    metrics: list[MetricVerdict]
    rule: str
    alpha: float = ALPHA
    min_change: float = MIN_CHANGE
    known_issues: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[TestVerdict | MetricVerdict]:
        return [t for t in self.tests if t.regression] + [m for m in self.metrics if m.regression]

    def tests_by(self, verdict: str) -> list[TestVerdict]:
        return [t for t in self.tests if t.verdict == verdict]

    def metrics_by(self, verdict: str) -> list[MetricVerdict]:
        return [m for m in self.metrics if m.verdict == verdict]

    def counts(self) -> dict[str, int]:
        out = {v: len(self.tests_by(v)) for v in TEST_VERDICTS}
        out.update({f"metric_{v}": len(self.metrics_by(v)) for v in METRIC_VERDICTS})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": "kmatrix-compare/1",
            "base_runs": self.base_runs,
            "new_runs": self.new_runs,
            "rule": self.rule,
            "alpha": self.alpha,
            "min_change": self.min_change,
            "known_issues": self.known_issues,
            "regression": bool(self.regressions),
            "counts": self.counts(),
            "notes": self.notes,
            "tests": [
                {**asdict(t), "flake_rate": round(t.flake_rate, 4)}
                for t in self.tests
                if t.verdict != "unchanged" or t.flaky_runs
            ],
            "metrics": [asdict(m) for m in self.metrics],
        }


def _outcomes(runs: Sequence[Run]) -> dict[tuple[str, str], list[Outcome]]:
    out: dict[tuple[str, str], list[Outcome]] = {}
    for run in runs:
        for r in run.results:
            out.setdefault((r.cell, r.nodeid), []).append(r.outcome)
    return out


def _latest_record(runs: Sequence[Run], key: tuple[str, str]) -> TestResult | None:
    for run in reversed(runs):
        for r in run.results:
            if (r.cell, r.nodeid) == key:
                return r
    return None


def _latest_cell(runs: Sequence[Run], cell_id: str) -> CellResult:
    for run in reversed(runs):
        c = run.cell(cell_id)
        if c is not None:
            return c
    return CellResult.unknown(cell_id)


def compare_tests(
    base: Sequence[Run], new: Sequence[Run], known: KnownIssues | None = None
) -> list[TestVerdict]:
    known = known or KnownIssues()
    b, n = _outcomes(base), _outcomes(new)
    verdicts: list[TestVerdict] = []
    for key in list(dict.fromkeys([*n, *b])):
        bo, no = b.get(key, []), n.get(key, [])
        b_fail = any(is_failing(o) for o in bo)
        n_fail = any(is_failing(o) for o in no)
        if not bo:
            verdict = "new"
        elif not no:
            verdict = "gone"
        elif n_fail and b_fail:
            verdict = "still_failing"
        elif n_fail:
            verdict = "new_failure"
        elif FLAKY in no:
            verdict = "flaky"  # neither a new failure nor fixed
        elif KNOWN in no:
            verdict = "known"
        elif b_fail:
            verdict = "fixed"
        else:
            verdict = "unchanged"
        rec = _latest_record(new, key) if no else _latest_record(base, key)
        issue = None
        if n_fail:
            rec = next(
                (
                    r
                    for run in reversed(new)
                    for r in run.results
                    if (r.cell, r.nodeid) == key and r.outcome.failing
                ),
                rec,
            )
            if rec is not None:
                issue = known.for_failure(_latest_cell(new, key[0]), rec)
            if issue is not None and verdict == "new_failure":
                verdict = "known"
        # Every key comes from some run's results, so rec is always found.
        assert rec is not None
        verdicts.append(
            TestVerdict(
                cell=key[0],
                nodeid=key[1],
                name=result_name(rec),
                verdict=verdict,
                base=bo,
                new=no,
                message=failure_message(rec) if (n_fail or b_fail) else "",
                known_issue=issue.id if issue else _known_id(rec),
                flaky=len(set(map(is_failing, bo))) > 1
                or len(set(map(is_failing, no))) > 1
                or FLAKY in (*bo, *no),
                flaky_runs=[*bo, *no].count(FLAKY),
            )
        )
    return verdicts


def _known_id(rec: TestResult) -> str:
    """The known issues a run recorded for a test that ended as known ('' otherwise)."""
    if rec.outcome is not KNOWN:
        return ""
    raw = rec.properties.get("kmatrix.known", "")
    try:
        issues = json.loads(raw) if raw else []
    except ValueError:
        return ""
    return ", ".join(dict.fromkeys(str(i.get("id")) for i in issues if isinstance(i, dict)))


def compare_metrics(
    base: Sequence[Run],
    new: Sequence[Run],
    alpha: float = ALPHA,
    min_change: float = MIN_CHANGE,
) -> list[MetricVerdict]:
    bv: dict[tuple[str, str, str], list[float]] = {}
    nv: dict[tuple[str, str, str], list[float]] = {}
    for runs, into in ((base, bv), (new, nv)):
        for run in runs:
            for k, v in metric_values(run).items():
                into.setdefault(k, []).append(v)
    out: list[MetricVerdict] = []
    for key in [k for k in nv if k in bv]:
        b, n = bv[key], nv[key]
        bm, nm = statistics.median(b), statistics.median(n)
        change = (nm - bm) / abs(bm) if bm else (0.0 if nm == bm else math.inf)
        p = mann_whitney_p(b, n)
        better_up = higher_is_better(key[2])
        worse = change < 0 if better_up else change > 0
        verdict = "unchanged"
        note = ""
        if mann_whitney_p([0.0] * len(b), [1.0] * len(n)) >= alpha:
            # Even total separation could not be significant: say so rather than "unchanged".
            note = f"too few runs for a verdict ({len(b)} base, {len(n)} new)"
        elif p < alpha and abs(change) >= min_change:
            verdict = "regressed" if worse else "improved"
        out.append(
            MetricVerdict(
                cell=key[0],
                nodeid=key[1],
                name=key[2],
                label=metric_label(key),
                verdict=verdict,
                base=b,
                new=n,
                base_median=bm,
                new_median=nm,
                change=change,
                p_value=p,
                higher_is_better=better_up,
                note=note,
            )
        )
    return out


def compare_runs(
    base: Sequence[Run],
    new: Sequence[Run],
    known: KnownIssues | None = None,
    alpha: float = ALPHA,
    min_change: float = MIN_CHANGE,
) -> Comparison:
    notes = [f"NEW run was interrupted: {r.label}" for r in new if r.meta.interrupted]
    notes += [f"BASE run was interrupted: {r.label}" for r in base if r.meta.interrupted]
    return Comparison(
        base_runs=[str(r.path) for r in base],
        new_runs=[str(r.path) for r in new],
        tests=compare_tests(base, new, known),
        metrics=compare_metrics(base, new, alpha, min_change),
        rule=RULE.format(alpha=alpha, min_change=min_change),
        alpha=alpha,
        min_change=min_change,
        known_issues=str(known.path) if known and known.path else "",
        notes=notes,
    )


# --- text output ---------------------------------------------------------------------------

_TITLES = {
    "new_failure": "NEW FAILURES",
    "known": "known issues (failing, explained by a known issue)",
    "flaky": "flaky (failed, then passed on a clean rerun: neither a new failure nor fixed)",
    "fixed": "fixed",
    "still_failing": "still failing",
    "new": "new tests",
    "gone": "gone (in BASE, not in NEW)",
}


def format_metric(m: MetricVerdict) -> str:
    arrow = "higher" if m.higher_is_better else "lower"
    change = f"{m.change:+.1%}" if math.isfinite(m.change) else "n/a"
    return (
        f"{m.cell} {m.label}: {m.base_median:.4g} -> {m.new_median:.4g} ({change}, "
        f"p={m.p_value:.3g}, n={len(m.base)}/{len(m.new)}, {arrow} is better)"
    )


def render_text(c: Comparison) -> str:
    lines = [
        f"kmatrix compare: {len(c.base_runs)} BASE run(s) vs {len(c.new_runs)} NEW run(s)",
        *(f"  base: {p}" for p in c.base_runs),
        *(f"  new:  {p}" for p in c.new_runs),
        *(f"  note: {n}" for n in c.notes),
    ]
    for verdict, title in _TITLES.items():
        items = c.tests_by(verdict)
        if not items:
            continue
        lines.append(f"\n{title} ({len(items)}):")
        if verdict in ("new", "gone") and len(items) > TEXT_LIST_MAX:
            # Adding or removing a suite lists every test; the JSON has them all.
            lines.append(f"  ({len(items) - TEXT_LIST_MAX} more not shown; see --json)")
            items = items[:TEXT_LIST_MAX]
        for t in items:
            extra = f"  [known: {t.known_issue}]" if t.known_issue else ""
            extra += "  [flaky]" if t.flaky else ""
            outcome = "/".join(t.new or t.base)
            lines.append(f"  {t.cell}  {t.name}  ({outcome}){extra}")
            if t.message and verdict in ("new_failure", "known", "still_failing", "new"):
                lines.append(f"      {t.message}")
    flaky = sorted((t for t in c.tests if t.flaky_runs), key=lambda t: -t.flake_rate)
    if flaky:
        lines.append(f"\nflake rates ({len(flaky)} test(s) flaky in a run given):")
        for t in flaky[:TEXT_LIST_MAX]:
            runs = len(t.base) + len(t.new)
            lines.append(
                f"  {t.cell}  {t.name}  flaky in {t.flaky_runs} of {runs} run(s) "
                f"({t.flake_rate:.0%})"
            )
    for verdict in ("regressed", "improved"):
        ms = c.metrics_by(verdict)
        if ms:
            lines.append(f"\nmetrics {verdict} ({len(ms)}):")
            lines += [f"  {format_metric(m)}" for m in ms]
    few = [m for m in c.metrics if m.note]
    lines.append(
        f"\n{len(c.tests_by('unchanged'))} tests unchanged; "
        f"{len(c.metrics_by('unchanged'))} metrics unchanged"
        + (f" ({len(few)} with too few runs for a verdict)" if few else "")
    )
    lines.append(f"rule: {c.rule}")
    n = len(c.regressions)
    lines.append(f"verdict: {'REGRESSION' if n else 'no regression'} ({n} regression(s))")
    return "\n".join(lines) + "\n"


def series_view(run: Run, side: str) -> Run:
    """One side of a run's twins (kmatrix.results.attribution), for `compare --series`:
    "patched" keeps the cells that have a baseline; "baseline" keeps the baseline cells
    under their patched twins' ids, so that comparing the two views sets each patched
    (cell, test) and metric against its baseline with the existing statistics (repeat the
    run for metric verdicts)."""
    if side not in ("patched", "baseline"):
        raise ValueError(side)
    rename: dict[str, str] = {}
    cells = []
    for c in run.cells:
        if side == "patched" and c.baseline_cell:
            rename[c.id] = c.id
            cells.append(c)
        elif side == "baseline" and c.baseline_of:
            rename[c.id] = c.baseline_of
            cells.append(replace(c, id=c.baseline_of, kernel=c.baseline_of.split("/")[0]))
    results = [
        replace(r, cell=rename[r.cell], nodeid=r.nodeid.replace(r.cell, rename[r.cell]))
        for r in run.results
        if r.cell in rename
    ]
    return Run(run.path, replace(run.doc, cells=cells, results=results))
