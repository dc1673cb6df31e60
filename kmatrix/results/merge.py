"""Merging shards (`kmatrix merge OUT_DIR SHARD_DIR...`): one run out of a sharded run.

Each CI job that ran `--kmatrix-shard I/N` leaves a reports directory. Merging checks that
they are shards of one matrix (the matrix digest each shard recorded), refuses a cell that ran
on two shards (a shard given twice, or two different splits), and names every cell that a
shard planned but has no result for and every shard of the split that is absent. It writes
OUT_DIR/results.json in the same schema, with each cell's log directory copied beside it, and
then (kmatrix.cli.merge) every report through kmatrix.reports, exactly as a single run
would have them.

Exit status of the command, as the unsharded run's would be plus completeness: 0 merged,
complete and no test failed; 1 a test failed or errored, or cells or shards are missing (or a
shard was interrupted, or a report failed); 2 refused (bad input), nothing written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import shutil
import stat
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix.errors import InputError
from kmatrix.host.paths import file_kind
from kmatrix.results import attribution
from kmatrix.results.runs import CELL_ID_RE, Run, check_artifacts, load_runs, write_run
from kmatrix.results.schema import (
    CellResult,
    MergeInfo,
    Outcome,
    RunDocument,
    ShardInfo,
    TestResult,
)


@dataclass
class MergeResult:
    out: Path
    doc: RunDocument
    runs: list[Run]
    missing_cells: list[str] = field(default_factory=list)  # planned, no result at all
    incomplete_cells: dict[str, str] = field(default_factory=dict)  # cell -> "4 of 6 tests"
    missing_shards: list[int] = field(default_factory=list)
    unassigned_cells: list[str] = field(default_factory=list)  # in no present shard's plan
    interrupted: list[str] = field(default_factory=list)  # shard labels
    notes: list[str] = field(default_factory=list)
    report_errors: dict[str, str] = field(default_factory=dict)

    @property
    def failing(self) -> int:
        return sum(1 for x in self.doc.results if x.outcome.failing)

    @property
    def complete(self) -> bool:
        return not (
            self.missing_cells or self.incomplete_cells or self.missing_shards
            or self.interrupted or self.report_errors
        )  # fmt: skip


def _shard_of(run: Run) -> tuple[int, int] | None:
    """(I, N) of a shard's run; the schema checked the spec's form."""
    spec = run.meta.shard
    if spec is None:
        return None
    a, _, b = spec.partition("/")
    return int(a), int(b)


def _label(run: Run) -> str:
    spec = run.meta.shard
    return f"{run.path} (shard {spec})" if spec else str(run.path)


def _parse_time(s: str) -> dt.datetime | None:
    if not s:
        return None
    try:
        return dt.datetime.fromisoformat(s)
    except ValueError:
        return None


def _check_same_matrix(runs: Sequence[Run], notes: list[str]) -> None:
    digests = {r.meta.matrix_digest for r in runs}
    names = {r.meta.matrix_name for r in runs}
    if len(digests - {""}) > 1 or len(names) > 1:
        lines = [
            f"  {r.path}: matrix {r.meta.matrix_name!r} "
            f"({r.meta.matrix}), digest {r.meta.matrix_digest or 'none'}"
            for r in runs
        ]
        raise InputError(
            "merge: refusing to merge runs of different matrices:\n" + "\n".join(lines)
        )
    if "" in digests:
        old = [str(r.path) for r in runs if not r.meta.matrix_digest]
        notes.append(
            "matched by matrix name only (no matrix digest recorded in " + ", ".join(old) + ")"
        )


def _check_shards(runs: Sequence[Run]) -> list[int]:
    """Same split everywhere, no shard twice; returns the absent shard numbers."""
    shards = [(r, _shard_of(r)) for r in runs]
    totals = {s[1] for _, s in shards if s is not None}
    if len(totals) > 1:
        specs = ", ".join(f"{r.path}: {r.meta.shard}" for r, _ in shards)
        raise InputError(f"merge: shards of different splits (N differs): {specs}")
    seen: dict[int, Run] = {}
    for r, s in shards:
        if s is None:
            continue
        if s[0] in seen:
            raise InputError(
                f"merge: shard {s[0]}/{s[1]} given twice: {seen[s[0]].path} and {r.path}"
            )
        seen[s[0]] = r
    if not totals:
        return []
    total = totals.pop()
    return [i for i in range(1, total + 1) if i not in seen]


def _check_duplicates(runs: Sequence[Run]) -> None:
    where: dict[str, list[str]] = {}
    for r in runs:
        ids = {c.id for c in r.cells} | {x.cell for x in r.results}
        for cid in sorted(ids):
            where.setdefault(cid, []).append(_label(r))
    dup = {cid: places for cid, places in where.items() if len(places) > 1}
    if dup:
        lines = [f"  {cid}: in {', '.join(places)}" for cid, places in sorted(dup.items())]
        raise InputError(
            f"merge: {len(dup)} cell(s) ran in more than one input (a shard given twice, or "
            "runs that are not shards of one split); nothing written:\n" + "\n".join(lines)
        )
    nodeids: dict[str, str] = {}
    for r in runs:
        for x in r.results:
            if x.nodeid in nodeids:
                raise InputError(
                    f"merge: test {x.nodeid} is in {nodeids[x.nodeid]} and {_label(r)}"
                )
            nodeids[x.nodeid] = _label(r)


def _exitstatus(codes: Sequence[int | None]) -> int | None:
    """The merged pytest exit status: internal/usage/interrupt errors first, then test
    failures; 'no tests' (5) only if no shard ran any."""
    ints = [c for c in codes if c is not None]
    if not ints:
        return None
    for worst in (3, 4, 2, 1):
        if worst in ints:
            return worst
    return 5 if all(c == 5 for c in ints) else 0


def merge_runs(out: Path, inputs: Sequence[Path]) -> MergeResult:
    """Checks and joins the shards; writes OUT/results.json and the cells' directories."""
    if not inputs:
        raise InputError("merge: give at least one shard's reports directory")
    runs = load_runs(inputs)
    out = Path(out)
    files = [r.path.resolve() for r in runs]
    for f in files:
        if files.count(f) > 1:
            raise InputError(f"merge: {f} is given twice")
        if f.parent == out.resolve():
            raise InputError(f"merge: the output directory {out} is one of the inputs")
    for r in runs:
        check_artifacts(r)  # nothing written yet: a link out of a shard is refused first
    notes: list[str] = []
    _check_same_matrix(runs, notes)
    missing_shards = _check_shards(runs)
    _check_duplicates(runs)

    metas = [r.meta for r in runs]
    matrix_cells = next((m.matrix_cells for m in metas if m.matrix_cells), [])
    planned: dict[str, int] = {}
    for m in metas:
        planned.update(m.planned_cells)
    order = {cid: i for i, cid in enumerate(dict.fromkeys([*matrix_cells, *planned]))}

    cells: list[CellResult] = []
    results: list[TestResult] = []
    for r in runs:
        cells += r.cells
        results += r.results
    cells.sort(key=lambda c: order.get(c.id, len(order)))
    position = {id(x): i for i, x in enumerate(results)}
    results.sort(key=lambda x: (order.get(x.cell, len(order)), position[id(x)]))

    counts: dict[str, int] = {}
    for x in results:
        counts[x.cell] = counts.get(x.cell, 0) + 1
    missing_cells: list[str] = []
    incomplete_cells: dict[str, str] = {}
    for cid, n in planned.items():
        got = counts.get(cid, 0)
        if got == 0:
            missing_cells.append(cid)
        elif n and got < n:
            incomplete_cells[cid] = f"{got} of {n} tests have results"
    unassigned = [c for c in matrix_cells if c not in planned] if planned and matrix_cells else []
    interrupted = [_label(r) for r in runs if r.meta.interrupted]

    starts = [t for m in metas if (t := _parse_time(m.started))]
    ends = [t for m in metas if (t := _parse_time(m.finished))]
    meta = dataclasses.replace(
        metas[0],
        id=str(uuid.uuid4()),
        started=min(starts).isoformat(timespec="seconds") if starts else "",
        finished=max(ends).isoformat(timespec="seconds") if ends else "",
        duration=round((max(ends) - min(starts)).total_seconds(), 3) if starts and ends else 0.0,
        interrupted=bool(interrupted),
        exitstatus=_exitstatus([m.exitstatus for m in metas]),
        accelerators=sorted({a for m in metas for a in m.accelerators}),
        host=", ".join(dict.fromkeys(m.host for m in metas if m.host)),
        shard=None,
        planned_cells=planned,
        shards=[
            ShardInfo(
                path=str(r.path),
                shard=r.meta.shard,
                run_id=r.meta.id,
                host=r.meta.host,
                started=r.meta.started,
                duration=r.meta.duration,
                exitstatus=r.meta.exitstatus,
                interrupted=r.meta.interrupted,
                cells=[c.id for c in r.cells],
            )
            for r in runs
        ],
        merge=MergeInfo(
            missing_cells=missing_cells,
            incomplete_cells=incomplete_cells,
            missing_shards=missing_shards,
            unassigned_cells=unassigned if missing_shards else [],
        ),
    )
    res = MergeResult(
        out=out,
        # A patched cell and its baseline may come from different runs: attribute the whole.
        doc=attribution.attach(RunDocument(run=meta, cells=cells, results=results)),
        runs=runs,
        missing_cells=missing_cells,
        incomplete_cells=incomplete_cells,
        missing_shards=missing_shards,
        unassigned_cells=unassigned,
        interrupted=interrupted,
        notes=notes,
    )

    copies = [(src, slug) for r in runs for src, slug in _cell_dirs(r)]
    out.mkdir(parents=True, exist_ok=True)
    for src, slug in copies:
        shutil.copytree(src, out / "cells" / slug, dirs_exist_ok=True)
    write_run(out / "results.json", res.doc)
    _merge_pytest_junit(runs, out)
    return res


