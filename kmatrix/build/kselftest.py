"""kselftest targets built with the kernel's own build system, cached like kernel builds.

A target (`cgroup`, `timers`, ...) is built from the same source and patch series as its
kernel: the source is copied with hard links (as kernel builds are), the series applied, the
UAPI headers installed (`make headers`), then `make -C tools/testing/selftests
TARGETS=<target> install` puts the programs, the runner (`run_kselftest.sh`,
`kselftest/runner.sh`) and `kselftest-list.txt` into an install directory. Each step is
cached by its inputs: the prepared tree (source identity, series, skip list, toolchain) once
per kernel source, each target's install once per prepared tree. Both build in the private
copy itself rather than out of tree (O=): some targets' Makefiles only work in-tree, and
make writes new files there, never through the links to the cached source. Nothing here
needs the kernel's config: selftests build against the UAPI headers only.

What is known before a build, for collection: the programs a target runs (its Makefile's
`emit_tests`, the rule that writes kselftest-list.txt, run on the pristine source — a few
tens of milliseconds, nothing compiled), the kernel options it needs (its `config` file) and
its per-program timeout (its `settings` file; the runner's default is 45 s, 0 means none).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from kmatrix.build.builder import _run_logged, first_error, parse_options, toolchain_id
from kmatrix.build.patches import CONFLICT, Series, apply_series, load_series
from kmatrix.build.sources import (
    KernelSource,
    cached_source,
    makefile_version,
    resolve_source,
    tree_fingerprint,
)
from kmatrix.errors import BuildFailure, InfraError
from kmatrix.host.cache import cache_root, digest_bytes, locked

KSELFTEST_BUILDER = "kmatrix-kselftest/2"
SELFTESTS = "tools/testing/selftests"
DEFAULT_TIMEOUT = 45  # kselftest/runner.sh: kselftest_default_timeout
BUILD_TIMEOUT = float(os.environ.get("KMATRIX_KSELFTEST_BUILD_TIMEOUT", "3600"))
TARGET_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+/-]*$")
_TIMEOUT_RE = re.compile(r"^\s*timeout\s*=\s*(\d+)\s*$", re.M)
_DEFAULT_RE = re.compile(r"kselftest_default_timeout=(\d+)")
TOOLS = ("rsync",)  # make install copies with rsync


@dataclass(frozen=True)
class SelftestSource:
    """Where a kernel's selftests come from: a kernel source (a Debian linux-source package,
    a directory, a git checkout at ref, a tarball) and the series its kernel was built with."""

    source: str
    ref: str | None = None
    patches: Path | None = None
    skip: tuple[str, ...] = ()
    # A kernel's own build tree (a `tree:` kernel), used where it is although it has been
    # configured and built in place; its identity covers what the selftests build from.
    in_place: bool = False


@dataclass(frozen=True)
class TargetBuild:
    target: str
    key: str
    install: Path  # run_kselftest.sh, kselftest/, kselftest-list.txt, <target>/
    programs: tuple[str, ...]  # kselftest-list.txt order
    log: Path
    cached: bool = False
    seconds: float = 0.0

    @property
    def directory(self) -> Path:
        return self.install / self.target


class KselftestBuildFailure(BuildFailure):
    """A target did not build: its tests fail with the first error; other targets run."""


_failures: dict[str, KselftestBuildFailure] = {}


# What selftests build from, in a tree: the selftests and the UAPI headers they include.
_IN_PLACE_PARTS = (SELFTESTS, "include/uapi", "arch/x86/include/uapi", "scripts")


def _in_place(sel: SelftestSource) -> KernelSource:
    root = Path(sel.source)
    version = makefile_version(root)
    if not version:
        raise BuildFailure(f"{root} is not a kernel source tree (no Makefile with VERSION)")
    prints = [tree_fingerprint(root / part) for part in _IN_PLACE_PARTS]
    return KernelSource(sel.source, "dir", root, version, "tree:" + digest_bytes(*prints))


def _resolve(sel: SelftestSource, fetch: bool) -> KernelSource | None:
    if sel.in_place:
        return _in_place(sel)
    if fetch:
        return resolve_source(sel.source, sel.ref)
    return cached_source(sel.source, sel.ref)


def _series(sel: SelftestSource) -> Series | None:
    return load_series(sel.patches) if sel.patches is not None else None


def tree_key(sel: SelftestSource, source: KernelSource, series: Series | None) -> str:
    parts = [KSELFTEST_BUILDER, source.identity, toolchain_id(())]
    parts.append(series.digest if series is not None else "no-patches")
    parts.append("\0".join(sorted(sel.skip)))
    return digest_bytes(*parts)[:24]


def target_key(tkey: str, target: str) -> str:
    return digest_bytes(tkey, target)[:24]


def _say(msg: str) -> None:
    print(f"kmatrix kselftest: {msg}", file=sys.stderr, flush=True)


def _env() -> dict[str, str]:
    env = {**os.environ, "LC_ALL": "C"}
    env.setdefault("CCACHE_DIR", str(cache_root() / "ccache"))
    return env


def _prepare(sel: SelftestSource, source: KernelSource, series: Series | None, dest: Path) -> None:
    """Builds the prepared tree into dest: the patched source and its UAPI headers."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    env = _env()
    with (dest / "prepare.log").open("a", encoding="utf-8", errors="replace") as log:
        src = dest / "src"
        if _run_logged(["cp", "-al", str(source.root), str(src)], dest, log, env, deadline) != 0:
            raise InfraError(f"copying {source.root} for kselftest failed (see {log.name})")
        with contextlib.suppress(FileNotFoundError):
            (src / ".kmatrix-complete").unlink()
        if series is not None:
            results = apply_series(series, src, skip=series.select(sel.skip))
            conflict = next((r for r in results if r.status == CONFLICT), None)
            if conflict is not None:
                detail = "; ".join(conflict.problems)
                raise KselftestBuildFailure(
                    f"patch {conflict.patch} does not apply to {source.spec}: {detail}",
                    first_error=detail,
                )
        # In the private copy itself, not O=: some targets' Makefiles only work in-tree
        # (6.x sched installs cs_prctl_test from the source directory).
        argv = ["make", "-C", str(src), "ARCH=x86_64", "-j2", "headers"]
        if _run_logged(argv, src, log, env, deadline) != 0:
            raise KselftestBuildFailure(f"`make headers` failed for {source.spec}")


