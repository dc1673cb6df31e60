"""The `kmatrix` command: init, list, run, shell, setup, and the report tools."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from kmatrix import __version__, crash
from kmatrix.cli import init as init_cli
from kmatrix.cli import merge
from kmatrix.cli import report as report_cli
from kmatrix.cli.locations import testcase_dirs
from kmatrix.cli.values import directory, output_file
from kmatrix.config.hostaccess import ALLOW_OPTION, check_run_allows
from kmatrix.config.optionvalues import count, positive
from kmatrix.config.specs import Matrix
from kmatrix.errors import KmatrixError
from kmatrix.host.tools import ensure_host_packages
from kmatrix.kernels import load_matrix
from kmatrix.resources import data_dir


def _default_matrix() -> Path:
    local = Path.cwd() / "matrix" / "default.yaml"
    return local if local.is_file() else data_dir("matrix") / "default.yaml"


def cmd_list(args: argparse.Namespace) -> int:
    m = load_matrix(args.matrix)
    width = max(len(c.id) for c in m.cells)
    print(f"# {m.path}: {len(m.cells)} cells")
    for c in m.cells:
        k = c.kernel
        print(
            f"{c.id:<{width}}  {k.source}:{k.location}  cpu={c.cpu.model} smp={c.smp} "
            f"mem={c.memory}M machine={c.device.machine}"
            + (f"  expect={e.outcome}" if (e := c.expected("*")) else "")
            + (f"  baseline of {c.baseline_of} ({k.baseline_label})" if k.baseline_of else "")
        )
    return 0


def cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    matrix = load_matrix(args.matrix)  # fail fast, before pytest starts, on a bad matrix
    check_run_allows(matrix, args.allow_host_access)
    if args.repeat > 1:
        # Repeated runs, one run directory each, give `kmatrix compare` samples for metric
        # verdicts (a directory of run directories counts as that many runs).
        rc = 0
        for i in range(1, args.repeat + 1):
            one = argparse.Namespace(**{**vars(args), "repeat": 1})
            if args.run_dir:
                one.run_dir = str(Path(args.run_dir) / f"repeat-{i}")
            rc = max(rc, cmd_run(one, extra))
        if any(k.baseline for k in matrix.kernels):
            # The repeats give the statistics their samples: each patched cell's metrics
            # against its baseline's, as `kmatrix compare --series REPORTS` prints them.
            from kmatrix.results.compare import render_text

            with contextlib.suppress(KmatrixError):
                c = report_cli.series_comparison([Path(args.reports)])
                print("kmatrix run: patched cells against their baselines")
                sys.stdout.write(render_text(c))
                (Path(args.reports) / "series-compare.json").write_text(
                    json.dumps(c.to_dict(), indent=1) + "\n"
                )
        return rc
    # Each run writes its own directory (REPORTS/<start time>/, or --run-dir), made only
    # when a test runs; pytest's JUnit goes there too.
    argv = [
        sys.executable,
        "-m",
        "pytest",
        *map(str, testcase_dirs()),
        "--kmatrix-builtin-suites",
        # Node ids relative to here, as a plain `pytest` here has them.
        f"--rootdir={Path.cwd()}",
        "-p",
        "kmatrix",
        f"--kmatrix-matrix={args.matrix}",
        f"--kmatrix-reports={args.reports}",
        "--kmatrix-pytest-junit",
        "-o",
        "junit_family=xunit1",
        "-rfEs",
    ]
    if args.run_dir:
        argv.append(f"--kmatrix-run-dir={args.run_dir}")
    if args.rerun:
        argv.append(f"--kmatrix-rerun={args.rerun}")
    if args.strict:
        argv.append("--kmatrix-strict")
    if args.accel:
        argv.append(f"--kmatrix-accel={args.accel}")
    if args.allow_host_access:
        argv.append(ALLOW_OPTION)
    if args.require_sandbox:
        argv.append("--kmatrix-require-sandbox")
    workers = args.workers or str(default_workers(matrix))
    if workers != "1":
        argv += ["-n", workers]
    argv += [f"--kmatrix-baseline={b}" for b in args.baseline]
    argv += extra
    print("kmatrix run: " + " ".join(argv), flush=True)
    return _call_forwarding_signals(argv)


def default_workers(matrix: Matrix) -> int:
    """One worker per usable CPU (under TCG a guest keeps about one core busy: two guests on
    two cores ran the default matrix 1.9x as fast), bounded by the cells and by the memory
    their guests need (each cell's RAM plus ~0.5 GiB for QEMU and the snapshot in /tmp)."""
    cpus = len(os.sched_getaffinity(0))
    need = max((c.memory for c in matrix.cells), default=1024) + 512
    avail = cpus
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) // 1024 // need
    return max(1, min(cpus, len(matrix.cells), avail))


