"""kselftest in the guest: where a cell's selftests come from, the disk that carries them,
and one run of kselftest's own runner per target, read back as a KTAP unit.

The selftests of a `build:` kernel come from its source with its patch series applied; a
`tree:` kernel's from its tree; a Debian kernel's from the `linux-source-X.Y` package of the
same upstream version (said clearly when the archive's differs); `suites.kselftest.source`
overrides any of them. The targets are built on the host (kmatrix.build.kselftest) and go
into the guest on a read-only disk (kmatrix.guest.disks) with what the runner needs that
busybox lacks: bash (for shell-script tests) and coreutils' `timeout` (the runner calls
`/usr/bin/timeout --foreground`), with their shared libraries, and those of every program.

A target runs as `run_kselftest.sh -t target:prog ...` in the unpacked install. What it
prints comes back over the agent channel; its result lines are also written, as they
appear, to the console (so that after a crash or a hang the console log still says how far
the target got) and then to /dev/kmsg (so the kernel log says which case ran when a report
was printed), by the guest program kmx-progress.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
import secrets
import shlex
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix.build.kselftest import (
    KselftestBuildFailure,
    SelftestSource,
    TargetBuild,
    build_target,
    settings_timeout,
)
from kmatrix.build.sources import cached_source
from kmatrix.config.specs import Cell, KselftestTarget
from kmatrix.errors import GuestError, GuestTimeout, KmatrixError
from kmatrix.guest.disks import (
    ExtraDisk,
    add_libs,
    copy_with_libs,
    is_elf,
    pack_disk,
    unpack_script,
)
from kmatrix.guest.guest import Guest
from kmatrix.guest.kmsg import kernel_log
from kmatrix.host.cache import stamped_digest
from kmatrix.kernels.artifact import KernelArtifact
from kmatrix.results import ktap
from kmatrix.results.cases import Path_, Unit, case_id, running_chain, sanitized_tree
from kmatrix.results.logparse import Finding, parse_kernel_log

SERIAL = "kmx-kselftest"
ROOT = "/opt/kselftest"
# Host binaries the runner and shell-script tests need in the guest, at these paths.
GUEST_TOOLS = {"bash": "/bin/bash", "timeout": "/usr/bin/timeout"}
UNLIMITED = 600.0  # host deadline for a program whose timeout is 0 (none): set `timeout:`
SLACK = 60.0  # unpacking, the runner's own work, the agent's round trip under TCG
PROGRESS = "kmx-ksft"
DISK_VERSION = "2"  # bump when disk_for's layout changes
_DEB_IMAGE_RE = re.compile(r"^linux-image-(\d+)\.(\d+)\.")
_HEADER_RE = re.compile(r"^selftests:\s*(\S+):\s*(\S+)$")


def selftest_source(cell: Cell) -> tuple[SelftestSource | None, str]:
    """Where the cell's selftests come from, or (None, why not)."""
    spec = cell.suites.kselftest
    k = cell.kernel
    if spec is not None and spec.source:
        return SelftestSource(spec.source), ""
    if k.build is not None:
        b = k.build
        return SelftestSource(b.source, b.ref, b.patches, b.skip), ""
    if k.source == "tree":
        tree = Path(k.location)
        src = tree / "source"  # an O= build directory links to its source
        root = src.resolve() if src.is_symlink() else tree
        return SelftestSource(str(root), in_place=True), ""
    if k.source == "deb":
        m = _DEB_IMAGE_RE.match(Path(k.location).name)  # a package name or a .deb path
        if m is not None:
            return SelftestSource(f"linux-source-{m.group(1)}.{m.group(2)}"), ""
    return None, (
        f"kernel {k.name} ({k.source}): kmatrix does not know its source; set "
        "suites.kselftest.source (a linux-source package, a source directory or tarball)"
    )


def deb_version_note(sel: SelftestSource, kernel: KernelArtifact) -> str:
    """For a Debian kernel: whether its linux-source package is the same upstream version."""
    m = re.search(r"Debian (\d+\.\d+\.\d+)", kernel.version_string)
    source = sel.source
    if m is None or not source.startswith("linux-source-"):
        return ""
    src = cached_source(source)
    if src is None:
        return ""
    if src.version != m.group(1):
        return (
            f"the selftests come from {source} {src.version}, the kernel is {m.group(1)}: "
            "they may test what this kernel does not have, or miss what it has"
        )
    return ""


def target_timeout(spec_target: KselftestTarget, default: float | None, build: TargetBuild) -> int:
    """Per-program timeout for a target: the matrix's, else the target's `settings`."""
    if spec_target.timeout is not None:
        return int(spec_target.timeout)
    if default is not None:
        return int(default)
    return settings_timeout(build.directory, build.install)


