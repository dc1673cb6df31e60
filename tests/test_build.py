"""Kernel builds without compiling a kernel: a fake source tree whose Makefile implements the
config targets and bzImage in a few shell lines drives the real builder (hard-link copy,
patches, fragments, olddefconfig, make, cache, failure reporting). Plus the pure helpers.

Real kernel builds take minutes; they are exercised by tests/test_patched_real.py only when
the cache already holds them (or KMATRIX_TEST_BUILDS=1)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from kmatrix.build import builder as build_mod
from kmatrix.build.builder import (
    BuildFailure,
    DroppedOption,
    build_kernel,
    build_key,
    cached_build,
    dropped_options,
    first_error,
    parse_options,
)
from kmatrix.build.patches import load_series
from kmatrix.build.sources import KernelSource, classify, makefile_version, resolve_source
from kmatrix.config.specs import BuildSpec

# Options the fake Kconfig knows; olddefconfig drops every other one, like an unknown symbol.
FAKE_RULES = {
    "tinyconfig": ["mkdir -p $(O)", r"printf 'CONFIG_A=y\n# CONFIG_B is not set\n' > $(O)/.config"],
    "defconfig": ["mkdir -p $(O)", r"printf 'CONFIG_A=y\nCONFIG_B=y\n' > $(O)/.config"],
    "olddefconfig": [
        "awk -f $(CURDIR)/scripts/kconfig/fake-olddefconfig.awk $(O)/.config > $(O)/.config.new",
        "mv $(O)/.config.new $(O)/.config",
    ],
    "bzImage": [
        'echo "$(KCFLAGS)" >> $(KMX_FAKE_COUNTER)',
        # A slow "compiler" when asked for: it leaves its PID for the interruption test.
        "@[ -z \"$(KMX_SLEEP)\" ] || sh -c 'echo $$$$ > $(KMX_SLEEP_PID); exec sleep $(KMX_SLEEP)'",
        "@if grep -q FAIL_BUILD src/file.c; then "
        'echo "  CC      src/file.o"; '
        "echo \"src/file.c:3:5: error: 'FAIL_BUILD' undeclared (first use in this function)\"; "
        'echo "    3 |     FAIL_BUILD;"; '
        'echo "make[1]: *** [scripts/Makefile.build:250: src/file.o] Error 1"; exit 2; fi',
        "mkdir -p $(O)/arch/x86/boot",
        "cat src/file.c $(O)/.config > $(O)/arch/x86/boot/bzImage",
    ],
}
FAKE_MAKEFILE = "".join(
    f"{target}:\n" + "".join(f"\t{cmd}\n" for cmd in cmds) for target, cmds in FAKE_RULES.items()
)
# Last assignment of a name wins; only KNOWN names survive; "is not set" lines kept.
FAKE_OLDDEFCONFIG = r"""
{
  if (match($0, /^CONFIG_[A-Z_]+=/)) { n = substr($0, 8, index($0, "=") - 8); v[n] = $0; o[n] = NR }
  else if (match($0, /^# CONFIG_[A-Z_]+ is not set/)) { split($0, w, " "); n = substr(w[2], 8);
    v[n] = $0; o[n] = NR }
}
END { split("A B C MODULES", k, " "); for (i in k) if (k[i] in v) print v[k[i]] }
"""
FAKE_MERGE = """#!/bin/sh
# merge_config.sh -m -O DIR BASE FRAGMENT...: append the fragments (olddefconfig resolves).
shift; shift; out=$1; shift; base=$1; shift
cat "$@" >> "$out/.config"
"""


def fake_kernel(root: Path, sublevel: int = 5) -> Path:
    (root / "scripts" / "kconfig").mkdir(parents=True)
    (root / "Makefile").write_text(
        f"VERSION = 6\nPATCHLEVEL = 1\nSUBLEVEL = {sublevel}\nEXTRAVERSION =\n" + FAKE_MAKEFILE
    )
    (root / "scripts/kconfig/fake-olddefconfig.awk").write_text(FAKE_OLDDEFCONFIG)
    (root / "scripts/kconfig/merge_config.sh").write_text(FAKE_MERGE)
    (root / "kernel" / "configs").mkdir(parents=True)
    (root / "kernel/configs/guest.config").write_text("CONFIG_C=y\nCONFIG_S390_ONLY=y\n")
    (root / "src").mkdir()
    (root / "src" / "file.c").write_text("int main(void)\n{\n    return 0;\n}\n")
    return root


PATCH = """--- a/src/file.c
+++ b/src/file.c
@@ -1,4 +1,4 @@
 int main(void)
 {
-    return 0;
+    return 42;
 }
"""


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """An isolated cache, a fake kernel, a one-patch series and a compile counter."""
    monkeypatch.setenv("KMATRIX_CACHE", str(tmp_path / "cache"))
    counter = tmp_path / "compiles"
    counter.write_text("")
    monkeypatch.setenv("KMX_FAKE_COUNTER", str(counter))
    monkeypatch.setenv("KMATRIX_BUILD_JOBS", "1")
    monkeypatch.setattr(build_mod, "toolchain_id", lambda make_vars=(): "fake toolchain 1.0")
    # The fake build needs only make and patch (CI installs the real set with kmatrix setup).
    monkeypatch.setattr(build_mod, "TOOL_PACKAGES", {"make": "make", "patch": "patch"})
    monkeypatch.setattr(build_mod, "_failures", {})
    series = tmp_path / "series"
    series.mkdir()
    (series / "0001-answer.patch").write_text("Subject: [PATCH] answer\n\n---\n" + PATCH)
    frag = tmp_path / "mine.config"
    frag.write_text("CONFIG_B=y\nCONFIG_NOT_IN_KCONFIG=y\n")
    return {
        "src": fake_kernel(tmp_path / "linux"),
        "series": series,
        "frag": frag,
        "counter": counter,
        "cache": tmp_path / "cache",
    }


def spec_for(env: dict[str, Path], **kw: object) -> BuildSpec:
    base = BuildSpec(
        source=str(env["src"]),
        patches=env["series"],
        config="tinyconfig",
        fragments=("tree:kernel/configs/guest.config", str(env["frag"]), "CONFIG_A=n"),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


def compiles(env: dict[str, Path]) -> int:
    return len(env["counter"].read_text().splitlines())


def test_build_patches_configures_and_caches(env: dict[str, Path]) -> None:
    spec = spec_for(env)
    b = build_kernel(spec, quiet=True)
    assert not b.cached and compiles(env) == 1
    image = b.image.read_text()
    assert "return 42;" in image, "the series was not applied"
    config = parse_options(b.config_path.read_text())
    # tinyconfig's A=y, overridden inline to n; B from our fragment; C from the in-tree one.
    assert config == {"CONFIG_A": "n", "CONFIG_B": "y", "CONFIG_C": "y"}
    assert set(b.dropped) == {
        DroppedOption("CONFIG_S390_ONLY", "y", "n", "tree:kernel/configs/guest.config"),
        DroppedOption("CONFIG_NOT_IN_KCONFIG", "y", "n", str(env["frag"])),
    }
    assert [(p.patch, p.status) for p in b.patches] == [("0001-answer.patch", "clean")]
    assert b.applied == ("0001-answer.patch",)
    log = b.log.read_text()
    assert "tinyconfig" in log and "olddefconfig" in log and "CONFIG_NOT_IN_KCONFIG=y" in log
    info = json.loads((b.directory / "build.json").read_text())
    assert info["version"] == "6.1.5" and len(info["dropped_options"]) == 2
    assert (env["src"] / "src/file.c").read_text().count("return 0;") == 1, "source modified"

    # The build tree is a hard-link copy: unchanged files share inodes, patched ones do not.
    def inode(p: Path) -> int:
        return p.stat().st_ino

    assert inode(b.directory / "src/Makefile") == inode(env["src"] / "Makefile")
    assert inode(b.directory / "src/src/file.c") != inode(env["src"] / "src/file.c")

    again = build_kernel(spec, quiet=True)
    assert again.cached and again.key == b.key and compiles(env) == 1, "rebuilt unchanged inputs"
    assert again.dropped == b.dropped and again.patches == b.patches
    found = cached_build(spec)
    assert found is not None and found.key == b.key

    env["frag"].write_text("CONFIG_B=y\n")  # a changed input is a new build
    assert cached_build(spec) is None
    third = build_kernel(spec, quiet=True)
    assert third.key != b.key and not third.cached and compiles(env) == 2
    assert third.dropped == (
        DroppedOption("CONFIG_S390_ONLY", "y", "n", "tree:kernel/configs/guest.config"),
    )


def test_make_vars_reach_make_and_the_key(env: dict[str, Path]) -> None:
    plain = build_kernel(spec_for(env), quiet=True)
    v3 = build_kernel(spec_for(env, make_vars=(("KCFLAGS", "-march=x86-64-v3"),)), quiet=True)
    assert v3.key != plain.key
    assert env["counter"].read_text().splitlines() == ["", "-march=x86-64-v3"]


def test_compile_error_fails_the_kernel_with_the_first_error(env: dict[str, Path]) -> None:
    (env["series"] / "0002-break.patch").write_text(
        "--- a/src/file.c\n+++ b/src/file.c\n@@ -1,4 +1,5 @@\n int main(void)\n {\n"
        "+    FAIL_BUILD;\n     return 42;\n }\n"
    )
    spec = spec_for(env)
    with pytest.raises(BuildFailure) as ei:
        build_kernel(spec, origin="m.yaml:3 (kernel k)", quiet=True)
    e = ei.value
    assert e.first_error.startswith("src/file.c:3:5: error: 'FAIL_BUILD' undeclared"), e
    assert str(e).startswith("m.yaml:3 (kernel k): make bzImage failed")
    assert e.log is not None and e.log.is_file() and "FAIL_BUILD" in e.log.read_text()
    assert e.log.parent == env["cache"] / "builds" / "failed"
    assert not list((env["cache"] / "builds").glob(".*tmp*")), "the scratch build was left"
    # The matrix's other cells of this kernel fail at once: no second compile.
    with pytest.raises(BuildFailure):
        build_kernel(spec, quiet=True)
    assert compiles(env) == 1


def test_conflicting_patch_fails_the_build_naming_the_hunk(env: dict[str, Path]) -> None:
    (env["series"] / "0002-clash.patch").write_text(
        "--- a/src/file.c\n+++ b/src/file.c\n@@ -2,3 +2,3 @@ int main(void)\n {\n"
        "-    return 7;\n+    return 8;\n }\n"
    )
    with pytest.raises(BuildFailure, match=r"patch 0002-clash.patch does not apply") as ei:
        build_kernel(spec_for(env), quiet=True)
    assert "src/file.c: hunk #1 FAILED at 2: @@ -2,3 +2,3 @@ int main(void)" in str(ei.value)
    assert compiles(env) == 0
    # Leaving the patch out (skip:) builds.
    b = build_kernel(spec_for(env, skip=("0002-*",)), quiet=True)
    assert [p.status for p in b.patches] == ["clean", "skipped"]


def test_build_key_follows_every_input(env: dict[str, Path], tmp_path: Path) -> None:
    spec = spec_for(env)
    src = resolve_source(spec.source)
    series = load_series(env["series"])

    def key(s: BuildSpec = spec, source: KernelSource = src, tc: str = "gcc 12") -> str:
        return build_key(s, source, load_series(s.patches) if s.patches else None, tc)

    k0 = key()
    assert key() == k0 == build_key(spec, src, series, "gcc 12")
    cfg = tmp_path / "base.config"
    cfg.write_text("CONFIG_A=y\n")
    variants = {
        "toolchain": key(tc="gcc 13"),
        "source": key(source=replace(src, identity=src.identity + "x")),
        "no patches": key(replace(spec, patches=None)),
        "skip": key(replace(spec, skip=("0001-*",))),
        "config target": key(replace(spec, config="defconfig")),
        "config file": key(replace(spec, config=str(cfg))),
        "fragments": key(replace(spec, fragments=spec.fragments[:1])),
        "make vars": key(replace(spec, make_vars=(("KCFLAGS", "-O3"),))),
    }
    assert len(set(variants.values())) == len(variants) and k0 not in variants.values()
    (env["series"] / "0001-answer.patch").write_text(PATCH.replace("42", "43"))
    assert key() != k0, "a changed patch must change the key"


def test_parse_and_dropped_options() -> None:
    text = 'CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S="x y"\n# comment\nCONFIG_A=m\n'
    assert parse_options(text) == {"CONFIG_A": "m", "CONFIG_B": "n", "CONFIG_S": '"x y"'}
    frags = [("f1", "CONFIG_A=y\nCONFIG_X=y\n# CONFIG_Y is not set\n"), ("f2", "CONFIG_A=m\n")]
    final = "CONFIG_A=m\n# CONFIG_X is not set\n"
    assert dropped_options(frags, final) == (DroppedOption("CONFIG_X", "y", "n", "f1"),)


def test_first_error_prefers_the_compiler() -> None:
    log = (
        "  CC      a.o\nmake[2]: *** [x] Error 1\n"
        "kernel/sched/fair.c:74:1: error: expected ';' before 'static'\n   74 | static\n"
    )
    assert first_error(log).startswith("kernel/sched/fair.c:74:1: error: expected ';'")
    assert first_error("ld: vmlinux.o: undefined reference to `foo'\n").startswith("ld:")
    assert first_error("make: *** [Makefile:1] Error 2\n").startswith("make: ***")
    assert first_error("a\nb\n") == "a\nb"


def test_sources_classify_version_and_tarball(env: dict[str, Path], tmp_path: Path) -> None:
    assert classify("linux-source-6.1") == "deb"
    assert classify("/x/linux.tar.xz") == "tarball"
    assert classify(str(env["src"])) == "dir"
    assert makefile_version(env["src"]) == "6.1.5"
    tar = tmp_path / "linux-6.1.5.tar.gz"
    shutil.make_archive(str(tmp_path / "linux-6.1.5"), "gztar", tmp_path, "linux")
    s = resolve_source(str(tar))
    assert s.kind == "tarball" and s.version == "6.1.5"
    assert (s.root / "src/file.c").is_file() and s.root.is_relative_to(env["cache"])
    assert resolve_source(str(tar)).identity == s.identity
    d1 = resolve_source(str(env["src"]))
    (env["src"] / "src" / "new.c").write_text("int x;\n")
    assert resolve_source(str(env["src"])).identity != d1.identity, "an edit kept the identity"
    (env["src"] / ".config").write_text("CONFIG_A=y\n")
    with pytest.raises(Exception, match="configured or built in place"):
        resolve_source(str(env["src"]))


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_checkout_at_a_ref(env: dict[str, Path]) -> None:
    src = env["src"]

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(src), "-c", "user.name=t", "-c", "user.email=t@example.invalid",
             *args], capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip

    git("init", "-q")
    git("add", "-A")
    git("commit", "-q", "-m", "v1")
    first = git("rev-parse", "HEAD")
    (src / "src" / "file.c").write_text("int main(void)\n{\n    return 1;\n}\n")
    git("commit", "-q", "-am", "v2")
    old = resolve_source(str(src), "HEAD~1")
    assert old.kind == "git" and old.identity == f"git:{first}"
    assert "return 0;" in (old.root / "src/file.c").read_text()
    assert old.root.is_relative_to(env["cache"]), "a ref is exported into the cache"
    head = resolve_source(str(src))
    assert head.root == src and head.identity.endswith(":clean")
    (src / "src" / "file.c").write_text("dirty\n")
    assert resolve_source(str(src)).identity != head.identity, "uncommitted edits ignored"
    with pytest.raises(Exception, match=r"a ref \(.HEAD.\) needs a git checkout"):
        resolve_source(str(env["series"]), "HEAD")


BUILD_TOOLS = ("make", "gcc", "ld", "flex", "bison", "bc", "perl", "patch")


@pytest.mark.skipif(
    any(shutil.which(t) is None for t in BUILD_TOOLS),
    reason="kernel build tools missing (kmatrix setup installs them)",
)
def test_sigterm_stops_make_and_removes_the_scratch_tree(tmp_path: Path) -> None:
    src = fake_kernel(tmp_path / "linux")
    pidfile = tmp_path / "sleeper.pid"
    m = tmp_path / "m.yaml"
    m.write_text(
        f"kernels:\n  - name: slow\n    build: {{source: {src}, make_vars: "
        f"{{KMX_SLEEP: '60', KMX_SLEEP_PID: {pidfile}}}}}\n"
        "cpus: [Nehalem]\ndevices: [{name: plain}]\n"
    )
    cache = tmp_path / "cache"
    env = {**os.environ, "KMATRIX_CACHE": str(cache), "KMX_FAKE_COUNTER": os.devnull}
    proc = subprocess.Popen(
        [sys.executable, "-m", "kmatrix.cli", "build", "-m", str(m)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not pidfile.is_file() or not pidfile.read_text().strip():
            assert proc.poll() is None, proc.communicate()[0]
            assert time.monotonic() < deadline, "the fake compile never started"
            time.sleep(0.1)
        sleeper = int(pidfile.read_text())
        assert list((cache / "builds").glob(".*.tmp-*")), "no scratch tree while building"
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, out
    # The compile under make is gone with its process group (dead or a zombie to be reaped).
    stat = Path(f"/proc/{sleeper}/stat")
    state = stat.read_text().split(")")[-1].split()[0] if stat.exists() else "gone"
    assert state in ("gone", "Z"), f"the fake compile {sleeper} is still running ({state})"
    assert not list((cache / "builds").glob(".*.tmp-*")), "the scratch tree was left"
    assert not [p for p in (cache / "builds").iterdir() if not p.name.startswith(".")]