def _call_forwarding_signals(argv: list[str]) -> int:
    """Runs pytest as a child and passes SIGTERM/SIGINT on to it, so a cancelled CI job stops
    the run (and its QEMUs) instead of orphaning it."""
    # QMP and asyncio come with it: only `run` needs it. Imported before pytest starts: a
    # signal that came during a slow import, with pytest already running and no forwarding
    # installed yet, left pytest and its guests running without this process.
    from kmatrix.vm.machine import kill_all

    child = subprocess.Popen(argv)
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)
        # The guests go at once; pytest still unwinds and writes the interrupted run's results.
        kill_all(descendants=True)

    # A SIGINT the parent ignores (a background job of a script) stays ignored, as pytest
    # itself and every tool would have it: its child inherits the ignore, so forwarding it
    # would kill the guests under a pytest that carries on.
    sigs = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        sigs.append(signal.SIGINT)
    old = {sig: signal.signal(sig, forward) for sig in sigs}
    try:
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                if stopping:
                    # A worker may have started a guest just after the signal: no new guest
                    # outlives the stop for more than half a second.
                    kill_all(descendants=True)
            except KeyboardInterrupt:  # a second Ctrl-C while waiting: keep waiting for pytest
                continue
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def cmd_shell(args: argparse.Namespace) -> int:
    from kmatrix.guest.datadisk import registered
    from kmatrix.guest.guest import Guest
    from kmatrix.vm.machine import SANDBOX_ON

    m = load_matrix(args.matrix)
    cell = m.cell(args.cell)
    check_run_allows(m, args.allow_host_access, [cell])
    # Every data disk (the suite tools): the guest's init mounts them before the shell.
    g = Guest(
        cell, Path(args.reports) / "shell" / cell.slug, accel=args.accel,
        allow_host_access=args.allow_host_access, require_sandbox=args.require_sandbox,
        disks=sorted(registered()),
    )  # fmt: skip
    g.prepare()
    if g.record.sandbox != SANDBOX_ON:
        print(f"kmatrix: warning: QEMU runs WITHOUT its seccomp sandbox ({g.record.sandbox})",
              file=sys.stderr)  # fmt: skip
    print(
        f"kmatrix shell: booting {cell.id}; exit the shell (or Ctrl-A x) to power off", flush=True
    )
    return g.shell()


