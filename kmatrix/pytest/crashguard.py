"""The plugin's last line of defence: an exception nobody expected ends the run with one line,
`kmatrix: internal error: ...; details in FILE`, and exit status 3 (kmatrix.crash),
instead of pytest's INTERNALERROR traceback. Only on the process that reports (the xdist
controller or the only process); a worker's internal errors travel to it as xdist sends them.

FILE is in the run's own directory once the run has chosen one (made then if the run wrote
nothing yet), beside the logs and results.json it belongs with; before that, in the reports
root if it exists, else in the temporary directory.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kmatrix import crash
from kmatrix.pytest.rundir import RUN_DIRS_KEY
from kmatrix.vm.machine import kill_all

F = TypeVar("F", bound=Callable[..., Any])


def details_dir(run: Path | None, fallback: Path | None = None) -> Path | None:
    """Where an internal error's details go: the run's directory (made if missing), else
    fallback if it is a directory, else None (crash.write_details: the temporary directory)."""
    if run is not None:
        try:
            run.mkdir(parents=True, exist_ok=True)
            return run
        except OSError:
            pass  # e.g. a read-only reports root: the details still go somewhere
    return fallback if fallback is not None and fallback.is_dir() else None


def exit_internal(exc: BaseException, run: Path | None, fallback: Path | None = None) -> None:
    """Kills our QEMUs, writes the traceback (see details_dir), and leaves pytest with the
    one line."""
    kill_all()
    pytest.exit(crash.report(exc, details_dir(run, fallback)), returncode=crash.EXIT_INTERNAL)


class InternalErrors:
    """Registered first, so pytest's terminal reporter never prints the traceback. root is
    the reports root; the run's directory is read from stash once rundir has chosen it."""

    def __init__(self, root: Path, stash: pytest.Stash) -> None:
        self.root = root
        self.stash = stash

    @pytest.hookimpl(tryfirst=True)
    def pytest_internalerror(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        dirs = self.stash.get(RUN_DIRS_KEY, None)
        exit_internal(excinfo.value, dirs.run if dirs is not None else None, self.root)


def guarded(reports: Callable[[Any], Path | None]) -> Callable[[F], F]:
    """For hooks that run outside pytest's internal-error handling (session finish): an
    unexpected exception becomes the one line too. reports(self) is the run's directory."""

    def wrap(fn: F) -> F:
        @wraps(fn)
        def hook(self: Any, *args: Any, **kwargs: Any) -> Any:
            try:
                return fn(self, *args, **kwargs)
            except (pytest.exit.Exception, KeyboardInterrupt):
                raise
            except Exception as e:
                exit_internal(e, reports(self))

        return hook  # type: ignore[return-value]

    return wrap
