"""`kmatrix bisect` on bad input: one clear error, exit status 2, and no build or VM started
(the cache it would build into stays empty)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from kmatrix.cli.bisect import Bisector, cell_expression
from kmatrix.cli.main import main
from kmatrix.kernels import load_matrix

MATRIX = """
kernels:
  - name: k
    build:
      source: linux-source-6.1
      patches: series
      baseline: vanilla
  - name: plain
    build: {source: linux-source-6.1}
  - name: deb
    deb: linux-image-6.1.0-57-cloud-amd64-unsigned
cpus: [Haswell]
devices: [{name: virtio}, {name: virtio-x}]
"""


@pytest.fixture
def matrix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    (tmp_path / "series").mkdir()
    for n in ("0001-a.patch", "0002-b.patch"):
        (tmp_path / "series" / n).write_text("--- a/x.c\n+++ b/x.c\n@@ -1 +1 @@\n-a\n+b\n")
    p = tmp_path / "m.yaml"
    p.write_text(textwrap.dedent(MATRIX).lstrip())
    return p


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["nope/Haswell/virtio"], "no cell 'nope/Haswell/virtio'; cells are: k/Haswell/virtio"),
        (["plain/Haswell/virtio"], "kernel 'plain'"),
        (["deb/Haswell/virtio"], "has no patch series to bisect"),
        (
            ["k+baseline/Haswell/virtio"],
            "is a baseline cell; bisect its patched cell k/Haswell/virtio instead",
        ),
        (["k/Haswell/virtio", "--runs", "0"], "--runs 0: each step needs at least one run"),
        (["k/Haswell/virtio", "--good", "0009"], "'0009' names no patch"),
        (["k/Haswell/virtio", "--good", "0002"], "the good end must be before the last patch"),
        (["k/Haswell/virtio", "-k", "test_no_such_test"], "selects no test of k/Haswell/virtio"),
    ],
)
def test_bad_input(
    matrix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], error: str
) -> None:
    rc = main(["bisect", "-m", str(matrix), "--reports", str(tmp_path / "r"), *args])
    err = capsys.readouterr().err
    assert rc == 2 and error in err, err
    assert not (tmp_path / "cache" / "builds").exists(), "nothing was built"


def test_baseline_that_names_no_patch(
    matrix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    matrix.write_text(matrix.read_text().replace("baseline: vanilla", "baseline: '0007'"))
    rc = main(["bisect", "-m", str(matrix), "k/Haswell/virtio"])
    err = capsys.readouterr().err
    assert rc == 2 and "m.yaml:6: kernels[0].build.baseline: '0007' names no patch" in err, err
    assert not (tmp_path / "cache" / "builds").exists()


def test_cell_expression_excludes_cells_containing_the_id(matrix: Path) -> None:
    m = load_matrix(matrix)
    expr = cell_expression(m, m.cell("k/Haswell/virtio"))
    assert expr == "k/Haswell/virtio and not k/Haswell/virtio-x"


def test_host_access_needs_the_run_to_allow_it(
    matrix: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cell that reaches the host is refused before any build unless the run allows it."""
    text = matrix.read_text().replace(
        "{name: virtio-x}]", '{name: pt, host_devices: [{host: "ffff:ff:1f.7"}]}]'
    )
    matrix.write_text(text + 'host_access: {reason: "a lab card", devices: ["ffff:ff:1f.7"]}\n')
    rc = main(["bisect", "-m", str(matrix), "--reports", str(tmp_path / "r"), "k/Haswell/pt"])
    err = capsys.readouterr().err
    assert rc == 2 and "m.yaml:13: host_access: cell k/Haswell/pt reaches" in err, err
    assert "--allow-host-access" in err
    assert not (tmp_path / "cache" / "builds").exists()


def test_run_options_reach_each_steps_pytest(matrix: Path, tmp_path: Path) -> None:
    m = load_matrix(matrix)
    cell = m.cell("k/Haswell/virtio")
    opts = ("--kmatrix-allow-host-access", "--kmatrix-require-sandbox")
    b = Bisector(m, cell, (), "k", 1, tmp_path / "r", run_options=opts)
    argv = b.pytest_argv(0, tmp_path / "out")
    assert argv[-len(opts) :] == list(opts)
    assert not set(opts) & set(Bisector(m, cell, (), "k", 1, tmp_path).pytest_argv(0, tmp_path))
