"""The matrix loader: expansion, ids, and one precise error per kind of bad input."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kmatrix.errors import MatrixError
from kmatrix.kernels import load_matrix
from kmatrix.vm.devices import lower

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "m.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text).lstrip())
    (tmp_path / "bzImage").write_bytes(b"x")
    return p


def expect_error(path: Path, line: int, key: str, message: str) -> None:
    """Loading path fails with one error naming that file, line and key, saying message."""
    with pytest.raises(MatrixError) as e:
        load_matrix(path)
    assert (e.value.path, e.value.line, e.value.key) == (str(path), line, key), str(e.value)
    assert message in e.value.message, str(e.value)


GOOD = """
kernels:
  - name: k1
    image: bzImage
  - name: k2
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
cpus: [Nehalem, {name: Haswell, flags: [avx2]}]
devices:
  - {name: plain}
  - {name: rng, devices: [{driver: virtio-rng-pci, id: rng0}], modules: [virtio_rng]}
"""


def test_default_matrix_expands() -> None:
    m = load_matrix(ROOT / "matrix" / "default.yaml")
    ids = [c.id for c in m.cells]
    assert len(ids) == len(set(ids))
    kernels = {c.kernel.name for c in m.cells}
    versions = {k.split("-")[1] for k in kernels}
    assert {"6.1", "6.12"} <= versions
    assert {"Nehalem", "Haswell"} <= {c.cpu.name for c in m.cells}
    assert len({c.device.name for c in m.cells}) >= 2
    assert "deb-6.12-cloud/Haswell/virtio" in ids


def test_product_and_ids(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, GOOD))
    assert [c.id for c in m.cells] == [
        "k1/Nehalem/plain",
        "k1/Nehalem/rng",
        "k1/Haswell/plain",
        "k1/Haswell/rng",
        "k2/Nehalem/plain",
        "k2/Nehalem/rng",
        "k2/Haswell/plain",
        "k2/Haswell/rng",
    ]
    c = m.cell("k1/Haswell/rng")
    assert c.cpu.flags == ("avx2",)
    assert c.kernel.location == str(tmp_path / "bzImage")
    assert c.device.modules == ("virtio_rng",)
    assert c.slug == "k1__Haswell__rng"


def test_include_and_exclude(tmp_path: Path) -> None:
    text = GOOD + "include:\n  - {cpu: Haswell}\nexclude:\n  - {kernel: k2, device: rng}\n"
    m = load_matrix(write(tmp_path, text))
    assert [c.id for c in m.cells] == ["k1/Haswell/plain", "k1/Haswell/rng", "k2/Haswell/plain"]


def test_unknown_cell_lists_known(tmp_path: Path) -> None:
    m = load_matrix(write(tmp_path, GOOD))
    with pytest.raises(MatrixError, match=r"no cell 'nope'.*k1/Nehalem/plain"):
        m.cell("nope")


@pytest.mark.parametrize(
    ("text", "line", "key", "message"),
    [
        ("kernels: [\n", 2, None, "YAML syntax error"),
        (GOOD + "colour: blue\n", 10, "colour", "unknown key"),
        (
            GOOD.replace("image: bzImage", "image: bzImage\n    flavour: x"),
            4,
            "kernels[0].flavour",
            "unknown key",
        ),
        (GOOD.replace("name: k2", "name: k1"), 4, "kernels[1].name", "duplicate name 'k1'"),
        (
            GOOD.replace("image: bzImage", "image: missing.bin"),
            3,
            "kernels[0].image",
            "file not found",
        ),
        (GOOD + "defaults: {smp: two}\n", 10, "defaults.smp", "expected an integer"),
        (GOOD + "defaults: {boot_timeout: 0}\n", 10, "defaults.boot_timeout", "out of range"),
        (GOOD + "defaults: {boot_timeout: 99999}\n", 10, "defaults.boot_timeout", "out of range"),
        (GOOD + "defaults: {accel: hvf}\n", 10, "defaults.accel", "not one of"),
        (GOOD.replace("cpus: [Nehalem,", "cpus: [Neh alem,"), 6, "cpus[0]", "does not match"),
        (GOOD + "exclude: [{kernel: k9}]\n", 10, "exclude[0].kernel", "matches no kernel"),
        (GOOD + "exclude: [{kernel: '*'}]\n", None, "include/exclude", "no cell"),
        ("cpus: [a]\ndevices: [{name: d}]\n", 1, "kernels", "required key is missing"),
        (
            GOOD.replace("deb: linux-image-6.1.0-57-cloud-amd64-unsigned", "deb: Not_A_Package"),
            5,
            "kernels[1].deb",
            "neither a .deb file nor a package name",
        ),
        (
            GOOD.replace("- {name: plain}", "- nosuchprofile"),
            8,
            "devices[0]",
            "no device profile 'nosuchprofile'",
        ),
        (
            GOOD.replace("id: rng0}", "id: rng0, props: {x: [1]}}"),
            9,
            "devices[1].devices[0].props.x",
            "expected a scalar",
        ),
        (
            GOOD.replace("image: bzImage", "image: bzImage\n    deb: foo"),
            2,
            "kernels[0]",
            "exactly one of deb, image, tree",
        ),
    ],
)
def test_errors_name_file_line_key(
    tmp_path: Path, text: str, line: int | None, key: str | None, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(MatrixError) as e:
        load_matrix(path)
    err = e.value
    assert err.path == str(path)
    assert err.line == line, str(err)
    assert err.key == key, str(err)
    assert message in err.message, str(err)
    assert str(err).startswith(f"{path}:{line}: " if line else f"{path}: ")


def test_duplicate_yaml_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD + "name: a\nname: b\n")
    with pytest.raises(MatrixError, match=r":11: name: duplicate key"):
        load_matrix(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(MatrixError, match="file not found"):
        load_matrix(tmp_path / "absent.yaml")


def test_profile_file_errors_name_the_profile_file(tmp_path: Path) -> None:
    (tmp_path / "devices").mkdir()
    prof = tmp_path / "devices" / "bad.yaml"
    prof.write_text("name: bad\ndevices:\n  - {drivr: virtio-rng-pci}\n")
    path = write(tmp_path, GOOD.replace("- {name: plain}", "- bad"))
    with pytest.raises(MatrixError) as e:
        load_matrix(path)
    assert e.value.path == str(prof)
    assert e.value.line == 3
    assert e.value.key == "devices[0].drivr"


def test_pci_ids_accept_int_and_string(tmp_path: Path) -> None:
    text = GOOD.replace(
        "- {name: plain}",
        "- {name: plain, expect_pci: [{vendor: 0x1af4, device: '1044', driver: virtio-pci}]}",
    )
    m = load_matrix(write(tmp_path, text))
    pci = m.cells[0].device.expect_pci[0]
    assert (pci.vendor, pci.device, pci.driver) == ("1af4", "1044", "virtio-pci")


HOTPLUG = """
kernels:
  - name: k1
    image: bzImage
