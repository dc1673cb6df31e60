"""Bisection of a patch series: which patch is the first after which a cell fails.

Prefix k of a series is its first k applied patches (k = 0: none). The bad end, the whole
series, is tried first: what goes wrong there (the build fails, the kernel does not boot, or
the selected tests fail) is what the bisection looks for; if nothing does, there is nothing
to bisect. Then the good end (the baseline: vanilla, or a prefix) must not show it, or the
failure is not the series' doing. In between, each step tries the prefix in the middle of
the range still in doubt, as `git bisect` does, so about log2(n) steps find the patch.

A step's raw outcome (built? booted? how many of R runs of the tests failed) becomes a
verdict according to what is sought:

* a build failure: built -> good, not built -> bad (nothing is booted);
* a boot failure: not built -> skip (it cannot be tested), no boot -> bad, booted -> good;
* a test failure: not built or no boot -> skip; when the bad end failed in every run, all R
  runs failing -> bad, none -> good, some -> skip (flaky here: it cannot mislead the search);
  when the bad end itself failed only sometimes, any failing run -> bad, none -> good.

A skipped step is left out of the range the way `git bisect skip` does: the next step is the
untested prefix nearest the middle; when only skipped prefixes are left between the last
good and the first bad one, the answer is that range. This module is pure logic: the caller
(kmatrix bisect) builds, boots and runs the tests for each step it is asked about.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

GOOD, BAD, SKIP = "good", "bad", "skip"
BUILD, BOOT, TEST = "build", "boot", "test"  # what fails at the bad end


@dataclass(frozen=True)
class Outcome:
    """What one step found: built at all, booted, and per run whether the tests failed."""

    built: bool
    booted: bool | None = None  # None: not tried (nothing built, or only the build is sought)
    runs: tuple[str, ...] = ()  # one of "pass", "fail", "error" per run of the tests
    detail: str = ""  # the first build error, or the failing tests and their messages
    seconds: float = 0.0

    @property
    def failures(self) -> int:
        return self.runs.count("fail")

    @property
    def passes(self) -> int:
        return self.runs.count("pass")

    @property
    def failure(self) -> str:
        """What goes wrong here: build, boot, test, or "" (nothing)."""
        if not self.built:
            return BUILD
        if self.booted is False:
            return BOOT
        return TEST if self.failures else ""


@dataclass
class Step:
    k: int  # prefix length
    role: str  # "bad end", "good end", or the step number
    outcome: Outcome
    verdict: str  # GOOD, BAD, SKIP
    why: str


@dataclass
class Bisection:
    n: int  # patches the build applies
    good: int  # the good end (0: vanilla)
    status: str = ""  # found | range | nothing-bad | good-end-fails | untestable
    first_bad: int | None = None  # prefix length whose last patch is the first bad one
    candidates: list[int] = field(default_factory=list)  # when only a range is known
    sought: str = ""  # BUILD, BOOT or TEST
    intermittent: bool = False  # the bad end failed in some runs only
    steps: list[Step] = field(default_factory=list)
    message: str = ""

    @property
    def bisection_steps(self) -> int:
        return sum(1 for s in self.steps if s.role not in ("bad end", "good end"))

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for s in out["steps"]:
            s["outcome"]["failures"] = s["outcome"]["runs"].count("fail")
            s["outcome"]["passes"] = s["outcome"]["runs"].count("pass")
        return out


def expected_steps(n: int, good: int = 0) -> int:
    """Steps between the two ends when nothing is skipped: about log2 of the range."""
    span = n - good
    return math.ceil(math.log2(span)) if span > 1 else 0


def classify(o: Outcome, sought: str, intermittent: bool) -> tuple[str, str]:
    """A step's verdict, and why, when the bisection seeks a failure of kind sought."""
    if sought == BUILD:
        return (GOOD, "builds") if o.built else (BAD, "does not build")
    if not o.built:
        return SKIP, "does not build (unrelated to what is sought): untestable"
    if sought == BOOT:
        return (BAD, "does not boot") if o.booted is False else (GOOD, "boots")
    if o.booted is False:
        return SKIP, "does not boot: the tests cannot run"
    counted = o.passes + o.failures
    if counted == 0:
        return SKIP, "no run gave a verdict (host or harness errors)"
    tally = f"{o.failures}/{counted} runs fail"
    if intermittent:
        return (BAD, tally) if o.failures else (GOOD, tally)
    if o.failures == counted:
        return BAD, tally
    if o.failures == 0:
        return GOOD, tally
    return SKIP, f"{tally}: flaky here, not trusted either way"


