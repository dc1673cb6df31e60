"""The pytest plugin end to end: real boots through `pytest -p kmatrix` in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, TWO, KmatrixRun, kernel_args_61, run_kmatrix_pytest, two_with
from kmatrix.results.rundirs import run_dirs


def run_pytest(tmp_path: Path, *args: str, matrix: Path = TWO) -> KmatrixRun:
    return run_kmatrix_pytest(
        [ROOT / "testcases" / "test_boot.py"], tmp_path / "reports", "-rA", *args,
        matrix=matrix, junit=tmp_path / "junit.xml",
    )  # fmt: skip


@pytest.fixture(scope="module")
def serial_run(tmp_path_factory: pytest.TempPathFactory) -> KmatrixRun:
    return run_pytest(tmp_path_factory.mktemp("n0"), "-n", "0")


@pytest.mark.boot
def test_boot_suite_passes_on_two_cells(serial_run: KmatrixRun) -> None:
    assert serial_run.proc.returncode == 0, serial_run.log
    results = serial_run.outcomes()
    assert len(results) == 2 * 6, results
    assert all(v == "passed" for v in results.values()), results
    ids = {n.split("[", 1)[1] for n in results}
    assert ids == {"deb-6.1-cloud/Nehalem/virtio]", "deb-6.12-cloud/Haswell/virtio]"}


@pytest.mark.boot
def test_each_cell_boots_once(serial_run: KmatrixRun) -> None:
    reports = serial_run.reports
    for slug in ("deb-6.1-cloud__Nehalem__virtio", "deb-6.12-cloud__Haswell__virtio"):
        record = json.loads((reports / "cells" / slug / "boot.json").read_text())
        assert record["launches"] == 1, record
        assert record["poweroff_clean"] is True, record
        assert record["disks"] == {}, record  # the boot suite needs no tools: no disk
        assert (reports / "cells" / slug / "console.log").is_file()
        assert "Linux version" in (reports / "cells" / slug / "dmesg.log").read_text()


@pytest.mark.boot
def test_junit_properties(serial_run: KmatrixRun) -> None:
    props = next(iter(serial_run.cases().values())).properties
    for key in (
        "kmatrix.kernel_release",
        "kmatrix.cpu_model",
        "kmatrix.device_profile",
        "kmatrix.qemu_version",
        "kmatrix.accelerator",
        "kmatrix.boot_seconds",
    ):
        assert props.get(key), (key, props)
    assert props["kmatrix.accelerator"] == "tcg"
    assert float(props["kmatrix.boot_seconds"] or 0) > 0


@pytest.mark.boot
def test_xdist_same_outcomes(serial_run: KmatrixRun, tmp_path: Path) -> None:
    run = run_pytest(tmp_path, "-n", "2")
    assert run.proc.returncode == 0, run.log
    assert run.outcomes() == serial_run.outcomes()
    for cell_dir in (run.reports / "cells").iterdir():
        assert json.loads((cell_dir / "boot.json").read_text())["launches"] == 1


@pytest.mark.boot
def test_k_selects_cells(tmp_path: Path) -> None:
    p = run_pytest(tmp_path, "-k", "Nehalem and release", "--collect-only", "-q").proc
    assert p.returncode == 0, p.stdout
    lines = [ln for ln in p.stdout.splitlines() if "::" in ln]
    assert lines == [
        "testcases/test_boot.py::test_release_matches_artifact[deb-6.1-cloud/Nehalem/virtio]"
    ]
    p = run_pytest(tmp_path, "-k", "6.12 and boot", "--collect-only", "-q").proc
    lines = [ln for ln in p.stdout.splitlines() if "::" in ln]
    assert len(lines) == 6 and all("deb-6.12-cloud/Haswell/virtio" in ln for ln in lines), lines


def test_malformed_matrix_is_one_error_and_no_vm(tmp_path: Path) -> None:
    bad = two_with(tmp_path / "bad.yaml", ("  - {name: Nehalem", "  - {nmae: Nehalem"))
    run = run_pytest(tmp_path, matrix=bad)
    p, reports = run.proc, run.reports
    assert p.returncode == 4, p.stdout + p.stderr
    assert f"{bad}:10: cpus[0].nmae: unknown key" in p.stderr
    assert p.stderr.count("unknown key") == 1
    # Every boot writes its cell directory before QEMU starts: none means no VM.
    assert not (reports / "cells").exists()
    assert "collected" not in p.stdout


@pytest.mark.boot
def test_unbootable_cell_fails_others_pass(tmp_path: Path) -> None:
    broken = two_with(tmp_path / "broken.yaml", kernel_args_61("rdinit=/nonexistent"))
    run = run_pytest(tmp_path, matrix=broken)
    assert run.proc.returncode == 1, run.log
    res = run.outcomes()
    bad = {k: v for k, v in res.items() if "deb-6.1-cloud" in k}
    good = {k: v for k, v in res.items() if "deb-6.12-cloud" in k}
    assert set(bad.values()) == {"failure"}, bad
    assert set(good.values()) == {"passed"}, good
    failure = next(c.message for c in run.cases().values() if c.outcome == "failure")
    assert "Kernel panic - not syncing" in failure


@pytest.mark.boot
def test_qemu_start_failure_is_an_error_retried_and_recorded(tmp_path: Path) -> None:
    bad = two_with(
        tmp_path / "bad-device.yaml",
        ("  - ../../../matrix/devices/virtio.yaml",
         "  - {name: broken, devices: [{driver: no-such-device}]}"),
    )  # fmt: skip
    run = run_pytest(tmp_path, "-k", "6.12 and (release or cpus)", matrix=bad)
    assert run.proc.returncode == 1, run.log
    res = run.cases()
    assert {c.outcome for c in res.values()} == {"error"}, res
    assert all("'no-such-device' is not a valid device model name" in c.message
               for c in res.values()), res  # fmt: skip
    record = json.loads(
        (run.reports / "cells" / "deb-6.12-cloud__Haswell__broken" / "boot.json").read_text()
    )
    assert len(record["attempts"]) == 2, record


@pytest.mark.boot
def test_runs_keep_their_own_directories(tmp_path: Path) -> None:
    """Two runs into one reports root: two run directories, `latest` on the second; then
    collection alone, a run of nothing and a partial (-k) run leave that record as it is."""
    root = tmp_path / "root"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "pytest", str(ROOT / "testcases" / "test_boot.py"),
                "-p", "kmatrix", f"--kmatrix-matrix={TWO}", f"--kmatrix-reports={root}",
                "--kmatrix-pytest-junit", "-p", "no:cacheprovider", *args]  # fmt: skip
        return subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=900)

    selection = "Nehalem and (userspace or release)"
    for _ in range(2):
        p = run("-k", selection)
        assert p.returncode == 0, p.stdout[-3000:]
    first, second = run_dirs(root)
    assert (root / "latest").resolve() == second.resolve()
    for d in (first, second):
        assert {"results.json", "junit.xml", "junit-cells.xml", "index.html", "cells"} <= {
            f.name for f in d.iterdir()
        }
    before = {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}

    p = run("-k", "sched", "--collect-only", "-q")
    assert p.returncode == 0 or p.returncode == 5, p.stdout[-2000:]
    p = run("-k", "no-such-test")
    assert p.returncode == 5 and "kmatrix: no test ran: nothing recorded" in p.stdout, p.stdout
    p = run("-k", "Nehalem and userspace")
    assert p.returncode == 0, p.stdout[-3000:]
    assert "left as it was: it ran 1 of the 2 tests of" in p.stdout, p.stdout[-2000:]

    third = run_dirs(root)[-1]
    assert run_dirs(root) == [first, second, third]  # nothing added but the -k run's own
    assert (root / "latest").resolve() == second.resolve()
    after = {f: f.stat().st_mtime_ns for f in root.rglob("*") if f.is_file()}
    assert {f: t for f, t in after.items() if f in before} == before  # nothing rewritten