cpus: [Nehalem]
defaults: {memory: 1024}
devices:
  - name: hp
    devices: [{driver: virtio-rng-pci, id: rng0}]
    scratch_disk: {id: disk0, size: 16}
    hotplug: [rng0]
    memory_hotplug: {slots: 2, maxmem: 2048}
"""


def test_hotplug_and_scratch_disk_fields(tmp_path: Path) -> None:
    dev = load_matrix(write(tmp_path, HOTPLUG)).cells[0].device
    assert dev.scratch_disk is not None
    assert (dev.scratch_disk.id, dev.scratch_disk.size) == ("disk0", 16)
    assert dev.scratch_disk.driver == "virtio-blk-pci"
    assert dev.hotplug == ("rng0",)
    assert dev.memory_hotplug is not None
    assert (dev.memory_hotplug.slots, dev.memory_hotplug.maxmem) == (2, 2048)


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "message"),
    [
        ("maxmem: 2048", "maxmem: 1024", 11, "memory_hotplug.maxmem", "leaves no room"),
        ("slots: 2", "slots: 0", 11, "devices[0].memory_hotplug.slots", "out of range"),
        ("slots: 2,", "slot: 2,", 11, "devices[0].memory_hotplug.slot", "unknown key"),
        ("hotplug: [rng0]", "hotplug: [gpu0]", 10, "devices[0].hotplug[0]", "not the id"),
        ("size: 16", "size: 0", 9, "devices[0].scratch_disk.size", "out of range"),
        ("id: disk0", "id: rng0", 9, "devices[0].scratch_disk.id", "duplicate name"),
    ],
)
def test_hotplug_field_errors(
    tmp_path: Path, old: str, new: str, line: int, key: str, message: str
) -> None:
    path = write(tmp_path, HOTPLUG.replace(old, new))
    expect_error(path, line, key, message)


GPU = """
kernels: [{name: k1, image: bzImage}]
cpus: [Haswell]
devices:
  - name: stubs
    numa_nodes: 2
    gpu_stubs:
      count: 3
      bar: 4G
    mmio64: 16G
  - name: passthrough
    host_devices:
      - host: 01:00.0
