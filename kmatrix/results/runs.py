"""Reading finished (or interrupted) runs back from results.json, for reports and compare,
and writing them: always through the typed document of kmatrix.results.schema.

A run read here carries its attribution (kmatrix.results.attribution) as results.json
stored it; only a file written before kmatrix stored one has it computed, on load.

Every report is generated from results.json alone (plus the log files it names), so a report
can be regenerated at any time, from an interrupted run or one copied off a CI job.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kmatrix.errors import InputError
from kmatrix.host.paths import FileRefused, PathEscape, check_regular, confine, read_text
from kmatrix.results import attribution, rundirs

# Why a test failed, in one line: its own module (attribution, below runs, needs it too);
# re-exported for the readers that take it from here.
from kmatrix.results.failures import failure_message as failure_message
from kmatrix.results.failures import summarize_failure as summarize_failure
from kmatrix.results.schema import (
    CellResult,
    Outcome,
    RunDocument,
    RunInfo,
    TestResult,
    dumps,
)

# Metric key: (cell id, test node id or "" for a cell-level metric, metric name).
MetricKey = tuple[str, str, str]
BOOT_METRIC = "boot_seconds"


@dataclass
class Run:
    """A run's results.json, read (or, for the collector, about to be written)."""

    path: Path  # the results.json file
    doc: RunDocument
    _by_cell: dict[str, list[TestResult]] | None = field(default=None, init=False, repr=False)

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def meta(self) -> RunInfo:
        return self.doc.run

    @property
    def cells(self) -> list[CellResult]:
        return self.doc.cells

    @property
    def results(self) -> list[TestResult]:
        return self.doc.results

    def cell(self, cell_id: str) -> CellResult | None:
        return next((c for c in self.cells if c.id == cell_id), None)

    def results_of(self, cell_id: str) -> list[TestResult]:
        """The cell's results (indexed on first use: a Run is read, not edited)."""
        if self._by_cell is None:
            self._by_cell = {}
            for r in self.results:
                self._by_cell.setdefault(r.cell, []).append(r)
        return self._by_cell.get(cell_id, [])

    @property
    def label(self) -> str:
        started = self.meta.started
        return f"{self.dir} ({started})" if started else str(self.dir)


def write_json_atomic(path: Path, data: Any) -> None:
    """Through a temporary name, so a reader (or a killed run) never sees half a file."""
    write_text_atomic(path, json.dumps(data, indent=1) + "\n")


def write_text_atomic(path: Path, text: str) -> None:
    """Through a temporary name, so a reader (or a killed run) never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_run(path: Path, doc: RunDocument) -> None:
    """results.json, atomically, in the current schema."""
    write_text_atomic(path, dumps(doc))


def results_path(path: Path) -> Path:
    """A run's results.json: the file, a run directory's, or a reports root's latest run's."""
    return rundirs.resolve_run(path)


MAX_RESULTS_BYTES = 256 << 20  # ~40,000 tests with long failure reports is ~60 MiB
# KERNEL/CPU/DEVICE, each a matrix name: a cell's directory name (slashes as __) is then one
# plain path component.
CELL_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*(?:/[A-Za-z0-9][A-Za-z0-9._+-]*){2}")


def load_run(path: Path) -> Run:
    """A run from a reports directory or a results.json file; one clear error otherwise."""
    file = results_path(Path(path))
    if not file.exists() and not file.is_symlink():
        raise InputError(f"{file}: no such results file (run kmatrix first)")
    try:
        # Never blocks on a FIFO or reads a device forever (kmatrix.host.paths).
        data = json.loads(read_text(file, MAX_RESULTS_BYTES))
    except FileRefused as e:
        raise InputError(str(e)) from None
    except ValueError as e:
        raise InputError(f"{file}: not valid JSON: {e}") from None
    except RecursionError:
        raise InputError(f"{file}: not valid JSON: nested too deeply") from None
    # The one place a run without stored attribution (schema /1, or a /2 file written
    # before kmatrix stored it) gets it: every reader then reads the stored one.
    return Run(file, attribution.with_attribution(RunDocument.from_json(data, file)))


def expand_run_paths(path: Path) -> list[Path]:
    """A directory holding results.json is one run; one whose subdirectories hold
    results.json files (a reports root, repeated runs) is each of them once."""
    return rundirs.expand_runs(path)


def load_runs(paths: Iterable[Path]) -> list[Run]:
    return [load_run(p) for path in paths for p in expand_run_paths(path)]


# --- derived facts ------------------------------------------------------------------------


def short_name(nodeid: str, cell: str) -> str:
    """The test's name within its cell: node id without the file and the cell parameter."""
    name = nodeid.split("::", 1)[-1]
    return name.replace(f"[{cell}]", "").replace(f"{cell}-", "").replace(f"-{cell}", "")


def result_name(rec: TestResult) -> str:
    """short_name of a result (its test path when the node id is empty)."""
    return short_name(rec.nodeid or rec.test, rec.cell)


def is_failing(outcome: Outcome) -> bool:
    return outcome.failing


def measured_nothing(run: Run) -> bool:
    """Whether no test of the run measured anything (all skipped or not applicable)."""
    return not any(r.outcome.measured for r in run.results)