def _next(good: int, bad: int, tried: set[int]) -> int | None:
    mid = (good + bad) // 2
    left = [k for k in range(good + 1, bad) if k not in tried]
    return min(left, key=lambda k: (abs(k - mid), k)) if left else None


def bisect(
    n: int,
    probe: Callable[[int, str], Outcome],
    good: int = 0,
    say: Callable[[str], None] = lambda _msg: None,
) -> Bisection:
    """Finds the first bad prefix of a series of n applied patches, prefix `good` being the
    known-good end. probe(k, sought) tries prefix k ("" for sought: not known yet, at the
    bad end) and returns what it found."""
    if not 0 <= good < n:
        raise ValueError(f"good end {good} must be below the number of patches {n}")
    b = Bisection(n=n, good=good)
    o = probe(n, "")
    b.sought = o.failure
    if not b.sought and o.runs and not o.passes:
        b.steps.append(Step(n, "bad end", o, SKIP, "no run gave a verdict"))
        b.status = "untestable"
        b.message = "the whole series cannot be tested: no run gave a verdict (host errors)"
        return b
    if not b.sought:
        why = "every run passes" if o.runs else "it builds and boots"
        b.steps.append(Step(n, "bad end", o, GOOD, why))
        b.status = "nothing-bad"
        b.message = f"nothing fails with the whole series ({why}): nothing to bisect"
        return b
    b.intermittent = b.sought == TEST and o.passes > 0
    b.steps.append(Step(n, "bad end", o, BAD, _describe_failure(o)))
    say(f"the whole series: {_describe_failure(o)}; checking the good end")
    o = probe(good, b.sought)
    verdict, why = classify(o, b.sought, b.intermittent)
    b.steps.append(Step(good, "good end", o, verdict, why))
    if verdict == BAD:
        b.status = "good-end-fails"
        b.message = f"the good end fails too ({why}): the failure is not the series' doing"
        return b
    if verdict == SKIP:
        b.status = "untestable"
        b.message = f"the good end cannot be tested ({why})"
        return b
    lo, hi = good, n
    tried = {good, n}
    skipped: set[int] = set()
    while True:
        k = _next(lo, hi, tried)
        if k is None:
            break
        left = expected_steps(hi, lo)
        say(f"step {b.bisection_steps + 1}: prefix {k} of {n} (range {lo + 1}..{hi}, ~{left} left)")
        o = probe(k, b.sought)
        verdict, why = classify(o, b.sought, b.intermittent)
        b.steps.append(Step(k, str(b.bisection_steps + 1), o, verdict, why))
        say(f"step {b.bisection_steps}: prefix {k}: {verdict} ({why})")
        tried.add(k)
        if verdict == GOOD:
            lo = k
        elif verdict == BAD:
            hi = k
        else:
            skipped.add(k)
    between = sorted(k for k in skipped if lo < k < hi)
    if between:
        b.status = "range"
        b.candidates = [*between, hi]
        b.message = (
            f"only untestable prefixes are left between the last good one ({lo}) and the "
            f"first bad one ({hi}): the first bad patch is one of prefixes {b.candidates}"
        )
    else:
        b.status = "found"
        b.first_bad = hi
        b.message = f"prefix {hi} is the first bad one"
    return b


def _describe_failure(o: Outcome) -> str:
    f = o.failure
    if f == BUILD:
        return "does not build"
    if f == BOOT:
        return "does not boot"
    return f"{o.failures}/{o.passes + o.failures} runs fail"
