"""The pytest plugin end to end: real boots through `pytest -p kmatrix` in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import DATA, ROOT

TWO = DATA / "matrices" / "two.yaml"


def run_pytest(
    tmp_path: Path, *args: str, matrix: Path = TWO, tests: str = "testcases/test_boot.py"
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    reports = tmp_path / "reports"
    junit = tmp_path / "junit.xml"
    argv = [
        sys.executable, "-m", "pytest", str(ROOT / tests), "-p", "kmatrix",
        f"--kmatrix-matrix={matrix}", f"--kmatrix-reports={reports}", f"--junitxml={junit}",
        "-o", "junit_family=xunit1", "-p", "no:cacheprovider", "-rA", *args,
    ]  # fmt: skip
    p = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    return p, reports, junit


def outcomes(junit: Path) -> dict[str, str]:
    out = {}
    for tc in ET.parse(junit).getroot().iter("testcase"):
        name = f"{tc.get('classname')}::{tc.get('name')}"
        kind = "passed"
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                kind = child.tag
        out[name] = kind
    return out


@pytest.fixture(scope="module")
def serial_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    return run_pytest(tmp_path_factory.mktemp("n0"), "-n", "0")


def test_boot_suite_passes_on_two_cells(
    serial_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    p, _, junit = serial_run
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-2000:]
    results = outcomes(junit)
    assert len(results) == 2 * 6, results
    assert all(v == "passed" for v in results.values()), results
    ids = {n.split("[", 1)[1] for n in results}
    assert ids == {"deb-6.1-cloud/Nehalem/virtio]", "deb-6.12-cloud/Haswell/virtio]"}


def test_each_cell_boots_once(
    serial_run: tuple[subprocess.CompletedProcess[str], Path, Path],
) -> None:
    _, reports, _ = serial_run
    for slug in ("deb-6.1-cloud__Nehalem__virtio", "deb-6.12-cloud__Haswell__virtio"):
        record = json.loads((reports / "cells" / slug / "boot.json").read_text())
        assert record["launches"] == 1, record
        assert record["poweroff_clean"] is True, record
        assert (reports / "cells" / slug / "console.log").is_file()
        assert "Linux version" in (reports / "cells" / slug / "dmesg.log").read_text()


def test_junit_properties(serial_run: tuple[subprocess.CompletedProcess[str], Path, Path]) -> None:
    _, _, junit = serial_run
    tc = next(iter(ET.parse(junit).getroot().iter("testcase")))
    props = {p.get("name"): p.get("value") for p in tc.iter("property")}
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


def test_xdist_same_outcomes(
    serial_run: tuple[subprocess.CompletedProcess[str], Path, Path], tmp_path: Path
) -> None:
    p, reports, junit = run_pytest(tmp_path, "-n", "2")
    assert p.returncode == 0, p.stdout[-4000:]
    assert outcomes(junit) == outcomes(serial_run[2])
    for cell_dir in (reports / "cells").iterdir():
        assert json.loads((cell_dir / "boot.json").read_text())["launches"] == 1


def test_k_selects_cells(tmp_path: Path) -> None:
    p, _, _ = run_pytest(tmp_path, "-k", "Nehalem and release", "--collect-only", "-q")
    assert p.returncode == 0, p.stdout
    lines = [ln for ln in p.stdout.splitlines() if "::" in ln]
    assert lines == [
        "testcases/test_boot.py::test_release_matches_artifact[deb-6.1-cloud/Nehalem/virtio]"
    ]
    p, _, _ = run_pytest(tmp_path, "-k", "6.12 and boot", "--collect-only", "-q")
    lines = [ln for ln in p.stdout.splitlines() if "::" in ln]
    assert len(lines) == 6 and all("deb-6.12-cloud/Haswell/virtio" in ln for ln in lines), lines


def test_malformed_matrix_is_one_error_and_no_vm(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(TWO.read_text().replace("  - {name: Nehalem", "  - {nmae: Nehalem"))
    p, reports, _ = run_pytest(tmp_path, matrix=bad)
    assert p.returncode == 4, p.stdout + p.stderr
    assert f"{bad}:10: cpus[0].nmae: unknown key" in p.stderr
    assert p.stderr.count("unknown key") == 1
    # Every boot writes its cell directory before QEMU starts: none means no VM.
    assert not (reports / "cells").exists()
    assert "collected" not in p.stdout


def test_unbootable_cell_fails_others_pass(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = TWO.read_text().replace(
        "deb: linux-image-6.1.0-57-cloud-amd64-unsigned",
        "deb: linux-image-6.1.0-57-cloud-amd64-unsigned\n    kernel_args: rdinit=/nonexistent",
    )
    profile = ROOT / "matrix" / "devices" / "virtio.yaml"
    broken.write_text(text.replace("../../../matrix/devices/virtio.yaml", str(profile)))
    p, _, junit = run_pytest(tmp_path, matrix=broken)
    assert p.returncode == 1
    res = outcomes(junit)
    bad = {k: v for k, v in res.items() if "deb-6.1-cloud" in k}
    good = {k: v for k, v in res.items() if "deb-6.12-cloud" in k}
    assert set(bad.values()) == {"failure"}, bad
    assert set(good.values()) == {"passed"}, good
    root = ET.parse(junit).getroot()
    failure = next(f for f in root.iter("failure"))
    assert "Kernel panic - not syncing" in (failure.text or "") + (failure.get("message") or "")


def test_qemu_start_failure_is_an_error_retried_and_recorded(tmp_path: Path) -> None:
    bad = tmp_path / "bad-device.yaml"
    bad.write_text(
        TWO.read_text().replace(
            "  - ../../../matrix/devices/virtio.yaml",
            "  - {name: broken, devices: [{driver: no-such-device}]}",
        )
    )
    p, reports, junit = run_pytest(tmp_path, "-k", "6.12 and (release or cpus)", matrix=bad)
    assert p.returncode == 1, p.stdout[-3000:]
    res = outcomes(junit)
    assert set(res.values()) == {"error"}, res
    text = ET.parse(junit).getroot().find(".//error")
    assert text is not None
    assert "'no-such-device' is not a valid device model name" in (text.text or "")
    record = json.loads(
        (reports / "cells" / "deb-6.12-cloud__Haswell__broken" / "boot.json").read_text()
    )
    assert len(record["attempts"]) == 2, record
