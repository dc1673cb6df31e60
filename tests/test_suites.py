"""The scheduler, memory and driver suites end to end, and proof that each can fail.

One child pytest boots two 6.1 cloud cells under TCG: a healthy one (the virtio-memhp
profile, so the hot-add and hot-plug tests run too) that must pass all three suites, and
one broken on purpose - booted with maxcpus=1 and mem=320M, and with a profile that asks to
cycle virtio_ring, which virtio_pci and virtio_console hold - on which the vCPU placement,
MemTotal and module-reload tests must fail, each naming what it saw.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import ROOT

SUITES = ["testcases/test_sched.py", "testcases/test_memory.py", "testcases/test_drivers.py"]
BROKEN = ("test_every_vcpu_runs_a_task", "test_memtotal_matches_vm", "test_modules_unload_reload")

MATRIX = f"""
name: suites
defaults: {{memory: 512, smp: 2, boot_timeout: 90, test_timeout: 60, accel: tcg}}
kernels:
  - name: deb-6.1-cloud
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
  - name: deb-6.1-broken
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
    kernel_args: maxcpus=1 mem=320M
cpus:
  - {{name: Nehalem, flags: [sse4_2], absent: [avx2]}}
devices:
  - {ROOT / "matrix" / "devices" / "virtio-memhp.yaml"}
  - name: virtio-pinned
    devices: [{{driver: virtio-rng-pci, id: rng0}}]
    modules: [virtio_rng, virtio_ring]
include:
  - {{kernel: deb-6.1-cloud, device: virtio-memhp}}
  - {{kernel: deb-6.1-broken, device: virtio-pinned}}
"""


def _junit(path: Path) -> dict[str, tuple[str, str, dict[str, str]]]:
    """{test[cell]: (outcome, message, properties)} from a JUnit file."""
    out = {}
    for tc in ET.parse(path).getroot().iter("testcase"):
        kind, message = "passed", ""
        for child in tc:
            if child.tag in ("failure", "error", "skipped"):
                kind, message = child.tag, (child.get("message") or "") + (child.text or "")
        props = {p.get("name", ""): p.get("value", "") for p in tc.iter("property")}
        out[str(tc.get("name"))] = (kind, message, props)
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, str, dict[str, str]]]:
    tmp = tmp_path_factory.mktemp("suites")
    matrix = tmp / "suites.yaml"
    matrix.write_text(textwrap.dedent(MATRIX).lstrip())
    junit = tmp / "junit.xml"
    selection = "deb-6.1-cloud or " + " or ".join(BROKEN)
    argv = [
        sys.executable, "-m", "pytest", *SUITES, "-p", "kmatrix", f"--kmatrix-matrix={matrix}",
        f"--kmatrix-reports={tmp / 'reports'}", f"--junitxml={junit}", "-o",
        "junit_family=xunit1", "-p", "no:cacheprovider", "-k", selection, "-q",
    ]  # fmt: skip
    p = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=900, env=dict(os.environ)
    )
    assert junit.is_file(), p.stdout[-3000:] + p.stderr[-2000:]
    return _junit(junit)


def test_healthy_cell_passes_all_three_suites(
    run: dict[str, tuple[str, str, dict[str, str]]],
) -> None:
    healthy = {k: v for k, v in run.items() if "deb-6.1-cloud/" in k}
    assert len(healthy) >= 20, sorted(healthy)
    bad = {k: v[:2] for k, v in healthy.items() if v[0] not in ("passed", "skipped")}
    assert not bad, bad
    skipped = {k.split("[")[0]: v[1] for k, v in healthy.items() if v[0] == "skipped"}
    # The 6.1 cloud kernel has no zswap; every other test has what it needs on this cell.
    assert set(skipped) == {"test_zswap_state_and_toggle"}, skipped
    assert "CONFIG_ZSWAP" in skipped["test_zswap_state_and_toggle"]


def test_metrics_and_scheduler_properties_recorded(
    run: dict[str, tuple[str, str, dict[str, str]]],
) -> None:
    props = {}
    for k, (_, _, p) in run.items():
        if "deb-6.1-cloud/" in k:
            props.update(p)
    assert float(props["metric.hackbench_seconds"]) > 0
    assert float(props["metric.cyclictest_max_us"]) >= float(props["metric.cyclictest_p99_us"])
    assert props["sched.class"] == "CFS"  # 6.1 predates EEVDF
    assert props["sched.preempt_model"] == "voluntary"  # Debian's PREEMPT_DYNAMIC default
    assert props["sched.sched_ext"] == "absent"


@pytest.mark.parametrize(
    ("test", "says"),
    [
        ("test_every_vcpu_runs_a_task", "distinct CPUs"),
        ("test_memtotal_matches_vm", "of RAM; the VM has 512 MiB"),
        ("test_modules_unload_reload", "rmmod virtio_ring failed"),
    ],
)
def test_broken_cell_fails(
    run: dict[str, tuple[str, str, dict[str, str]]], test: str, says: str
) -> None:
    outcome, message, _ = run[f"{test}[deb-6.1-broken/Nehalem/virtio-pinned]"]
    assert outcome == "failure", (outcome, message[:2000])
    assert says in message, message[:2000]
