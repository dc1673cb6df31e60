"""Verdicts of kselftest/KUnit items from parsed runs (real captures in tests/data/ktap/),
and the case index that makes an item per case after a unit's first run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from kmatrix.results import ktap
from kmatrix.results.cases import (
    FAILED,
    PASSED,
    SKIPPED,
    XFAILED,
    CaseIndex,
    Unit,
    case_id,
    item_paths,
    sanitize,
    sanitized_tree,
    tree_cases,
    verdict,
)

DATA = Path(__file__).parent / "data" / "ktap"
CGROUP = ("test_memcontrol", "test_kmem", "test_core", "test_freezer", "test_kill",
          "test_cpu", "test_stress.sh", "test_cpuset_prs.sh")  # fmt: skip


def cgroup_unit(text: str, known: dict[tuple[str, ...], list[str]] | None = None,
                ended: str | None = None) -> Unit:  # fmt: skip
    tree = ktap.parse(text)
    for t in tree.subtests:
        t.name = t.name.rsplit(": ", 1)[-1]
    return Unit(sanitized_tree(tree), {(): list(CGROUP), **(known or {})}, ended=ended)


def outcomes(unit: Unit, items: Sequence[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    return {p: verdict(unit, p, items).outcome for p in items}


def test_first_run_programs_carry_their_cases() -> None:
    """No case known yet: each program's item fails for its own failing cases."""
    unit = cgroup_unit((DATA / "kselftest-cgroup-deb-6.1.txt").read_text())
    items = [(p,) for p in CGROUP]
    got = outcomes(unit, items)
    assert got == {
        ("test_memcontrol",): FAILED, ("test_kmem",): FAILED, ("test_core",): FAILED,
        ("test_freezer",): PASSED, ("test_kill",): PASSED, ("test_cpu",): FAILED,
        ("test_stress.sh",): FAILED, ("test_cpuset_prs.sh",): PASSED,
    }  # fmt: skip
    cpu = verdict(unit, ("test_cpu",), items).message
    assert "test_cpu/test_cpucg_stats: fail" in cpu and "test_cpucg_max_nested: fail" in cpu
    core = verdict(unit, ("test_core",), items).message
    assert core.startswith("not ok (exit=134); 6 subtests reported, none failing")
    kmem = verdict(unit, ("test_kmem",), items).message
    assert kmem == "timed out (TIMEOUT 45 seconds)"


def test_case_items_fail_exactly_once() -> None:
    """With the cases known, a failing case fails on its own item; its program passes,
    saying where the failure is reported; SKIP is a skip with its reason."""
    text = (DATA / "kselftest-cgroup-deb-6.1.txt").read_text()
    first = cgroup_unit(text)
    known = tree_cases(first.tree)
    unit = cgroup_unit(text, known)
    items = item_paths({**known, (): list(CGROUP)}, [(p,) for p in CGROUP])
    assert ("test_cpu", "test_cpucg_stats") in items
    got = outcomes(unit, items)
    assert got[("test_cpu", "test_cpucg_stats")] == FAILED
    assert got[("test_cpu", "test_cpucg_subtree_control")] == PASSED
    assert got[("test_cpu", "test_cpucg_weight_underprovisioned")] == SKIPPED
    v = verdict(unit, ("test_cpu",), items)
    assert v.outcome == PASSED and "test_cpu/test_cpucg_stats" in v.note
    # exit=134 with every case passing: only the program can answer for it.
    assert got[("test_core",)] == FAILED
    assert all(got[("test_core", c)] == PASSED for c in known[("test_core",)])
    # Deselecting a case hands its failure back to the program.
    narrowed = [p for p in items if p != ("test_cpu", "test_cpucg_stats")]
    v = verdict(unit, ("test_cpu",), narrowed)
    assert v.outcome == FAILED and "test_cpucg_stats" in v.message


def test_timeout_fails_the_running_case_and_leaves_the_rest_not_run() -> None:
    """The runner timed test_memcontrol out after two cases; from an earlier run we know it
    has more: the third was running, the fourth never ran."""
    text = (DATA / "kselftest-cgroup-deb-6.1.txt").read_text()
    cases = ["test_memcg_subtree_control", "test_memcg_current", "test_memcg_min",
             "test_memcg_low"]  # fmt: skip
    unit = cgroup_unit(text, {("test_memcontrol",): cases})
    items = [("test_memcontrol",), *(("test_memcontrol", c) for c in cases)]
    got = outcomes(unit, items)
    assert [got[i] for i in items] == [PASSED, PASSED, FAILED, FAILED, SKIPPED]
    running = verdict(unit, ("test_memcontrol", "test_memcg_min"), items)
    assert running.message.startswith("timed out (TIMEOUT 45 seconds); it was running")
    after = verdict(unit, ("test_memcontrol", "test_memcg_low"), items)
    assert after.message.startswith("not run: timed out")
    parent = verdict(unit, ("test_memcontrol",), items)
    assert "test_memcontrol/test_memcg_min" in parent.note


