"""Patch series: loading (quilt, numbered, mbox, single), parsing, and the series x version
check against small synthetic source trees with GNU patch."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from kmatrix.build.patches import (
    APPLIED,
    CLEAN,
    CONFLICT,
    FUZZ,
    NOT_CHECKED,
    OFFSET,
    SKIPPED,
    SeriesError,
    apply_series,
    check_series,
    load_series,
    parse_patch,
    table,
)
from kmatrix.cli.patches import check_command

BODY = [f"line {i}" for i in range(1, 31)]


def write_tree(root: Path, version: tuple[int, int, int], lines: list[str]) -> Path:
    """A fake kernel tree: a versioned Makefile, scripts/kconfig, and src/file.c."""
    (root / "scripts" / "kconfig").mkdir(parents=True)
    (root / "Makefile").write_text(
        f"VERSION = {version[0]}\nPATCHLEVEL = {version[1]}\nSUBLEVEL = {version[2]}\n"
        "EXTRAVERSION =\nNAME = Test\n"
    )
    (root / "src").mkdir()
    (root / "src" / "file.c").write_text("\n".join(lines) + "\n")
    (root / "src" / "other.c").write_text("int other;\nint more;\nint most;\n")
    return root


def diff(old: list[str], new: list[str], path: str = "src/file.c", func: bool = False) -> str:
    """A unified diff of two versions of path, as git would label it."""
    tmp = Path(os.environ.get("TMPDIR", "/tmp"))
    a, b = tmp / f"kmx-a-{os.getpid()}", tmp / f"kmx-b-{os.getpid()}"
    a.write_text("\n".join(old) + "\n")
    b.write_text("\n".join(new) + "\n")
    try:
        argv = ["diff", "-u" + ("p" if func else ""), f"--label=a/{path}", f"--label=b/{path}"]
        out = subprocess.run([*argv, str(a), str(b)], capture_output=True, text=True).stdout
    finally:
        a.unlink()
        b.unlink()
    assert out.startswith("--- "), out
    return out


def patch_file(d: Path, name: str, text: str, subject: str = "") -> Path:
    p = d / name
    head = f"From: t <t@example.invalid>\nSubject: [PATCH] {subject or name}\n\n---\n"
    p.write_text(head + text)
    return p


@pytest.fixture
def trees(tmp_path: Path) -> tuple[Path, Path]:
    """Version 1 and a version 2 with 5 lines inserted near the top and line 20 changed."""
    v1 = write_tree(tmp_path / "v1", (6, 1, 5), BODY)
    v2_lines = BODY[:2] + [f"new {i}" for i in range(5)] + BODY[2:]
    v2_lines[v2_lines.index("line 20")] = "line 20 changed upstream"
    v2 = write_tree(tmp_path / "v2", (6, 12, 3), v2_lines)
    return v1, v2


@pytest.fixture
def series_dir(tmp_path: Path) -> Path:
    """Four patches written against v1: one touching line 10, one line 20, one adding a file,
    one that v2 already has (it makes line 20 what v2 has)."""
    d = tmp_path / "series"
    d.mkdir()
    p1 = [*BODY]
    p1[9] = "line 10 patched"
    patch_file(d, "0001-ten.patch", diff(BODY, p1))
    new_file = "--- /dev/null\n+++ b/src/added.c\n@@ -0,0 +1,2 @@\n+int added;\n+int too;\n"
    patch_file(d, "0002-add-file.patch", new_file)
    p3 = [*p1]
    p3[19] = "line 20 changed upstream"
    patch_file(d, "0003-backport.patch", diff(p1, p3))
    p4 = [*p3]
    p4[20] = "line 21 ours"
    patch_file(d, "0004-after-backport.patch", diff(p3, p4))
    (d / "series").write_text(
        "# test series\n0001-ten.patch\n0002-add-file.patch -p1\n"
        "0003-backport.patch\n\n0004-after-backport.patch  # last\n"
    )
    return d


# --- loading ------------------------------------------------------------------------------------


def test_quilt_series_order_and_subjects(series_dir: Path) -> None:
    s = load_series(series_dir)
    assert s.kind == "quilt"
    assert [p.name for p in s.patches] == [
        "0001-ten.patch",
        "0002-add-file.patch",
        "0003-backport.patch",
        "0004-after-backport.patch",
    ]
    assert s.patches[0].subject == "0001-ten.patch"
    assert s.patches[1].files[0].path == "src/added.c" and s.patches[1].files[0].created
    assert load_series(series_dir / "series").digest == s.digest


def test_numbered_patches_sort_naturally(tmp_path: Path) -> None:
    d = tmp_path / "numbered"
    d.mkdir()
    text = diff(["a"], ["b"])
    for name in ("10-late.patch", "2-early.patch", "1-first.diff"):
        patch_file(d, name, text)
    (d / "notes.txt").write_text("not a patch")
    s = load_series(d)
    assert s.kind == "numbered"
    assert [p.name for p in s.patches] == ["1-first.diff", "2-early.patch", "10-late.patch"]


def test_mbox_split_like_git_am(tmp_path: Path) -> None:
    text1 = diff(["a"], ["b"])
    text2 = diff(["x"], ["y"], path="src/other.c")
    mbox = tmp_path / "series.mbox"
    mbox.write_text(
        "From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
        "From: t <t@example.invalid>\nSubject: [PATCH 0/2] the cover letter\n\nWhy.\n\n"
        "From 1111111111111111111111111111111111111111 Mon Sep 17 00:00:00 2001\n"
        "From: t <t@example.invalid>\nSubject: [PATCH 1/2] mm: make a\n  change\n\n"
        f"Body.\n---\n{text1}\n"
        "From 2222222222222222222222222222222222222222 Mon Sep 17 00:00:00 2001\n"
        "From: t <t@example.invalid>\nSubject: [PATCH v2 2/2] sched: other\n\n"
        f"Body.\n---\n{text2}\n"
    )
    s = load_series(mbox)
    assert s.kind == "mbox"
    assert [p.name for p in s.patches] == ["0001-mm-make-a-change", "0002-sched-other"]
    assert s.patches[0].subject == "mm: make a change"
    assert s.patches[1].files[0].path == "src/other.c"


def test_single_patch_file(tmp_path: Path) -> None:
    p = patch_file(tmp_path, "fix.patch", diff(["a"], ["b"]), subject="fix things")
    s = load_series(p)
    assert s.kind == "single" and s.patches[0].subject == "fix things"


def test_series_errors_name_the_file_and_line(tmp_path: Path) -> None:
    d = tmp_path / "bad"
    d.mkdir()
    (d / "series").write_text("# c\n\nmissing.patch\n")
    with pytest.raises(SeriesError, match=r"bad/series:3: patch file not found"):
        load_series(d)
    patch_file(d, "x.patch", diff(["a"], ["b"]))
    (d / "series").write_text("x.patch -R\n")
    with pytest.raises(SeriesError, match=r"series:1: unsupported patch option '-R'"):
        load_series(d)
    (d / "series").write_text("x.patch\n")
    (d / "x.patch").write_text("just prose, no diff\n")
    with pytest.raises(SeriesError, match="holds no unified diff"):
        load_series(d)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SeriesError, match="no `series` file"):
        load_series(empty)


def test_parse_patch_counts_hunk_bodies() -> None:
    # A removed line that starts with "-- " must not be taken for a file header.
    text = (
        b"--- a/f.txt\n+++ b/f.txt\n@@ -1,3 +1,2 @@ int main(void)\n keep\n--- gone\n keep\n"
        b"@@ -10,2 +9,3 @@\n a\n+b\n c\n\\ No newline at end of file\n"
        b"diff --git a/old.c b/new.c\nsimilarity index 100%\nrename from old.c\nrename to new.c\n"
        b"diff --git a/g.c b/g.c\ndeleted file mode 100644\n"
        b"--- a/g.c\n+++ /dev/null\n@@ -1 +0,0 @@\n-x\n"
    )
    files = parse_patch(text)
    assert [f.path for f in files] == ["f.txt", "new.c", "g.c"]
    f = files[0]
    assert [(h.index, h.old_start, h.old_len, h.new_len) for h in f.hunks] == [
        (1, 1, 3, 2),
        (2, 10, 2, 3),
    ]
    assert f.hunks[0].header == "@@ -1,3 +1,2 @@ int main(void)"
    assert files[1].old_path == "old.c" and files[1].hunks == ()
    assert files[2].deleted and files[2].hunks[0].old_len == 1


# --- checking -------------------------------------------------------------------------------------


def tree_state(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_ino, p.read_bytes())
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_series_by_version(series_dir: Path, trees: tuple[Path, Path]) -> None:
    v1, v2 = trees
    before = tree_state(v1), tree_state(v2)
    s = load_series(series_dir)
    r1 = check_series(s, v1, "6.1.5")
    r2 = check_series(s, v2, "6.12.3")
    assert [r.status for r in r1.results] == [CLEAN, CLEAN, CLEAN, CLEAN]
    # v2: shifted by 5 lines, already has the backport, and the patch after it still fits.
    assert [r.status for r in r2.results] == [OFFSET, CLEAN, APPLIED, OFFSET]
    assert r2.results[0].max_offset == 5 and r2.results[0].short() == "offset +5"
    assert r1.ok and r2.ok and r2.stopped_at is None
    assert (tree_state(v1), tree_state(v2)) == before, "checking modified a source tree"


def test_conflict_names_the_hunk_and_stops_the_series(tmp_path: Path) -> None:
    lines = [*BODY]
    lines[14] = "line 15 rewritten"
    old = write_tree(tmp_path / "old", (5, 10, 1), BODY)
    new = write_tree(tmp_path / "new", (6, 6, 0), lines)
    d = tmp_path / "s"
    d.mkdir()
    mine = [*lines]
    mine[13:16] = ["fourteen", "fifteen", "sixteen"]
    patch_file(d, "0001-rewrite.patch", diff(lines, mine, func=True))
    patch_file(d, "0002-other.patch", diff(["int other;"], ["int other2;"], path="src/other.c"))
    s = load_series(d)
    res = check_series(s, old, "5.10.1")
    assert [r.status for r in res.results] == [CONFLICT, NOT_CHECKED]
    assert res.stopped_at == "0001-rewrite.patch"
    c = res.results[0]
    assert c.failed_files == ("src/file.c",)
    hunk = s.patches[0].files[0].hunks[0]
    assert c.problems == (f"src/file.c: hunk #1 FAILED at {hunk.old_start}: {hunk.header}",)
    ok = check_series(s, new, "6.6")
    out = table(s, [res, ok])
    assert "CONFLICT" in out and "5.10.1: 0001-rewrite.patch conflicts" in out
    assert hunk.header in out
    assert out.splitlines()[3].split()[1:] == ["-", "clean"]  # 0002: not checked on 5.10.1


def test_fuzz_missing_file_and_partly_applied(tmp_path: Path) -> None:
    base = write_tree(tmp_path / "base", (6, 1, 0), BODY)
    d = tmp_path / "s"
    d.mkdir()
    # Fuzz: the tree's line 9 (a context line of the hunk) differs from the patch's.
    ctx = [*BODY]
    ctx[7] = "line 8 elsewhere"
    patch_file(d, "0001-fuzz.patch", diff(ctx, [*ctx[:9], "line 10 patched", *ctx[10:]]))
    fuzz = load_series(d / "0001-fuzz.patch")
    (r,) = check_series(fuzz, base, "x").results
    assert r.status == FUZZ and r.max_fuzz >= 1, r.output
    # A file that the tree does not have.
    missing = patch_file(d, "miss.patch", diff(["a"], ["b"], path="drivers/none.c"))
    (r,) = check_series(load_series(missing), base, "x").results
    assert r.status == CONFLICT and r.failed_files == ("drivers/none.c",)
    assert "drivers/none.c: file not found in the tree" in r.problems
    # Two files: other.c already has its part, file.c does not fit.
    (base / "src" / "other.c").write_text("int other2;\nint more;\nint most;\n")
    wrong = [*BODY]
    wrong[0] = "not line 1"
    two = diff(["int other;", "int more;", "int most;"], ["int other2;", "int more;", "int most;"],
               path="src/other.c") + diff(wrong, ["x", *wrong[1:]])  # fmt: skip
    part = patch_file(d, "part.patch", two)
    (r,) = check_series(load_series(part), base, "x").results
    assert r.status == CONFLICT
    assert any("partly applied already: src/other.c" in p for p in r.problems), r.problems


def test_skip_and_malformed(series_dir: Path, trees: tuple[Path, Path], tmp_path: Path) -> None:
    s = load_series(series_dir)
    res = check_series(s, trees[0], "6.1.5", skip=["0002-*"])
    assert [r.status for r in res.results] == [CLEAN, SKIPPED, CLEAN, CLEAN]
    bad = tmp_path / "bad.patch"
    bad.write_text("--- a/src/file.c\n+++ b/src/file.c\n@@ -1,3 +1,3 @@\n line 1\n-line 2\n")
    with pytest.raises(SeriesError, match=r"GNU patch cannot read bad\.patch"):
        check_series(load_series(bad), trees[0], "x")


def test_apply_in_a_hard_link_copy_leaves_the_original(
    series_dir: Path, trees: tuple[Path, Path], tmp_path: Path
) -> None:
    """Builds patch a `cp -al` copy of the cached source: GNU patch must replace files rather
    than write through the shared inodes."""
    v1 = trees[0]
    before = tree_state(v1)
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(v1), str(copy)], check=True)
    assert (copy / "src/file.c").stat().st_ino == (v1 / "src/file.c").stat().st_ino
    results = apply_series(load_series(series_dir), copy)
    assert all(r.ok for r in results)
    assert "line 10 patched" in (copy / "src/file.c").read_text()
    assert (copy / "src/added.c").is_file()
    assert tree_state(v1) == before
    assert (copy / "src/file.c").stat().st_ino != (v1 / "src/file.c").stat().st_ino
    assert (copy / "src/other.c").stat().st_ino == (v1 / "src/other.c").stat().st_ino


def test_check_command_table_json_and_exit_code(
    series_dir: Path, trees: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    v1, v2 = trees
    out = tmp_path / "check.json"
    assert check_command(str(series_dir), [str(v1), str(v2)], str(out)) == 0
    printed = capsys.readouterr().out
    assert "6.1.5" in printed and "6.12.3" in printed and "already applied" in printed
    data = json.loads(out.read_text())
    assert [s["source"] for s in data["sources"]] == ["6.1.5", "6.12.3"]
    statuses = [r["status"] for r in data["sources"][1]["results"]]
    assert statuses == ["offset", "clean", "already-applied", "offset"]
    assert data["sources"][1]["results"][0]["hunks"][0]["offset"] == 5
    # A conflict makes the command fail, for CI.
    (v1 / "src" / "file.c").write_text("something else entirely\n")
    assert check_command(str(series_dir), [str(v1)], None) == 1
    assert "CONFLICT" in capsys.readouterr().out
