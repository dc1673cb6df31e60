"""What happens to an exception nobody expected: one line for the user, the traceback in a file.

A module of its own below every layer: the CLI, the plugin and the report writers all use it.

The CLI and the pytest plugin end that way, with EXIT_INTERNAL (pytest's own code for an
internal error), so a bug shows up as `kmatrix: internal error: ...; details in FILE` rather
than as a raw traceback, and is not mistaken for bad input (2) or a failed test (1).
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import sys
import tempfile
import traceback
from pathlib import Path

EXIT_INTERNAL = 3


def write_details(exc: BaseException, where: Path | None = None) -> Path:
    """The traceback (and what ran) in a new file under `where` if that is a writable
    directory, else under the temporary directory; returns its path."""
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    text = (
        f"kmatrix internal error, {dt.datetime.now().isoformat(timespec='seconds')}\n"
        f"command: {' '.join(sys.argv)}\n"
        f"python {platform.python_version()} on {platform.platform()}\n\n"
        + "".join(traceback.format_exception(exc))
    )
    for directory in (where, Path(tempfile.gettempdir())):
        if directory is None:
            continue
        try:
            fd, name = tempfile.mkstemp(
                prefix=f"kmatrix-internal-error-{stamp}-", suffix=".txt", dir=directory
            )
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            return Path(name)
        except OSError:
            continue
    return Path("/dev/null")  # nowhere to write: the one line is all there is


def describe(exc: BaseException, details: Path) -> str:
    """`internal error: Type: first line of the message; details in FILE`."""
    what = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), "")
    what = f"{type(exc).__name__}: {what[:300]}" if what else type(exc).__name__
    return f"internal error: {what}; details in {details}"


def report(exc: BaseException, where: Path | None = None) -> str:
    """Writes the details and returns the one line to show."""
    return "kmatrix: " + describe(exc, write_details(exc, where))
