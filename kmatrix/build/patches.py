"""Patch series: load them (quilt `series` file, numbered *.patch files, or an mbox), and
check or apply them against a kernel source tree with GNU patch.

Each patch is tried forward with `patch --dry-run --batch --forward`; if that fails, in
reverse, which tells an already-applied patch from a conflicting one. GNU patch's output is
parsed per hunk (offset, fuzz, FAILED) and the failing hunks are named with their `@@` line
from the patch itself. A series stops at its first conflict: later patches were written on
top of it, so their results would mean nothing.

Checking never touches the source: it copies only the files the series touches into a
scratch directory and applies there, patch after patch. Builds apply in a hard-link copy of
the source tree (`cp -al`): GNU patch writes each result to a new file and renames it over
the old name, so the cached tree's inodes are never modified.
"""

from __future__ import annotations

import email
import email.header
import email.policy
import mailbox
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kmatrix.errors import InfraError, InputError
from kmatrix.host.cache import digest_bytes

PATCH_TIMEOUT = 120.0

# Statuses of one patch against one tree.
CLEAN = "clean"
OFFSET = "offset"
FUZZ = "fuzz"
APPLIED = "already-applied"  # the tree has it already: it reverse-applies
CONFLICT = "conflict"
NOT_CHECKED = "not-checked"  # after an earlier conflict in the same series
SKIPPED = "skipped"  # left out on purpose (a build's `skip:` list)
APPLIES = (CLEAN, OFFSET, FUZZ)
OK_STATUSES = (CLEAN, OFFSET, FUZZ, APPLIED, SKIPPED)


class SeriesError(InputError):
    """A patch series cannot be read: names the file (and line) at fault."""


# --- parsing patches ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Hunk:
    index: int  # 1-based within its file, as GNU patch counts
    old_start: int
    old_len: int
    new_start: int
    new_len: int
    header: str  # the whole @@ line, function context included


@dataclass(frozen=True)
class FileDiff:
    path: str  # the tree-relative path patch will open (after -p stripping)
    hunks: tuple[Hunk, ...]
    created: bool = False
    deleted: bool = False
    old_path: str | None = None  # for renames and copies in git diffs


@dataclass(frozen=True)
class Patch:
    name: str  # file name, or NNNN-subject for a message of an mbox
    subject: str
    text: bytes
    strip: int = 1
    origin: str = ""  # file (and line of the series file) it came from
    files: tuple[FileDiff, ...] = ()

    @property
    def digest(self) -> str:
        return digest_bytes(self.name, str(self.strip), self.text)

    def hunk(self, path: str, index: int) -> Hunk | None:
        for f in self.files:
            if f.path == path:
                return f.hunks[index - 1] if 0 < index <= len(f.hunks) else None
        return None


@dataclass(frozen=True)
class Series:
    path: Path
    kind: str  # "quilt" | "numbered" | "mbox" | "single"
    patches: tuple[Patch, ...]

    @property
    def name(self) -> str:
        return self.path.name if self.path.is_dir() else self.path.stem

    @property
    def digest(self) -> str:
        return digest_bytes(*(p.digest for p in self.patches))

    def select(self, skip: Iterable[str]) -> set[str]:
        """Names of the patches matched by any of the glob patterns in skip."""
        import fnmatch

        pats = list(skip)
        return {p.name for p in self.patches if any(fnmatch.fnmatchcase(p.name, s) for s in pats)}


