"""Kernel builds: source + patch series + base config + fragments + make variables -> bzImage.

A build is cached under `<cache>/builds/<key>` where key hashes everything that can change
the result: the source's identity, the series' patches, the skip list, the base config, the
fragments, the make variables and the toolchain (`gcc --version`, `ld --version`, `make
--version`). A build whose key is in the cache is never run again; make is not even invoked.

The build runs out of tree (O=) in a hard-link copy of the cached source with the series
applied (GNU patch replaces files rather than writing through the links, so the cached
tree stays pristine), with ccache when it is installed. Everything goes to build.log; a
summary (patch results, config options the fragments asked for that olddefconfig dropped,
timings) to build.json. A failure caused by the inputs (a conflicting patch, a compile
error) is a BuildFailure: the kernel's fault, failing its cells; a missing tool or a host
problem is an InfraError.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO

from kmatrix.build.patches import (
    CONFLICT,
    HunkResult,
    PatchResult,
    Series,
    apply_series,
    load_series,
)
from kmatrix.build.sources import KernelSource, cached_source, resolve_source
from kmatrix.config.specs import BuildSpec
from kmatrix.errors import BuildFailure as BuildFailure  # defined there: see errors.py
from kmatrix.errors import InfraError
from kmatrix.host.cache import cache_root, digest_bytes, digest_file, locked
from kmatrix.host.paths import FileRefused, PathEscape, confine, read_regular

# Bump when the build procedure changes in a way that changes its output.
BUILDER_VERSION = "kmatrix-build/1"
BUILD_TIMEOUT = float(os.environ.get("KMATRIX_BUILD_TIMEOUT", "5400"))
TOOL_PACKAGES = {  # tool -> the Debian package that has it
    "make": "make",
    "gcc": "gcc",
    "flex": "flex",
    "bison": "bison",
    "bc": "bc",
    "perl": "perl",
    "patch": "patch",
}
_OPTION_RE = re.compile(r"^(CONFIG_[A-Za-z0-9_]+)=(.*)$")
_UNSET_RE = re.compile(r"^# (CONFIG_[A-Za-z0-9_]+) is not set$")
_ERROR_RES = (
    re.compile(r"^\S+:\d+(?::\d+)?: (?:fatal )?error: "),  # gcc / clang
    re.compile(r"undefined reference to |^ld(?:\.\w+)?: .*(?:error|cannot)"),
    re.compile(r"^make(?:\[\d+\])?: \*\*\* "),
)


@dataclass(frozen=True)
class DroppedOption:
    option: str
    wanted: str  # "y", "m", "n", a value
    got: str  # the final value, or "n" when unset or absent
    fragment: str  # which fragment asked for it


@dataclass(frozen=True)
class BuiltKernel:
    key: str
    directory: Path
    image: Path
    config_path: Path
    modules_root: Path | None
    log: Path
    source: str
    version: str
    patches: tuple[PatchResult, ...] = ()
    dropped: tuple[DroppedOption, ...] = ()
    cached: bool = False  # True: found in the cache, nothing compiled in this process
    seconds: float = 0.0  # how long the build took when it ran
    make_vars: tuple[tuple[str, str], ...] = field(default=())

    @property
    def applied(self) -> tuple[str, ...]:
        """Names of the series' patches this kernel has (applied now, or already in the tree)."""
        return tuple(
            p.patch
            for p in self.patches
            if p.status in ("clean", "offset", "fuzz", "already-applied")
        )


# Failures seen by this process, by key: the matrix's other cells of the kernel fail at once
# instead of building it again.
_failures: dict[str, BuildFailure] = {}
_toolchains: dict[tuple[tuple[str, str], ...], str] = {}


# --- inputs ---------------------------------------------------------------------------------------


def _first_line(argv: list[str]) -> str:
    try:
        p = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise InfraError(f"cannot run `{' '.join(argv)}`: {e}") from None
    out = (p.stdout or p.stderr).strip().splitlines()
    return out[0] if out else ""


