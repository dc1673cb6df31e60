"""The plugin's last line of defence: an exception nobody expected ends the run with one line,
`kmatrix: internal error: ...; details in FILE`, and exit status 3 (kmatrix.crash),
instead of pytest's INTERNALERROR traceback. Only on the process that reports (the xdist
controller or the only process); a worker's internal errors travel to it as xdist sends them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kmatrix import crash
from kmatrix.vm.machine import kill_all

F = TypeVar("F", bound=Callable[..., Any])


def exit_internal(exc: BaseException, reports: Path | None) -> None:
    """Kills our QEMUs, writes the traceback, and leaves pytest with the one line."""
    kill_all()
    where = reports if reports is not None and reports.is_dir() else None
    pytest.exit(crash.report(exc, where), returncode=crash.EXIT_INTERNAL)


class InternalErrors:
    """Registered first, so pytest's terminal reporter never prints the traceback."""

    def __init__(self, reports: Path) -> None:
        self.reports = reports

    @pytest.hookimpl(tryfirst=True)
    def pytest_internalerror(self, excinfo: pytest.ExceptionInfo[BaseException]) -> None:
        exit_internal(excinfo.value, self.reports)


def guarded(reports: Callable[[Any], Path | None]) -> Callable[[F], F]:
    """For hooks that run outside pytest's internal-error handling (session finish): an
    unexpected exception becomes the one line too. reports(self) says where details go."""

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