host_access: {reason: the lab's passthrough card, devices: ["0000:01:00.0"]}
"""


def test_gpu_stub_and_host_device_fields(tmp_path: Path) -> None:
    stubs, host = (c.device for c in load_matrix(write(tmp_path, GPU)).cells)
    assert stubs.gpu_stubs is not None and stubs.gpu_stubs.vfio
    assert [(s.id, s.bar, s.numa_node) for s in stubs.gpu_stubs.stubs] == [
        ("gpu0", 4 << 30, 0),
        ("gpu1", 4 << 30, 1),
        ("gpu2", 4 << 30, 0),
    ]
    assert (stubs.iommu, stubs.mmio64, stubs.numa_nodes) == ("intel", 16 << 30, 2)
    # What QEMU gets for them (kmatrix.vm.devices):
    qemu = lower(stubs)
    assert "intel_iommu=on" in qemu.kernel_args and "pci=hpiosize=0" in qemu.kernel_args
    assert ("kernel-irqchip", "split") in qemu.machine_props
    assert qemu.devices[0].driver == "intel-iommu"  # before the devices it translates for
    assert {"vfio_pci", "vfio_iommu_type1"} <= set(qemu.modules)
    # The YAML 1.1 base-60 trap: unquoted 01:00.0 is still read as the address written.
    assert [h.address for h in host.host_devices] == ["0000:01:00.0"]
    assert host.iommu == "intel"


@pytest.mark.parametrize(
    ("old", "new", "line", "key", "message"),
    [
        # The BAR that cannot fit is named, with the window it missed: no VM is started.
        ("mmio64: 16G", "mmio64: 8G", 8, "devices[0].gpu_stubs.bar", "cannot fit the 8 GiB"),
        ("bar: 4G", "bar: 3G", 8, "devices[0].gpu_stubs.bar", "not a power of two"),
        ("bar: 4G", "bar: 512G", 8, "devices[0].gpu_stubs.bar", "out of range"),
        ("bar: 4G", "bar: lots", 8, "devices[0].gpu_stubs.bar", "expected a size"),
        ("count: 3", "count: 9", 7, "devices[0].gpu_stubs.count", "out of range"),
        ("    mmio64: 16G", "    iommu: none", 9, "devices[0].iommu", "needs an IOMMU"),
        ("numa_nodes: 2", "numa_nodes: 8", 5, "devices[0].numa_nodes", "out of range"),
        ("host: 01:00.0", "host: 01:00", 12, "devices[1].host_devices[0].host", "PCI address"),
        (
            "  - name: passthrough",
            "  - name: passthrough\n    machine: pc",
            12,
            "devices[1].host_devices",
            "needs machine: q35",
        ),
    ],
)
def test_gpu_field_errors(
    tmp_path: Path, old: str, new: str, line: int, key: str, message: str
) -> None:
    assert old in GPU
    path = write(tmp_path, GPU.replace(old, new))
    expect_error(path, line, key, message)


def test_stub_bar_too_big_for_the_default_window(tmp_path: Path) -> None:
    """Without mmio64 the window is sized to fit, up to what the guest can address."""
    path = write(
        tmp_path,
        GPU.replace("    mmio64: 16G\n", "")
        .replace("count: 3", "count: 8")
        .replace("bar: 4G", "bar: 64G"),
    )
    with pytest.raises(MatrixError, match=r"8 BARs of 64 GiB need a 512 GiB .*at most 256 GiB"):
        load_matrix(path)