def _cell_dirs(run: Run) -> list[tuple[Path, str]]:
    """The shard's cell directories to copy, each checked first: a cell id must be a cell id
    (KERNEL/CPU/DEVICE, so its directory name stays one path component: not `..`), and a
    directory may hold only plain files and directories - a link could copy a host file
    into the merged run, and from there into a published CI artefact."""
    out = []
    for i, c in enumerate(run.cells):
        if not CELL_ID_RE.fullmatch(c.id):
            raise InputError(
                f"{run.path}: cells[{i}].id: {c.id!r} is not a cell id (KERNEL/CPU/DEVICE)"
            )
        slug = c.id.replace("/", "__")
        src = run.dir / "cells" / slug
        if src.is_symlink() or not src.is_dir():
            if src.is_symlink() or src.exists():
                raise InputError(f"{run.path}: cells/{slug}: not a plain directory; refused")
            continue
        for member in [src, *src.rglob("*")]:
            st = member.lstat()
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                rel = member.relative_to(run.dir)
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else file_kind(st.st_mode)
                raise InputError(f"{run.path}: {rel} is {kind}; only plain files are merged")
        out.append((src, slug))
    return out


def _merge_pytest_junit(runs: Sequence[Run], out: Path) -> None:
    """pytest's own junit.xml of each shard, if all have one, as one <testsuites>."""
    files = [r.dir / "junit.xml" for r in runs]
    if not all(f.is_file() for f in files):
        return
    root = ET.Element("testsuites")
    with contextlib.suppress(ET.ParseError, OSError):
        for f in files:
            doc = ET.parse(f).getroot()
            suites = [doc] if doc.tag == "testsuite" else list(doc.iter("testsuite"))
            root.extend(suites)
        ET.ElementTree(root).write(out / "junit.xml", encoding="utf-8", xml_declaration=True)


