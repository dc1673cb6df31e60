"""kmatrix compare on synthetic runs: test verdicts, the metric rule, known issues, exit codes."""

from __future__ import annotations

import itertools
import json
import random
from pathlib import Path

import pytest
from synthetic import cell_id, make_run, warn_finding

from kmatrix.cli.main import main
from kmatrix.results.compare import Comparison, compare_runs, mann_whitney_p, render_text
from kmatrix.results.known_issues import load_known_issues
from kmatrix.results.runs import load_run, load_runs

A = cell_id("deb-6.1-cloud", "Nehalem", "virtio")
B = cell_id("deb-6.1-cloud", "Haswell", "virtio")
C = cell_id("deb-6.12-cloud", "Haswell", "gpu-virtio")


def verdicts(base: list[Path], new: list[Path], **kw: object) -> dict[tuple[str, str], str]:
    c = compare_runs(load_runs(base), load_runs(new), **kw)  # type: ignore[arg-type]
    return {(t.cell, t.name): t.verdict for t in c.tests if t.verdict != "unchanged"}


# --- the statistics -------------------------------------------------------------------------


def brute_force_p(a: list[float], b: list[float]) -> float:
    """Two-sided permutation p-value of the rank sum, by enumerating every split."""
    allv = a + b
    order = sorted(allv)
    ranks = [
        (order.index(v) + 1 + len(order) - order[::-1].index(v)) / 2 for v in allv
    ]  # mid-ranks
    m = len(a)
    mean = m * (len(allv) + 1) / 2
    obs = abs(sum(ranks[:m]) - mean)
    splits = list(itertools.combinations(range(len(allv)), m))
    hits = sum(1 for s in splits if abs(sum(ranks[i] for i in s) - mean) >= obs - 1e-9)
    return hits / len(splits)


def test_exact_p_matches_enumeration_with_ties() -> None:
    rng = random.Random(7)
    for _ in range(40):
        m, n = rng.randint(1, 6), rng.randint(1, 6)
        a = [float(rng.randint(0, 4)) for _ in range(m)]  # few values: many ties
        b = [float(rng.randint(0, 4)) for _ in range(n)]
        assert mann_whitney_p(a, b) == pytest.approx(brute_force_p(a, b)), (a, b)


def test_exact_p_textbook_values() -> None:
    assert mann_whitney_p([1, 2, 3, 4], [5, 6, 7, 8]) == pytest.approx(2 / 70)
    assert mann_whitney_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    assert mann_whitney_p([1.0], [9.0]) == 1.0
    assert mann_whitney_p([1, 2, 3], [1, 2, 3]) == 1.0


def test_large_samples_use_normal_approximation() -> None:
    a = [float(i) for i in range(40)]
    b = [float(i) + 20 for i in range(40)]
    p = mann_whitney_p(a, b)
    assert 0 < p < 0.001


# --- metric verdicts ------------------------------------------------------------------------


def runs_with_boot(tmp: Path, name: str, values: list[float]) -> list[Path]:
    return [make_run(tmp / f"{name}{i}", boot={A: v}) for i, v in enumerate(values)]


def metric_verdict(c: Comparison, cell: str, name: str) -> str:
    return next(m.verdict for m in c.metrics if m.cell == cell and m.name == name)


def test_one_run_each_never_regresses_even_on_a_big_change(tmp_path: Path) -> None:
    base = runs_with_boot(tmp_path, "b", [3.0])
    new = runs_with_boot(tmp_path, "n", [6.0])
    c = compare_runs(load_runs(base), load_runs(new))
    assert metric_verdict(c, A, "boot_seconds") == "unchanged"
    m = next(m for m in c.metrics if m.cell == A)
    assert "too few runs" in m.note
    assert not c.regressions


