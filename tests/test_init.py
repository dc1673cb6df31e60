"""`kmatrix init` (kmatrix/cli/init.py) and how pytest collects in the directory it sets up:
the built-in suites join a run given no paths (kmatrix/pytest/suites.py). Collection only;
tests/test_wheel.py boots a cell from such a directory with kmatrix installed from its wheel.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import ROOT
from kmatrix.cli.init import init
from kmatrix.cli.main import main
from kmatrix.errors import InputError
from kmatrix.kernels import load_matrix


def test_init_writes_a_starter_from_the_default_matrix(tmp_path: Path) -> None:
    written = init(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in written) == [
        "matrix/default.yaml", "matrix/devices/virtio.yaml",
        "testcases/conftest.py", "testcases/test_example.py",
    ]  # fmt: skip
    m = load_matrix(tmp_path / "matrix" / "default.yaml")
    default = load_matrix(ROOT / "matrix" / "default.yaml")
    (k,) = m.kernels
    d = default.kernels[0]
    assert (k.name, k.source, k.location, k.release) == (d.name, d.source, d.location, d.release)
    assert [c.name for c in m.cpus] == [c.name for c in default.cpus[:2]]
    assert [c.id for c in m.cells] == [
        f"{m.kernels[0].name}/{c.name}/virtio" for c in default.cpus[:2]
    ]
    # The example test is valid Python.
    compile((tmp_path / "testcases" / "test_example.py").read_text(), "test_example.py", "exec")


def test_init_overwrites_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "testcases" / "conftest.py"
    mine.parent.mkdir()
    mine.write_text("# mine\n")
    with pytest.raises(InputError, match=f"found {mine}$"):
        init(tmp_path)
    assert mine.read_text() == "# mine\n"
    assert not (tmp_path / "matrix").exists()  # nothing written when anything is in the way
    assert main(["init", str(tmp_path)]) == 2
    assert "writes no file that exists already" in capsys.readouterr().err


def collect(cwd: Path, *args: str) -> list[str]:
    p = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr
    return [ln for ln in p.stdout.splitlines() if "::" in ln]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("repo")
    init(d)
    return d


@pytest.fixture(scope="module")
def plain(repo: Path) -> list[str]:
    """What a plain `pytest` collects there."""
    return collect(repo)


def test_plain_pytest_collects_builtin_suites_and_own_tests(repo: Path, plain: list[str]) -> None:
    ids = plain
    own = [i for i in ids if i.startswith("testcases/test_example.py::")]
    builtin = {i.split("::")[0] for i in ids if not i.startswith("testcases/")}
    # test_kselftest.py has items only for cells that run kernel tests (the matrix's suites
    # key, KUnit kernels): the starter matrix has none.
    suites = {p.name for p in (ROOT / "testcases").glob("test_*.py")} - {"test_kselftest.py"}
    assert len(own) == 4 and builtin == suites, ids
    # -k selects across both, as in the checkout.
    sched = collect(repo, "-k", "sched")
    assert sched and all(i.startswith("test_sched.py::") for i in sched), sched


def test_named_paths_are_collected_alone(repo: Path, plain: list[str]) -> None:
    # The matrix is still found from the invocation directory (testcases/ is the rootdir).
    mine = collect(repo, "testcases")
    assert {i.split("::")[0] for i in mine} == {"testcases/test_example.py"}
    assert len(mine) == 4 and all("/Nehalem/" in i or "/Haswell/" in i for i in mine), mine
    off = collect(repo, "-o", "kmatrix_builtin_suites=false")
    assert {i.split("::")[0] for i in off} == {"testcases/test_example.py"}
    both = collect(repo, "testcases", "--kmatrix-builtin-suites")
    assert sorted(both) == sorted(plain) and "test_boot.py" in {i.split("::")[0] for i in both}


def test_checkout_collects_its_suites_once() -> None:
    ids = collect(ROOT, "-k", "Nehalem and boot")
    assert ids and len(ids) == len(set(ids))
    assert all(i.startswith("testcases/test_boot.py::") for i in ids), ids


def test_no_matrix_no_builtin_suites(tmp_path: Path) -> None:
    (tmp_path / "test_plain.py").write_text("def test_plain():\n    pass\n")
    assert collect(tmp_path) == ["test_plain.py::test_plain"]


def test_starter_is_valid_yaml_with_comments(repo: Path) -> None:
    text = (repo / "matrix" / "default.yaml").read_text()
    assert text.startswith("# A starter matrix, written by `kmatrix init`")
    assert yaml.safe_load(text)["name"] == "default"
