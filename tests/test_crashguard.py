"""Where the plugin's internal-error details go (the one-line message itself, end to end, is
in test_hostile.py)."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pytest

from kmatrix import crash
from kmatrix.pytest import crashguard
from kmatrix.pytest.rundir import RUN_DIRS_KEY, RunDirs


@pytest.fixture
def killed(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records kill_all instead of killing this test process's QEMUs."""
    calls: list[bool] = []
    monkeypatch.setattr(crashguard, "kill_all", lambda: calls.append(True))
    return calls


def internal_error(guard: crashguard.InternalErrors) -> Path:
    """Raises a bug into the guard's hook; the details file its one line names."""
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        excinfo = pytest.ExceptionInfo[BaseException].from_current()
    with pytest.raises(pytest.exit.Exception) as exited:
        guard.pytest_internalerror(excinfo)
    assert exited.value.returncode == crash.EXIT_INTERNAL
    m = re.fullmatch(r"kmatrix: internal error: RuntimeError: a bug; details in (\S+)",
                     exited.value.msg)  # fmt: skip
    assert m, exited.value.msg
    details = Path(m.group(1))
    assert "RuntimeError: a bug" in details.read_text()
    return details


def test_details_go_into_the_run_directory(tmp_path: Path, killed: list[bool]) -> None:
    root = tmp_path / "reports"
    run = root / "20261130-104000"
    stash = pytest.Stash()
    stash[RUN_DIRS_KEY] = RunDirs(root, run)
    assert internal_error(crashguard.InternalErrors(root, stash)).parent == run  # made for it
    assert killed == [True]
    run.mkdir(exist_ok=True)
    assert internal_error(crashguard.InternalErrors(root, stash)).parent == run


def test_details_before_the_run_directory_is_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, killed: list[bool]
) -> None:
    """The reports root if it exists (nothing is made for a run that has not begun), else the
    temporary directory."""
    root = tmp_path / "reports"
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    guard = crashguard.InternalErrors(root, pytest.Stash())
    assert internal_error(guard).parent == tmp and not root.exists()
    root.mkdir()
    assert internal_error(guard).parent == root
    assert sorted(p.parent for p in tmp_path.rglob("kmatrix-internal-error-*")) == [root, tmp]


def test_a_run_directory_that_cannot_be_made_falls_back(tmp_path: Path, killed: list[bool]) -> None:
    root = tmp_path / "reports"
    root.mkdir()
    (tmp_path / "file").write_text("")
    stash = pytest.Stash()
    stash[RUN_DIRS_KEY] = RunDirs(None, tmp_path / "file" / "run")  # under a file: no mkdir
    assert internal_error(crashguard.InternalErrors(root, stash)).parent == root
