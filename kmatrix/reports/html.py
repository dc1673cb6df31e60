"""reports/index.html: the run as one self-contained page (inline CSS, JS, SVG; no network).

Kernels are rows, CPU model x device profile are columns, each cell coloured by its status
with its counts. The matrix, the baseline differences and the metric plots are rendered here
in Python, so they read without JavaScript; a click on a cell opens its details (tests,
failure messages, kernel-log findings with the whole trace, metrics, console log), built by
the page's script from a JSON block, always through textContent, so log text is never markup.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kmatrix.reports import reproduce
from kmatrix.reports.attribution import RunAttribution
from kmatrix.results.charges import charge_note
from kmatrix.results.compare import Comparison, format_metric
from kmatrix.results.known_issues import KnownIssues
from kmatrix.results.runs import (
    BOOT_METRIC,
    Run,
    failure_message,
    layout,
    measured_nothing,
    metric_label,
    metric_values,
    outcome_note,
    read_artifact,
    result_name,
    sandbox_summary,
)
from kmatrix.results.schema import CellResult, CellStatus, Outcome, TestResult

FILENAME = "index.html"
CONSOLE_LIMIT = 200_000  # characters of each cell's console/dmesg kept inline
LONGREPR_LIMIT = 20_000
STATUS_LABEL = {
    "pass": "pass",
    "fail": "FAIL",
    "error": "ERROR",
    "skip": "skip",
    "xpass": "XPASS",
    "flaky": "flaky",
    "known": "known",
    "na": "n/a",
    "none": "no tests",
}
OUTCOME_SYMBOL = {
    "passed": "✓",
    "failed": "✗",
    "error": "⚠",
    "flaky": " flaky",
    "known": " known",
    "skipped": "⊘",
    "not_applicable": " n/a",
    "xfailed": "xfail",
    "xpassed": "XPASS",
}
SERIES_COLOURS = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
)  # fmt: skip

ASSETS = Path(__file__).resolve().parent / "assets"


def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def _e(s: object) -> str:
    return html.escape(str(s), quote=True)


def _json_for_script(data: Any) -> str:
    # Inside <script> only "<" can start what ends or confuses the element ("</script",
    # "<!--"); as \u003c it stays valid JSON. U+2028/9 are escaped for older JS parsers.
    return (
        json.dumps(data, separators=(",", ":"))
        .replace("<", "\\u003c")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def display_status(cell: CellResult, run: Run, known: KnownIssues) -> str:
    """The cell's status, but "known" when every failure in it is explained by a known issue."""
    status = cell.status
    if status == CellStatus.FAIL and known:
        failing = [r for r in run.results_of(cell.id) if r.outcome is Outcome.FAILED]
        if failing and all(known.for_failure(cell, r) for r in failing):
            return "known"
    return str(status)


def _known_ids(rec: TestResult) -> str:
    """The known issues a test that ended as known was matched to, during its run."""
    if rec.outcome is not Outcome.KNOWN:
        return ""
    try:
        issues = json.loads(rec.properties.get("kmatrix.known") or "[]")
    except ValueError:
        return ""
    return ", ".join(dict.fromkeys(str(i.get("id")) for i in issues if isinstance(i, dict)))


def _cell_diff(comparison: Comparison | None, cell_id: str) -> list[dict[str, str]]:
    if comparison is None:
        return []
    out = [
        {"verdict": t.verdict.replace("_", " "), "name": t.name, "detail": t.message}
        for t in comparison.tests
        if t.cell == cell_id and t.verdict != "unchanged"
    ]
    out += [
        {"verdict": f"metric {m.verdict}", "name": m.label, "detail": format_metric(m)}
        for m in comparison.metrics
        if m.cell == cell_id and m.verdict != "unchanged"
    ]
    return out


