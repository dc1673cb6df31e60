"""reports/cells/<cell>/reproduce.sh: a red cell's reproducer, run by itself on the same host.

It re-runs that exact VM: the QEMU command line the run recorded (boot.json) with the
cached kernel and initramfs and a fresh scratch disk of the same size, its kernel command
line, then the guest commands of the failing tests (commands.jsonl), through
`python -m kmatrix.guest.replay`. Beside it, reproduce.sha256 holds the digests of the
kernel, initramfs and config the run booted; the script checks them first and refuses to
boot anything else when the cache no longer has them. A cell whose kernel did not build
gets a script that runs that build again.
"""

from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path
from typing import Any

from kmatrix.results.runs import Run, failure_message, short_name
from kmatrix.results.schema import BootRecord, CellResult, Outcome, TestResult

SCRIPT = "reproduce.sh"
DIGESTS = "reproduce.sha256"
JOURNAL = "commands.jsonl"
RED_OUTCOMES = (Outcome.FAILED, Outcome.ERROR, Outcome.XPASSED)
RED_STATUSES = ("fail", "error", "xpass")


def cell_dir(run: Run, cell_id: str) -> Path:
    return run.dir / "cells" / cell_id.replace("/", "__")


def _dq(text: str) -> str:
    """text inside double quotes, nothing in it expanded."""
    for ch in ("\\", '"', "$", "`"):
        text = text.replace(ch, "\\" + ch)
    return text


def _arg(arg: str, rundir: str) -> str:
    """One argv element for the script: the run's socket directory becomes "$run"."""
    if rundir and rundir in arg:
        return '"' + "${run}".join(_dq(p) for p in arg.split(rundir)) + '"'
    return shlex.quote(arg)


def _journal(path: Path) -> list[dict[str, Any]]:
    out = []
    try:
        for line in path.read_text(errors="replace").splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("command"), str):
                out.append(rec)
    except OSError:
        pass
    return out


def _header_comment(run: Run, cell: CellResult, red: list[TestResult]) -> list[str]:
    meta = run.meta
    lines = [
        "#!/bin/sh",
        f"# kmatrix reproducer of cell {cell.id}",
        f"# run {meta.id or '?'} started {meta.started or '?'}, matrix {meta.matrix or '?'}",
    ]
    for r in red[:10]:
        name = short_name(r.nodeid, r.cell)
        lines.append(f"# {r.outcome}: {name}: {failure_message(r)[:150]}")
        a = r.attribution
        if a is not None:
            lines.append(f"#   attribution: {a.verdict.label} ({a.reason})")
    return lines


def _digest_lines(boot: BootRecord) -> list[str]:
    paths = {"kernel": boot.boot_image, "initrd": boot.initrd, "config": boot.config}
    return [
        f"{boot.digests[k]}  {paths[k]}"
        for k in ("kernel", "initrd", "config")
        if boot.digests.get(k) and paths[k]
    ]