def outcome_note(rec: TestResult) -> str:
    """What a flaky, known or not-applicable test's record says about it."""
    props = rec.properties
    outcome = rec.outcome
    try:
        if outcome is Outcome.FLAKY:
            attempts = json.loads(props.get("kmatrix.flaky") or "[]")
            first = attempts[0].get("message", "") if attempts else ""
            runs = props.get("kmatrix.attempts", "?")
            return f"flaky: failed {len(attempts)} of {runs} attempts, then passed; {first}"
        if outcome is Outcome.KNOWN:
            issues = json.loads(props.get("kmatrix.known") or "[]")
            return "known: " + "; ".join(
                f"{i.get('id')} ({i.get('kind')}: {i.get('title')})" for i in issues
            )
    except (ValueError, AttributeError):
        return str(outcome)
    if outcome is Outcome.NOT_APPLICABLE:
        return f"not applicable: {props.get('kmatrix.not_applicable') or rec.message}"
    return ""


def failure_text(rec: TestResult) -> str:
    return f"{rec.message}\n{rec.longrepr}"


def metric_values(run: Run) -> dict[MetricKey, float]:
    """Every number a run measured: the boot time of each cell and each test's metrics."""
    out: dict[MetricKey, float] = {}
    for c in run.cells:
        if c.boot.boot_seconds is not None:
            out[(c.id, "", BOOT_METRIC)] = float(c.boot.boot_seconds)
    for r in run.results:
        for name, v in r.metrics.items():
            out[(r.cell, r.nodeid, name)] = float(v)
    return out


def sandbox_summary(run: Run) -> str:
    """Whether the run's QEMUs ran under their seccomp sandbox: "on", "OFF in N of M cells
    (why)", or "" when the run did not record it."""
    states = [c.boot.sandbox for c in run.cells]
    off = [s for s in states if s.startswith("off")]
    if off:
        why = off[0].removeprefix("off").lstrip(": ")
        return f"OFF in {len(off)} of {len(states)} cells" + (f" ({why})" if why else "")
    return "on" if any(states) else ""


def metric_label(key: MetricKey) -> str:
    cell, nodeid, name = key
    if not nodeid:
        return name
    return f"{short_name(nodeid, cell)}.{name}"


def ordered_unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def layout(run: Run) -> tuple[list[str], list[tuple[str, str]]]:
    """Rows (kernels) and columns ((cpu, device)) in the order the run met them; columns are
    grouped by CPU so one CPU's device profiles sit side by side."""
    kernels = ordered_unique(c.kernel for c in run.cells)
    # A baseline's row goes right under its patched kernel's.
    twin_of = {c.kernel: c.baseline_of.split("/")[0] for c in run.cells if c.baseline_of}
    ordered = [k for k in kernels if twin_of.get(k) not in kernels]
    for twin, patched in twin_of.items():
        if patched in kernels:
            ordered.insert(ordered.index(patched) + 1, twin)
    kernels = ordered
    cpus = ordered_unique(c.cpu for c in run.cells)
    devices = ordered_unique(c.device for c in run.cells)
    present = {(c.cpu, c.device) for c in run.cells}
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


def _artifact_entry(run: Run, index: int, cell: CellResult, name: str, rel: str) -> Path:
    """An artefact a cell names, resolved inside the run directory; InputError naming the
    results file, the cell and the entry otherwise (an absolute path, `..`, a link out)."""
    where = f"{run.path}: cells[{index}] ({cell.id:.80}).artifacts.{name}"
    if not rel or "\x00" in rel:
        raise InputError(f"{where}: expected a path relative to the run directory, got {rel!r}")
    if Path(rel).is_absolute():
        raise InputError(f"{where}: {rel!r} is absolute; artefacts must be inside {run.dir}")
    try:
        return confine(run.dir, rel, where)
    except PathEscape as e:
        raise InputError(f"{where}: {rel!r} leads to {e.target}, outside {e.root}") from None


MAX_ARTIFACT_READ = 64 << 20  # larger logs are read as a head and a tail only


def check_artifacts(run: Run) -> None:
    """Every artefact path of every cell, before any report embeds or links one."""
    for i, cell in enumerate(run.cells):
        for name, rel in cell.artifacts.items():
            _artifact_entry(run, i, cell, name, rel)


def read_artifact(run: Run, cell: CellResult, name: str, limit: int) -> str | None:
    """A cell's artefact as text, at most about limit characters (head and tail); None when
    it is absent or unreadable. Confined to the run directory (InputError otherwise)."""
    rel = cell.artifacts.get(name)
    if not rel:
        return None
    index = next((i for i, c in enumerate(run.cells) if c is cell), -1)
    path = _artifact_entry(run, index, cell, name, rel)
    try:
        size = check_regular(path).st_size
        with path.open("rb") as f:
            if size <= max(2 * limit, MAX_ARTIFACT_READ):
                return cap_text(f.read(size).decode(errors="replace"), limit)
            head = f.read(limit // 4).decode(errors="replace")
            f.seek(size - (limit - limit // 4))
            tail = f.read().decode(errors="replace")
    except (OSError, FileRefused):
        return None
    return f"{head}\n[... kmatrix: {size - limit} bytes truncated ...]\n{tail}"