def test_repeated_runs_detect_a_regression_and_an_improvement(tmp_path: Path) -> None:
    base = runs_with_boot(tmp_path, "b", [3.0, 3.1, 2.9, 3.05])
    slower = runs_with_boot(tmp_path, "s", [3.6, 3.7, 3.65, 3.8])
    faster = runs_with_boot(tmp_path, "f", [2.0, 2.1, 2.05, 1.9])
    c = compare_runs(load_runs(base), load_runs(slower))
    assert metric_verdict(c, A, "boot_seconds") == "regressed"
    assert [r.cell for r in c.regressions] == [A]
    c = compare_runs(load_runs(base), load_runs(faster))
    assert metric_verdict(c, A, "boot_seconds") == "improved"
    assert not c.regressions


def test_consistent_but_noise_sized_change_is_not_a_regression(tmp_path: Path) -> None:
    base = runs_with_boot(tmp_path, "b", [3.00, 3.01, 3.02, 3.03])
    new = runs_with_boot(tmp_path, "n", [3.05, 3.06, 3.07, 3.08])  # separated, but +1.6 %
    c = compare_runs(load_runs(base), load_runs(new))
    m = next(m for m in c.metrics if m.cell == A)
    assert m.p_value < 0.05
    assert m.verdict == "unchanged"


def test_overlapping_samples_are_unchanged(tmp_path: Path) -> None:
    base = runs_with_boot(tmp_path, "b", [3.0, 3.6, 2.9, 3.5, 3.1])
    new = runs_with_boot(tmp_path, "n", [3.4, 3.0, 3.7, 2.95, 3.2])
    c = compare_runs(load_runs(base), load_runs(new))
    assert metric_verdict(c, A, "boot_seconds") == "unchanged"


def test_higher_is_better_metrics(tmp_path: Path) -> None:
    key = (A, "test_userspace_reached")
    base = [
        make_run(tmp_path / f"b{i}", metrics={key: {"ops_per_sec": v}})
        for i, v in enumerate([100, 101, 99, 100])
    ]
    new = [
        make_run(tmp_path / f"n{i}", metrics={key: {"ops_per_sec": v}})
        for i, v in enumerate([80, 81, 79, 82])
    ]
    c = compare_runs(load_runs(base), load_runs(new))
    m = next(m for m in c.metrics if m.name == "ops_per_sec")
    assert m.higher_is_better and m.verdict == "regressed"


# --- test verdicts -------------------------------------------------------------------------


def test_every_test_verdict(tmp_path: Path) -> None:
    base = make_run(
        tmp_path / "base",
        outcomes={
            (A, "test_online_cpus"): "failed",  # -> fixed
            (B, "test_online_cpus"): "failed",  # -> still failing
            (C, "test_kernel_log_clean"): "absent",  # -> new
        },
    )
    new = make_run(
        tmp_path / "new",
        outcomes={
            (A, "test_kernel_log_clean"): "error",  # -> new failure
            (B, "test_online_cpus"): "failed",
            (C, "test_online_cpus"): "absent",  # -> gone
            (C, "test_userspace_reached"): "skipped",  # passed -> skipped: unchanged
        },
    )
    assert verdicts([base], [new]) == {
        (A, "test_online_cpus"): "fixed",
        (A, "test_kernel_log_clean"): "new_failure",
        (B, "test_online_cpus"): "still_failing",
        (C, "test_kernel_log_clean"): "new",
        (C, "test_online_cpus"): "gone",
    }


