"""The scheduler, memory and driver suites end to end, and proof that each can fail.

One child pytest boots two 6.1 cloud cells under TCG: a healthy one (the virtio-memhp
profile, so the hot-add and hot-plug tests run too) that must pass all three suites, and
one broken on purpose - booted with maxcpus=1 and mem=320M, and with a profile that asks to
cycle virtio_ring, which virtio_pci and virtio_console hold - on which the vCPU placement,
MemTotal and module-reload tests must fail, each naming what it saw.
"""

from __future__ import annotations

import textwrap

import pytest

from conftest import ROOT, JunitCase, run_kmatrix_pytest

pytestmark = pytest.mark.boot  # every test here starts QEMU

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


Cases = dict[str, JunitCase]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    tmp = tmp_path_factory.mktemp("suites")
    matrix = tmp / "suites.yaml"
    matrix.write_text(textwrap.dedent(MATRIX).lstrip())
    selection = "deb-6.1-cloud or " + " or ".join(BROKEN)
    return run_kmatrix_pytest(
        SUITES, tmp / "reports", "-k", selection, "-q", matrix=matrix, junit=tmp / "junit.xml"
    ).cases()


def test_healthy_cell_passes_all_three_suites(run: Cases) -> None:
    healthy = {k: v for k, v in run.items() if "deb-6.1-cloud/" in k}
    assert len(healthy) >= 20, sorted(healthy)
    bad = {k: v[:2] for k, v in healthy.items() if v[0] not in ("passed", "not_applicable")}
    assert not bad, bad
    na = {k.split("[")[0]: v[1] for k, v in healthy.items() if v[0] == "not_applicable"}
    # The 6.1 cloud kernel has no zswap; every other test has what it needs on this cell.
    assert set(na) == {"test_zswap_state_and_toggle"}, na
    assert "CONFIG_ZSWAP" in na["test_zswap_state_and_toggle"]


def test_metrics_and_scheduler_properties_recorded(run: Cases) -> None:
    props = {}
    for k, (_, _, p) in run.items():
        if "deb-6.1-cloud/" in k:
            props.update(p)
    assert float(props["metric.hackbench_seconds"]) > 0
    assert float(props["metric.cyclictest_max_us"]) >= float(props["metric.cyclictest_p99_us"])
    assert props["sched.class"] == "CFS"  # 6.1 predates EEVDF
    assert props["sched.preempt_model"] == "voluntary"  # Debian's PREEMPT_DYNAMIC default
    assert props["sched.sched_ext"] == "absent"
    # The tools came from the read-only disk the suites' tests ask for.
    assert props["kmatrix.disk.tools"] == "squashfs disk"


@pytest.mark.parametrize(
    ("test", "says"),
    [
        ("test_every_vcpu_runs_a_task", "distinct CPUs"),
        ("test_memtotal_matches_vm", "of RAM; the VM has 512 MiB"),
        ("test_modules_unload_reload", "rmmod virtio_ring failed"),
    ],
)
def test_broken_cell_fails(run: Cases, test: str, says: str) -> None:
    outcome, message, _ = run[f"{test}[deb-6.1-broken/Nehalem/virtio-pinned]"]
    assert outcome == "failure", (outcome, message[:2000])
    assert says in message, message[:2000]