def cell_data(
    run: Run,
    cell: CellResult,
    known: KnownIssues,
    comparison: Comparison | None,
    baseline: Run | None,
    attrib: RunAttribution | None = None,
) -> dict[str, Any]:
    cid = cell.id
    status = display_status(cell, run, known)
    tests = []
    for r in run.results_of(cid):
        issue = known.for_failure(cell, r)
        note = outcome_note(r)  # flaky, known, not applicable: what the run recorded
        tests.append(
            {
                "name": result_name(r),
                "nodeid": r.nodeid,
                "outcome": str(r.outcome),
                "duration": round(r.duration, 3),
                # Anything but a pass says why (a skip's reason, a failure's assertion).
                "message": note or (failure_message(r) if r.outcome is not Outcome.PASSED else ""),
                "longrepr": r.longrepr[-LONGREPR_LIMIT:],
                "known": issue.id if issue else _known_ids(r),
                "attribution": attrib.test_data(cid, r.nodeid) if attrib else None,
            }
        )
    findings = []
    for f in cell.findings:
        issue = known.for_finding(cell, f)
        findings.append(
            {**f.to_json(), "known": issue.id if issue else "", "charged": charge_note(f)}
        )
    base_values = metric_values(baseline) if baseline is not None else {}
    metrics = [
        {"label": metric_label(k), "value": v, "baseline": base_values.get(k)}
        for k, v in metric_values(run).items()
        if k[0] == cid
    ]
    facts = cell.to_json()
    return {
        **{k: facts[k] for k in ("kernel", "kernel_release", "cpu", "cpu_model", "device")},
        **{k: facts[k] for k in ("smp", "memory_mib", "boot", "artifacts")},
        "status": status,
        "status_label": STATUS_LABEL.get(status, status),
        "tests": tests,
        "findings": findings,
        "metrics": metrics,
        "diff": _cell_diff(comparison, cid),
        "console": read_artifact(run, cell, "console", CONSOLE_LIMIT),
        "dmesg": read_artifact(run, cell, "dmesg", CONSOLE_LIMIT),
        **reproduce.commands_for(run, cell),
    }


# --- server-side parts --------------------------------------------------------------------


def _counts_title(counts: dict[str, int]) -> str:
    return ", ".join(f"{n} {o}" for o, n in counts.items())


def _counts_html(counts: dict[str, int]) -> str:
    order = [*OUTCOME_SYMBOL, *sorted(set(counts) - set(OUTCOME_SYMBOL))]
    parts = [f"{counts[o]}{OUTCOME_SYMBOL.get(o, o)}" for o in order if counts.get(o)]
    return " ".join(parts)