def test_identical_runs_have_no_differences(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", outcomes={(A, "test_online_cpus"): "failed"})
    new = make_run(tmp_path / "new", outcomes={(A, "test_online_cpus"): "failed"})
    assert verdicts([base], [new]) == {(A, "test_online_cpus"): "still_failing"}
    assert not compare_runs([load_run(base)], [load_run(new)]).regressions


def test_flaky_base_does_not_hide_and_is_marked(tmp_path: Path) -> None:
    b1 = make_run(tmp_path / "b1")
    b2 = make_run(tmp_path / "b2", outcomes={(A, "test_online_cpus"): "failed"})
    n1 = make_run(tmp_path / "n1", outcomes={(B, "test_online_cpus"): "failed"})
    n2 = make_run(tmp_path / "n2")
    c = compare_runs(load_runs([b1, b2]), load_runs([n1, n2]))
    by = {(t.cell, t.name): t for t in c.tests}
    assert by[(A, "test_online_cpus")].verdict == "fixed"
    assert by[(A, "test_online_cpus")].flaky
    assert by[(B, "test_online_cpus")].verdict == "new_failure"
    assert by[(B, "test_online_cpus")].flaky
    assert by[(B, "test_online_cpus")].base == ["passed", "passed"]


def test_flaky_is_neither_a_new_failure_nor_fixed_and_has_a_flake_rate(tmp_path: Path) -> None:
    b1 = make_run(tmp_path / "b1", outcomes={(A, "test_online_cpus"): "failed"})
    b2 = make_run(tmp_path / "b2", outcomes={(B, "test_online_cpus"): "flaky"})
    n1 = make_run(
        tmp_path / "n1",
        outcomes={(A, "test_online_cpus"): "flaky", (B, "test_online_cpus"): "flaky"},
    )
    n2 = make_run(tmp_path / "n2", outcomes={(C, "test_kernel_log_clean"): "flaky"})
    c = compare_runs(load_runs([b1, b2]), load_runs([n1, n2]))
    by = {(t.cell, t.name): t for t in c.tests}
    a, b = by[(A, "test_online_cpus")], by[(B, "test_online_cpus")]
    assert a.verdict == "flaky"  # it failed in BASE: not "fixed"
    assert b.verdict == "flaky" and (b.flaky_runs, b.flake_rate) == (2, 0.5)
    assert by[(C, "test_kernel_log_clean")].verdict == "flaky"  # passed in BASE: no new failure
    assert not c.regressions
    text = render_text(c)
    assert "flaky in 2 of 4 run(s) (50%)" in text and "flaky (failed, then passed" in text
    rates = {(t["cell"], t["name"]): t["flake_rate"] for t in c.to_dict()["tests"]}
    assert rates[(B, "test_online_cpus")] == 0.5


def test_known_during_the_run_is_not_a_regression(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base")
    new = make_run(tmp_path / "new", outcomes={(C, "test_kernel_log_clean"): "known"})
    doc = json.loads((new / "results.json").read_text())
    for r in doc["results"]:
        if r["outcome"] == "known":
            r["properties"]["kmatrix.known"] = json.dumps([{"id": "drm-mm", "url": ""}])
    (new / "results.json").write_text(json.dumps(doc))
    c = compare_runs([load_run(base)], [load_run(new)])
    (t,) = [t for t in c.tests if t.verdict != "unchanged"]
    assert (t.verdict, t.known_issue) == ("known", "drm-mm") and not c.regressions


def test_new_failing_test_is_a_regression(tmp_path: Path) -> None:
    base = make_run(tmp_path / "base", outcomes={(A, "test_online_cpus"): "absent"})
    new = make_run(tmp_path / "new", outcomes={(A, "test_online_cpus"): "failed"})
    c = compare_runs([load_run(base)], [load_run(new)])
    assert [(t.cell, t.verdict) for t in c.regressions] == [(A, "new")]


# --- known issues --------------------------------------------------------------------------


KNOWN = """\
issues:
  - id: drm-warn
    title: '^WARNING in drm_'
    kernels: [deb-6.1-*]
    tests: ['*test_kernel_log_clean*']
    url: https://bugs.example.org/1
"""


DRM_WARN = ("warning", "WARNING in drm_atomic_commit")


def test_known_issue_turns_a_new_failure_into_known(tmp_path: Path) -> None:
    known_file = tmp_path / "known.yaml"
    known_file.write_text(KNOWN)
    base = make_run(tmp_path / "base")
    msg = "kernel log reports:\nwarning: WARNING in drm_atomic_commit (line 12)"
    new = make_run(
        tmp_path / "new",
        outcomes={
            (A, "test_kernel_log_clean"): "failed",
            (C, "test_kernel_log_clean"): "failed",  # 6.12: the issue does not apply
            (B, "test_online_cpus"): "failed",  # another test: not explained
        },
        findings={A: [warn_finding()], C: [warn_finding()], B: [warn_finding()]},
        messages={(A, "test_kernel_log_clean"): msg, (C, "test_kernel_log_clean"): msg},
        test_findings={(c, t): [DRM_WARN] for c, t in ((A, "test_kernel_log_clean"),
                                                       (C, "test_kernel_log_clean"))},
    )  # fmt: skip
    known = load_known_issues(known_file)
    c = compare_runs([load_run(base)], [load_run(new)], known)
    got = {
        (t.cell, t.name): (t.verdict, t.known_issue) for t in c.tests if t.verdict != "unchanged"
    }
    assert got == {
        (A, "test_kernel_log_clean"): ("known", "drm-warn"),
        (C, "test_kernel_log_clean"): ("new_failure", ""),
        (B, "test_online_cpus"): ("new_failure", ""),
    }
    assert {(t.cell, t.name) for t in c.regressions} == {
        (C, "test_kernel_log_clean"),
        (B, "test_online_cpus"),
    }


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("issues:\n  - id: a\n    titel: x\n", ":3: issues[0].titel: unknown key"),
        ("issues:\n  - id: a\n", ":2: issues[0].title: required key is missing"),
        ("issues:\n  - id: a\n    title: '(unclosed'\n", ":3: issues[0].title: bad regular"),
        (
            "issues:\n  - {id: a, title: x}\n  - {id: a, title: y}\n",
            ":3: issues[1].id: duplicate id (first on line 2)",
        ),
        ("issues: {id: a}\n", ":1: issues: expected a list"),
        ("isues: []\n", ":1: isues: unknown key"),
    ],
)
def test_bad_known_issues_file_names_file_line_key(tmp_path: Path, text: str, where: str) -> None:
    f = tmp_path / "known.yaml"
    f.write_text(text)
    with pytest.raises(Exception) as e:
        load_known_issues(f)
    assert f"{f}{where}" in str(e.value)


