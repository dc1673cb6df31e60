"""The plugin with source-built kernels and `expect:` rules, end to end in a subprocess:
a kernel that fails to build fails its cells (not errors) and the rest of the matrix runs;
`expect: build-fail` turns that into xfail; an expectation that does not fit the outcome
(no-boot, but the build failed; no-boot, but the kernel booted) is reported as a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from test_build import fake_kernel

from conftest import ROOT, junit_cases

BREAK = (
    "--- a/src/file.c\n+++ b/src/file.c\n@@ -1,4 +1,5 @@\n int main(void)\n {\n"
    "+    FAIL_BUILD;\n     return 0;\n }\n"
)
TESTS = """
def test_uses_guest(guest):
    assert guest.run("true").exit_status == 0

def test_uses_kernel(kernel, cell):
    assert kernel.release
"""


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in ("make", "gcc", "flex", "bison", "bc", "perl", "patch")),
    reason="kernel build tools missing (kmatrix setup installs them)",
)
@pytest.mark.boot
def test_build_failures_and_expectations(tmp_path: Path) -> None:
    src = fake_kernel(tmp_path / "linux")
    series = tmp_path / "series"
    series.mkdir()
    (series / "0001-break.patch").write_text(BREAK)
    counter = tmp_path / "compiles"
    counter.write_text("")
    matrix = tmp_path / "m.yaml"
    build = f"{{source: {src}, patches: series, config: tinyconfig"
    matrix.write_text(
        textwrap.dedent(f"""
        defaults: {{memory: 512, smp: 1, boot_timeout: 90, test_timeout: 60, accel: tcg}}
        kernels:
          - {{name: broken, build: {build}}}}}
          - {{name: broken-expected, build: {build}, make_vars: {{KCFLAGS: a}}}}}}
          - {{name: broken-misjudged, build: {build}, make_vars: {{KCFLAGS: b}}}}}}
          - {{name: deb-6.1-cloud, deb: linux-image-6.1.0-57-cloud-amd64-unsigned}}
        cpus: [Nehalem]
        devices: [{ROOT / "matrix/devices/virtio.yaml"}]
        expect:
          - {{kernel: broken-expected, outcome: build-fail, reason: known breakage}}
          - {{kernel: broken-misjudged, outcome: no-boot}}
          - {{kernel: deb-6.1-cloud, test: test_uses_guest, outcome: no-boot}}
        """)
    )
    (tmp_path / "test_cases.py").write_text(TESTS)
    junit = tmp_path / "junit.xml"
    env = {
        **os.environ,
        "KMATRIX_CACHE": str(tmp_path / "cache"),
        "KMX_FAKE_COUNTER": str(counter),
    }
    # The Debian kernel and its guest image come from the shared cache, not a fresh download.
    shared = Path(os.environ.get("KMATRIX_CACHE", Path.home() / ".cache" / "kmatrix"))
    (tmp_path / "cache").mkdir()
    for sub in ("debs", "kernels", "vmlinux", "images", "accel"):
        if (shared / sub).is_dir():
            (tmp_path / "cache" / sub).symlink_to(shared / sub)
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(tmp_path / "test_cases.py"),
            "-p",
            "kmatrix",
            f"--kmatrix-matrix={matrix}",
            f"--kmatrix-run-dir={tmp_path / 'reports'}",
            f"--junitxml={junit}",
            "-p",
            "no:cacheprovider",
            "-rA",
            f"--rootdir={tmp_path}",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    got = {name: case.outcome for name, case in junit_cases(junit).items()}
    assert got == {
        "test_uses_guest[broken/Nehalem/virtio]": "failure",
        "test_uses_kernel[broken/Nehalem/virtio]": "failure",
        "test_uses_guest[broken-expected/Nehalem/virtio]": "xfailed",
        "test_uses_kernel[broken-expected/Nehalem/virtio]": "xfailed",
        "test_uses_guest[broken-misjudged/Nehalem/virtio]": "failure",
        "test_uses_kernel[broken-misjudged/Nehalem/virtio]": "failure",
        "test_uses_guest[deb-6.1-cloud/Nehalem/virtio]": "failure",  # XPASS(strict)
        "test_uses_kernel[deb-6.1-cloud/Nehalem/virtio]": "passed",
    }, p.stdout[-5000:] + p.stderr[-2000:]
    assert "src/file.c:3:5: error: 'FAIL_BUILD' undeclared" in p.stdout
    assert "[XPASS(strict)] expected no-boot" in p.stdout
    # Three kernels with distinct make variables: three builds, each tried once for two tests.
    assert len(counter.read_text().splitlines()) == 3
    results = json.loads((tmp_path / "reports" / "results.json").read_text())
    by_id = {(r["cell"], r["test"].split("::")[-1]): r["outcome"] for r in results["results"]}
    assert by_id[("broken-expected/Nehalem/virtio", "test_uses_guest")] == "xfailed"
    assert by_id[("broken/Nehalem/virtio", "test_uses_guest")] == "failed"
