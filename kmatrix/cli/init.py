"""`kmatrix init [DIR]`: a starter matrix and testcases directory in a repository of one's own.

It writes matrix/default.yaml (one Debian kernel, two CPU models, one device profile), the
profile it names (matrix/devices/NAME.yaml) and testcases/ with a conftest.py and an example
test. The kernel, CPU models and profile are the first ones of kmatrix's bundled default
matrix, so the starter names Debian packages as current as kmatrix's own. Existing files
are never overwritten: when any target exists, nothing is written.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from kmatrix.errors import InputError
from kmatrix.kernels import load_matrix
from kmatrix.resources import data_dir

CONFTEST = '''\
"""Guest tests of this repository, run by kmatrix in every cell of matrix/default.yaml.

The kmatrix pytest plugin provides the fixtures: `cell` (the cell a test runs in),
`booted` (its Guest), `guest` (a GuestSession: run(cmd), read_file, write_file, dmesg),
`kernel` (the KernelArtifact: release, config) and `qmp`. Helpers come from `kmatrix`.

    pytest                  kmatrix's built-in suites and these tests, all cells
    pytest testcases        these tests only
    pytest -k sched         what -k selects, e.g. the scheduler suite
    kmatrix run             both, with one xdist worker per CPU; reports into reports/
"""
'''

EXAMPLE = '''\
"""An example: each test runs once per cell, on the cell's guest (booted once per cell)."""

from kmatrix import GuestSession, KernelArtifact, require_config


def test_guest_runs_the_kernel_of_the_cell(guest: GuestSession, kernel: KernelArtifact) -> None:
    assert guest.run("uname -r", check=True).stdout.strip() == kernel.release


def test_scratch_disk_is_writable(guest: GuestSession, kernel: KernelArtifact) -> None:
    # Skipped, with the reason, on a kernel built without virtio-blk.
    require_config(kernel, "VIRTIO_BLK")
    guest.run("echo hello > /tmp/example && grep -q hello /tmp/example", check=True)
'''


def _flow(value: Any) -> str:
    """One YAML value on one line, keys in the order given."""
    text = yaml.safe_dump(value, default_flow_style=True, sort_keys=False, width=1000)
    return text.strip().removesuffix("...").strip()


def starter_files() -> dict[str, str | Path]:
    """Relative path -> text to write, or a bundled file to copy."""
    bundled = data_dir("matrix") / "default.yaml"
    doc = yaml.safe_load(bundled.read_text())
    kernel = next(k for k in doc["kernels"] if "deb" in k)
    cpus = doc["cpus"][:2]
    device = next(d for d in doc["devices"] if isinstance(d, str))
    lines = [
        "# A starter matrix, written by `kmatrix init`: one Debian kernel x two CPU models x one",
        "# device profile. `kmatrix list` shows its cells; add kernels (deb:, pkg:, image:, tree:,",
        "# build:), CPU models and profiles as your tests need them.",
        "name: default",
        f"description: {kernel['name']} on {' and '.join(c['name'] for c in cpus)}, {device}",
        f"defaults: {_flow(doc.get('defaults', {}))}",
        "kernels:",
        "  # Fetched with `apt-get download` into the cache and unpacked, never installed.",
        f"  - {_flow(kernel)}",
        "cpus:",
        *(f"  - {_flow(c)}" for c in cpus),
        "devices:",
        f"  - {device}    # matrix/devices/{device}.yaml",
    ]
    return {
        "matrix/default.yaml": "\n".join(lines) + "\n",
        f"matrix/devices/{device}.yaml": data_dir("matrix") / "devices" / f"{device}.yaml",
        "testcases/conftest.py": CONFTEST,
        "testcases/test_example.py": EXAMPLE,
    }


def init(dest: Path) -> list[Path]:
    """Writes the starter files into dest; InputError naming every file already there."""
    files = starter_files()
    existing = [dest / rel for rel in files if (dest / rel).exists()]
    if existing:
        raise InputError(
            "kmatrix init writes no file that exists already; found "
            + ", ".join(str(p) for p in existing)
        )
    written = []
    for rel, content in files.items():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, Path):
            shutil.copyfile(content, target)
        else:
            target.write_text(content)
        written.append(target)
    load_matrix(dest / "matrix" / "default.yaml")  # what it wrote is a valid matrix
    return written


def command(directory: str) -> int:
    dest = Path(directory)
    written = init(dest)
    for p in written:
        print(f"kmatrix init: wrote {p}")
    print(
        "next: `kmatrix list` shows the cells, `kmatrix run` (or `pytest`) runs the built-in "
        "suites and testcases/ in them"
        + (f" (from {dest})" if dest.resolve() != Path.cwd().resolve() else "")
    )
    return 0