def toolchain_id(make_vars: tuple[tuple[str, str], ...] = ()) -> str:
    """What compiles the kernel: compiler, linker and make versions."""
    if make_vars not in _toolchains:
        mv = dict(make_vars)
        llvm = mv.get("LLVM", "") not in ("", "0")
        cc = mv.get("CC", "clang" if llvm else "gcc").split()[-1]
        ld = mv.get("LD", "ld.lld" if llvm else "ld")
        _toolchains[make_vars] = "\n".join(
            _first_line([tool, "--version"]) for tool in (cc, ld, "make")
        )
    return _toolchains[make_vars]


def parse_options(text: str) -> dict[str, str]:
    """CONFIG_X=v and '# CONFIG_X is not set' (as "n") lines; the last one of a name wins."""
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        m = _OPTION_RE.match(line)
        if m:
            out[m.group(1)] = m.group(2)
            continue
        m = _UNSET_RE.match(line)
        if m:
            out[m.group(1)] = "n"
    return out


def fragment_texts(spec: BuildSpec, tree: Path) -> list[tuple[str, str]]:
    """(label, text) of each fragment, in order: files, in-tree files, inline options."""
    out: list[tuple[str, str]] = []
    for frag in spec.fragments:
        if frag.startswith(("CONFIG_", "# CONFIG_")):
            out.append(("inline", frag + "\n"))
            continue
        try:
            # An in-tree fragment stays in the tree, whatever links the series added.
            path = Path(frag)
            if frag.startswith("tree:"):
                path = confine(tree, frag.removeprefix("tree:"), f"config fragment {frag}")
            out.append((frag, read_regular(path, 16 << 20).decode(errors="replace")))
        except (FileRefused, PathEscape) as e:
            raise BuildFailure(f"config fragment {frag}: {e}") from None
    return out


def dropped_options(
    fragments: list[tuple[str, str]], final_config: str
) -> tuple[DroppedOption, ...]:
    """The fragments' options whose value did not survive into the final .config."""
    wanted: dict[str, tuple[str, str]] = {}
    for label, text in fragments:
        for opt, value in parse_options(text).items():
            wanted[opt] = (value, label)
    final = parse_options(final_config)
    out = []
    for opt, (value, label) in wanted.items():
        got = final.get(opt, "n")
        if got != value:
            out.append(DroppedOption(opt, value, got, label))
    return tuple(out)


def build_key(spec: BuildSpec, source: KernelSource, series: Series | None, toolchain: str) -> str:
    parts: list[str] = [BUILDER_VERSION, source.identity, toolchain]
    parts.append(series.digest if series is not None else "no-patches")
    parts.append("\0".join(sorted(spec.skip)))
    if spec.config.startswith("/"):
        parts.append("config-file:" + digest_file(Path(spec.config)))
    else:
        parts.append("config-target:" + spec.config)
    for frag in spec.fragments:
        if frag.startswith(("CONFIG_", "# CONFIG_", "tree:")):
            parts.append(frag)  # in-tree files are fixed by the source and the series
        else:
            try:
                parts.append("fragment:" + digest_file(Path(frag)))
            except OSError as e:
                raise BuildFailure(f"config fragment {frag}: {e}") from None
    parts.append("\0".join(f"{k}={v}" for k, v in spec.make_vars))
    return digest_bytes(*parts)[:24]


# --- running ----------------------------------------------------------------------------------


def _check_tools(make_vars: tuple[tuple[str, str], ...]) -> None:
    tools = dict(TOOL_PACKAGES)
    cc = dict(make_vars).get("CC")
    if cc:
        tools.pop("gcc")
        tools[cc.split()[-1]] = cc.split()[-1]
    missing = [pkg for tool, pkg in tools.items() if shutil.which(tool) is None]
    if missing:
        raise InfraError(
            "kernel builds need " + ", ".join(missing) + " (run `kmatrix setup` as root)"
        )


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the builder dies, even by SIGKILL, so that an
    abandoned make stops (make then stops its jobs and removes half-written targets)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG


