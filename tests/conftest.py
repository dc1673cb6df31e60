"""Shared fixtures of the project's own tests (run with the plugin off: -p no:kmatrix)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from kmatrix.config.specs import Cell, Matrix
from kmatrix.guest.guest import Guest
from kmatrix.kernels import load_matrix
from kmatrix.results.rundirs import run_dirs

collect_ignore = ["data"]  # tests/data/faultcases are run by tests/test_faults.py, via the plugin

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
TWO = DATA / "matrices" / "two.yaml"


def qemu_pids(pattern: str = "") -> list[int]:
    """kmatrix QEMU processes whose command line contains pattern (e.g. a private TMPDIR)."""
    out = subprocess.run(
        ["pgrep", "-f", f"qemu-system-x86_64 -name kmatrix:.*{pattern}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return [int(p) for p in out.split()]


def qemu_left_after(pattern: str, seconds: float) -> list[int]:
    """Polls from now until no QEMU matching pattern is left; those still there after
    `seconds` (none means they all went in time)."""
    deadline = time.monotonic() + seconds
    while (left := qemu_pids(pattern)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def wait_for(what: str, cond: Callable[[], object], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"waited {timeout:g}s for {what}"
        time.sleep(0.2)


# --- the boot marker ----------------------------------------------------------------------------
# A test that starts QEMU carries `boot`, so `-m "not boot"` (./kmx test --quick) runs the unit
# tests alone. Users of booted61 are marked here; others say @pytest.mark.boot or pytestmark.
# Every other test runs with a qemu-system-x86_64 first in PATH that notes a boot (-kernel or
# -incoming; --version and other probes pass through silently) and then runs the real QEMU,
# so a test that boots without the marker fails, naming itself, instead of slowing --quick.

BOOT_FIXTURES = {"booted61"}
QEMU = "qemu-system-x86_64"
_BOOT_LOG = "KMX_TEST_UNMARKED_BOOTS"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if BOOT_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.boot)
    # Files that boot first (in their usual order), the quick unit files after them: under
    # xdist (./kmx test: -n 2, whole files per worker, --no-loadscope-reorder keeps this
    # order) the long files start early and the short ones fill both workers' ends.
    booting = {item.path for item in items if item.get_closest_marker("boot") is not None}
    items.sort(key=lambda item: item.path not in booting)


@pytest.fixture(scope="session")
def _noting_qemu(tmp_path_factory: pytest.TempPathFactory) -> Path | None:
    """A directory whose qemu-system-x86_64 notes boots, then runs the real one."""
    real = shutil.which(QEMU)
    if real is None:
        return None
    d = tmp_path_factory.mktemp("noting-qemu")
    stub = d / QEMU
    stub.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do case "$a" in -kernel|-incoming)\n'
        f'  echo "$$: $*" >> "${{{_BOOT_LOG}:-/dev/null}}"; break;; esac; done\n'
        f'exec {real} "$@"\n'
    )
    stub.chmod(0o755)
    return d


@pytest.fixture(autouse=True)
def _boots_only_when_marked(
    request: pytest.FixtureRequest,
    _noting_qemu: Path | None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[None]:
    if _noting_qemu is None or request.node.get_closest_marker("boot") is not None:
        yield
        return
    log = tmp_path_factory.mktemp("boots") / "boots.log"
    monkeypatch.setenv("PATH", f"{_noting_qemu}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv(_BOOT_LOG, str(log))
    yield
    if log.exists():
        first = log.read_text().splitlines()[0]
        pytest.fail(
            f"{request.node.nodeid} started QEMU but is not marked boot (add @pytest.mark.boot, "
            f"or use a fixture in BOOT_FIXTURES): {first[:300]}",
            pytrace=False,
        )


# --- signal handlers ------------------------------------------------------------------------------
# A command called in-process (kmatrix bisect, build) installs SIGTERM/SIGINT handlers that raise
# KeyboardInterrupt. Left in place, every later fork inherits them: a multiprocessing pool's
# terminate() then SIGTERMs workers that unwind in Python instead of dying, one can die holding
# the pool's queue lock, and the next waits on it for ever (a hung suite, seen in test_cache).


@pytest.fixture(autouse=True)
def _signal_handlers_restored() -> Iterator[None]:
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        if handler is not None and signal.getsignal(sig) is not handler:
            signal.signal(sig, handler)


# --- child pytest runs with the kmatrix plugin --------------------------------------------------


class JunitCase(NamedTuple):
    outcome: str  # passed | failure | error | skipped | xfailed | not_applicable | known
    message: str  # the failure/error/skip element's message attribute and text
    properties: dict[str, str]


def junit_cases(junit: Path) -> dict[str, JunitCase]:
    """{test[cell]: JunitCase} of a pytest JUnit file (a name twice keeps the last). The one
    JUnit reader of the project's tests; an xfail (pytest writes it as a skip of type
    pytest.xfail) is "xfailed", an XPASS(strict) a "failure"."""
    out = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                outcome, message = child.tag, (child.get("message") or "") + (child.text or "")
                if child.tag == "skipped" and child.get("type") == "pytest.xfail":
                    outcome = "xfailed"
        props = {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
        # pytest's JUnit has skips and xfails only; kmatrix's properties say which.
        if outcome == "skipped" and "kmatrix.not_applicable" in props:
            outcome = "not_applicable"
        elif outcome == "xfailed" and "kmatrix.known" in props:
            outcome = "known"
        out[str(tc.get("name"))] = JunitCase(outcome, message, props)
    return out


@dataclass(frozen=True)
class KmatrixRun:
    """A finished child pytest with the kmatrix plugin, and where it wrote."""

    proc: subprocess.CompletedProcess[str]
    reports: Path
    junit: Path | None

    @property
    def log(self) -> str:
        """The output's tails, for assertion messages."""
        return self.proc.stdout[-4000:] + self.proc.stderr[-2000:]

    def cases(self) -> dict[str, JunitCase]:
        assert self.junit is not None and self.junit.is_file(), self.log
        return junit_cases(self.junit)

    def outcomes(self) -> dict[str, str]:
        return {name: c.outcome for name, c in self.cases().items()}

    def results(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.reports / "results.json").read_text())
        return doc


