"""The KTAP parser on real output captured from kselftest runs and KUnit boots in this
project (tests/data/ktap/, each file says where it comes from in its name), and on the
shapes of the format the captures do not cover."""

from __future__ import annotations

from pathlib import Path

import pytest

from kmatrix.results import ktap

DATA = Path(__file__).parent / "data" / "ktap"


def statuses(tree: ktap.KtapTest) -> dict[tuple[str, ...], str]:
    return {p: t.status for p, t in tree.walk()}


def test_kselftest_runner_nesting_and_skip_directives() -> None:
    """kselftest's runner nests a program's KTAP under `# `; `ok 3 # SKIP name` is named
    by its reason (ksft_test_result_skip); the program's own plan is kept."""
    tree = ktap.parse((DATA / "kselftest-timers-deb-6.1.txt").read_text())
    assert tree.version == "TAP version 13" and tree.plan == 2 and tree.missing == 0
    got = statuses(tree)
    assert got[("selftests: timers: posix_timers",)] == ktap.PASS
    nano = tree.find(["selftests: timers: nanosleep"])
    assert nano is not None and nano.plan == 12 and nano.missing == 0
    assert [t.name for t in nano.subtests][:3] == [
        "CLOCK_REALTIME", "CLOCK_MONOTONIC", "CLOCK_PROCESS_CPUTIME_ID",
    ]  # fmt: skip
    cpu = nano.find(["CLOCK_PROCESS_CPUTIME_ID"])
    assert cpu is not None and cpu.status == ktap.SKIP and cpu.directive == "SKIP"
    assert got[("selftests: timers: nanosleep", "CLOCK_TAI")] == ktap.PASS
    # The program's text output (not KTAP) stays its log, not a test.
    posix = tree.find(["selftests: timers: posix_timers"])
    assert posix is not None and not posix.subtests
    assert any("Check itimer real... [OK]" in ln for ln in posix.log)
    assert tree.running() is None


def test_kselftest_timeouts_exit_codes_and_duplicated_lines() -> None:
    """A program the runner timed out (`# TIMEOUT 45 seconds`) keeps the cases it printed;
    `# exit=134` is kept as the reason; lines a forked child printed again are one test."""
    tree = ktap.parse((DATA / "kselftest-cgroup-deb-6.1.txt").read_text())
    memcg = tree.find(["selftests: cgroup: test_memcontrol"])
    assert memcg is not None and memcg.status == ktap.TIMEOUT and memcg.reason == "45 seconds"
    assert [(t.name, t.status) for t in memcg.subtests] == [
        ("test_memcg_subtree_control", ktap.PASS), ("test_memcg_current", ktap.FAIL),
    ]  # fmt: skip
    core = tree.find(["selftests: cgroup: test_core"])
    assert core is not None and core.status == ktap.FAIL and core.reason == "exit=134"
    assert {t.status for t in core.subtests} == {ktap.PASS}
    cpu = tree.find(["selftests: cgroup: test_cpu"])
    assert cpu is not None
    names = [t.name for t in cpu.subtests]
    assert len(names) == len(set(names)) == 8  # printed 14 times, 8 tests
    assert cpu.find(["test_cpucg_max"]).status == ktap.FAIL  # type: ignore[union-attr]
    prs = tree.find(["selftests: cgroup: test_cpuset_prs.sh"])
    assert prs is not None and prs.status == ktap.PASS and not prs.subtests


def test_kunit_indentation_params_and_printk_prefixes() -> None:
    """KUnit's KTAP from a kernel log: timestamps removed, suites > cases > parameters."""
    log = "\n".join(
        f"[    0.5{i:05d}] {line}"
        for i, line in enumerate(
            [
                "random: crng init done",
                "KTAP version 1",
                "1..1",
                "    KTAP version 1",
                "    # Subtest: example",
                "    1..2",
                "    ok 1 example_simple_test",
                "        KTAP version 1",
                "        # Subtest: example_params_test",
                "        ok 1 example value 3 # SKIP unsupported param value 3",
                "        ok 2 example value 2",
                "    # example_params_test: pass:1 fail:0 skip:1 total:2",
                "    ok 2 example_params_test",
                "# example: pass:2 fail:0 skip:0 total:2",
                "ok 1 example",
            ]
        )
    )
    tree = ktap.kernel_log_ktap(log)
    assert statuses(tree) == {
        ("example",): ktap.PASS,
        ("example", "example_simple_test"): ktap.PASS,
        ("example", "example_params_test"): ktap.PASS,
        ("example", "example_params_test", "example value 3"): ktap.SKIP,
        ("example", "example_params_test", "example value 2"): ktap.PASS,
    }
    param = tree.find(["example", "example_params_test", "example value 3"])
    assert param is not None and param.reason == "unsupported param value 3"


