"""Where this run writes: its own run directory, chosen once by the controller (or the only
process) and handed to xdist workers, so the cells' logs and results.json land together.

`--kmatrix-reports ROOT` (default reports/): the run goes to ROOT/<start time>/ and
ROOT/latest follows the newest complete run (kmatrix.results.rundirs). `--kmatrix-run-dir
DIR`: the run goes to DIR itself (a CI shard's artefact directory), refused if DIR already
holds a run. Nothing is created here: the directory appears with the run's first file.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kmatrix.results import rundirs

WORKER_KEY = "kmatrix_run_dir"


@dataclass(frozen=True)
class RunDirs:
    root: Path | None  # None with --kmatrix-run-dir: no history, no latest link
    run: Path


RUN_DIRS_KEY = pytest.StashKey[RunDirs]()


def _absolute(config: pytest.Config, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else Path(config.invocation_params.dir) / p


def choose(config: pytest.Config) -> RunDirs:
    """This process's RunDirs (a worker takes the controller's)."""
    root = _absolute(config, str(config.getoption("kmatrix_reports")))
    explicit = config.getoption("kmatrix_run_dir", None)
    workerinput: dict[str, Any] | None = getattr(config, "workerinput", None)
    if workerinput is not None and WORKER_KEY in workerinput:
        run = Path(workerinput[WORKER_KEY])
        return RunDirs(None if explicit else root, run)
    if explicit:
        run = _absolute(config, str(explicit))
        if (run / rundirs.RESULTS).exists():
            raise pytest.UsageError(
                f"kmatrix: --kmatrix-run-dir {run} already holds a run (its results.json); "
                "a run never overwrites another: give a new directory"
            )
        return RunDirs(None, run)
    return RunDirs(root, rundirs.choose_run_dir(root, dt.datetime.now(dt.UTC)))


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """xdist: every worker writes into the controller's run directory."""
    dirs = node.config.stash.get(RUN_DIRS_KEY, None)
    if dirs is not None:
        node.workerinput[WORKER_KEY] = str(dirs.run)