def prepared_tree(sel: SelftestSource) -> tuple[Path, str]:
    """The patched source with its headers installed (built once); and its key."""
    source = _resolve(sel, fetch=True)
    assert source is not None
    series = _series(sel)
    key = tree_key(sel, source, series)
    dest = cache_root() / "kselftest" / f"tree-{key}"
    if (dest / ".kmatrix-complete").is_file():
        return dest, key
    if key in _failures:
        raise _failures[key]
    with locked(dest, timeout=BUILD_TIMEOUT + 60):
        if (dest / ".kmatrix-complete").is_file():
            return dest, key
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            _say(f"preparing {source.spec} ({source.version}) for selftests in {tmp}")
            try:
                _prepare(sel, source, series, tmp)
            except KselftestBuildFailure as e:
                _failures[key] = e
                raise
            (tmp / ".kmatrix-complete").write_text("ok\n")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest, key


def _read_list(install: Path, target: str) -> tuple[str, ...]:
    try:
        text = (install / "kselftest-list.txt").read_text()
    except OSError:
        return ()
    out = []
    for line in text.splitlines():
        coll, _, prog = line.strip().partition(":")
        if coll == target and prog:
            out.append(prog)
    return tuple(out)


def index_key(sel: SelftestSource, target: str) -> str | None:
    """What determines the cases a target's programs print: its build's key (None while the
    source is not unpacked)."""
    source = _resolve(sel, fetch=False)
    if source is None:
        return None
    return "kselftest:" + target_key(tree_key(sel, source, _series(sel)), target)


def _target_dir(key: str) -> Path:
    return cache_root() / "kselftest" / f"target-{key}"


