"""The GPU-stub tests of the driver suite end to end, and proof that they can fail.

One child pytest boots two 6.1 cloud cells under TCG: the gpu-bar-stub profile, which must
pass, and a broken one - the same stub under an IOMMU the guest kernel is told to keep off
(intel_iommu=off), plus a raw ivshmem device whose 1 TiB BAR cannot fit the guest's 40-bit
physical address space - on which the IOMMU-group, VFIO and resource-assignment tests must
fail, each naming what it saw, and the guest must still boot (no hang). A third cell passes a
host device this host cannot have: its tests are skipped with the host check's reason.
"""

from __future__ import annotations

import textwrap

import pytest

from conftest import ROOT, JunitCase, run_kmatrix_pytest

pytestmark = pytest.mark.boot  # every test here starts QEMU

MATRIX = f"""
name: gpu-suite
defaults: {{memory: 512, smp: 2, boot_timeout: 90, test_timeout: 60, accel: tcg}}
kernels:
  - name: deb-6.1-cloud
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
cpus:
  - {{name: Haswell, model: Haswell-noTSX}}
devices:
  - {ROOT / "matrix" / "devices" / "gpu-bar-stub.yaml"}
  - name: broken
    gpu_stubs: {{count: 1, bar: 256M}}
    kernel_args: intel_iommu=off
    objects:
      - {{type: memory-backend-ram, id: bigmem, props: {{size: 1T, reserve: false}}}}
    devices:
      - {{driver: pcie-root-port, id: rp9, props: {{bus: pcie.0, chassis: 9}}}}
      - {{driver: ivshmem-plain, id: big0, props: {{bus: rp9, memdev: bigmem}}}}
  - name: passthrough
    host_devices: [{{host: "ffff:ff:1f.7"}}]
host_access: {{reason: "a lab's passthrough card", devices: ["ffff:ff:1f.7"]}}
"""

Cases = dict[str, JunitCase]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Cases:
    tmp = tmp_path_factory.mktemp("gpu")
    matrix = tmp / "gpu.yaml"
    matrix.write_text(textwrap.dedent(MATRIX).lstrip())
    return run_kmatrix_pytest(
        ["testcases/test_gpu.py"],
        tmp / "reports",
        "-q",
        "--kmatrix-allow-host-access",
        matrix=matrix,
        junit=tmp / "junit.xml",
    ).cases()


def test_bar_stub_cell_passes(run: Cases) -> None:
    cell = {k.split("[")[0]: v for k, v in run.items() if "/gpu-bar-stub]" in k}
    assert {k for k, v in cell.items() if v.outcome == "passed"} == {
        "test_pci_resources_assigned",
        "test_gpu_stub_bars_as_declared",
        "test_gpu_stub_iommu_groups",
        "test_gpu_stub_vfio_bind_open_rebind",
        "test_gpu_stub_hot_unplug_replug",
    }, {k: v[:2] for k, v in cell.items()}
    na = {k: v.message for k, v in cell.items() if v.outcome == "not_applicable"}
    assert set(na) == {
        "test_gpu_stub_numa_nodes",
        "test_virtio_gpu_drm_and_screendump",
        "test_virtio_gpu_frame_reaches_the_display",
    }
    assert "no NUMA nodes" in na["test_gpu_stub_numa_nodes"]


@pytest.mark.parametrize(
    ("test", "says"),
    [
        # The BAR that did not fit is named by its QEMU id and BAR number.
        ("test_pci_resources_assigned", "= big0 (ivshmem-plain): BAR 2"),
        ("test_gpu_stub_iommu_groups", "no IOMMU groups"),
        ("test_gpu_stub_vfio_bind_open_rebind", "did not bind to vfio-pci"),
    ],
)
def test_broken_cell_fails(run: Cases, test: str, says: str) -> None:
    outcome, message, _ = run[f"{test}[deb-6.1-cloud/Haswell/broken]"]
    assert outcome == "failure", (outcome, message[:2000])
    assert says in message, message[:2000]


def test_host_device_cell_is_skipped_with_the_reason(run: Cases) -> None:
    cell = {k: v for k, v in run.items() if "/passthrough]" in k}
    assert cell, sorted(run)
    # Tests that could apply are skipped (they should have run; this host cannot); those
    # that could never apply to the profile say so instead.
    wrong = {k: v[:2] for k, v in cell.items() if v.outcome not in ("skipped", "not_applicable")}
    assert not wrong, wrong
    skipped = [case for case in cell.values() if case.outcome == "skipped"]
    assert skipped
    for case in skipped:
        assert "cannot pass through host PCI device ffff:ff:1f.7" in case.message, case.message
