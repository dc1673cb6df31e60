"""reports/summary.md: the run in Markdown, for a CI job summary or a merge-request comment.

GitHub ($GITHUB_STEP_SUMMARY) and GitLab (MR notes) render GitHub-flavoured Markdown tables;
every list is capped so the summary stays far below their size limits (1 MiB / 1 MB).
"""

from __future__ import annotations

from pathlib import Path

from kmatrix.reports.attribution import RunAttribution
from kmatrix.reports.html import display_status
from kmatrix.results.charges import charge_note
from kmatrix.results.compare import Comparison, format_metric
from kmatrix.results.known_issues import KnownIssues
from kmatrix.results.runs import (
    Run,
    failure_message,
    layout,
    measured_nothing,
    outcome_note,
    result_name,
    sandbox_summary,
)
from kmatrix.results.schema import CellResult, Outcome

FILENAME = "summary.md"
MAX_ITEMS = 40
ICON = {
    "pass": "✅",
    "fail": "❌",
    "error": "⚠️",
    "skip": "⏭️",
    "xpass": "❗",
    "flaky": "🔁",
    "known": "🟡",
    "na": "➖",
    "none": "▫️",
}


def _cell_text(s: object, limit: int = 160) -> str:
    """Safe inside a table cell: one line, pipes escaped, capped."""
    text = " ".join(str(s).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|").replace("<", "&lt;")


def _capped(items: list[str]) -> list[str]:
    if len(items) > MAX_ITEMS:
        return [*items[:MAX_ITEMS], "", f"…and {len(items) - MAX_ITEMS} more (see index.html)"]
    return items


def _matrix(run: Run, known: KnownIssues) -> list[str]:
    kernels, cols = layout(run)
    by_pos = {(c.kernel, c.cpu, c.device): c for c in run.cells}
    head = "| kernel | " + " | ".join(f"{_cell_text(c)} / {_cell_text(d)}" for c, d in cols)
    lines = [head + " |", "|---" * (len(cols) + 1) + "|"]
    for k in kernels:
        row = [f"**{_cell_text(k)}**"]
        for cpu, dev in cols:
            cell = by_pos.get((k, cpu, dev))
            if cell is None:
                row.append("")
                continue
            status = display_status(cell, run, known)
            counts = cell.counts
            order = [
                "failed", "error", "xpassed", "flaky", "known", "passed", "skipped",
                "not_applicable", "xfailed",
            ]  # fmt: skip
            order += sorted(set(counts) - set(order))
            text = ", ".join(f"{counts[o]} {o}" for o in order if counts.get(o))
            row.append(f"{ICON.get(status, status)} {text}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def _failures(run: Run, known: KnownIssues) -> list[str]:
    cells = {c.id: c for c in run.cells}
    bad = [r for r in run.results if r.outcome.notable]
    if not bad:
        return []
    rows = []
    for r in bad:
        issue = known.for_failure(cells.get(r.cell) or CellResult.unknown(r.cell), r)
        msg = failure_message(r)
        if issue is not None:
            msg = f"known issue {issue.id}: {msg}"
        rows.append(
            f"| {_cell_text(r.cell)} | {_cell_text(result_name(r))} | "
            f"{_cell_text(r.outcome)} | {_cell_text(msg)} |"
        )
    head = [f"### Failures ({len(bad)})", "", "| cell | test | outcome | message |"]
    return [*head, "|---|---|---|---|", *_capped(rows)]


def _apart(run: Run) -> list[str]:
    """Flaky and known tests: neither passing nor failing the run, listed for a look."""
    rows = [
        f"| {_cell_text(r.cell)} | {_cell_text(result_name(r))} | "
        f"{_cell_text(r.outcome)} | {_cell_text(outcome_note(r))} |"
        for r in run.results
        if r.outcome in (Outcome.FLAKY, Outcome.KNOWN)
    ]
    if not rows:
        return []
    head = [f"### Flaky and known ({len(rows)})", "", "| cell | test | outcome | what |"]
    return [*head, "|---|---|---|---|", *_capped(rows)]


def _findings(run: Run, known: KnownIssues) -> list[str]:
    items: list[str] = []
    for c in run.cells:
        for f in c.findings:
            issue = known.for_finding(c, f)
            tag = f" — known issue `{issue.id}`" if issue else ""
            if charge_note(f):
                tag += f" — {_cell_text(charge_note(f))}"
            what = f"{_cell_text(f.kind)}: {_cell_text(f.title)}"
            items.append(f"- `{_cell_text(c.id)}` {what}{tag}")
    if not items:
        return []
    return ["### Kernel-log findings", "", *_capped(items)]


def _baseline(c: Comparison) -> list[str]:
    n = len(c.regressions)
    verdict = f"**REGRESSION: {n} regression(s)**" if n else "**No regression**"
    lines = ["### Against the baseline", "", verdict, ""]
    labels = {
        "new_failure": "🔴 new failure",
        "known": "🟡 known issue",
        "fixed": "🟢 fixed",
        "still_failing": "still failing",
        "new": "new test",
        "gone": "gone",
    }
    items = []
    for t in c.tests:
        if t.verdict in labels:
            extra = f" (known: `{t.known_issue}`)" if t.known_issue else ""
            items.append(
                f"- {labels[t.verdict]}: `{_cell_text(t.cell)}` {_cell_text(t.name)}"
                + (f" — {_cell_text(t.message)}" if t.message else "")
                + extra
            )
    for m in c.metrics:
        if m.verdict != "unchanged":
            items.append(f"- metric {m.verdict}: {_cell_text(format_metric(m), 300)}")
    lines += _capped(items) if items else ["No differences."]
    few = sum(1 for m in c.metrics if m.note)
    if few:
        lines += ["", f"{few} metric(s) had too few runs for a verdict."]
    lines += ["", f"<sub>{_cell_text(c.rule, 400)}</sub>"]
    return lines


def render(run: Run, known: KnownIssues | None = None, comparison: Comparison | None = None) -> str:
    known = known or KnownIssues()
    meta = run.meta
    totals: dict[str, int] = {}
    for r in run.results:
        totals[str(r.outcome)] = totals.get(str(r.outcome), 0) + 1
    statuses = [display_status(c, run, known) for c in run.cells]
    worst = next((s for s in ("fail", "error", "xpass", "flaky") if s in statuses), "pass")
    nothing = measured_nothing(run)
    title = (
        f"## {ICON['error'] if nothing else ICON.get(worst, '')} kmatrix: "
        f"{meta.matrix_name or 'run'} — {len(run.cells)} cells, {len(run.results)} tests"
    )
    facts = [
        ", ".join(f"{n} {o}" for o, n in sorted(totals.items())),
        f"started {meta.started or '?'}",
        f"QEMU {meta.qemu or '?'}",
        "accel " + (", ".join(meta.accelerators) or "?"),
    ]
    if sandbox := sandbox_summary(run):
        facts.append(f"QEMU sandbox {sandbox}")
    lines = [title, "", " · ".join(facts), ""]
    if meta.interrupted:
        lines += ["> **This run was interrupted**: cells not listed did not run.", ""]
    if nothing:
        lines += [
            "> **No test measured anything** (every test was skipped or not applicable): "
            "this run proves nothing.",
            "",
        ]
    lines += _matrix(run, known)
    for part in (
        _baseline(comparison) if comparison is not None else [],
        RunAttribution(run).markdown(_cell_text, _capped),
        _failures(run, known),
        _apart(run),
        _findings(run, known),
    ):
        if part:
            lines += ["", *part]
    lines += ["", "Full report: `index.html` (open offline); JUnit: `junit-cells.xml`."]
    return "\n".join(lines) + "\n"


def write(
    run: Run, out: Path, known: KnownIssues | None = None, comparison: Comparison | None = None
) -> Path:
    path = out / FILENAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(run, known, comparison), encoding="utf-8")
    tmp.replace(path)
    return path