def test_kunit_from_a_real_boot_console() -> None:
    """A source-built 6.12 kernel's boot console (matrix/kselftest.yaml, loglevel=7): two
    suites among the other boot messages, suite attributes and case diagnostics as `#`
    lines, skips with reasons, a parameterised case whose parameters are nested."""
    tree = ktap.kernel_log_ktap((DATA / "kunit-example-kmx-6.12.console.log").read_text())
    assert tree.plan == 2 and [t.name for t in tree.subtests] == ["example_init", "example"]
    example = tree.find(["example"])
    assert example is not None and example.plan == 9 and example.missing == 0
    got = statuses(tree)
    assert got[("example_init", "example_init_test")] == ktap.PASS
    assert got[("example", "example_skip_test")] == ktap.SKIP
    skip = tree.find(["example", "example_skip_test"])
    assert skip is not None and skip.reason == "this test should be skipped"
    params = tree.find(["example", "example_params_test"])
    assert params is not None and params.status == ktap.PASS
    assert [(t.name, t.status) for t in params.subtests] == [
        ("example value 3", ktap.SKIP), ("example value 2", ktap.PASS),
        ("example value 1", ktap.PASS), ("example value 0", ktap.SKIP),
    ]  # fmt: skip
    # 2 suites, 8 cases, 2 parameters (KUnit's own totals: pass:8 skip:4, of cases and params)
    assert sum(1 for _, t in tree.walk() if t.status == ktap.PASS) == 12
    assert all(t.status in (ktap.PASS, ktap.SKIP) for _, t in tree.walk())


@pytest.mark.parametrize(
    ("line", "status", "reason"),
    [
        ("ok 1 a", ktap.PASS, ""),
        ("not ok 1 a", ktap.FAIL, ""),
        ("ok 1 a # SKIP no device", ktap.SKIP, "no device"),
        ("ok 1 - a # skip lower case", ktap.SKIP, "lower case"),
        ("not ok 1 a # SKIP not ok but skipped", ktap.SKIP, "not ok but skipped"),
        ("ok 1 a # XFAIL known bug", ktap.XFAIL, "known bug"),
        ("not ok 1 a # XFAIL failed the wrong way", ktap.FAIL, "failed the wrong way"),
        ("ok 1 a # XPASS", ktap.XPASS, ""),
        ("not ok 1 a # TODO later", ktap.XFAIL, "later"),
        ("ok 1 a # TODO later", ktap.XPASS, "later"),
        ("not ok 1 a # TIMEOUT 45 seconds", ktap.TIMEOUT, "45 seconds"),
        ("not ok 1 a # ERROR harness", ktap.ERROR, "harness"),
        ("not ok 1 a # exit=1", ktap.FAIL, "exit=1"),
    ],
)
def test_directives(line: str, status: str, reason: str) -> None:
    tree = ktap.parse(f"KTAP version 1\n1..1\n{line}\n")
    (t,) = tree.subtests
    assert (t.name, t.status, t.reason) == ("a", status, reason)


def test_output_that_stops_inside_a_nested_test() -> None:
    """The innermost test without a result line is what was running; the plan says how
    many never reported."""
    tree = ktap.parse(
        "TAP version 13\n1..3\n# selftests: t: a\n# 1..1\n# ok 1 x\nok 1 selftests: t: a\n"
        "# selftests: t: b\n# TAP version 13\n# 1..4\n# ok 1 y\n# # started z\n"
    )
    assert tree.running() == ("selftests: t: b",)
    b = tree.find(["selftests: t: b"])
    assert b is not None and b.status == ktap.INCOMPLETE and b.missing == 3
    assert tree.missing == 1  # the third program never started


def test_bail_out_and_empty_plan() -> None:
    tree = ktap.parse("KTAP version 1\n1..3\nok 1 a\nBail out! no hardware\n")
    assert tree.bailout == "no hardware" and tree.missing == 2
    skipped = ktap.parse("TAP version 13\n1..1\n# 1..0 # SKIP needs root\nok 1 prog\n")
    (prog,) = skipped.subtests
    assert prog.plan == 0 and prog.status == ktap.SKIP  # `1..0 # SKIP`: nothing ran


def test_ok_inside_text_is_not_a_result() -> None:
    tree = ktap.parse("KTAP version 1\n1..1\n# ok, starting\nok without a number\nok 1 a\n")
    assert [t.name for t in tree.subtests] == ["a"]


def test_result_glued_to_text_without_a_newline() -> None:
    """6.12's posix_timers prints `Diff too high: 5104485..` and then its result on the same
    line: the result is still a test, the text its log."""
    tree = ktap.parse((DATA / "kselftest-timers-deb-6.12.txt").read_text())
    posix = tree.find(["selftests: timers: posix_timers"])
    assert posix is not None and posix.plan == 18 and posix.missing == 0
    virt = posix.find(["ITIMER_VIRTUAL"])
    assert virt is not None and virt.status == ktap.FAIL
    assert virt.log[-1] == "Diff too high: 5104485.."
    assert posix.status == ktap.FAIL and posix.reason == "exit=1"
    assert statuses(tree)[("selftests: timers: posix_timers", "check_rearm")] == ktap.FAIL


def test_runner_result_glued_to_a_programs_last_line() -> None:
    """cs_prctl_test's last line had no newline, so kselftest's runner printed its result on
    it, behind the `# ` prefix: the result is still the runner's, the program is not ok."""
    tree = ktap.parse((DATA / "kselftest-sched-deb-6.12.txt").read_text())
    (prog,) = tree.subtests
    assert prog.name == "selftests: sched: cs_prctl_test" and prog.reason == "exit=1"
    assert prog.status == ktap.FAIL and not prog.subtests and tree.missing == 0
    assert prog.log[-1] == "# (cs_prctl_test.c:287) - "