def select_programs(target: KselftestTarget, programs: Sequence[str]) -> list[str]:
    """The target's programs the matrix asks for (its `tests:` globs), in list order."""
    if not target.tests:
        return list(programs)
    return [p for p in programs if any(fnmatch.fnmatchcase(p, g) for g in target.tests)]


# --- the disk -------------------------------------------------------------------------------


def disk_for(builds: Sequence[TargetBuild]) -> ExtraDisk:
    """One read-only disk with every built target under /opt/kselftest, and the tools."""
    tools = {name: shutil.which(name) for name in GUEST_TOOLS}
    missing = [n for n, p in tools.items() if p is None]
    if missing:
        raise KmatrixError(f"kselftest needs {', '.join(missing)} on the host")
    key_parts = [DISK_VERSION]
    key_parts += [f"{b.target}:{b.key}" for b in sorted(builds, key=lambda b: b.target)]
    key_parts += [f"{n}:{stamped_digest(Path(p))}" for n, p in tools.items() if p is not None]

    def stage(root: Path) -> None:
        dest = root / ROOT.lstrip("/")
        dest.mkdir(parents=True)
        lists: list[str] = []
        for b in builds:
            shutil.copytree(b.install, dest, symlinks=True, dirs_exist_ok=True)
            lists.append((b.install / "kselftest-list.txt").read_text())
        (dest / "kselftest-list.txt").write_text("".join(lists))
        for name, path in tools.items():
            assert path is not None
            copy_with_libs(Path(path), root, GUEST_TOOLS[name])
        add_libs([p for p in dest.rglob("*") if p.is_file() and is_elf(p)], root)

    return pack_disk(SERIAL, "\n".join(key_parts), stage)


@dataclass
class Prepared:
    """The cell's targets as built for its disk (or why each did not build)."""

    source: SelftestSource | None
    builds: dict[str, TargetBuild] = field(default_factory=dict)
    failures: dict[str, KmatrixError] = field(default_factory=dict)
    disk: ExtraDisk | None = None
    note: str = ""


def prepare(cell: Cell, targets: Sequence[str]) -> Prepared:
    """Builds the targets (cached) and their disk; a target that fails keeps its error."""
    sel, why = selftest_source(cell)
    out = Prepared(sel, note=why)
    if sel is None:
        for t in targets:
            out.failures[t] = KmatrixError(why)
        return out
    for t in targets:
        try:
            out.builds[t] = build_target(sel, t)
        except (KselftestBuildFailure, KmatrixError) as e:
            out.failures[t] = e
    if out.builds:
        out.disk = disk_for(list(out.builds.values()))
    return out


# --- running --------------------------------------------------------------------------------


def _script(disk: ExtraDisk, target: str, programs: Sequence[str], override: int | None,
            nonce: str) -> str:  # fmt: skip
    tests = " ".join(f"-t {shlex.quote(f'{target}:{p}')}" for p in programs)
    t = shlex.quote(target)
    settings = ""
    if override is not None:
        # The install is a copy in the guest's RAM: the matrix's timeout replaces the one
        # in the target's settings file, which the runner reads before each program.
        settings = (
            f"[ -f {t}/settings ] && sed -i '/^timeout=/d' {t}/settings\n"
            f"echo timeout={override} >>{t}/settings\n"
        )
    return f"""{unpack_script(disk)}
cd {ROOT} || exit 97
# The runner writes the programs' output to /dev/stdout, which busybox's /dev may lack;
# tests call /usr/bin/true and the like, which busybox has in /bin (Debian merged /usr).
for i in 0:stdin 1:stdout 2:stderr; do
    [ -e /dev/${{i#*:}} ] || ln -s /proc/self/fd/${{i%:*}} /dev/${{i#*:}}
done
for f in /bin/* /sbin/*; do
    [ -e /usr$f ] || ln -s $f /usr$f 2>/dev/null
done
{settings}# kmx-progress mirrors the runner's progress to the console (drained before it goes
# on) and to the kernel log: see images/programs/kmx-progress.c.
command -v kmx-progress >/dev/null || {{
    echo "kmx-progress is not in the guest image (images/recipe.yaml, base_programs)" >&2
    exit 97
}}
kmx-progress '{PROGRESS} {nonce}' "begin {target}"
./run_kselftest.sh {tests} 2>&1 | kmx-progress '{PROGRESS} {nonce}'
kmx-progress '{PROGRESS} {nonce}' "end {target}"
"""


