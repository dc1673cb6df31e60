"""Attribution in the reports: badges, the HTML section and filter, the Markdown table and
the JUnit properties of cells that ran beside a baseline (kmatrix.results.attribution), as
the run's results.json stores it."""

from __future__ import annotations

import html
from collections.abc import Callable
from typing import Any

from kmatrix.results import attribution as attr
from kmatrix.results.runs import Run, failure_message, short_name
from kmatrix.results.schema import CellAttribution, CellResult, TestResult, Verdict

BADGE_CLASS = {
    Verdict.SERIES: "bad",
    Verdict.UNDETERMINED: "warn",
    Verdict.PRE_EXISTING: "warn",
    Verdict.FLAKY: "warn",
    Verdict.FIXED: "good",
    Verdict.PASS: "good",
}
MD_ICON = {
    Verdict.SERIES: "🔴",
    Verdict.UNDETERMINED: "❔",
    Verdict.PRE_EXISTING: "🟠",
    Verdict.FLAKY: "🟡",
    Verdict.FIXED: "🟢",
    Verdict.PASS: "✅",
}
RED_STATUSES = ("fail", "error", "xpass")


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {Verdict.named(v).label}" for v, n in counts.items())


class RunAttribution:
    """The attribution of one run as its results.json stores it, for every report (never
    recomputed here: kmatrix.results.runs.load_run computes it for a file that has none)."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.tests = attr.stored(run)
        self.cells: dict[str, CellAttribution] = {
            c.id: c.attribution for c in run.cells if c.attribution is not None and c.baseline_cell
        }
        self.entries: dict[str, CellResult] = {c.id: c for c in run.cells}

    def __bool__(self) -> bool:
        return bool(self.cells)

    def of(self, cell: str, nodeid: str) -> attr.Attribution | None:
        return self.tests.get((cell, nodeid))

    def _result(self, a: attr.Attribution) -> TestResult | None:
        return next((r for r in self.run.results_of(a.cell) if r.nodeid == a.nodeid), None)

    def red(self) -> list[attr.Attribution]:
        """The attributed tests worth a line: failing ones, and those the series fixed."""
        order = {v: i for i, v in enumerate(attr.VERDICTS)}
        found = [a for a in self.tests.values() if a.verdict is not Verdict.PASS]
        return sorted(found, key=lambda a: (order[a.verdict], a.cell, a.nodeid))

    def rows(self) -> list[tuple[attr.Attribution, str, str]]:
        """(attribution, test label, failure message) per line of a report: one line per
        test, except one per cell for a kernel that did not build or boot (all its tests
        fail alike)."""
        out: list[tuple[attr.Attribution, str, str]] = []
        counts: dict[tuple[str, Verdict], int] = {}
        for a in self.red():
            if a.stage:
                counts[(a.cell, a.verdict)] = counts.get((a.cell, a.verdict), 0) + 1
        seen: set[tuple[str, Verdict]] = set()
        for a in self.red():
            rec = self._result(a)
            message = failure_message(rec) if rec is not None else ""
            if a.stage:
                if (a.cell, a.verdict) in seen:
                    continue
                seen.add((a.cell, a.verdict))
                out.append((a, f"all {counts[(a.cell, a.verdict)]} tests ({a.stage})", message))
            else:
                out.append((a, short_name(a.nodeid, a.cell), message))
        return out

    # --- HTML -------------------------------------------------------------------------------

    def cell_attrs(self, cell_id: str) -> str:
        """Extra attributes of a matrix cell's <td>: what the filter keys on."""
        ca = self.cells.get(cell_id)
        if ca is not None:
            return f' data-attr="{_e(ca.verdict)}"'
        entry = self.entries.get(cell_id)
        if entry is not None and entry.baseline_of:
            return ' data-attr="baseline"'
        return ""

    def badge(self, cell_id: str, status: str) -> str:
        """The red patched cell's verdict (or a baseline cell's role) as a badge."""
        ca = self.cells.get(cell_id)
        entry = self.entries.get(cell_id)
        if entry is None:
            return ""
        if ca is None:
            of = entry.baseline_of
            return f'<span class="badge">baseline of {_e(of)}</span>' if of else ""
        if status not in RED_STATUSES and ca.verdict is not Verdict.FIXED:
            return ""
        title = (
            f"against {entry.baseline_cell} ({entry.baseline_label}; {ca.baseline_status}): "
            + _counts(ca.counts)
        )
        return (
            f'<span class="badge attr {BADGE_CLASS[ca.verdict]}" title="{_e(title)}">'
            f"{_e(ca.verdict.label)}</span>"
        )

    def row_note(self, kernel: str) -> str:
        """Under a kernel's name in the matrix: what it is compared with."""
        for c in self.entries.values():
            if c.kernel != kernel:
                continue
            if c.baseline_of:
                return f"baseline of {c.baseline_of.split('/')[0]}: {c.baseline_label}"
            if c.baseline_cell:
                return f"vs. its baseline ({c.baseline_label})"
        return ""

    def filter_html(self) -> str:
        if not self:
            return ""
        # Cells filter by their own verdict, the attribution table's rows by their test's.
        present = {ca.verdict for ca in self.cells.values()} | {a.verdict for a in self.red()}
        buttons = ['<button type="button" data-filter="" class="on">all cells</button>']
        buttons += [
            f'<button type="button" data-filter="{_e(v)}">{_e(v.label)}</button>'
            for v in attr.VERDICTS
            if v in present
        ]
        buttons.append('<button type="button" data-filter="baseline">baseline cells</button>')
        return (
            '<p class="attr-filter" id="attr-filter"><span class="small">attribution: </span>'
            f"{''.join(buttons)}</p>"
        )

    def section_html(self) -> str:
        if not self:
            return ""
        rows = [
            f'<tr data-attr="{_e(a.verdict)}"><td><span class="badge attr '
            f'{BADGE_CLASS[a.verdict]}">{_e(a.label)}</span></td>'
            f"<td>{_e(a.cell)}</td><td>{_e(test)}</td>"
            f"<td>{_e('/'.join(a.patched))}</td><td>{_e('/'.join(a.baseline) or '—')}</td>"
            f"<td>{_e(a.reason)}</td><td>{_e(message)}</td></tr>"
            for a, test, message in self.rows()
        ]
        cells = "".join(
            f"<li><b>{_e(cid)}</b>: {_e(c.verdict.label)} — against "
            f"{_e(self.entries[cid].baseline_cell)} ({_e(self.entries[cid].baseline_label)}, "
            f"{_e(c.baseline_status)})</li>"
            for cid, c in self.cells.items()
        )
        table = (
            '<table class="plain" id="attribution-tests"><tr><th>verdict</th><th>cell</th>'
            "<th>test</th><th>patched</th><th>baseline</th><th>why</th><th>message</th></tr>"
            f"{''.join(rows)}</table>"
            if rows
            else "<p>Every test of every patched cell passes, as on its baseline.</p>"
        )
        return (
            '<section id="attribution"><h2>Attribution against the baselines</h2>'
            f"<ul>{cells}</ul>{table}</section>"
        )

    def test_data(self, cell_id: str, nodeid: str) -> dict[str, Any] | None:
        """The attribution of one test for the page's script."""
        a = self.of(cell_id, nodeid)
        if a is None:
            return None
        return {"verdict": str(a.verdict), "label": a.label, "reason": a.reason}

    # --- Markdown ---------------------------------------------------------------------------

    def markdown(
        self, cell_text: Callable[[object], str], capped: Callable[[list[str]], list[str]]
    ) -> list[str]:
        if not self:
            return []
        lines = ["### Attribution against the baselines", ""]
        lines += ["| cell | verdict | baseline | tests |", "|---|---|---|---|"]
        for cid, c in self.cells.items():
            e = self.entries[cid]
            lines.append(
                f"| {cell_text(cid)} | {MD_ICON[c.verdict]} {c.verdict.label} | "
                f"{cell_text(e.baseline_cell)} ({cell_text(e.baseline_label)}: "
                f"{cell_text(c.baseline_status)}) | {cell_text(_counts(c.counts))} |"
            )
        items = [
            f"- {MD_ICON[a.verdict]} **{a.label}**: `{cell_text(a.cell)}` "
            f"{cell_text(test)} — {cell_text(a.reason)}"
            for a, test, _ in self.rows()
        ]
        if items:
            lines += ["", *capped(items)]
        return lines

    # --- JUnit ------------------------------------------------------------------------------

    def junit_properties(self, cell_id: str) -> dict[str, str]:
        entry = self.entries.get(cell_id)
        if entry is None:
            return {}
        props = {
            "kmatrix.baseline_cell": entry.baseline_cell,
            "kmatrix.baseline_of": entry.baseline_of,
            "kmatrix.baseline_label": entry.baseline_label,
        }
        ca = self.cells.get(cell_id)
        if ca is not None:
            props["kmatrix.attribution"] = str(ca.verdict)
            props["kmatrix.attribution_counts"] = ", ".join(
                f"{n} {v}" for v, n in ca.counts.items()
            )
            props["kmatrix.baseline_status"] = ca.baseline_status
        return {k: v for k, v in props.items() if v}

    def junit_note(self, cell_id: str, nodeid: str) -> str:
        """The prefix of a test's failure message, and a line of its system-out."""
        a = self.of(cell_id, nodeid)
        return f"[{a.label}: {a.reason}]" if a is not None and a.verdict is not Verdict.PASS else ""