def _matrix_html(
    run: Run,
    data: dict[str, dict[str, Any]],
    comparison: Comparison | None,
    attrib: RunAttribution | None = None,
) -> str:
    kernels, cols = layout(run)
    by_pos = {(c.kernel, c.cpu, c.device): c for c in run.cells}
    cpus: list[tuple[str, int, str]] = []
    for cpu, _ in cols:
        if cpus and cpus[-1][0] == cpu:
            cpus[-1] = (cpu, cpus[-1][1] + 1, cpus[-1][2])
        else:
            model = next((c.cpu_model for c in run.cells if c.cpu == cpu), "")
            cpus.append((cpu, 1, model))
    head1 = "".join(
        f'<th colspan="{n}" title="QEMU -cpu {_e(model)}">{_e(cpu)}'
        + (f'<br><span class="small">{_e(model)}</span>' if model and model != cpu else "")
        + "</th>"
        for cpu, n, model in cpus
    )
    head2 = "".join(f"<th>{_e(dev)}</th>" for _, dev in cols)
    rows = []
    for k in kernels:
        release = next((c.kernel_release for c in run.cells if c.kernel == k), "")
        tds = []
        for cpu, dev in cols:
            cell = by_pos.get((k, cpu, dev))
            if cell is None:
                tds.append('<td class="missing" title="not in this run">—</td>')
                continue
            cid = cell.id
            d = data[cid]
            badges = []
            nf = len(d["findings"])
            if nf:
                unknown = sum(1 for f in d["findings"] if not (f["known"] or f.get("allowed")))
                cls = "bad" if unknown else "warn"
                badges.append(f'<span class="badge {cls}">{nf} finding{"s" * (nf != 1)}</span>')
            if comparison is not None:
                new_f = [
                    t for t in comparison.tests if t.cell == cid and t.verdict == "new_failure"
                ]
                fixed = [t for t in comparison.tests if t.cell == cid and t.verdict == "fixed"]
                regressed = [m for m in comparison.metrics if m.cell == cid and m.regression]
                if new_f:
                    badges.append(f'<span class="badge bad">+{len(new_f)} new failure(s)</span>')
                if fixed:
                    badges.append(f'<span class="badge good">{len(fixed)} fixed</span>')
                if regressed:
                    badges.append(f'<span class="badge bad">{len(regressed)} slower</span>')
            boot = cell.boot.boot_seconds
            boot_s = f'<span class="small">boot {boot:.2f} s</span>' if boot else ""
            status = d["status"]
            extra = ""
            if attrib:
                badges.insert(0, attrib.badge(cid, status))
                extra = attrib.cell_attrs(cid)
            tds.append(
                f'<td class="cell st-{_e(status)}" data-cell="{_e(cid)}"{extra} tabindex="0" '
                f'role="button" title="{_e(cid)}">'
                f'<span class="status">{_e(STATUS_LABEL.get(status, status))}</span>'
                f'<span class="counts" title="{_e(_counts_title(cell.counts))}">'
                f"{_e(_counts_html(cell.counts))}</span><br>"
                f"{boot_s}{''.join(badges)}</td>"
            )
        note = attrib.row_note(k) if attrib else ""
        note_html = f'<small class="attr-note">{_e(note)}</small>' if note else ""
        rows.append(
            f"<tr><th>{_e(k)}<small>{_e(release or '')}</small>{note_html}</th>{''.join(tds)}</tr>"
        )
    return (
        '<table id="matrix"><thead>'
        f'<tr><th rowspan="2">kernel</th>{head1}</tr><tr>{head2}</tr>'
        f"</thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _baseline_html(comparison: Comparison) -> str:
    n = len(comparison.regressions)
    verdict = (
        f'<p class="verdict-regression">REGRESSION: {n} regression(s)</p>'
        if n
        else '<p class="verdict-ok">no regression</p>'
    )
    rows = []
    for t in comparison.tests:
        if t.verdict == "unchanged":
            continue
        extra = f" [known: {t.known_issue}]" if t.known_issue else ""
        extra += " [flaky]" if t.flaky else ""
        rows.append(
            f"<tr class='v-{_e(t.verdict)}'><td>{_e(t.verdict.replace('_', ' '))}</td>"
            f"<td>{_e(t.cell)}</td><td>{_e(t.name)}</td>"
            f"<td>{_e('/'.join(t.base) or '—')} → {_e('/'.join(t.new) or '—')}</td>"
            f"<td>{_e(t.message + extra)}</td></tr>"
        )
    for m in comparison.metrics:
        if m.verdict != "unchanged":
            rows.append(
                f"<tr class='v-metric-{_e(m.verdict)}'><td>metric {_e(m.verdict)}</td>"
                f"<td>{_e(m.cell)}</td><td>{_e(m.label)}</td><td></td>"
                f"<td>{_e(format_metric(m))}</td></tr>"
            )
    table = (
        '<table class="plain" id="baseline-diff"><tr><th>verdict</th><th>cell</th><th>test</th>'
        f"<th>outcome</th><th>detail</th></tr>{''.join(rows)}</table>"
        if rows
        else "<p>No differences in test outcomes; no metric changed.</p>"
    )
    few = sum(1 for m in comparison.metrics if m.note)
    note = f'<p class="small">{few} metric(s) had too few runs for a verdict.</p>' if few else ""
    return (
        f'<section id="baseline"><h2>Against the baseline</h2>'
        f'<p class="small">baseline: {_e(", ".join(comparison.base_runs))}</p>'
        f"{verdict}{table}{note}<p class='small'>{_e(comparison.rule)}</p></section>"
    )


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10.0 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def plot_svg(
    title: str,
    kernels: Sequence[str],
    series: dict[str, dict[str, float]],
    baseline: dict[str, dict[str, float]] | None = None,
    unit: str = "",
) -> str:
    """A dot plot: kernels along x, one coloured series per column (CPU/device); hollow dots
    are the baseline's values."""
    w, h, left, right, top, bottom = 560, 250, 50, 10, 24, 40
    names = list(series)
    values = [v for s in series.values() for v in s.values()]
    values += [v for s in (baseline or {}).values() for v in s.values()]
    ymax = _nice_max(max(values) * 1.05 if values else 1.0)
    pw, ph = w - left - right, h - top - bottom
    band = pw / max(1, len(kernels))
    parts = [
        f'<svg class="plot" width="{w}" height="{h + 18 * ((len(names) + 2) // 3) + 6}" '
        f'role="img" aria-label="{_e(title)}" xmlns="http://www.w3.org/2000/svg">',
        f'<text x="{left}" y="15" font-weight="600">{_e(title)}</text>',
    ]
    for i in range(5):
        yv = ymax * i / 4
        y = top + ph - ph * i / 4
        parts.append(
            f'<line x1="{left}" x2="{w - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#e5e5e5"/>'
            f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{yv:g}{_e(unit)}</text>'
        )
    for i, k in enumerate(kernels):
        x = left + band * (i + 0.5)
        parts.append(f'<text x="{x:.1f}" y="{top + ph + 16}" text-anchor="middle">{_e(k)}</text>')
    for si, name in enumerate(names):
        colour = SERIES_COLOURS[si % len(SERIES_COLOURS)]
        offset = (si - (len(names) - 1) / 2) * min(12.0, band * 0.6 / max(1, len(names)))
        for ki, k in enumerate(kernels):
            x = left + band * (ki + 0.5) + offset
            for src, filled in ((baseline or {}).get(name, {}), False), (series[name], True):
                if k not in src:
                    continue
                v = src[k]
                y = top + ph - ph * v / ymax
                label = f"{k} {name}: {v:.4g}{unit}" + ("" if filled else " (baseline)")
                fill = colour if filled else "#fff"
                parts.append(
                    f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{fill}" '
                    f'stroke="{colour}" stroke-width="1.5"><title>{_e(label)}</title></circle>'
                )
    for si, name in enumerate(names):
        colour = SERIES_COLOURS[si % len(SERIES_COLOURS)]
        lx = left + (si % 3) * 170
        ly = h + 8 + 18 * (si // 3)
        parts.append(
            f'<circle cx="{lx}" cy="{ly - 4}" r="4.5" fill="{colour}"/>'
            f'<text x="{lx + 8}" y="{ly}">{_e(name)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _plots_html(run: Run, baseline: Run | None) -> str:
    kernels, _ = layout(run)
    cells = {c.id: c for c in run.cells}

    def grouped(r: Run) -> dict[str, dict[str, dict[str, float]]]:
        # metric label -> series (cpu/device) -> kernel -> value
        out: dict[str, dict[str, dict[str, float]]] = {}
        rcells = {c.id: c for c in r.cells}
        for key, v in metric_values(r).items():
            c = rcells.get(key[0]) or cells.get(key[0])
            if c is None:
                continue
            series = f"{c.cpu}/{c.device}"
            out.setdefault(metric_label(key), {}).setdefault(series, {})[c.kernel] = v
        return out

    now = grouped(run)
    base = grouped(baseline) if baseline is not None else {}
    if not now:
        return ""
    order = sorted(now, key=lambda m: (m != BOOT_METRIC, m))
    svgs = []
    for metric in order:
        unit = " s" if metric.endswith(("seconds", "_s")) else ""
        title = "boot time per kernel (s)" if metric == BOOT_METRIC else f"{metric} per kernel"
        svgs.append(plot_svg(title, kernels, now[metric], base.get(metric), unit.strip()))
    legend = "filled: this run" + ("; hollow: baseline" if baseline is not None else "")
    return (
        f'<section id="plots"><h2>Metrics per kernel</h2><p class="small">{legend}; '
        f'one colour per CPU model / device profile</p><div class="plots">{"".join(svgs)}</div>'
        "</section>"
    )


def render(
    run: Run,
    known: KnownIssues | None = None,
    comparison: Comparison | None = None,
    baseline: Run | None = None,
) -> str:
    known = known or KnownIssues()
    attrib = RunAttribution(run)
    data = {c.id: cell_data(run, c, known, comparison, baseline, attrib) for c in run.cells}
    meta = run.meta
    totals: dict[str, int] = {}
    for r in run.results:
        o = str(r.outcome)
        totals[o] = totals.get(o, 0) + 1
    facts = [
        ("matrix", meta.matrix_name or meta.matrix),
        ("started", meta.started),
        ("duration", f"{meta.duration:.0f} s" if meta.duration else None),
        ("kmatrix", meta.kmatrix),
        ("QEMU", meta.qemu),
        ("accelerator", ", ".join(meta.accelerators) or None),
        ("QEMU sandbox", sandbox_summary(run) or None),
        ("host", meta.host),
    ]
    meta_html = "".join(f"<span>{_e(k)}: <b>{_e(v)}</b></span>" for k, v in facts if v)
    totals_html = ", ".join(f"{n} {o}" for o, n in sorted(totals.items()))
    banner = ""
    if meta.interrupted:
        banner = '<p class="banner">This run was interrupted: cells not shown did not run.</p>'
    if measured_nothing(run):
        banner += (
            '<p class="banner">No test measured anything in this run (every test was skipped '
            "or not applicable): it proves nothing.</p>"
        )
    legend = "".join(
        f'<span class="st-{s}">{_e(STATUS_LABEL[s])}</span>'
        for s in ("pass", "fail", "error", "flaky", "known", "xpass", "skip", "na")
    )
    known_note = (
        f'<p class="small">known issues: {_e(known.path)} ({len(known.issues)})</p>'
        if known
        else ""
    )
    title = f"kmatrix: {meta.matrix_name or 'run'} — {len(run.cells)} cells"
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width,initial-scale=1'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        "<link rel='icon' href='data:,'>"
        f"<title>{_e(title)}</title><style>{_asset('report.css')}</style></head><body>"
        f"<h1>{_e(title)}</h1><p class='meta'>{meta_html}</p>"
        f"<p>{_e(totals_html)}</p>{banner}"
        f"<p class='legend'>{legend}</p>"
        f"{attrib.filter_html()}{_matrix_html(run, data, comparison, attrib)}{known_note}"
        '<p class="small">Click a cell for its tests, kernel-log findings, metrics and logs.</p>'
        '<section id="detail" hidden aria-live="polite"></section>'
        f"{_baseline_html(comparison) if comparison is not None else ''}"
        f"{attrib.section_html()}"
        f"{_plots_html(run, baseline)}"
        '<script type="application/json" id="kmx-data">'
        f"{_json_for_script({'cells': data})}</script>"
        f"<script>{_asset('report.js')}</script></body></html>\n"
    )


def write(
    run: Run,
    out: Path,
    known: KnownIssues | None = None,
    comparison: Comparison | None = None,
    baseline: Run | None = None,
) -> Path:
    path = out / FILENAME
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render(run, known, comparison, baseline), encoding="utf-8")
    tmp.replace(path)
    return path