def kmatrix_pytest_argv(
    tests: Sequence[str | Path], reports: Path, *args: str, matrix: Path = TWO,
    junit: Path | None = None,
) -> list[str]:  # fmt: skip
    """`python -m pytest TESTS -p kmatrix` on a matrix; JUnit in xunit1 (it keeps the
    properties on each test case) when junit is given."""
    xml = [f"--junitxml={junit}", "-o", "junit_family=xunit1"] if junit else []
    return [
        sys.executable, "-m", "pytest", *map(str, tests), "-p", "kmatrix",
        f"--kmatrix-matrix={matrix}", f"--kmatrix-run-dir={reports}", *xml,
        "-p", "no:cacheprovider", *args,
    ]  # fmt: skip


def child_env(tmpdir: Path | None = None) -> dict[str, str]:
    """This environment for a child; a private TMPDIR tells its QEMUs apart (qemu_pids)."""
    return {**os.environ, **({"TMPDIR": str(tmpdir)} if tmpdir else {})}


def run_kmatrix_pytest(
    tests: Sequence[str | Path], reports: Path, *args: str, matrix: Path = TWO,
    junit: Path | None = None, tmpdir: Path | None = None, timeout: float = 900,
    env: dict[str, str] | None = None,
) -> KmatrixRun:  # fmt: skip
    argv = kmatrix_pytest_argv(tests, reports, *args, matrix=matrix, junit=junit)
    p = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**child_env(tmpdir), **(env or {})},
    )  # fmt: skip
    return KmatrixRun(p, reports, junit)


def _default_sigint() -> None:
    # The child gets Ctrl-C as at a terminal even when this suite runs as a background job
    # (a shell without job control starts those with SIGINT ignored, and the child would
    # inherit that and ignore the signal the fault tests send).
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def started(argv: list[str], tmpdir: Path) -> Iterator[subprocess.Popen[bytes]]:
    """argv as a child in the project (output discarded), killed if it still runs on the way
    out, e.g. after a failed assertion; its QEMUs die with it (PR_SET_PDEATHSIG)."""
    p = subprocess.Popen(
        argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=child_env(tmpdir), preexec_fn=_default_sigint,
    )  # fmt: skip
    try:
        yield p
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def only_run(root: Path) -> Path:
    """The one run directory a run left under a reports root."""
    dirs = run_dirs(root)
    assert len(dirs) == 1, f"run directories under {root}: {dirs}"
    return dirs[0]


def two_with(dest: Path, *replace: tuple[str, str]) -> Path:
    """A copy of two.yaml at dest with each (old, new) replaced, then its device profile path
    made absolute; an old text two.yaml no longer has is an error, not a silent no-op."""
    text = TWO.read_text()
    for old, new in replace:
        assert old in text, f"{TWO} no longer has {old!r}"
        text = text.replace(old, new)
    profile = str(ROOT / "matrix" / "devices" / "virtio.yaml")
    dest.write_text(text.replace("../../../matrix/devices/virtio.yaml", profile))
    return dest


def kernel_args_61(args: str) -> tuple[str, str]:
    """two_with's replacement that boots the 6.1 cell with extra kernel arguments."""
    deb = "deb: linux-image-6.1.0-57-cloud-amd64-unsigned"
    return deb, f"{deb}\n    kernel_args: {args}"


@pytest.fixture
def private_tmp() -> Iterator[Path]:
    """A short TMPDIR for a child pytest: its QEMUs' socket paths carry it, so pgrep can tell
    them from other QEMUs on the machine."""
    d = Path(tempfile.mkdtemp(prefix="kt-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def two() -> Matrix:
    return load_matrix(TWO)


@pytest.fixture(scope="session")
def cloud61(two: Matrix) -> Cell:
    return two.cell("deb-6.1-cloud/Nehalem/virtio")


@pytest.fixture(scope="module")
def booted61(cloud61: Cell, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Guest]:
    """One real boot of the 6.1 cloud kernel under TCG, shared by a test module."""
    g = Guest(cloud61, tmp_path_factory.mktemp("boot61"), accel="tcg")
    g.start()
    try:
        yield g
    finally:
        g.stop()
