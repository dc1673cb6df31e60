"""`kmatrix bisect`: the first patch of a kernel's series after which a cell fails.

Each step builds a prefix of the series through the build cache (ccache across steps; the
whole series and the vanilla baseline are the builds a run already made), then runs the
selected tests of the cell R times, each run its own pytest process and boot
(`--kmatrix-series-upto KERNEL=PATCH`), and reads the outcomes from its results.json.
The search itself is kmatrix.results.bisect.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kmatrix.build.builder import build_kernel, recorded_failure
from kmatrix.build.patches import Patch, load_series
from kmatrix.build.prefixes import VANILLA, applicable, prefix_spec, upto_length
from kmatrix.cli.locations import testcase_dirs
from kmatrix.cli.signals import sigterm_unwinds
from kmatrix.config.hostaccess import ALLOW_OPTION, check_run_allows
from kmatrix.config.specs import Cell, Matrix
from kmatrix.errors import BuildFailure, InputError
from kmatrix.kernels import load_matrix
from kmatrix.results import bisect as search
from kmatrix.results.runs import failure_message, load_run, short_name
from kmatrix.results.schema import Outcome

RUN_TIMEOUT = 3600.0  # one pytest run of the selected tests on one cell


def _say(msg: str) -> None:
    print(f"kmatrix bisect: {msg}", flush=True)


def cell_expression(matrix: Matrix, cell: Cell) -> str:
    """A -k expression that selects exactly this cell's tests: its id, minus every other cell
    whose id contains it (kmx/Haswell/virtio is inside kmx/Haswell/virtio-memhp)."""
    others = [c.id for c in matrix.cells if c.id != cell.id and cell.id in c.id]
    return " and ".join([cell.id, *(f"not {o}" for o in others)])


@dataclass
class Bisector:
    matrix: Matrix
    cell: Cell
    patches: tuple[Patch, ...]
    expression: str  # -k for pytest: the cell and the selected tests
    runs: int
    reports: Path
    accel: str | None = None
    retry_failed: bool = False  # build prefixes whose build failed before again
    run_options: tuple[str, ...] = ()  # the run's host-access and sandbox options, for pytest

    def label(self, k: int) -> str:
        return VANILLA if k == 0 else self.patches[k - 1].name

    def pytest_argv(self, k: int, out: Path, collect_only: bool = False) -> list[str]:
        # What `kmatrix run` collects: ./testcases and the built-in suites.
        argv = [
            sys.executable, "-m", "pytest", *map(str, testcase_dirs()), "--kmatrix-builtin-suites",
            f"--rootdir={Path.cwd()}", "-p", "kmatrix",
            "-p", "no:cacheprovider", f"--kmatrix-matrix={self.matrix.path}",
            f"--kmatrix-reports={out}", f"--kmatrix-series-upto={self.cell.kernel.name}="
            f"{self.label(k)}", "-k", self.expression, "-q", "-rfE",
        ]  # fmt: skip
        if self.accel:
            argv.append(f"--kmatrix-accel={self.accel}")
        argv += self.run_options
        if collect_only:
            argv.append("--collect-only")
        return argv

    def selected(self) -> int:
        """How many tests the expression selects (collection only: nothing boots)."""
        out = self.reports / "collect"
        p = subprocess.run(
            self.pytest_argv(len(self.patches), out, collect_only=True),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        lines = [ln for ln in p.stdout.splitlines() if "::" in ln and "[" in ln]
        if p.returncode not in (0, 5):
            raise InputError(f"collecting the selected tests failed:\n{p.stdout[-2000:]}")
        return len(lines)

    def probe(self, k: int, sought: str) -> search.Outcome:
        t0 = time.monotonic()
        assert self.cell.kernel.build is not None
        series = load_series(self.cell.kernel.build.patches)  # type: ignore[arg-type]
        spec = prefix_spec(self.cell.kernel.build, series, k)
        what = f"prefix {k}/{len(self.patches)} ({self.label(k)})"
        failed = None if self.retry_failed else recorded_failure(spec)
        if failed is not None:
            # The same inputs failed before: compiling them again would fail the same way.
            first = failed.strip().splitlines()
            _say(f"{what}: does not build (recorded earlier): {first[0] if first else ''}")
            return search.Outcome(built=False, detail="\n".join(first[:6]))
        _say(f"{what}: building")
        try:
            built = build_kernel(spec, self.cell.kernel.origin, quiet=True)
        except BuildFailure as e:
            first = (e.first_error or str(e)).strip().splitlines()
            _say(f"{what}: does not build: {first[0] if first else e}")
            return search.Outcome(
                built=False, detail="\n".join(first[:6]), seconds=time.monotonic() - t0
            )
        how = "cached" if built.cached else f"built in {built.seconds:.0f}s"
        _say(f"{what}: {how}")
        if sought == search.BUILD:
            return search.Outcome(built=True, seconds=time.monotonic() - t0)
        runs: list[str] = []
        details: list[str] = []
        booted: bool | None = None
        for r in range(1, self.runs + 1):
            out = self.reports / f"step-{k}" / f"run-{r}"
            out.mkdir(parents=True, exist_ok=True)
            t1 = time.monotonic()
            with (out / "pytest.log").open("w") as log:
                try:
                    subprocess.run(
                        self.pytest_argv(k, out), stdout=log, stderr=subprocess.STDOUT,
                        timeout=RUN_TIMEOUT, check=False,
                    )  # fmt: skip
                except subprocess.TimeoutExpired:
                    runs.append("error")
                    _say(f"{what}: run {r}/{self.runs}: overran {RUN_TIMEOUT:.0f}s")
                    continue
            verdict, boot_ok, text = self._read(out)
            booted = boot_ok if booted is None else booted and boot_ok
            runs.append(verdict)
            if text and text not in details:
                details.append(text)
            _say(f"{what}: run {r}/{self.runs}: {verdict} ({time.monotonic() - t1:.0f}s) {text}")
            if not boot_ok:
                break  # the kernel does not boot: more runs would only wait out the timeout
            if sought == search.BOOT:
                break  # it boots: that is all a boot failure bisection asks
        return search.Outcome(
            built=True,
            booted=booted,
            runs=tuple(runs),
            detail="\n".join(details),
            seconds=time.monotonic() - t0,
        )

    def _read(self, out: Path) -> tuple[str, bool, str]:
        """(pass | fail | error, booted, what failed) of one run, from its results.json."""
        try:
            run = load_run(out)
        except InputError:
            return "error", True, f"no results (see {out / 'pytest.log'})"
        cell = run.cell(self.cell.id)
        if cell is not None and cell.boot.failure == "boot":
            return "fail", False, "the kernel did not reach userspace"
        recs = run.results_of(self.cell.id)
        bad = [r for r in recs if r.outcome in (Outcome.FAILED, Outcome.XPASSED)]
        if bad:
            text = "; ".join(
                f"{short_name(r.nodeid, r.cell)}: {failure_message(r)[:160]}" for r in bad[:3]
            )
            return "fail", True, text
        if any(r.outcome is Outcome.ERROR for r in recs) or not recs:
            return "error", True, "host or harness error (see pytest.log)"
        return "pass", True, ""


def _table(b: search.Bisection, label: Any) -> str:
    rows = [("step", "patches", "last patch", "built", "booted", "pass/fail", "verdict")]
    for s in b.steps:
        o = s.outcome
        booted = "-" if o.booted is None else ("yes" if o.booted else "NO")
        runs = f"{o.passes}/{o.failures}" if o.runs else "-"
        rows.append((s.role, f"{s.k}/{b.n}", label(s.k), "yes" if o.built else "NO", booted, runs,
                     f"{s.verdict} ({s.why})"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in rows)  # fmt: skip


@sigterm_unwinds()
def bisect_command(
    matrix_path: Path,
    cell_id: str,
    tests: str | None,
    runs: int,
    reports: Path,
    json_path: Path | None,
    good: str | None,
    accel: str | None,
    retry_failed: bool = False,
    allow_host_access: bool = False,
    require_sandbox: bool = False,
) -> int:
    if runs < 1:
        raise InputError(f"--runs {runs}: each step needs at least one run")

    m = load_matrix(matrix_path)
    cell = m.cell(cell_id)
    k = cell.kernel
    if k.baseline_of:
        raise InputError(
            f"{cell_id} is a baseline cell; bisect its patched cell {cell.baseline_of} instead"
        )
    if k.build is None or k.build.patches is None:
        raise InputError(
            f"{m.path}: kernel {k.name!r} ({k.origin}) has no patch series to bisect "
            "(bisect needs a build: kernel with patches:)"
        )
    series = load_series(k.build.patches)
    patches = applicable(k.build, series)
    if not patches:
        raise InputError(f"kernel {k.name!r}: its skip list leaves no patch to bisect")
    start = good or (k.build.baseline if k.build.baseline else VANILLA)
    good_k = upto_length(k.build, series, start)
    if good_k >= len(patches):
        raise InputError(f"--good {start}: the good end must be before the last patch")
    expr = cell_expression(m, cell) + (f" and ({tests})" if tests else "")
    out = reports / "bisect" / cell.slug
    check_run_allows(m, allow_host_access, [cell])  # before any build or boot
    options = ((ALLOW_OPTION,) if allow_host_access else ()) + (
        ("--kmatrix-require-sandbox",) if require_sandbox else ()
    )
    b = Bisector(m, cell, patches, expr, runs, out, accel, retry_failed, options)
    n_tests = b.selected()
    if n_tests == 0:
        raise InputError(f"-k {tests!r} selects no test of {cell_id}")
    steps = search.expected_steps(len(patches), good_k)
    _say(
        f"{cell_id}: series {series.path} ({len(patches)} patches applied by {k.name}), "
        f"good end: {b.label(good_k)}; {n_tests} test(s), {runs} run(s) per step; "
        f"about {steps} step(s) after the two ends"
    )
    t0 = time.monotonic()
    result = search.bisect(len(patches), b.probe, good=good_k, say=_say)
    seconds = time.monotonic() - t0
    print()
    print(_table(result, b.label))
    print()
    doc: dict[str, Any] = {
        "cell": cell_id,
        "kernel": k.name,
        "series": str(series.path),
        "patches": [{"name": p.name, "subject": p.subject} for p in patches],
        "tests": tests,
        "runs": runs,
        "seconds": round(seconds, 1),
        **result.to_dict(),
        "bisection_steps": result.bisection_steps,
        "expected_steps": steps,
    }
    if result.status == "found" and result.first_bad is not None:
        p = patches[result.first_bad - 1]
        before = next((s for s in result.steps if s.k == result.first_bad - 1), None)
        after = next(s for s in result.steps if s.k == result.first_bad)
        evidence = [
            f"through {b.label(result.first_bad)}: {after.why}"
            + (f": {after.outcome.detail}" if after.outcome.detail else ""),
        ]
        if before is not None:
            evidence.insert(0, f"through {b.label(before.k)}: {before.why}")
        print(f"first bad patch: {p.name}\n  subject: {p.subject}")
        for line in evidence:
            print(f"  {line}")
        doc["first_bad_patch"] = {"name": p.name, "subject": p.subject, "evidence": evidence}
    else:
        print(result.message)
        if result.candidates:
            for c in result.candidates:
                print(f"  candidate: {patches[c - 1].name}: {patches[c - 1].subject}")
    print(
        f"{len(result.steps)} step(s) ({result.bisection_steps} bisection step(s) for "
        f"{len(patches) - good_k} patches) in {seconds:.0f}s; logs in {out}"
    )
    if json_path is not None:
        json_path.write_text(json.dumps(doc, indent=1) + "\n")
    return 0 if result.status == "found" else 1
