"""Reading finished (or interrupted) runs back from results.json, for reports and compare.

Every report is generated from results.json alone (plus the log files it names), so a report
can be regenerated at any time, from an interrupted run or one copied off a CI job.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmatrix.errors import InputError

SCHEMA = "kmatrix-results/1"
FAILING = frozenset({"failed", "error"})
# Metric key: (cell id, test node id or "" for a cell-level metric, metric name).
MetricKey = tuple[str, str, str]
BOOT_METRIC = "boot_seconds"


@dataclass
class Run:
    path: Path  # the results.json file
    data: dict[str, Any]

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def meta(self) -> dict[str, Any]:
        m = self.data.get("run")
        return m if isinstance(m, dict) else {}

    @property
    def cells(self) -> list[dict[str, Any]]:
        return [c for c in self.data.get("cells") or [] if isinstance(c, dict)]

    @property
    def results(self) -> list[dict[str, Any]]:
        return [r for r in self.data.get("results") or [] if isinstance(r, dict)]

    def cell(self, cell_id: str) -> dict[str, Any] | None:
        return next((c for c in self.cells if c.get("id") == cell_id), None)

    def results_of(self, cell_id: str) -> list[dict[str, Any]]:
        return [r for r in self.results if r.get("cell") == cell_id]

    @property
    def label(self) -> str:
        started = self.meta.get("started", "")
        return f"{self.dir} ({started})" if started else str(self.dir)


def write_json_atomic(path: Path, data: Any) -> None:
    """Through a temporary name, so a reader (or a killed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def results_path(path: Path) -> Path:
    return path / "results.json" if path.is_dir() else path


def load_run(path: Path) -> Run:
    """A run from a reports directory or a results.json file; one clear error otherwise."""
    file = results_path(Path(path))
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{file}: no such results file (run kmatrix first)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{file}: cannot read: {e}") from None
    except ValueError as e:
        raise InputError(f"{file}: not valid JSON: {e}") from None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        got = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{file}: schema: expected {SCHEMA!r}, got {got!r}")
    for key in ("cells", "results"):
        if not isinstance(data.get(key), list):
            raise InputError(f"{file}: {key}: expected a list")
    return Run(file, data)


def expand_run_paths(path: Path) -> list[Path]:
    """A directory holding results.json is one run; one whose subdirectories hold
    results.json files (e.g. repeated runs, run-1/ run-2/ ...) is several."""
    path = Path(path)
    if path.is_dir() and not (path / "results.json").is_file():
        found = sorted(path.glob("*/results.json"))
        if found:
            return found
    return [results_path(path)]


def load_runs(paths: Iterable[Path]) -> list[Run]:
    return [load_run(p) for path in paths for p in expand_run_paths(path)]


# --- derived facts ------------------------------------------------------------------------


def short_name(rec: dict[str, Any]) -> str:
    """The test's name within its cell: node id without the file and the cell parameter."""
    nodeid = str(rec.get("nodeid") or rec.get("test") or "")
    cell = str(rec.get("cell") or "")
    name = nodeid.split("::", 1)[-1]
    return name.replace(f"[{cell}]", "").replace(f"{cell}-", "").replace(f"-{cell}", "")


def is_failing(outcome: str) -> bool:
    return outcome in FAILING


def failure_message(rec: dict[str, Any]) -> str:
    """One line saying why a test failed: pytest's first "E   " line when the long report has
    one (the assertion, even when the plugin rewrote the report as plain text), else the
    recorded message, else the report's first line."""
    longrepr = str(rec.get("longrepr") or "")
    for ln in longrepr.splitlines():
        if ln.startswith("E   ") and ln[1:].strip():
            return ln[1:].strip()[:500]
    for text in (str(rec.get("message") or ""), longrepr):
        first = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
        if first:
            return first[:500]
    return ""


def failure_text(rec: dict[str, Any]) -> str:
    return f"{rec.get('message') or ''}\n{rec.get('longrepr') or ''}"


def metric_values(run: Run) -> dict[MetricKey, float]:
    """Every number a run measured: the boot time of each cell and each test's metrics."""
    out: dict[MetricKey, float] = {}
    for c in run.cells:
        v = (c.get("boot") or {}).get(BOOT_METRIC)
        if isinstance(v, int | float) and not isinstance(v, bool):
            out[(str(c.get("id")), "", BOOT_METRIC)] = float(v)
    for r in run.results:
        for name, v in (r.get("metrics") or {}).items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out[(str(r.get("cell")), str(r.get("nodeid")), str(name))] = float(v)
    return out


def metric_label(key: MetricKey) -> str:
    cell, nodeid, name = key
    if not nodeid:
        return name
    return f"{short_name({'nodeid': nodeid, 'cell': cell})}.{name}"


def ordered_unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def layout(run: Run) -> tuple[list[str], list[tuple[str, str]]]:
    """Rows (kernels) and columns ((cpu, device)) in the order the run met them; columns are
    grouped by CPU so one CPU's device profiles sit side by side."""
    kernels = ordered_unique(str(c.get("kernel")) for c in run.cells)
    cpus = ordered_unique(str(c.get("cpu")) for c in run.cells)
    devices = ordered_unique(str(c.get("device")) for c in run.cells)
    present = {(str(c.get("cpu")), str(c.get("device"))) for c in run.cells}
    cols = [(cpu, dev) for cpu in cpus for dev in devices if (cpu, dev) in present]
    return kernels, cols


def cap_text(text: str, limit: int) -> str:
    """At most about `limit` characters: the head and the (more telling) tail, with an
    explicit marker saying how much was cut."""
    if len(text) <= limit:
        return text
    head = limit // 4
    tail = limit - head
    cut = len(text) - head - tail
    return f"{text[:head]}\n[... kmatrix: {cut} characters truncated ...]\n{text[-tail:]}"


def read_artifact(run: Run, cell: dict[str, Any], name: str, limit: int) -> str | None:
    rel = (cell.get("artifacts") or {}).get(name)
    if not rel:
        return None
    try:
        return cap_text((run.dir / str(rel)).read_text(errors="replace"), limit)
    except OSError:
        return None
