"""kselftest and KUnit items through the plugin, with no boot: ids at collection, -k and -m
selection, and the prerequisite check that makes a target not applicable before its cell
boots (kmatrix.pytest.kerneltests). The real runs are in test_guest_kselftest.py."""

from __future__ import annotations

import textwrap
from pathlib import Path

from conftest import DATA, ROOT, qemu_pids, run_kmatrix_pytest

TESTS = [ROOT / "testcases" / "test_kselftest.py"]


def matrix(tmp_path: Path) -> Path:
    """The Debian 6.1 cloud kernel (its config lacks what the demo target of a stand-in
    source tree asks for), and a kernel build tree with KUnit in its config (collected,
    never booted here)."""
    tree = tmp_path / "tree"
    (tree / "arch/x86/boot").mkdir(parents=True, exist_ok=True)
    (tree / "arch/x86/boot/bzImage").write_bytes(b"never booted")
    (tree / ".config").write_text("CONFIG_KUNIT=y\nCONFIG_LIST_KUNIT_TEST=y\n")
    m = tmp_path / "m.yaml"
    m.write_text(
        textwrap.dedent(f"""
        name: kt
        defaults: {{accel: tcg}}
        kernels:
          - name: deb61
            deb: linux-image-6.1.0-57-cloud-amd64-unsigned
            suites:
              kselftest:
                source: {DATA / "kselftest" / "tree"}
                targets: [demo]
          - name: tree
            tree: {tree}
        cpus: [Haswell]
        devices: [{{name: plain}}]
        """)
    )
    return m


def collected(tmp_path: Path, *args: str) -> list[str]:
    run = run_kmatrix_pytest(
        TESTS, tmp_path / "r", "--collect-only", "-q", *args, matrix=matrix(tmp_path)
    )
    return [ln.split("::", 1)[1] for ln in run.proc.stdout.splitlines() if "::" in ln]


def test_items_at_collection_and_selection(tmp_path: Path) -> None:
    cell = "deb61/Haswell/plain"
    assert collected(tmp_path) == [
        f"kselftest/demo/demo_one[{cell}]",
        f"kselftest/demo/demo_two[{cell}]",
        f"kselftest/demo/demo_script.sh[{cell}]",
        "kunit[tree/Haswell/plain]",  # CONFIG_KUNIT=y: its boot runs KUnit
    ]
    assert collected(tmp_path, "-k", "demo_two") == [f"kselftest/demo/demo_two[{cell}]"]
    assert collected(tmp_path, "-m", "kunit") == ["kunit[tree/Haswell/plain]"]


def test_missing_prerequisites_are_not_applicable_before_boot(
    tmp_path: Path, private_tmp: Path
) -> None:
    junit = tmp_path / "junit.xml"
    run = run_kmatrix_pytest(
        TESTS, tmp_path / "r", "-m", "kselftest", matrix=matrix(tmp_path), junit=junit,
        tmpdir=private_tmp,
    )  # fmt: skip
    cases = run.cases()
    assert len(cases) == 3, run.log
    for name, case in cases.items():
        assert case.outcome == "not_applicable", (name, run.log)
        assert (
            "kselftest target demo needs CONFIG_KMX_DEMO_FEATURE, which kernel deb61 does not "
            "have" in case.message
        ), case.message
    # Nothing booted: no console log was even started.
    assert not list((tmp_path / "r").rglob("console.log")), run.log
    assert not qemu_pids(str(private_tmp))
