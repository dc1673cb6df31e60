"""Collection of baseline cells (kmatrix.pytest.collection): `-k` selects a baseline cell's
test with its patched twin's, `-k "not baseline"` leaves it out, and shards keep twins
together. Collection only: nothing is built or booted."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import ROOT

MATRIX = """
kernels:
  - name: k
    build:
      source: linux-source-6.1
      patches: series
      baseline: vanilla
  - name: deb
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
cpus: [Nehalem, Haswell]
devices: [{name: a}, {name: ab}]
"""


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("m")
    (d / "series").mkdir()
    (d / "series" / "0001-a.patch").write_text("--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n")
    p = d / "m.yaml"
    p.write_text(textwrap.dedent(MATRIX).lstrip())
    return p


def collect(matrix: Path, tmp_path: Path, *args: str) -> list[str]:
    """The node ids `pytest --collect-only` selects from testcases/test_boot.py."""
    p = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "testcases" / "test_boot.py"), "-p",
         "kmatrix", f"--kmatrix-matrix={matrix}", f"--kmatrix-reports={tmp_path / 'r'}",
         "-p", "no:cacheprovider", "--collect-only", "-q", *args],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode in (0, 5), p.stdout + p.stderr
    return [ln for ln in p.stdout.splitlines() if "::" in ln]


def cells(ids: list[str]) -> set[str]:
    return {i.split("[", 1)[1].rstrip("]") for i in ids}


def test_k_selects_the_baseline_with_its_twin(matrix: Path, tmp_path: Path) -> None:
    assert cells(collect(matrix, tmp_path, "-k", "k/Haswell/a and userspace")) == {
        "k/Haswell/a", "k/Haswell/ab", "k+baseline/Haswell/a", "k+baseline/Haswell/ab",
    }  # fmt: skip
    got = collect(matrix, tmp_path, "-k", "test_userspace_reached[k/Nehalem/ab]")
    assert cells(got) == {"k/Nehalem/ab", "k+baseline/Nehalem/ab"}
    assert cells(collect(matrix, tmp_path, "-k", "userspace and not baseline")) == {
        "k/Nehalem/a", "k/Nehalem/ab", "k/Haswell/a", "k/Haswell/ab",
        "deb/Nehalem/a", "deb/Nehalem/ab", "deb/Haswell/a", "deb/Haswell/ab",
    }  # fmt: skip
    only = cells(collect(matrix, tmp_path, "-k", "userspace and baseline"))
    assert only == {f"k+baseline/{c}" for c in ("Nehalem/a", "Nehalem/ab", "Haswell/a",
                                                  "Haswell/ab")}  # fmt: skip
    assert cells(collect(matrix, tmp_path, "-m", "kmatrix_baseline", "-k", "userspace")) == only
    assert not cells(collect(matrix, tmp_path, "-k", "deb and baseline"))


def test_shards_keep_twins_together(matrix: Path, tmp_path: Path) -> None:
    shards = [cells(collect(matrix, tmp_path, f"--kmatrix-shard={i}/3")) for i in (1, 2, 3)]
    assert set().union(*shards) == cells(collect(matrix, tmp_path))
    assert sum(map(len, shards)) == 12, "each cell in exactly one shard"
    for s in shards:
        for c in s:
            if c.startswith("k/"):
                assert c.replace("k/", "k+baseline/", 1) in s, (c, shards)


def test_series_upto_drops_the_twin(matrix: Path, tmp_path: Path) -> None:
    got = cells(collect(matrix, tmp_path, "--kmatrix-series-upto=k=vanilla", "-k", "userspace"))
    assert not any("baseline" in c for c in got) and "k/Haswell/a" in got
    p = subprocess.run(
        [sys.executable, "-m", "pytest", str(ROOT / "testcases" / "test_boot.py"), "-p",
         "kmatrix", f"--kmatrix-matrix={matrix}", "--kmatrix-series-upto=k=0002",
         "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip
    assert p.returncode == 4 and "'0002' names no patch" in p.stderr, p.stderr
