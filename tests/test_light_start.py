"""A light start: what is imported before the first boot, and by `kmatrix list`. The first
QEMU should start as soon as the cell is known, so the plugin must not load the kernel
builder, the report writers, the run comparison, the kernel-log parser or the KCIDB schema
validator; those come when used (or while the first guest boots, see CellPool.warmup)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import DATA, ROOT
from kmatrix.results import compare

LATER = (
    "kmatrix.build.builder",
    "kmatrix.build.patches",
    "kmatrix.build.sources",
    "kmatrix.reports.writer",
    "kmatrix.reports.html",
    "kmatrix.reports.kcidb",
    "kmatrix.results.compare",
    "kmatrix.results.logparse",
    "kcidb_io",
    "jsonschema",
    "email.parser",
)


def loaded_after(code: str) -> set[str]:
    """The modules a fresh interpreter has loaded after running code."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    p = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return set(json.loads(p.stdout.splitlines()[-1]))


def test_the_plugin_loads_nothing_the_first_boot_does_not_need() -> None:
    mods = loaded_after("import kmatrix.pytest.plugin")
    assert "kmatrix.guest.guest" in mods  # the probe sees the plugin's own imports
    assert not [m for m in LATER if m in mods]


def test_loading_a_matrix_does_not_load_the_builder() -> None:
    mods = loaded_after(
        "from kmatrix.kernels import load_matrix\n"
        f"load_matrix({str(ROOT / 'matrix' / 'default.yaml')!r})"
    )
    assert "kmatrix.kernels.source" in mods
    assert not [m for m in LATER if m in mods]


def test_kmatrix_list_loads_no_writer_and_no_qmp() -> None:
    mods = loaded_after(
        "from kmatrix.cli.main import main\n"
        f"main(['list', '-m', {str(DATA / 'matrices' / 'two.yaml')!r}])"
    )
    assert "kmatrix.cli.report" in mods and "kmatrix.cli.merge" in mods  # their parsers
    assert not [m for m in (*LATER, "kmatrix.vm.machine", "qemu.qmp") if m in mods]


def test_compare_defaults_are_the_comparisons() -> None:
    """`kmatrix compare` declares its defaults without importing the statistics."""
    p = subprocess.run(
        [sys.executable, "-m", "kmatrix.cli", "compare", "--help"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    text = " ".join(p.stdout.split())
    assert f"significance (default {compare.ALPHA})" in text
    assert f"the median that counts (default {compare.MIN_CHANGE})" in text
