"""Whole-number option values (the options themselves, end to end, in test_hostile.py)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

import pytest

from kmatrix.config.optionvalues import count, positive, whole_number


def test_whole_numbers_at_their_bounds() -> None:
    assert count("0") == 0 and count(" 7 ") == 7
    assert positive("1") == 1 and whole_number("-2", -2) == -2


@pytest.mark.parametrize(
    ("parse", "text", "message"),
    [
        (count, "-1", "-1: must be 0 or more"),
        (positive, "0", "0: must be 1 or more"),
        (positive, "-3", "-3: must be 1 or more"),
        (count, "many", "'many' is not a whole number"),
        (positive, "1.5", "'1.5' is not a whole number"),
        (count, "", "'' is not a whole number"),
    ],
)
def test_bad_values_say_what_is_wrong(parse: Callable[[str], int], text: str, message: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError) as e:
        parse(text)
    assert str(e.value) == message


def test_argparse_names_the_option() -> None:
    p = argparse.ArgumentParser(exit_on_error=False)
    p.add_argument("--retries", type=count)
    with pytest.raises(argparse.ArgumentError, match="--retries: -1: must be 0 or more"):
        p.parse_args(["--retries=-1"])
