"""Command-line values checked as argparse parses them, so a bad one is a usage error
(exit 2) naming the option, before anything runs. Whole numbers are
kmatrix.config.optionvalues (the pytest plugin's options use them too)."""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def non_negative(text: str) -> float:
    """A finite number >= 0 (--min-change)."""
    x = _number(text)
    if not math.isfinite(x) or x < 0:
        raise argparse.ArgumentTypeError(f"{text}: must be a finite number, 0 or more")
    return x


def probability(text: str) -> float:
    """A number strictly between 0 and 1 (--alpha)."""
    x = _number(text)
    if not 0 < x < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be between 0 and 1")
    return x


def output_file(text: str) -> Path:
    """A file to write (--json): not a directory or a special file, in a directory that
    exists; an existing regular file is replaced."""
    p = Path(text)
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: is a directory; give a file name")
    if p.exists() and not p.is_file():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a regular file")
    if not p.absolute().parent.is_dir():
        raise argparse.ArgumentTypeError(f"{text}: its directory does not exist")
    return p


def directory(text: str) -> str:
    """A directory to write into (--reports): made if missing, refused if it is a file."""
    if Path(text).exists() and not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text}: exists and is not a directory")
    return text