def test_crash_mid_target() -> None:
    """The guest went down in test_cpu's second case (output ends there): that case fails
    with the reason, the cases and programs after it are not run, what ran keeps its
    result."""
    text = (DATA / "kselftest-cgroup-deb-6.1.txt").read_text()
    cut = text.index("# not ok 2 test_cpucg_stats")
    cpu_cases = ["test_cpucg_subtree_control", "test_cpucg_stats", "test_cpucg_max"]
    unit = cgroup_unit(text[:cut], {("test_cpu",): cpu_cases}, ended="the guest went down: panic")
    items = [("test_kill",), ("test_cpu",), *(("test_cpu", c) for c in cpu_cases),
             ("test_stress.sh",)]  # fmt: skip
    got = outcomes(unit, items)
    assert got == {
        ("test_kill",): PASSED,
        ("test_cpu",): SKIPPED,
        ("test_cpu", "test_cpucg_subtree_control"): PASSED,
        ("test_cpu", "test_cpucg_stats"): FAILED,
        ("test_cpu", "test_cpucg_max"): SKIPPED,
        ("test_stress.sh",): SKIPPED,
    }
    crash = verdict(unit, ("test_cpu", "test_cpucg_stats"), items).message
    assert crash == "the guest went down: panic; it was running test_cpu/test_cpucg_stats"
    assert verdict(unit, ("test_stress.sh",), items).message.startswith("not run:")
    # Without the cases known, the program answers for the crash.
    plain = [("test_cpu",), ("test_stress.sh",)]
    v = verdict(unit, ("test_cpu",), plain)
    assert v.outcome == FAILED and "panic" in v.message


def test_crash_between_programs_blames_the_next_one() -> None:
    text = (DATA / "kselftest-cgroup-deb-6.1.txt").read_text()
    cut = text.index("# selftests: cgroup: test_kill")
    unit = cgroup_unit(text[:cut], ended="the guest went down")
    items = [("test_freezer",), ("test_kill",), ("test_cpu",)]
    assert outcomes(unit, items) == {
        ("test_freezer",): PASSED, ("test_kill",): FAILED, ("test_cpu",): SKIPPED,
    }  # fmt: skip


def test_kunit_root_and_xfail() -> None:
    tree = ktap.parse(
        "KTAP version 1\n1..2\n    # Subtest: s\n    1..2\n    ok 1 a # XFAIL known\n"
        "    not ok 2 b\nnot ok 1 s\n    # Subtest: t\n    1..1\n    ok 1 c\nok 2 t\n"
    )
    unit = Unit(sanitized_tree(tree), {})
    assert outcomes(unit, [()]) == {(): FAILED}  # first run: the root carries s/b
    assert "s/b: fail" in verdict(unit, (), [()]).message
    items = [(), ("s",), ("s", "a"), ("s", "b"), ("t",), ("t", "c")]
    got = outcomes(unit, items)
    assert got == {
        (): PASSED, ("s",): PASSED, ("s", "a"): XFAILED, ("s", "b"): FAILED,
        ("t",): PASSED, ("t", "c"): PASSED,
    }  # fmt: skip
    # A case the index knows but this run did not print (the kernel changed): not run.
    stale = verdict(unit, ("t", "gone"), [*items, ("t", "gone")])
    assert stale.outcome == SKIPPED and "did not report t/gone" in stale.message


def test_unit_error_fails_every_item() -> None:
    unit = Unit(ktap.KtapTest(""), {}, error="kselftest target x did not build")
    assert verdict(unit, ("p",), [("p",)]).outcome == FAILED


def test_ids() -> None:
    assert sanitize("  CLOCK_REALTIME     ") == "CLOCK_REALTIME"
    assert sanitize("a/b [c] d::e") == "a_b (c) d:e"
    assert case_id(("test_cpu", "x y")) == "test_cpu/x y"


def test_index_learns_per_scope(tmp_path: Path) -> None:
    index = CaseIndex(tmp_path)
    tree = cgroup_unit((DATA / "kselftest-cgroup-deb-6.1.txt").read_text()).tree
    index.learn("k", tree, scope=("test_cpu",))
    known = index.known("k")
    assert known[("test_cpu",)][:2] == ["test_cpucg_subtree_control", "test_cpucg_stats"]
    assert ("test_core",) not in known
    index.learn("k", tree, scope=("test_core",))
    assert ("test_cpu",) in index.known("k") and ("test_core",) in index.known("k")
    assert index.known("other") == {}


def test_cases_of_a_skipped_program_are_skipped_with_its_reason() -> None:
    tree = ktap.parse(
        "TAP version 13\n1..1\n# 1..0 # SKIP no cgroup v2\nok 1 selftests: t: p # SKIP\n"
    )
    tree.subtests[0].name = "p"
    tree.subtests[0].reason = "no cgroup v2"
    unit = Unit(tree, {(): ["p"], ("p",): ["a", "b"]})
    v = verdict(unit, ("p", "a"), [("p",), ("p", "a"), ("p", "b")])
    assert (v.outcome, v.message) == (SKIPPED, "p skipped: no cgroup v2")