_HUNK_RE = re.compile(rb"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


def _strip(path: str, strip: int) -> str:
    if path == "/dev/null":
        return path
    parts = path.split("/")
    return "/".join(parts[strip:]) if len(parts) > strip else parts[-1]


def _diff_name(raw: bytes) -> str:
    # "--- a/path\t2024-01-01 ..." : the name ends at a tab; git may quote it.
    name = raw.split(b"\t", 1)[0].decode(errors="replace").rstrip()
    if name.startswith('"') and name.endswith('"'):
        name = name[1:-1].encode().decode("unicode_escape")
    return name


def parse_patch(text: bytes, strip: int = 1) -> tuple[FileDiff, ...]:
    """The files and hunks of a unified diff (git extended headers understood)."""
    lines = text.split(b"\n")
    files: list[FileDiff] = []
    i = 0
    git_old = git_new = None
    created = deleted = False
    while i < len(lines):
        line = lines[i]
        if line.startswith(b"diff --git "):
            m = re.match(rb"diff --git (\S+) (\S+)$", line)
            git_old = _diff_name(m.group(1)) if m else None
            git_new = _diff_name(m.group(2)) if m else None
            created = deleted = False
            i += 1
            continue
        if line.startswith(b"new file mode"):
            created = True
        elif line.startswith(b"deleted file mode"):
            deleted = True
        # A pure rename or copy has no index or ---/+++ lines: record it here.
        if line.startswith((b"rename to ", b"copy to ")) and (
            i + 1 >= len(lines) or not lines[i + 1].startswith((b"--- ", b"index "))
        ):
            old, new = git_old or "/dev/null", git_new or "/dev/null"
            files.append(FileDiff(_strip(new, strip), (), old_path=_strip(old, strip)))
        if line.startswith(b"--- ") and i + 1 < len(lines) and lines[i + 1].startswith(b"+++ "):
            old = _diff_name(line[4:])
            new = _diff_name(lines[i + 1][4:])
            created = created or old == "/dev/null"
            deleted = deleted or new == "/dev/null"
            path = _strip(old if new == "/dev/null" else new, strip)
            old_path = _strip(old, strip) if old not in ("/dev/null",) else None
            i += 2
            hunks: list[Hunk] = []
            while i < len(lines):
                m = _HUNK_RE.match(lines[i])
                if not m:
                    break
                old_len = int(m.group(2)) if m.group(2) is not None else 1
                new_len = int(m.group(4)) if m.group(4) is not None else 1
                hunks.append(
                    Hunk(
                        index=len(hunks) + 1,
                        old_start=int(m.group(1)),
                        old_len=old_len,
                        new_start=int(m.group(3)),
                        new_len=new_len,
                        header=lines[i].decode(errors="replace").rstrip(),
                    )
                )
                i += 1
                # Count the body so that a removed line starting with "-- " is not a header.
                o, n = old_len, new_len
                while i < len(lines) and (o > 0 or n > 0):
                    c = lines[i][:1]
                    if c == b" " or lines[i] == b"":
                        o, n = o - 1, n - 1
                    elif c == b"-":
                        o -= 1
                    elif c == b"+":
                        n -= 1
                    elif c != b"\\":
                        break
                    i += 1
                while i < len(lines) and lines[i].startswith(b"\\"):
                    i += 1
            files.append(
                FileDiff(
                    path,
                    tuple(hunks),
                    created=created,
                    deleted=deleted,
                    old_path=old_path if old_path != path else None,
                )
            )
            created = deleted = False
            git_old = git_new = None
            continue
        i += 1
    return tuple(files)


# --- loading series -----------------------------------------------------------------------------


def _natural_key(name: str) -> list[object]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def _subject_of(text: bytes, fallback: str) -> str:
    for line in text.split(b"\n", 40)[:40]:
        if line.lower().startswith(b"subject:"):
            return _clean_subject(line[8:].decode(errors="replace").strip())
    return fallback


def _clean_subject(subject: str) -> str:
    return re.sub(r"^\s*(\[[^\]]*\]\s*)+", "", " ".join(subject.split()))


def _make_patch(name: str, text: bytes, strip: int, origin: str) -> Patch:
    files = parse_patch(text, strip)
    if not files:
        raise SeriesError(f"{origin}: {name} holds no unified diff (no ---/+++ file headers)")
    stem = re.sub(r"\.(patch|diff)$", "", name)
    return Patch(name, _subject_of(text, stem), text, strip, origin, files)


def _read(path: Path, origin: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise SeriesError(f"{origin}: cannot read {path}: {e.strerror or e}") from None


def _quilt(series_file: Path) -> Series:
    base = series_file.parent
    patches: list[Patch] = []
    for lineno, raw in enumerate(_read(series_file, str(series_file)).decode().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        origin = f"{series_file}:{lineno}"
        words = line.split()
        strip = 1
        for opt in words[1:]:
            m = re.fullmatch(r"-p(\d+)", opt)
            if not m:
                raise SeriesError(f"{origin}: unsupported patch option {opt!r} (only -pN)")
            strip = int(m.group(1))
        pfile = base / words[0]
        if not pfile.is_file():
            raise SeriesError(f"{origin}: patch file not found: {pfile}")
        patches.append(_make_patch(words[0], _read(pfile, origin), strip, origin))
    if not patches:
        raise SeriesError(f"{series_file}: the series file lists no patches")
    return Series(base, "quilt", tuple(patches))


def _slug(subject: str) -> str:
    s = re.sub(r"[^A-Za-z0-9]+", "-", subject).strip("-")
    return s[:52].rstrip("-") or "patch"


def _mbox(path: Path) -> Series:
    box = mailbox.mbox(str(path), create=False)
    patches: list[Patch] = []
    try:
        for n, msg in enumerate(box, 1):
            origin = f"{path} (message {n})"
            parsed = email.message_from_bytes(msg.as_bytes(), policy=email.policy.compat32)
            raw_subject = str(
                email.header.make_header(email.header.decode_header(parsed.get("Subject", "")))
            )
            subject = _clean_subject(raw_subject) or f"message {n}"
            bodies: list[bytes] = []
            for part in parsed.walk():
                if part.is_multipart():
                    continue
                payload = part.get_payload(decode=True)
                if isinstance(payload, bytes) and b"\n+++ " in payload:
                    bodies.append(payload)
            if not bodies:
                if re.match(r"^\s*\[PATCH[^\]]* 0+/\d+\]", raw_subject):
                    continue  # a cover letter
                raise SeriesError(f"{origin}: {subject!r} holds no diff")
            text = b"Subject: " + subject.encode() + b"\n\n" + b"\n".join(bodies)
            name = f"{len(patches) + 1:04d}-{_slug(subject)}"
            patches.append(_make_patch(name, text, 1, origin))
    finally:
        box.close()
    if not patches:
        raise SeriesError(f"{path}: the mbox holds no patches")
    return Series(path, "mbox", tuple(patches))


def _looks_like_mbox(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(b"From ") and b"\nSubject:" in head


def load_series(path: Path | str) -> Series:
    """A series from a directory (quilt `series` file, else numbered *.patch/*.diff, else one
    mbox in it), a `series` file, an mbox file, or a single patch file."""
    p = Path(path).expanduser().resolve()
    if p.is_dir():
        if (p / "series").is_file():
            return _quilt(p / "series")
        files = sorted(
            (f for f in p.iterdir() if f.suffix in (".patch", ".diff") and f.is_file()),
            key=lambda f: _natural_key(f.name),
        )
        if files:
            return Series(
                p,
                "numbered",
                tuple(_make_patch(f.name, _read(f, str(f)), 1, str(f)) for f in files),
            )
        boxes = sorted(f for f in p.iterdir() if f.suffix in (".mbox", ".mbx"))
        if len(boxes) == 1:
            return _mbox(boxes[0])
        raise SeriesError(
            f"{p}: no `series` file, no *.patch or *.diff files and not exactly one *.mbox"
        )
    if not p.is_file():
        raise SeriesError(f"{p}: no such patch series (a directory, series file, mbox or patch)")
    if p.name == "series":
        return _quilt(p)
    if _looks_like_mbox(p):
        return _mbox(p)
    return Series(p, "single", (_make_patch(p.name, _read(p, str(p)), 1, str(p)),))


# --- checking and applying ----------------------------------------------------------------------


@dataclass(frozen=True)
class HunkResult:
    file: str
    hunk: int
    status: str  # "clean" | "offset" | "fuzz" | "failed" | "ignored"
    line: int | None = None  # where it applied, or where patch tried
    offset: int = 0
    fuzz: int = 0
    header: str = ""  # the hunk's @@ line


@dataclass(frozen=True)
class PatchResult:
    patch: str
    status: str
    hunks: tuple[HunkResult, ...] = ()
    failed_files: tuple[str, ...] = ()  # files with a failed hunk, or missing, or in the way
    problems: tuple[str, ...] = ()  # one line each: "kernel/x.c: hunk #2 FAILED at 80: @@ ..."
    output: str = ""  # what GNU patch said

    @property
    def ok(self) -> bool:
        return self.status in OK_STATUSES

    @property
    def max_offset(self) -> int:
        """The offset of largest magnitude, with its sign (GNU patch's "offset -47 lines")."""
        return max((h.offset for h in self.hunks), key=abs, default=0)

    @property
    def max_fuzz(self) -> int:
        return max((h.fuzz for h in self.hunks), default=0)

    def short(self) -> str:
        """A table cell: clean, offset 47, fuzz 2, already applied, CONFLICT, -."""
        if self.status == OFFSET:
            return f"offset {self.max_offset:+d}"
        if self.status == FUZZ:
            off = f", offset {self.max_offset:+d}" if self.max_offset else ""
            return f"fuzz {self.max_fuzz}{off}"
        return {
            CLEAN: "clean",
            APPLIED: "already applied",
            CONFLICT: "CONFLICT",
            NOT_CHECKED: "-",
            SKIPPED: "skipped",
        }[self.status]


@dataclass(frozen=True)
class SeriesResult:
    source: str  # the source's label (kernel version)
    spec: str
    results: tuple[PatchResult, ...]

    @property
    def stopped_at(self) -> str | None:
        for r in self.results:
            if r.status == CONFLICT:
                return r.patch
        return None

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)


_HUNK_LINE = re.compile(
    r"^Hunk #(\d+) (succeeded|FAILED|ignored) at (\d+)"
    r"(?: with fuzz (\d+))?(?: \(offset (-?\d+) lines?\))?"
)
_FILE_LINE = re.compile(r"^(?:checking|patching) file (.+)$")


def _unquote(name: str) -> str:
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] and name[0] in "'\"":
        return name[1:-1]
    return name


@dataclass
class _Run:
    code: int
    output: str
    hunks: list[HunkResult] = field(default_factory=list)
    failed_files: list[str] = field(default_factory=list)
    reversed_files: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _run_patch(patch: Patch, tree: Path, dry_run: bool, reverse: bool = False) -> _Run:
    argv = [
        "patch",
        f"-p{patch.strip}",
        "--batch",
        "--forward",
        "--no-backup-if-mismatch",
        "--reject-file=-",
        "-d",
        str(tree),
    ]
    if dry_run:
        argv.append("--dry-run")
    if reverse:
        argv.append("--reverse")
    try:
        p = subprocess.run(
            argv,
            input=patch.text,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,  # one stream: messages stay in the order patch wrote them
            timeout=PATCH_TIMEOUT,
            check=False,
            env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"},
        )
    except FileNotFoundError:
        raise InfraError("GNU patch is not installed (run `kmatrix setup`)") from None
    except subprocess.TimeoutExpired:
        raise InfraError(f"patch {patch.name} took more than {PATCH_TIMEOUT:.0f}s") from None
    out = p.stdout.decode(errors="replace")
    run = _Run(p.returncode, out)
    current = ""
    lines = out.splitlines()
    for i, line in enumerate(lines):
        m = _FILE_LINE.match(line)
        if m:
            current = _unquote(m.group(1))
            continue
        m = _HUNK_LINE.match(line)
        if m:
            idx, verdict, at = int(m.group(1)), m.group(2), int(m.group(3))
            fuzz = int(m.group(4) or 0)
            offset = int(m.group(5) or 0)
            hk = patch.hunk(current, idx)
            header = hk.header if hk else ""
            if verdict == "FAILED":
                status = "failed"
                run.problems.append(f"{current}: hunk #{idx} FAILED at {at}: {header}".rstrip())
                if current not in run.failed_files:
                    run.failed_files.append(current)
            elif verdict == "ignored":
                status = "ignored"
            else:
                status = "fuzz" if fuzz else "offset" if offset else "clean"
            run.hunks.append(HunkResult(current, idx, status, at, offset, fuzz, header))
            continue
        if line.startswith("Reversed (or previously applied) patch detected"):
            run.reversed_files.append(current)
        elif line.startswith("The next patch would create the file"):
            # "...create the file X,\nwhich already exists!" – the name ends at the comma.
            name = _unquote(line.removeprefix("The next patch would create the file").rstrip(","))
            run.reversed_files.append(name)
            current = name
        elif line.startswith("can't find file to patch"):
            # The name is in the quoted text that follows ("|+++ b/path"), which can hold a
            # whole commit message before the file headers: take its last header.
            quoted: list[str] = []
            for follow in lines[i + 1 :]:
                if follow.startswith("|"):
                    quoted.append(follow)
                elif quoted:
                    break
            names = [
                q[5:] for q in quoted if q.startswith(("|+++ ", "|--- ")) and "/dev/null" not in q
            ]
            if names:
                name = _strip(_diff_name(names[-1].encode()), patch.strip)
                run.failed_files.append(name)
                run.problems.append(f"{name}: file not found in the tree")
            else:
                run.problems.append("a file to patch is not in the tree")
        elif line.startswith("patch: ****"):
            run.problems.append(line.removeprefix("patch: **** ").strip())
    # Files in the way of a creation, or "Unreversed" when reversing, are not failures of a
    # hunk but still stop the patch from applying.
    return run


def _classify_applies(run: _Run) -> str:
    statuses = {h.status for h in run.hunks}
    if "fuzz" in statuses:
        return FUZZ
    if "offset" in statuses:
        return OFFSET
    return CLEAN


def check_patch(patch: Patch, tree: Path, apply: bool) -> PatchResult:
    """Classifies one patch against tree; applies it for real when it applies and apply."""
    fwd = _run_patch(patch, tree, dry_run=True)
    if fwd.code == 0:
        status = _classify_applies(fwd)
        if apply:
            real = _run_patch(patch, tree, dry_run=False)
            if real.code != 0:  # the dry run said yes: only the host can make this differ
                raise InfraError(
                    f"patch {patch.name} applied in a dry run but not for real:\n{real.output}"
                )
        return PatchResult(patch.name, status, tuple(fwd.hunks), output=fwd.output)
    if fwd.code >= 2 and not fwd.hunks and not fwd.reversed_files:
        # patch could not read the diff at all: the patch file is at fault, not the tree.
        detail = "; ".join(fwd.problems) or fwd.output.strip()
        raise SeriesError(f"{patch.origin}: GNU patch cannot read {patch.name}: {detail}")
    rev = _run_patch(patch, tree, dry_run=True, reverse=True)
    if rev.code == 0:
        return PatchResult(patch.name, APPLIED, tuple(rev.hunks), output=fwd.output)
    problems = list(fwd.problems)
    failed = list(fwd.failed_files)
    if fwd.reversed_files:
        # Some files already have their part of the patch, others do not.
        partly = ", ".join(dict.fromkeys(fwd.reversed_files))
        problems.append(f"partly applied already: {partly}")
        for f in fwd.reversed_files:
            if f not in failed:
                failed.append(f)
    if not problems:
        problems.append(fwd.output.strip().splitlines()[-1] if fwd.output.strip() else "failed")
    return PatchResult(
        patch.name, CONFLICT, tuple(fwd.hunks), tuple(failed), tuple(problems), fwd.output
    )


def apply_series(
    series: Series, tree: Path, skip: Iterable[str] = (), apply: bool = True
) -> list[PatchResult]:
    """Checks (and applies, if apply) the series patch by patch in tree; stops at a conflict.

    Patches named in skip are left out. After a conflict the remaining patches are reported
    NOT_CHECKED. An already-applied patch is left as the tree has it.
    """
    skipped = set(skip)
    out: list[PatchResult] = []
    stopped = False
    for patch in series.patches:
        if patch.name in skipped:
            out.append(PatchResult(patch.name, SKIPPED))
            continue
        if stopped:
            out.append(PatchResult(patch.name, NOT_CHECKED))
            continue
        r = check_patch(patch, tree, apply=apply)
        out.append(r)
        stopped = r.status == CONFLICT
    return out


def touched_paths(series: Series) -> set[str]:
    paths: set[str] = set()
    for p in series.patches:
        for f in p.files:
            paths.add(f.path)
            if f.old_path:
                paths.add(f.old_path)
    paths.discard("/dev/null")
    return paths


def _safe_rel(path: str) -> bool:
    return bool(path) and not path.startswith("/") and ".." not in Path(path).parts


def sparse_copy(source: Path, paths: Iterable[str], dest: Path) -> None:
    """Copies just the named files (those that exist) from source into dest."""
    for rel in sorted(paths):
        if not _safe_rel(rel):
            raise SeriesError(f"refusing a patch path outside the tree: {rel!r}")
        src = source / rel
        if src.is_file():
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target)


def check_series(
    series: Series, source: Path, label: str, spec: str = "", skip: Iterable[str] = ()
) -> SeriesResult:
    """The series against one source tree, without modifying it."""
    with tempfile.TemporaryDirectory(prefix="kmatrix-patch-") as tmp:
        scratch = Path(tmp)
        sparse_copy(source, touched_paths(series), scratch)
        results = apply_series(series, scratch, skip=series.select(skip), apply=True)
    return SeriesResult(label, spec or label, tuple(results))


# --- reporting ----------------------------------------------------------------------------------


def table(series: Series, results: Sequence[SeriesResult]) -> str:
    """The series x version table, then one line per conflicting hunk."""
    head = ["patch", *(r.source for r in results)]
    rows = [
        [p.name] + [r.results[i].short() for r in results] for i, p in enumerate(series.patches)
    ]
    widths = [max(len(row[c]) for row in [head, *rows]) for c in range(len(head))]

    def fmt(row: list[str]) -> str:
        return "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()

    out = [fmt(head), fmt(["-" * w for w in widths]), *(fmt(r) for r in rows)]
    notes = []
    for r in results:
        for pr in r.results:
            if pr.status == CONFLICT:
                notes.append(f"{r.source}: {pr.patch} conflicts; the series stops here:")
                notes += [f"    {p}" for p in pr.problems]
    if notes:
        out += ["", *notes]
    return "\n".join(out)


def to_json(series: Series, results: Sequence[SeriesResult]) -> dict[str, object]:
    return {
        "series": str(series.path),
        "kind": series.kind,
        "patches": [{"name": p.name, "subject": p.subject} for p in series.patches],
        "sources": [
            {
                "source": r.source,
                "spec": r.spec,
                "ok": r.ok,
                "stopped_at": r.stopped_at,
                "results": [
                    {
                        "patch": pr.patch,
                        "status": pr.status,
                        "summary": pr.short(),
                        "failed_files": list(pr.failed_files),
                        "problems": list(pr.problems),
                        "hunks": [
                            {
                                "file": h.file,
                                "hunk": h.hunk,
                                "status": h.status,
                                "line": h.line,
                                "offset": h.offset,
                                "fuzz": h.fuzz,
                                "header": h.header,
                            }
                            for h in pr.hunks
                        ],
                        "output": pr.output,
                    }
                    for pr in r.results
                ],
            }
            for r in results
        ],
    }
