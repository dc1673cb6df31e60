"""kmatrix.cli.signals: SIGTERM unwinds an in-process command, and only while it runs."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from kmatrix.cli.bisect import bisect_command
from kmatrix.cli.signals import sigterm_unwinds
from kmatrix.errors import InputError


def test_sigterm_unwinds_while_it_runs_then_the_old_handler_is_back() -> None:
    seen: list[int] = []
    old = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with pytest.raises(KeyboardInterrupt, match="signal 15"), sigterm_unwinds():
            os.kill(os.getpid(), signal.SIGTERM)
            signal.sigtimedwait([], 0)  # nothing: the handler has run by now
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]  # the caller's handler again, not an unwind
    finally:
        signal.signal(signal.SIGTERM, old)


def test_a_command_that_fails_leaves_the_callers_handler(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGTERM)
    # The matrix is missing: an error from the command's body, after its handler was set.
    with pytest.raises(InputError, match=r"m\.yaml"):
        bisect_command(
            tmp_path / "m.yaml", "k/cpu/dev", tests=None, runs=1, reports=tmp_path / "r",
            json_path=None, good=None, accel=None,
        )  # fmt: skip
    assert signal.getsignal(signal.SIGTERM) is before