def cmd_setup(args: argparse.Namespace) -> int:
    return ensure_host_packages(check_only=args.check, tests=args.tests)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kmatrix", description=__doc__)
    p.add_argument("--version", action="version", version=f"kmatrix {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def with_matrix(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--matrix",
            "-m",
            type=Path,
            default=_default_matrix(),
            help="matrix file (default: matrix/default.yaml)",
        )

    sp = sub.add_parser(
        "init",
        help="write a starter matrix/ and testcases/ (files that exist are never overwritten)",
    )
    sp.add_argument("directory", nargs="?", default=".", help="where (default: here)")

    def with_host_policy(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--allow-host-access",
            action="store_true",
            help="let the matrix's host_access: grants take effect (docs/security.md)",
        )
        sp.add_argument(
            "--require-sandbox",
            action="store_true",
            help="error instead of warning when QEMU cannot run under -sandbox",
        )

    def with_run_policy(sp: argparse.ArgumentParser) -> None:
        sp.add_argument(
            "--reports",
            type=directory,
            default="reports",
            help="reports root: a run goes to REPORTS/<start time>/, REPORTS/latest points at "
            "the newest complete run (default: reports)",
        )
        sp.add_argument("--accel", choices=("auto", "kvm", "tcg"))
        with_host_policy(sp)

    sp = sub.add_parser("list", help="list the cells of a matrix")
    with_matrix(sp)
    sp = sub.add_parser(
        "run",
        help="run the matrix through pytest; reports into reports/",
        epilog="arguments after -- go to pytest (e.g. -- -k Haswell -x)",
    )
    with_matrix(sp)
    with_run_policy(sp)
    sp.add_argument(
        "--run-dir",
        type=directory,
        help="write the run into this directory instead (refused if it holds one)",
    )
    sp.add_argument(
        "--rerun",
        type=count,
        default=0,
        metavar="N",
        help="rerun a failed test up to N times on a clean guest; one that then passes is flaky",
    )
    sp.add_argument("--strict", action="store_true", help="a flaky test fails the run")
    sp.add_argument(
        "-n",
        "--workers",
        help="pytest-xdist workers (default: one per CPU, as memory allows; 1: no xdist)",
    )
    sp.add_argument(
        "--baseline", action="append", default=[], help="earlier run to compare with; repeatable"
    )
    sp.add_argument(
        "--repeat",
        type=positive,
        default=1,
        help="run N times, one run directory each (RUN_DIR/repeat-1..N with --run-dir)",
    )
    sp = sub.add_parser("shell", help="boot one cell and attach an interactive shell")
    with_matrix(sp)
    sp.add_argument("cell", help="cell id, e.g. deb-6.12-cloud/Haswell/virtio")
    with_run_policy(sp)
    sp = sub.add_parser("build", help="build (or find in the cache) the source-built kernels")
    with_matrix(sp)
    sp.add_argument("kernels", nargs="*", help="kernel names (default: all built from source)")
    sp = sub.add_parser(
        "bisect",
        help="find the first patch of a kernel's series after which a cell fails",
        description="Builds prefixes of the cell's kernel series through the build cache, "
        "boots each and runs the selected tests R times, git-bisect style (an untestable "
        "step is skipped). Exit status: 0 a first bad patch was found, 1 none was (nothing "
        "fails, the good end fails too, or only a range is left), 2 bad input.",
    )
    with_matrix(sp)
    sp.add_argument("cell", help="the cell, e.g. kmx-6.1/Haswell/virtio")
    sp.add_argument("-k", dest="tests", help="pytest -k expression: the tests to run (all)")
    sp.add_argument("--runs", type=int, default=3, help="runs of the tests per step (3)")
    sp.add_argument("--good", help="the known-good end: a patch, or vanilla (the baseline)")
    sp.add_argument("--reports", type=Path, default=Path("reports"), help="logs go in here")
    sp.add_argument("--json", type=output_file, help="also write the steps and the answer as JSON")
    sp.add_argument("--accel", choices=("auto", "kvm", "tcg"))
    with_host_policy(sp)
    sp.add_argument(
        "--retry-failed-builds",
        action="store_true",
        help="build again a prefix whose build with the same inputs failed before (by default "
        "the recorded failure in builds/failed/ is the step's outcome)",
    )
    sp = sub.add_parser("patches", help="patch series tools")
    psub = sp.add_subparsers(dest="patches_command", required=True)
    pc = psub.add_parser(
        "check", help="the series x source-version table: clean, offset, fuzz, applied, conflict"
    )
    pc.add_argument("series", help="a directory (quilt series or *.patch), an mbox or a patch")
    pc.add_argument(
        "--source",
        action="append",
        required=True,
        help="kernel source: linux-source-6.1, a directory, a git checkout (PATH@REF for a "
        "ref), a tarball or a .deb (repeat for more versions)",
    )
    pc.add_argument(
        "--json", metavar="PATH", type=output_file, help="also write the results as JSON"
    )
    pc.add_argument("--skip", action="append", default=[], metavar="GLOB", help="leave out")
    sp = sub.add_parser("setup", help="install missing host packages (as root)")
    sp.add_argument("--check", action="store_true", help="only report what is missing")
    sp.add_argument(
        "--tests", action="store_true", help="also what the project's own tests need (chromium)"
    )
    report_cli.add_parsers(sub)
    merge.add_parser(sub)

    raw = sys.argv[1:] if argv is None else argv
    extra: list[str] = []
    if "--" in raw:
        i = raw.index("--")
        raw, extra = raw[:i], raw[i + 1 :]
    args = p.parse_args(raw)
    try:
        return _dispatch(args, extra)
    except KmatrixError as e:
        print(f"kmatrix: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `kmatrix list | head`: the reader left; say nothing more, as other tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except OSError as e:  # the host said no (a permission, a full disk): it names the file
        print(f"kmatrix: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a bug: one line here, the traceback in a file
        reports = getattr(args, "reports", None)
        where = Path(reports) if reports and Path(reports).is_dir() else None
        print(crash.report(e, where), file=sys.stderr)
        return crash.EXIT_INTERNAL


def _dispatch(args: argparse.Namespace, extra: list[str]) -> int:
    if args.command == "init":
        return init_cli.command(args.directory)
    if args.command == "list":
        return cmd_list(args)
    if args.command == "run":
        return cmd_run(args, extra)
    if args.command == "shell":
        return cmd_shell(args)
    if args.command in report_cli.COMMANDS:
        return report_cli.dispatch(args)
    if args.command == "merge":
        return merge.command(args)
    if args.command == "build":
        from kmatrix.cli.build import build_command

        return build_command(args.matrix, args.kernels)
    if args.command == "bisect":
        from kmatrix.cli.bisect import bisect_command

        return bisect_command(
            args.matrix, args.cell, args.tests, args.runs, args.reports, args.json,
            args.good, args.accel, args.retry_failed_builds, args.allow_host_access,
            args.require_sandbox,
        )  # fmt: skip
    if args.command == "patches":
        from kmatrix.cli.patches import check_command

        return check_command(args.series, args.source, args.json, args.skip)
    return cmd_setup(args)


if __name__ == "__main__":
    os._exit(main())
