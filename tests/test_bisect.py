"""The bisection of a patch series against scripted step outcomes (kmatrix.results.bisect):
no kernel is built and no VM boots here; tests/test_bisect_real.py does that."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from kmatrix.results.bisect import (
    BAD,
    BOOT,
    BUILD,
    GOOD,
    SKIP,
    TEST,
    Outcome,
    bisect,
    classify,
    expected_steps,
)

PASS3 = Outcome(built=True, booted=True, runs=("pass", "pass", "pass"))
FAIL3 = Outcome(built=True, booted=True, runs=("fail", "fail", "fail"), detail="test_x: 1 != 2")
FLAKY3 = Outcome(built=True, booted=True, runs=("fail", "pass", "fail"))
NO_BUILD = Outcome(built=False, detail="mm/vmstat.c:1834: error: 'x' undeclared")
NO_BOOT = Outcome(built=True, booted=False, runs=("fail",))


def scripted(table: dict[int, Outcome] | Callable[[int], Outcome]) -> tuple[
    Callable[[int, str], Outcome], list[int]
]:  # fmt: skip
    """A probe that answers from the table and records which prefixes it was asked for."""
    asked: list[int] = []

    def probe(k: int, sought: str) -> Outcome:
        asked.append(k)
        return table(k) if callable(table) else table[k]

    return probe, asked


def first_bad_at(bad_from: int, bad: Outcome = FAIL3) -> Callable[[int], Outcome]:
    return lambda k: bad if k >= bad_from else PASS3


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 13, 32])
def test_every_position_found_in_about_log2_steps(n: int) -> None:
    for first in range(1, n + 1):
        probe, asked = scripted(first_bad_at(first))
        b = bisect(n, probe)
        assert (b.status, b.first_bad) == ("found", first), (n, first, b.message)
        assert b.bisection_steps <= expected_steps(n), (n, first, asked)
        assert asked[:2] == [n, 0], "the bad end first, then the good end"
        assert len(set(asked)) == len(asked), "no prefix is tried twice"


def test_first_patch_bad() -> None:
    probe, asked = scripted(first_bad_at(1))
    b = bisect(6, probe)
    assert (b.status, b.first_bad, b.sought) == ("found", 1, TEST)
    assert 0 in asked and all(k >= 0 for k in asked)


def test_last_patch_bad() -> None:
    probe, _ = scripted(first_bad_at(6))
    b = bisect(6, probe)
    assert (b.status, b.first_bad) == ("found", 6)
    assert b.steps[-1].k == 5 and b.steps[-1].verdict == GOOD


def test_nothing_bad() -> None:
    probe, asked = scripted(lambda k: PASS3)
    b = bisect(6, probe)
    assert b.status == "nothing-bad" and b.first_bad is None
    assert asked == [6], "a clean whole series ends it: nothing is built or booted after"
    assert "nothing to bisect" in b.message


def test_build_failure_is_sought_by_building_only() -> None:
    probe, _ = scripted(lambda k: NO_BUILD if k >= 5 else Outcome(built=True))
    sought: list[str] = []

    def spy(k: int, what: str) -> Outcome:
        sought.append(what)
        return probe(k, what)

    b = bisect(6, spy)
    assert (b.status, b.first_bad, b.sought) == ("found", 5, BUILD)
    assert sought[0] == "" and set(sought[1:]) == {BUILD}, "after the bad end: builds only"


def test_unrelated_build_failure_is_skipped() -> None:
    # Tests fail from patch 5 on; prefix 3 (the first midpoint) does not build for some
    # other reason: skipped like `git bisect skip` (the next try is the prefix nearest the
    # middle), and the answer is still exact.
    def table(k: int) -> Outcome:
        if k == 3:
            return NO_BUILD
        return FAIL3 if k >= 5 else PASS3

    probe, asked = scripted(table)
    b = bisect(6, probe)
    assert (b.status, b.first_bad) == ("found", 5), b.message
    assert asked[2:4] == [3, 2]
    skipped = [s for s in b.steps if s.verdict == SKIP]
    assert [s.k for s in skipped] == [3] and "does not build" in skipped[0].why
    assert asked.count(3) == 1


def test_untestable_step_next_to_the_answer_gives_a_range() -> None:
    # Prefix 4 cannot be tested (it does not boot) and 5 is the first failing one: either
    # patch 4 or patch 5 is the first bad one, as git bisect says with only skips left.
    def table(k: int) -> Outcome:
        if k == 4:
            return NO_BOOT
        return FAIL3 if k >= 5 else PASS3

    probe, _ = scripted(table)
    b = bisect(6, probe)
    assert b.status == "range" and b.first_bad is None
    assert b.candidates == [4, 5]


def test_flaky_step_does_not_mislead() -> None:
    # The bad end fails in every run; a step that fails in some runs only is not trusted
    # either way (skipped), so the search still lands on the true first bad patch.
    def table(k: int) -> Outcome:
        if k == 2:
            return FLAKY3
        return FAIL3 if k >= 4 else PASS3

    probe, _ = scripted(table)
    b = bisect(8, probe)
    assert (b.status, b.first_bad) == ("found", 4), b.message
    flaky = [s for s in b.steps if s.k == 2]
    assert not flaky or flaky[0].verdict == SKIP


def test_flaky_step_at_the_boundary_gives_a_range() -> None:
    def table(k: int) -> Outcome:
        if k == 3:
            return FLAKY3
        return FAIL3 if k >= 4 else PASS3

    probe, _ = scripted(table)
    b = bisect(6, probe)
    assert b.status == "range" and b.candidates == [3, 4]


def test_intermittent_regression_counts_any_failing_run() -> None:
    # The bad end itself fails in 2 of 3 runs: a step with any failing run is bad.
    some = Outcome(built=True, booted=True, runs=("fail", "pass", "fail"))
    probe, _ = scripted(first_bad_at(3, some))
    b = bisect(6, probe)
    assert b.intermittent and (b.status, b.first_bad) == ("found", 3)


def test_good_end_failing_too_is_not_the_series() -> None:
    probe, asked = scripted(lambda k: FAIL3)
    b = bisect(6, probe)
    assert b.status == "good-end-fails" and b.first_bad is None
    assert asked == [6, 0]


def test_boot_failure_sought() -> None:
    def table(k: int) -> Outcome:
        if k == 3:
            return NO_BUILD  # unrelated: skipped
        return NO_BOOT if k >= 5 else PASS3

    probe, _ = scripted(table)
    b = bisect(6, probe)
    assert (b.sought, b.status, b.first_bad) == (BOOT, "found", 5)
    assert [s.verdict for s in b.steps if s.k == 3] == [SKIP]


def test_good_end_from_a_patch() -> None:
    probe, asked = scripted(first_bad_at(5))
    b = bisect(8, probe, good=3)
    assert (b.status, b.first_bad) == ("found", 5)
    assert min(asked) == 3, "nothing before the declared good end is tried"


def test_host_errors_only_are_untestable() -> None:
    errors = Outcome(built=True, booted=True, runs=("error", "error"))
    probe, _ = scripted(lambda k: errors)
    assert bisect(4, probe).status == "untestable"


def test_classify() -> None:
    assert classify(FAIL3, TEST, False) == (BAD, "3/3 runs fail")
    assert classify(PASS3, TEST, False) == (GOOD, "0/3 runs fail")
    assert classify(FLAKY3, TEST, False)[0] == SKIP
    assert classify(FLAKY3, TEST, True)[0] == BAD
    assert classify(NO_BUILD, TEST, False)[0] == SKIP
    assert classify(NO_BUILD, BUILD, False)[0] == BAD
    assert classify(NO_BOOT, BOOT, False)[0] == BAD
    assert classify(NO_BOOT, TEST, False)[0] == SKIP


def test_to_dict_and_bad_arguments() -> None:
    probe, _ = scripted(first_bad_at(2))
    d = bisect(3, probe).to_dict()
    assert d["first_bad"] == 2 and d["steps"][0]["outcome"]["failures"] == 3
    with pytest.raises(ValueError):
        bisect(3, probe, good=3)
