"""Command-line option values checked as argparse parses them (the `type=` of an option), for
both the kmatrix command and the pytest plugin's options: a bad one raises
argparse.ArgumentTypeError saying what is wrong, and argparse names the option."""

from __future__ import annotations

import argparse


def whole_number(text: str, minimum: int) -> int:
    """text as a whole number >= minimum."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < minimum:
        raise argparse.ArgumentTypeError(f"{n}: must be {minimum} or more")
    return n


def count(text: str) -> int:
    """A whole number >= 0 (--kmatrix-retries, --kmatrix-rerun)."""
    return whole_number(text, 0)


def positive(text: str) -> int:
    """A whole number >= 1 (--repeat)."""
    return whole_number(text, 1)