def normalise(tree: ktap.KtapTest, target: str) -> ktap.KtapTest:
    """Programs named as themselves (the runner says `selftests: target: prog`)."""
    for t in tree.subtests:
        m = _HEADER_RE.match(t.name)
        if m is not None and m.group(1) == target:
            t.name = m.group(2)
    return sanitized_tree(tree)


def progress_lines(log: str, nonce: str) -> tuple[list[str], list[int]]:
    """The runner lines mirrored into a kernel log or console (from the begin marker on),
    and their line indexes in log."""
    mark = f"{PROGRESS} {nonce}: "
    out: list[str] = []
    idx: list[int] = []
    for i, line in enumerate(log.split("\n")):
        pos = line.find(mark)
        if pos < 0:
            continue
        text = line[pos + len(mark) :].rstrip("\r")
        if text.startswith(("begin ", "end ")) and not out:
            continue
        if text.startswith("end "):
            break
        out.append(text)
        idx.append(i)
    return out, idx


def attribute(log: str, nonce: str, target: str, known: dict[Path_, list[str]]
              ) -> list[tuple[Path_ | None, Finding]]:  # fmt: skip
    """Kernel reports printed during the target's run, each with the case that was running
    when it was printed (None: before the first program started)."""
    progress, idx = progress_lines(log, nonce)
    mark = f"{PROGRESS} {nonce}: begin "
    start = next((i for i, ln in enumerate(log.split("\n")) if mark in ln), None)
    if start is None:
        return []
    lines = log.split("\n")
    # Up to the end marker (or the end of the log), skipping the progress lines themselves.
    stop = next((i for i, ln in enumerate(lines) if f"{PROGRESS} {nonce}: end " in ln), len(lines))
    out: list[tuple[Path_ | None, Finding]] = []
    for f in parse_kernel_log("\n".join(lines[start:stop])):
        at = start + f.line - 1
        before = [p for p, i in zip(progress, idx, strict=True) if i < at]
        unit = Unit(normalise(ktap.parse(before), target), known, ended="a kernel report")
        out.append((running_chain(unit), f))
    return out


@dataclass
class TargetRun:
    unit: Unit
    seconds: float
    findings: list[tuple[Path_ | None, Finding]] = field(default_factory=list)
    output: str = ""


def run_target(
    g: Guest,
    disk: ExtraDisk,
    target: str,
    programs: Sequence[str],
    timeout: int,
    override: int | None,
    known: dict[Path_, list[str]],
) -> TargetRun:
    """Runs the programs of target with kselftest's runner in the guest. A guest that goes
    down meanwhile (a kernel failure: panic, hang) gives a unit that ended early, read back
    from the console; a host or QEMU failure raises (GuestError, diagnosed by the caller)."""
    assert g.session is not None
    nonce = secrets.token_hex(4)
    per = [float(timeout) if timeout > 0 else UNLIMITED for _ in programs]
    deadline = sum(per) + SLACK
    known = {**known, (): list(programs)}
    t0 = time.monotonic()
    try:
        res = g.session.run(_script(disk, target, programs, override, nonce), timeout=deadline)
    except GuestError as e:
        verdict, why = g.diagnose()
        if verdict == "infra":
            raise
        console = _read(g.console_log)
        lines, _ = progress_lines(console, nonce)
        found = parse_kernel_log(console)
        detail = why
        if found:
            detail += "; the kernel said: " + "; ".join(f"{f.kind}: {f.title}" for f in found[-3:])
        if isinstance(e, GuestTimeout):
            detail = f"no answer from the guest within {deadline:.0f}s: {detail}"
        unit = Unit(normalise(ktap.parse(lines), target), known, ended=detail)
        return TargetRun(unit, time.monotonic() - t0, output="\n".join(lines))
    seconds = time.monotonic() - t0
    if res.exit_status == 97:
        return TargetRun(Unit(ktap.KtapTest(""), known, error=res.stderr.strip() or res.stdout),
                         seconds)  # fmt: skip
    out = res.stdout
    if not re.search(r"^TAP version", out, re.M):
        tail = (out + res.stderr).strip()[-1500:]
        return TargetRun(
            Unit(ktap.KtapTest(""), known, error=f"kselftest's runner printed no TAP:\n{tail}"),
            seconds,
            output=out,
        )
    unit = Unit(normalise(ktap.parse(out), target), known)
    findings: list[tuple[Path_ | None, Finding]] = []
    with contextlib.suppress(KmatrixError, OSError):
        findings = attribute(kernel_log(g.session), nonce, target, known)
    return TargetRun(unit, seconds, findings, out)


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def case_of(path: Path_ | None, target: str) -> str:
    return "kselftest/" + case_id((target, *(path or ())))
