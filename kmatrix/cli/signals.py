"""SIGTERM (CI cancelling a job) unwinds a long in-process command like Ctrl-C, for as long
as the command runs: a build's make and a run's pytest (and its QEMUs) are stopped by the
cleanup the KeyboardInterrupt runs. The handler it replaced comes back afterwards, so a caller
in the same process (a test suite, a library user) and the processes it forks later do not
inherit it."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


def _on_term(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """Usable as a decorator too. Outside the main thread, where no handler can be set, it
    does nothing."""
    try:
        old = signal.signal(signal.SIGTERM, _on_term)
    except ValueError:  # not in the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