def render(run: Run, cell: CellResult, python: str = sys.executable) -> str | None:
    """The script for a red cell, or None when the run recorded too little to reproduce it."""
    cid, boot = cell.id, cell.boot
    red = [r for r in run.results_of(cid) if r.outcome in RED_OUTCOMES]
    matrix = run.meta.matrix
    lines = _header_comment(run, cell, red)
    shell = f"kmatrix shell {shlex.quote(cid)}" + (f" -m {shlex.quote(matrix)}" if matrix else "")
    if boot.failure == "build":
        lines += [
            "# The kernel did not build: this builds it again, from the same inputs, through",
            "# the build cache (a failed build is never cached) and shows the first error.",
            "set -eu",
            f"exec {shlex.quote(python)} -m kmatrix build -m {shlex.quote(matrix)} "
            f"{shlex.quote(cell.kernel)}",
        ]
        return "\n".join(lines) + "\n"
    argv = list(boot.qemu_argv)
    if not argv:
        return None
    rundir = boot.rundir
    failing = {r.nodeid for r in red}
    commands = [
        {**c, "failing": str(c.get("test")) in failing}
        for c in _journal(cell_dir(run, cid) / JOURNAL)
    ]
    header = {
        "cell": cid,
        "boot": "no-boot" if boot.failure == "boot" else "ok",
        "boot_timeout": boot.boot_timeout,
        "failure": failure_message(red[0]) if red else "",
    }
    shown = [c for c in commands if c["failing"]]
    lines += [
        "#",
        "# Boots the kernel and initramfs of that run with its QEMU command line (below; only",
        "# the socket directory is new) and replays the guest commands of its failing tests,",
        "# comparing each exit status with the run's. Exit 0: it behaved as in the run;",
        "# 1: differently; 3: the artefacts are gone or QEMU did not start.",
        "#   KMX_REPLAY_ALL=1  replay every command up to the last failing one (state that",
        "#                     earlier tests left behind)",
        "#   KMX_CONSOLE=1     show the console live",
        "#   KMX_TEST=name     only the failing tests whose node id contains name",
        f"# Interactively: {shell}",
        f"# Kernel command line: {_append_of(argv)}",
    ]
    for c in shown[:40]:
        text = [ln for ln in str(c["command"]).splitlines() if ln.strip()]
        more = f" ... ({len(text)} lines)" if len(text) > 1 else ""
        lines.append(f"#   $ {text[0][:200] if text else ''}{more}")
    lines += [
        "set -eu",
        'here=$(cd "$(dirname "$0")" && pwd)',
        f"python=${{KMATRIX_PYTHON:-{shlex.quote(python)}}}",
        f'if ! sha256sum --check --quiet "$here/{DIGESTS}"; then',
        '    echo "reproduce.sh: the kernel, initramfs or config this run booted is gone from '
        "the cache or changed (see above); not booting something else. Run the cell again "
        f"(kmatrix run -m {_dq(shlex.quote(matrix))} -- -k {_dq(shlex.quote(cid))}) for a new "
        'reproducer." >&2',
        "    exit 3",
        "fi",
        'run=$(mktemp -d "${TMPDIR:-/tmp}/kmx-repro-XXXXXX")',
        "trap 'rm -rf \"$run\"' EXIT",
    ]
    for name, mib in boot.scratch_disk.items():
        lines.append(f'truncate -s {int(mib)}M "$run/{_dq(str(name))}"  # the scratch disk, blank')
    lines += [
        '"$python" -m kmatrix.guest.replay --rundir "$run" --log "$here/reproduce-console.log" \\',
        '    ${KMX_REPLAY_ALL:+--all} ${KMX_CONSOLE:+--console} ${KMX_TEST:+--test "$KMX_TEST"} \\',
        "    -- \\",
    ]
    # One option and its value per line, as a person would write the command.
    words: list[list[str]] = []
    for a in argv:
        if words and words[-1][0].startswith("-") and len(words[-1]) == 1 and a[:1] != "-":
            words[-1].append(a)
        else:
            words.append([a])
    lines += [f"    {' '.join(_arg(a, rundir) for a in w)} \\" for w in words[:-1]]
    lines.append(f"    {' '.join(_arg(a, rundir) for a in words[-1])} <<'KMX_REPLAY'")
    lines.append(json.dumps(header))
    lines += [json.dumps(c) for c in commands]
    lines.append("KMX_REPLAY")
    return "\n".join(lines) + "\n"


def _append_of(argv: list[str]) -> str:
    for i, a in enumerate(argv[:-1]):
        if a == "-append":
            return argv[i + 1]
    return ""


def write(run: Run, python: str = sys.executable) -> list[Path]:
    """reproduce.sh (and reproduce.sha256) in the directory of every red cell."""
    written = []
    for cell in run.cells:
        if str(cell.status) not in RED_STATUSES:
            continue
        text = render(run, cell, python)
        if text is None:
            continue
        d = cell_dir(run, cell.id)
        d.mkdir(parents=True, exist_ok=True)
        (d / DIGESTS).write_text("".join(f"{ln}\n" for ln in _digest_lines(cell.boot)))
        path = d / SCRIPT
        tmp = path.with_name(f".{SCRIPT}.tmp")
        tmp.write_text(text)
        tmp.chmod(0o755)
        tmp.replace(path)
        written.append(path)
    return written


def commands_for(run: Run, cell: CellResult) -> dict[str, Any]:
    """What the HTML report shows to re-run a red cell: its reproducer and `kmatrix shell`."""
    if str(cell.status) not in RED_STATUSES:
        return {}
    matrix = run.meta.matrix
    out: dict[str, Any] = {
        "shell": f"kmatrix shell {shlex.quote(cell.id)}"
        + (f" -m {shlex.quote(matrix)}" if matrix else "")
    }
    script = cell_dir(run, cell.id) / SCRIPT
    if script.is_file():
        out["reproduce"] = str(script.relative_to(run.dir))
    return out