def _run_logged(
    argv: list[str], cwd: Path, log: IO[str], env: dict[str, str], deadline: float
) -> int:
    """Runs argv with its output appended to log, in its own process group."""
    log.write(f"\n$ {' '.join(argv)}\n")
    log.flush()
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise InfraError(f"the kernel build overran its {BUILD_TIMEOUT:.0f}s deadline")
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,
    )
    try:
        return proc.wait(timeout=remaining)
    except subprocess.TimeoutExpired:
        raise InfraError(
            f"`{' '.join(argv)}` overran the build deadline of {BUILD_TIMEOUT:.0f}s "
            "(KMATRIX_BUILD_TIMEOUT)"
        ) from None
    finally:
        if proc.poll() is None:  # interrupted or timed out: take make's children with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def first_error(log_text: str, context: int = 4) -> str:
    """The first compiler (then linker, then make) error of a build log, with a few lines."""
    lines = log_text.splitlines()
    for rx in _ERROR_RES:
        for i, line in enumerate(lines):
            if rx.search(line):
                return "\n".join(lines[i : i + 1 + context]).rstrip()
    return "\n".join(lines[-15:])


def _jobs() -> int:
    env = os.environ.get("KMATRIX_BUILD_JOBS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0)) or 1


def _env(builds: Path) -> dict[str, str]:
    env = {**os.environ, "LC_ALL": "C"}
    env.setdefault("CCACHE_DIR", str(cache_root() / "ccache"))
    # Paths under the builds directory hash as relative ones, and the working directory is
    # not hashed, so a second build of the same source in another directory hits the cache.
    env["CCACHE_BASEDIR"] = str(builds)
    env["CCACHE_NOHASHDIR"] = "1"
    return env


def _make_argv(spec: BuildSpec, out: Path, *targets: str) -> list[str]:
    mv = dict(spec.make_vars)
    argv = ["make", f"O={out}", "ARCH=x86_64", f"-j{_jobs()}"]
    if shutil.which("ccache") is not None:
        mv["CC"] = f"ccache {mv.get('CC', 'clang' if mv.get('LLVM') else 'gcc')}"
    # A fixed user and host keep `uname -v` and the ccache keys of init/version.o stable.
    mv.setdefault("KBUILD_BUILD_USER", "kmatrix")
    mv.setdefault("KBUILD_BUILD_HOST", "kmatrix")
    argv += [f"{k}={v}" for k, v in mv.items()]
    return [*argv, *targets]


def _say(msg: str) -> None:
    print(f"kmatrix build: {msg}", file=sys.stderr, flush=True)


def _do_build(
    spec: BuildSpec,
    source: KernelSource,
    series: Series | None,
    key: str,
    tmp: Path,
    log: IO[str],
    results: list[PatchResult],
) -> tuple[DroppedOption, ...]:
    """Builds into tmp; results receives the patch results as soon as they are known."""
    deadline = time.monotonic() + BUILD_TIMEOUT
    env = _env(tmp.parent)
    src, out = tmp / "src", tmp / "out"
    log.write(f"# kmatrix build {key}\n# source {source.spec} ({source.version})\n")
    log.flush()
    # A hard-link copy costs inodes, not bytes; patch replaces the files it changes.
    if _run_logged(["cp", "-al", str(source.root), str(src)], tmp, log, env, deadline) != 0:
        raise InfraError(f"copying {source.root} into the build directory failed (see {log.name})")
    with contextlib.suppress(FileNotFoundError):
        (src / ".kmatrix-complete").unlink()
    if series is not None:
        results += apply_series(series, src, skip=series.select(spec.skip))
        for r in results:
            log.write(f"patch {r.patch}: {r.short()}\n{r.output}")
        conflict = next((r for r in results if r.status == CONFLICT), None)
        if conflict is not None:
            detail = "; ".join(conflict.problems)
            raise BuildFailure(
                f"patch {conflict.patch} does not apply to {source.spec} ({source.version}): "
                f"{detail}",
                first_error=detail,
            )
    out.mkdir()
    if spec.config.startswith("/"):
        shutil.copyfile(spec.config, out / ".config")
        base = ["olddefconfig"]
    else:
        base = [spec.config]
    steps = [base]
    frags = fragment_texts(spec, src)
    if frags:
        merged = out / "kmatrix-fragments.config"
        merged.write_text("".join(f"# --- {label}\n{text}\n" for label, text in frags))
        steps.append(["__merge__"])
        steps.append(["olddefconfig"])
    for step in steps:
        if step == ["__merge__"]:
            # merge_config.sh says which fragment overrides what; its -m leaves the
            # resolution to olddefconfig below.
            argv = [
                "sh",
                str(src / "scripts/kconfig/merge_config.sh"),
                "-m",
                "-O",
                str(out),
                str(out / ".config"),
                str(out / "kmatrix-fragments.config"),
            ]
        else:
            argv = _make_argv(spec, out, *step)
        if _run_logged(argv, src, log, env, deadline) != 0:
            raise BuildFailure(f"`{' '.join(step)}` failed for {source.spec}")
    final = (out / ".config").read_text()
    dropped = dropped_options(frags, final)
    if dropped:
        log.write("\n# requested config options that did not survive olddefconfig:\n")
        for d in dropped:
            log.write(f"#   {d.option}={d.wanted} (from {d.fragment}) -> {d.got}\n")
    modules = parse_options(final).get("CONFIG_MODULES") == "y"
    targets = ["bzImage", "modules"] if modules else ["bzImage"]
    rc = _run_logged(_make_argv(spec, out, *targets), src, log, env, deadline)
    if rc != 0:
        raise BuildFailure(f"make {' '.join(targets)} failed for {source.spec} (exit {rc})")
    if modules:
        argv = _make_argv(
            spec, out, f"INSTALL_MOD_PATH={tmp / 'mods'}", "INSTALL_MOD_STRIP=1", "modules_install"
        )
        if _run_logged(argv, src, log, env, deadline) != 0:
            raise BuildFailure(f"make modules_install failed for {source.spec}")
    if not (out / "arch/x86/boot/bzImage").is_file():
        raise BuildFailure(f"the build of {source.spec} made no arch/x86/boot/bzImage")
    return dropped


def _summary(
    spec: BuildSpec,
    source: KernelSource,
    key: str,
    patches: list[PatchResult],
    dropped: tuple[DroppedOption, ...],
    seconds: float,
    toolchain: str,
    error: str = "",
) -> dict[str, object]:
    return {
        "key": key,
        "builder": BUILDER_VERSION,
        "source": source.spec,
        "source_identity": source.identity,
        "version": source.version,
        "patches": str(spec.patches) if spec.patches else None,
        "patch_results": [
            {
                "patch": p.patch,
                "status": p.status,
                "summary": p.short(),
                "problems": list(p.problems),
                "hunks": [asdict(h) for h in p.hunks],
            }
            for p in patches
        ],
        "config": spec.config,
        "fragments": list(spec.fragments),
        "make_vars": dict(spec.make_vars),
        "toolchain": toolchain,
        "dropped_options": [asdict(d) for d in dropped],
        "seconds": round(seconds, 1),
        "error": error,
    }


def _from_dir(
    dest: Path, key: str, source: KernelSource, spec: BuildSpec, cached: bool
) -> BuiltKernel:
    info = json.loads((dest / "build.json").read_text())
    patches = tuple(
        PatchResult(
            p["patch"],
            p["status"],
            hunks=tuple(HunkResult(**h) for h in p.get("hunks", ())),
            problems=tuple(p.get("problems", ())),
        )
        for p in info.get("patch_results", [])
    )
    dropped = tuple(DroppedOption(**d) for d in info.get("dropped_options", []))
    mods = dest / "mods" / "lib" / "modules"
    return BuiltKernel(
        key=key,
        directory=dest,
        image=dest / "out/arch/x86/boot/bzImage",
        config_path=dest / "out/.config",
        modules_root=mods if mods.is_dir() else None,
        log=dest / "build.log",
        source=source.spec,
        version=source.version,
        patches=patches,
        dropped=dropped,
        cached=cached,
        seconds=float(info.get("seconds", 0.0)),
        make_vars=spec.make_vars,
    )


def _complete(dest: Path) -> bool:
    return (dest / ".kmatrix-complete").is_file() and (dest / "out/arch/x86/boot/bzImage").is_file()


def cached_build(spec: BuildSpec) -> BuiltKernel | None:
    """The build of spec if the cache has it; fetches, unpacks and compiles nothing."""
    source = cached_source(spec.source, spec.ref)
    if source is None:
        return None
    series = load_series(spec.patches) if spec.patches is not None else None
    key = build_key(spec, source, series, toolchain_id(spec.make_vars))
    dest = cache_root() / "builds" / key
    return _from_dir(dest, key, source, spec, cached=True) if _complete(dest) else None


def recorded_failure(spec: BuildSpec) -> str | None:
    """The first error of an earlier failed build of exactly these inputs (the same build
    key, so the same source, patches, config and toolchain), if one is on record in
    builds/failed/; None otherwise. Fetches, unpacks and compiles nothing."""
    source = cached_source(spec.source, spec.ref)
    if source is None:
        return None
    series = load_series(spec.patches) if spec.patches is not None else None
    key = build_key(spec, source, series, toolchain_id(spec.make_vars))
    try:
        info = json.loads((cache_root() / "builds" / "failed" / f"{key}.json").read_text())
    except (OSError, ValueError):
        return None
    return str(info.get("error") or "the build failed") if isinstance(info, dict) else None


def build_kernel(spec: BuildSpec, origin: str = "", quiet: bool = False) -> BuiltKernel:
    """The kernel built from spec: from the cache, or built now (once, under a lock)."""
    where = f"{origin}: " if origin else ""
    source = resolve_source(spec.source, spec.ref)
    series = load_series(spec.patches) if spec.patches is not None else None
    toolchain = toolchain_id(spec.make_vars)
    key = build_key(spec, source, series, toolchain)
    builds = cache_root() / "builds"
    dest = builds / key
    if _complete(dest):
        return _from_dir(dest, key, source, spec, cached=True)
    if key in _failures:
        raise _failures[key]
    _check_tools(spec.make_vars)
    with locked(dest, timeout=BUILD_TIMEOUT + 60):
        if _complete(dest):
            return _from_dir(dest, key, source, spec, cached=True)
        # Under the lock, any scratch tree of this key is a killed builder's leftover.
        for stale in builds.glob(f".{key}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)
        tmp = builds / f".{key}.tmp-{os.getpid()}"
        tmp.mkdir(parents=True)
        t0 = time.monotonic()
        if not quiet:
            _say(f"building {key} from {source.spec} ({source.version}) in {tmp}")
        patches: list[PatchResult] = []
        try:
            with (tmp / "build.log").open("a", encoding="utf-8", errors="replace") as log:
                try:
                    dropped = _do_build(spec, source, series, key, tmp, log, patches)
                except BuildFailure as e:
                    log.flush()
                    text = (tmp / "build.log").read_text(errors="replace")
                    err = e.first_error or first_error(text)
                    failed = builds / "failed"
                    failed.mkdir(parents=True, exist_ok=True)
                    kept = failed / f"{key}.log"
                    shutil.copyfile(tmp / "build.log", kept)
                    (failed / f"{key}.json").write_text(
                        json.dumps(
                            _summary(
                                spec,
                                source,
                                key,
                                patches,
                                (),
                                time.monotonic() - t0,
                                toolchain,
                                err,
                            ),
                            indent=1,
                        )
                    )
                    failure = BuildFailure(
                        f"{where}{e}\nfirst error:\n{err}\nbuild log: {kept}", kept, err
                    )
                    _failures[key] = failure
                    raise failure from None
            seconds = time.monotonic() - t0
            (tmp / "build.json").write_text(
                json.dumps(
                    _summary(spec, source, key, patches, dropped, seconds, toolchain), indent=1
                )
                + "\n"
            )
            (tmp / ".kmatrix-complete").write_text("ok\n")
            shutil.rmtree(dest, ignore_errors=True)  # a half-built leftover
            os.replace(tmp, dest)
            # The out tree's link to its source was absolute; the tree moved with it.
            link = dest / "out" / "source"
            if link.is_symlink():
                link.unlink()
                link.symlink_to("../src")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        built = _from_dir(dest, key, source, spec, cached=False)
        if not quiet:
            _say(f"built {key} in {seconds:.0f}s: {built.image}")
        return built