# --- the command ------------------------------------------------------------------------------


def summary(res: MergeResult) -> str:
    meta = res.doc.run
    outcomes: dict[Outcome, int] = {}
    for x in res.doc.results:
        outcomes[x.outcome] = outcomes.get(x.outcome, 0) + 1
    specs = [str(r.meta.shard or r.path) for r in res.runs]
    lines = [
        f"kmatrix merge: {len(res.runs)} input(s) ({', '.join(specs)}) of matrix "
        f"{meta.matrix_name!r}: {len(res.doc.cells)} cells, "
        f"{len(res.doc.results)} results ("
        + ", ".join(f"{n} {o}" for o, n in sorted(outcomes.items()))
        + f") -> {res.out / 'results.json'}"
    ]
    lines += [f"note: {n}" for n in res.notes]
    if res.missing_shards:
        total = _shard_of(res.runs[0])
        n = total[1] if total else "?"
        lines.append(
            "MISSING shards: " + ", ".join(f"{i}/{n}" for i in res.missing_shards)
            + (
                "; cells in no present shard: " + ", ".join(res.unassigned_cells)
                if res.unassigned_cells else ""
            )
        )  # fmt: skip
    if res.missing_cells:
        lines.append(
            "MISSING cells (planned by a shard, no result): " + ", ".join(res.missing_cells)
        )
    for cid, why in res.incomplete_cells.items():
        lines.append(f"INCOMPLETE cell {cid}: {why}")
    for label in res.interrupted:
        lines.append(f"INTERRUPTED: {label}")
    for name, err in res.report_errors.items():
        lines.append(f"report {name} failed: {err}")
    if res.complete:
        lines.append("complete: every planned cell has all its results, no cell twice")
    return "\n".join(lines)