def build_target(sel: SelftestSource, target: str) -> TargetBuild:
    """The installed target: from the cache, or built now (once, under a lock). A build
    failure is a KselftestBuildFailure naming the first error and the kept log."""
    tree, tkey = prepared_tree(sel)
    key = target_key(tkey, target)
    dest = _target_dir(key)
    if (dest / ".kmatrix-complete").is_file():
        return _from_dir(dest, target, key, cached=True)
    if key in _failures:
        raise _failures[key]
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        raise InfraError(f"kselftest builds need {', '.join(missing)} (run `kmatrix setup`)")
    with locked(dest, timeout=BUILD_TIMEOUT + 60):
        if (dest / ".kmatrix-complete").is_file():
            return _from_dir(dest, target, key, cached=True)
        tmp = dest.parent / f".{dest.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        t0 = time.monotonic()
        try:
            _say(f"building target {target} ({key})")
            log_path = tmp / "build.log"
            with log_path.open("a", encoding="utf-8", errors="replace") as log:
                argv = [
                    "make", "-C", str(tree / "src" / SELFTESTS), "ARCH=x86_64", "-j2",
                    f"TARGETS={target}", f"KSFT_INSTALL_PATH={tmp / 'install'}", "install",
                ]  # fmt: skip
                deadline = time.monotonic() + BUILD_TIMEOUT
                rc = _run_logged(argv, tree / "src", log, _env(), deadline)
            if rc != 0 or not _read_list(tmp / "install", target):
                err = first_error(log_path.read_text(errors="replace"))
                failed = cache_root() / "kselftest" / "failed"
                failed.mkdir(parents=True, exist_ok=True)
                kept = failed / f"{key}.log"
                shutil.copyfile(log_path, kept)
                failure = KselftestBuildFailure(
                    f"kselftest target {target} did not build from {sel.source}"
                    f"\nfirst error:\n{err}\nbuild log: {kept}",
                    kept,
                    err,
                )
                _failures[key] = failure
                raise failure
            (tmp / "seconds").write_text(f"{time.monotonic() - t0:.1f}\n")
            (tmp / ".kmatrix-complete").write_text("ok\n")
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(tmp, dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _from_dir(dest, target, key, cached=False)


def _from_dir(dest: Path, target: str, key: str, cached: bool) -> TargetBuild:
    try:
        seconds = float((dest / "seconds").read_text())
    except (OSError, ValueError):
        seconds = 0.0
    install = dest / "install"
    return TargetBuild(
        target=target, key=key, install=install, programs=_read_list(install, target),
        log=dest / "build.log", cached=cached, seconds=seconds,
    )  # fmt: skip


def cached_target(sel: SelftestSource, target: str) -> TargetBuild | None:
    """The target's build if the cache has it; fetches and builds nothing."""
    source = _resolve(sel, fetch=False)
    if source is None:
        return None
    key = target_key(tree_key(sel, source, _series(sel)), target)
    dest = _target_dir(key)
    if not (dest / ".kmatrix-complete").is_file():
        return None
    return _from_dir(dest, target, key, cached=True)


def source_root(sel: SelftestSource, fetch: bool = False) -> Path | None:
    """The pristine source tree if it is unpacked (fetched and unpacked once if fetch)."""
    source = _resolve(sel, fetch=fetch)
    return source.root if source is not None else None


def emit_programs(root: Path, target: str) -> tuple[str, ...]:
    """The programs a target runs, from its Makefile's emit_tests rule (nothing is built);
    () when the source has no such target or make fails."""
    tdir = root / SELFTESTS / target
    if not (tdir / "Makefile").is_file():
        return ()
    with tempfile.TemporaryDirectory(prefix="kmx-emit-") as out:
        try:
            p = subprocess.run(
                [
                    "make", "-s", "--no-print-directory", "-C", str(tdir), f"OUTPUT={out}",
                    f"COLLECTION={target}", "ARCH=x86_64", "emit_tests",
                ],
                capture_output=True, text=True, timeout=60, check=False,
                env={**os.environ, "LC_ALL": "C"},
            )  # fmt: skip
        except (OSError, subprocess.TimeoutExpired):
            return ()
    if p.returncode != 0:
        return ()
    out_list = []
    for line in p.stdout.splitlines():
        coll, _, prog = line.strip().partition(":")
        if coll == target and prog:
            out_list.append(prog)
    return tuple(out_list)


def known_programs(sel: SelftestSource, target: str) -> tuple[tuple[str, ...], bool] | None:
    """The programs of target known before anything is built: (programs, exact). exact:
    from this very build's kselftest-list.txt; otherwise from the pristine source's
    Makefile (a series that adds a program shows it after the build). None: unknown."""
    built = cached_target(sel, target)
    if built is not None and built.programs:
        return built.programs, True
    root = source_root(sel)
    if root is None:
        return None
    progs = emit_programs(root, target)
    return (progs, False) if progs else None


def target_files(sel: SelftestSource, target: str) -> Path | None:
    """The target's directory with its config and settings files: the install when built,
    else the pristine source's."""
    built = cached_target(sel, target)
    if built is not None:
        return built.directory
    root = source_root(sel)
    return root / SELFTESTS / target if root is not None else None


def requirements(config_file: Path) -> dict[str, str]:
    """The kernel options a target's `config` file asks for (empty when it has none)."""
    try:
        return parse_options(config_file.read_text(errors="replace"))
    except OSError:
        return {}


def missing_options(required: dict[str, str], config: dict[str, str]) -> list[str]:
    """Required options the kernel config lacks: `CONFIG_X` for a missing y/m, `CONFIG_X=v
    (is w)` for another value. A module (m) satisfies y: the target's tests load it."""
    out = []
    for opt, want in required.items():
        have = config.get(opt, "n")
        if want in ("y", "m"):
            if have not in ("y", "m"):
                out.append(opt)
        elif want == "n":
            if have in ("y", "m"):
                out.append(f"{opt}=n (is {have})")
        elif have != want:
            out.append(f"{opt}={want} (is {have})" if have != "n" else f"{opt}={want}")
    return out


def settings_timeout(target_dir: Path, runner_dir: Path | None = None) -> int:
    """The per-program timeout kselftest's runner applies to target (seconds; 0: none)."""
    with contextlib.suppress(OSError):
        m = _TIMEOUT_RE.search((target_dir / "settings").read_text(errors="replace"))
        if m:
            return int(m.group(1))
    if runner_dir is not None:
        with contextlib.suppress(OSError):
            m = _DEFAULT_RE.search((runner_dir / "kselftest" / "runner.sh").read_text())
            if m:
                return int(m.group(1))
    return DEFAULT_TIMEOUT