# --- the command ---------------------------------------------------------------------------


def test_cli_exit_codes_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = make_run(tmp_path / "base")
    same = make_run(tmp_path / "same")
    broken = make_run(tmp_path / "broken", outcomes={(A, "test_online_cpus"): "failed"})
    assert main(["compare", str(base), str(same)]) == 0
    out = tmp_path / "cmp.json"
    assert main(["compare", str(base), str(broken / "results.json"), "--json", str(out)]) == 1
    text = capsys.readouterr().out
    assert "NEW FAILURES (1):" in text and "verdict: REGRESSION" in text
    data = json.loads(out.read_text())
    assert data["regression"] is True
    assert [(t["cell"], t["name"], t["verdict"]) for t in data["tests"]] == [
        (A, "test_online_cpus", "new_failure")
    ]
    assert main(["compare", str(base), str(tmp_path / "nothing")]) == 2
    assert "no such results file" in capsys.readouterr().err
    (tmp_path / "junk.json").write_text('{"schema": "other"}')
    assert main(["compare", str(base), str(tmp_path / "junk.json")]) == 2
    assert "schema: expected 'kmatrix-results/2'" in capsys.readouterr().err


def test_cli_repeated_runs_and_run_directories(tmp_path: Path) -> None:
    bases = runs_with_boot(tmp_path / "base", "r", [3.0, 3.1, 2.9, 3.05])
    runs_with_boot(tmp_path / "new", "r", [3.6, 3.7, 3.65, 3.8])
    argv = ["compare", *itertools.chain.from_iterable(("--base", str(b)) for b in bases)]
    # A directory of run directories counts as that many runs.
    assert main([*argv, "--new", str(tmp_path / "new")]) == 1
    assert main(["compare", str(tmp_path / "base"), str(tmp_path / "base")]) == 0
