"""The results.json document, typed and versioned: what a run writes and every reader reads.

One dataclass per part of the document — RunInfo (the "run" section, with the shard and plan
facts and, for a merged run, its shards), CellResult (one per cell, with its BootRecord and
FindingRecords), TestResult (one per (cell, test)) and RunDocument (the whole file) — each
with ``from_json`` (every field's type checked; one InputError naming the file and the entry,
e.g. ``results.json: results[12].metrics.hackbench_seconds: NaN is not a number``) and
``to_json``.

Versions: kmatrix writes ``kmatrix-results/2`` and reads /2 and /1 (older runs kept as
baselines). /2 is /1 made strict: every field present and of its type, numbers finite,
``run.planned_cells`` an object, ``run.shards`` and ``run.merge`` always there. A /1 file may
lack fields (they read as their defaults), may carry keys this version does not know (they
are ignored) and may give planned_cells as a list of cell ids; a /2 file with an unknown key
is refused, so a misspelt or foreign field is never silently dropped.

Test outcomes are the Outcome enum: one line per outcome says what it counts as in every
reader (cell colour, failing or not, JUnit element, KCIDB status), so adding an outcome is
one line here.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from kmatrix.errors import InputError

SCHEMA = "kmatrix-results/2"
SCHEMA_V1 = "kmatrix-results/1"
READABLE = (SCHEMA, SCHEMA_V1)


class CellStatus(StrEnum):
    """A cell's colour in the reports, least to most alarming: a cell takes the most
    alarming status of its tests' outcomes (NONE: the cell has no test results)."""

    NONE = "none"
    NA = "na"  # every test was not applicable
    SKIP = "skip"
    PASS = "pass"
    KNOWN = "known"
    FLAKY = "flaky"
    XPASS = "xpass"
    ERROR = "error"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return _STATUS_RANK[self]


_STATUS_RANK = {s: i for i, s in enumerate(CellStatus)}
JUnitKind = Literal["", "failure", "error", "skipped"]


class Outcome(StrEnum):
    """A test's outcome, as results.json spells it."""

    status: CellStatus  # the cell colour this outcome gives (the worst of its tests wins)
    failing: bool  # a failure for compare (new failure / fixed) and merge's exit status
    junit: JUnitKind  # the JUnit element it becomes ("": a plain, passing testcase)
    kcidb: str  # its KCIDB test status

    def __new__(
        cls, value: str, status: CellStatus, failing: bool, junit: JUnitKind, kcidb: str
    ) -> Outcome:
        member = str.__new__(cls, value)
        member._value_ = value
        member.status, member.failing, member.junit, member.kcidb = status, failing, junit, kcidb
        return member

    # One line per outcome: its name, cell status, failing, JUnit element, KCIDB status.
    PASSED = "passed", CellStatus.PASS, False, "", "PASS"
    FAILED = "failed", CellStatus.FAIL, True, "failure", "FAIL"
    ERROR = "error", CellStatus.ERROR, True, "error", "ERROR"
    SKIPPED = "skipped", CellStatus.SKIP, False, "skipped", "SKIP"
    # An expected failure tells nothing new about the code; an unexpected pass did pass.
    XFAILED = "xfailed", CellStatus.PASS, False, "skipped", "SKIP"
    XPASSED = "xpassed", CellStatus.XPASS, False, "", "PASS"
    # Failed, then passed on a rerun on a clean guest (under --kmatrix-strict it fails the
    # run, but compare never counts it as a new failure nor as fixed).
    FLAKY = "flaky", CellStatus.FLAKY, False, "", "PASS"
    # Failed only on kernel reports that known issues explain (their ids in its properties).
    KNOWN = "known", CellStatus.KNOWN, False, "skipped", "FAIL"
    # Cannot apply to the cell (device, series, kernel config): nothing to measure.
    NOT_APPLICABLE = "not_applicable", CellStatus.NA, False, "skipped", "SKIP"

    @classmethod
    def named(cls, name: str) -> Outcome:
        """The outcome results.json (or pytest) calls name; ValueError for an unknown one."""
        for o in cls:
            if o.value == name:
                return o
        raise ValueError(f"unknown outcome {name!r}")

    @property
    def measured(self) -> bool:
        """Whether the test measured anything (a skipped or not-applicable one did not): a
        run with no measured test proved nothing and is never reported as passing."""
        return self not in (Outcome.SKIPPED, Outcome.NOT_APPLICABLE)

    @property
    def notable(self) -> bool:
        """Worth listing among a run's failures: failed, error or an unexpected pass (flaky
        and known tests are listed apart)."""
        return self.status.rank >= CellStatus.XPASS.rank


def cell_status(outcomes: typing.Iterable[Outcome]) -> CellStatus:
    """A cell's colour: fail beats error beats xpass beats flaky beats known beats pass/xfail;
    nothing measured is skip (na when every test was not applicable)."""
    return max((o.status for o in outcomes), key=lambda s: s.rank, default=CellStatus.NONE)


# --- decoding and encoding ---------------------------------------------------------------
#
# Each field type is compiled once into a decoding function. A bad value raises _Bad, which
# gathers the path (results[12].metrics.x) on its way out, so the common case (a good file)
# builds no path strings: checking costs about what json.loads does (docs/results-schema.md).

R = TypeVar("R", bound="Record")
Decode = typing.Callable[[object], Any]
Check = typing.Callable[[Any], str | None]  # a field's value -> what is wrong with it
_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


class _Bad(Exception):
    def __init__(self, message: str) -> None:
        self.message = message
        self.path: list[str] = []  # innermost first: ".x", "[3]", '["a/b"]'

    def where(self, prefix: str) -> str:
        path = prefix + "".join(reversed(self.path))
        return path.removeprefix(".")


def _key(key: str) -> str:
    return f".{key}" if _PLAIN_KEY.match(key) else f"[{json.dumps(key)}]"


def _show(v: object) -> str:
    """A JSON value as an error message names it."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        text = json.dumps(v if len(v) <= 60 else v[:57] + "...")
        return f"a string ({text})"
    if isinstance(v, int | float):
        return f"the number {json.dumps(v)}"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _describe(tp: Any) -> str:
    if tp is str:
        return "a string"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is bool:
        return "true or false"
    if isinstance(tp, type) and issubclass(tp, Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    origin = typing.get_origin(tp)
    if origin is list:
        return "a list"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "an object"
    if origin in (types.UnionType, typing.Union):
        parts = [_describe(a) for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in typing.get_args(tp) else "")
    return str(tp)


def _wrong(tp: Any, v: object) -> _Bad:
    if isinstance(v, float) and not math.isfinite(v):
        # json.loads reads NaN and Infinity; no field may hold them.
        what = "NaN is not a number" if math.isnan(v) else "Infinity is not a finite number"
        return _Bad(("-" if v < 0 else "") + what)
    return _Bad(f"expected {_describe(tp)}, got {_show(v)}")


_DECODERS: dict[tuple[Any, bool], Decode] = {}


def _decoder(tp: Any, strict: bool) -> Decode:
    """The decoding function of a field type (cached); strict: unknown keys are errors."""
    key = (tp, strict)
    if key not in _DECODERS:
        _DECODERS[key] = _compile(tp, strict)
    return _DECODERS[key]


def _compile(tp: Any, strict: bool) -> Decode:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]  # only "X | None"
        decode_inner = _decoder(inner, strict)

        def optional(v: object) -> Any:
            if v is None:
                return None
            try:
                return decode_inner(v)
            except _Bad as e:
                if not e.path and e.message.startswith("expected "):
                    raise _wrong(tp, v) from None  # "expected a number or null, got ..."
                raise

        return optional
    if tp is float:

        def number(v: object) -> Any:
            if isinstance(v, float) and math.isfinite(v):
                return v
            if isinstance(v, int) and not isinstance(v, bool):
                return v  # an int stays one (a float field takes it): it reads back the same
            raise _wrong(tp, v)

        return number
    if tp is int:

        def integer(v: object) -> Any:
            if isinstance(v, int) and not isinstance(v, bool):
                return v
            raise _wrong(tp, v)

        return integer
    if tp is str or tp is bool:

        def plain(v: object) -> Any:
            if isinstance(v, tp):
                return v
            raise _wrong(tp, v)

        return plain
    if isinstance(tp, type) and issubclass(tp, Enum):
        members = {m.value: m for m in tp}

        def enum(v: object) -> Any:
            if isinstance(v, str) and v in members:
                return members[v]
            raise _wrong(tp, v)

        return enum
    if origin is list:
        (item_type,) = typing.get_args(tp)
        item = _decoder(item_type, strict)

        def seq(v: object) -> Any:
            if not isinstance(v, list):
                raise _wrong(tp, v)
            out: list[Any] = []
            try:
                for x in v:
                    out.append(item(x))
            except _Bad as e:
                e.path.append(f"[{len(out)}]")  # the item that failed
                raise
            return out

        return seq
    if origin is dict:
        value = _decoder(typing.get_args(tp)[1], strict)

        def mapping(v: object) -> Any:
            if not isinstance(v, dict):
                raise _wrong(tp, v)
            out: dict[str, Any] = {}
            k = ""
            try:
                for k, x in v.items():
                    out[k] = value(x)
            except _Bad as e:
                e.path.append(_key(k))
                raise
            return out

        return mapping
    if isinstance(tp, type) and issubclass(tp, Record):
        return _record_decoder(tp, strict)
    raise TypeError(f"{tp!r} is not a results.json field type")


def _record_decoder(cls: type[R], strict: bool) -> typing.Callable[[object], R]:
    hints = typing.get_type_hints(cls)
    fields = [
        (
            f.name,
            hints[f.name],
            f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING,
            typing.cast(Check | None, f.metadata.get("check")),
        )
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
    ]
    known = {name for name, _, _, _ in fields}
    # Filled in on first use: a record type may contain itself (not today, but cheaply safe).
    decoders: list[Decode] = []

    def record(v: object) -> R:
        if not isinstance(v, dict):
            raise _wrong(cls, v)
        if strict and not known.issuperset(v):
            raise _Bad(f"unknown key {next(k for k in v if k not in known)!r}")
        if not decoders:
            decoders.extend(_decoder(tp, strict) for _, tp, _, _ in fields)
        values: dict[str, Any] = {}
        for (name, _, required, check), decode in zip(fields, decoders, strict=True):
            if name in v:
                try:
                    values[name] = decode(v[name])
                    wrong = check(values[name]) if check is not None else None
                    if wrong:
                        raise _Bad(wrong)
                except _Bad as e:
                    e.path.append(_key(name))
                    raise
            elif required:
                raise _Bad(f"missing key {name!r}")
        return cls(**values)

    return record


_SCALARS = (str, int, float, bool, type(None))
_NAMES: dict[type, tuple[str, ...]] = {}


def _encode(v: object) -> Any:
    if type(v) in _SCALARS:
        return v
    if isinstance(v, Enum):
        return str(v.value)
    if isinstance(v, Record):
        return v.to_json()
    if isinstance(v, list):
        return [_encode(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _encode(x) for k, x in v.items()}
    return v


class Record:
    """A dataclass of the document: from_json checks every field's type, to_json writes
    every field, in declaration order."""

    @classmethod
    def from_json(
        cls, data: object, source: str | Path, where: str = "", strict: bool = True
    ) -> Self:
        """One record from parsed JSON; source (a file name) and where (the entry, e.g.
        ``cells[3].boot``) name it in errors. strict: a key the record does not know is an
        error (else it is ignored)."""
        try:
            decoded: Self = _decoder(cls, strict)(data)
        except _Bad as e:
            path = e.where(where)
            raise InputError(
                f"{source}: {path}: {e.message}" if path else f"{source}: {e.message}"
            ) from None
        return decoded

    def to_json(self) -> dict[str, Any]:
        names = _NAMES.get(type(self))
        if names is None:
            assert dataclasses.is_dataclass(self)
            names = _NAMES[type(self)] = tuple(f.name for f in dataclasses.fields(self))
        return {n: _encode(getattr(self, n)) for n in names}


# --- the document ------------------------------------------------------------------------

SHARD_SPEC = re.compile(r"^(\d+)/(\d+)$")


def _check_shard(spec: str | None) -> str | None:
    m = SHARD_SPEC.match(spec) if spec is not None else None
    if spec is None or (m and 1 <= int(m[1]) <= int(m[2])):
        return None
    return f"expected a shard I/N with 1 <= I <= N, got {spec!r}"


def _check_counts(counts: dict[str, int]) -> str | None:
    bad = next((k for k, n in counts.items() if n < 0), None)
    return None if bad is None else f"{bad!r}: a test count cannot be negative ({counts[bad]})"


SHARD_CHECK = {"check": _check_shard}


@dataclass(kw_only=True)
class DiskRecord(Record):
    """How a read-only data disk (kmatrix.guest.datadisk) reached the cell's guest."""

    how: str = ""  # "squashfs disk" (its filesystem) or "initramfs: <why the kernel cannot>"
    image: str = ""  # the filesystem image, or the tree copied into the initramfs
    mount_seconds: float | None = None  # the first mount, host-side (null: never mounted)


@dataclass(kw_only=True)
class BootRecord(Record):
    """How a cell's VM booted and stopped (the worker writes it as boot.json; results.json
    carries it per cell). Plain, not frozen: the guest fills it in as the boot goes."""

    accel: str = ""
    accel_reason: str = ""
    channel: str = ""
    boot_seconds: float | None = None  # host wall time from `cont` to the agent's hello
    userspace_uptime: float | None = None  # guest uptime when init reached userspace
    launches: int = 0
    poweroff_clean: bool | None = None
    poweroff_seconds: float | None = None
    shutdown_steps: list[str] = field(default_factory=list)
    tcg_missing: list[str] = field(default_factory=list)
    exitcode: int | None = None
    attempts: list[str] = field(default_factory=list)  # infra failures that were retried
    console_bytes: int = 0
    console_dropped: int = 0
    snapshot_seconds: float | None = None  # saving the just-booted state (guest paused)
    snapshot_mib: float | None = None
    snapshot_error: str = ""  # why no snapshot was taken, when one was wanted
    restores: int = 0  # times the VM was replaced by one started from the snapshot
    restore_seconds: list[float] = field(default_factory=list)  # old VM out -> new one answers
    restore_reasons: list[str] = field(default_factory=list)
    sandbox: str = ""  # "on", or "off: why" (QEMU then ran without its seccomp filter)
    stopped: str = ""  # why the harness ended a VM whose guest could no longer progress
    # The kernel artefact booted (empty when the cell never got one).
    release: str = ""
    kernel_image: str = ""
    boot_image: str = ""
    initrd: str = ""
    config: str = ""  # the kernel's .config, when it has one
    failure: str = ""  # "build": the kernel did not build; "boot": it never reached userspace
    # What a reproducer needs (reports/cells/<cell>/reproduce.sh): the first launch's QEMU
    # argv, the private directory its sockets and scratch disk were in, the boot deadline,
    # the SHA-256 of what it booted (kernel, initrd, config).
    qemu_argv: list[str] = field(default_factory=list)
    rundir: str = ""
    boot_timeout: float | None = None
    scratch_disk: dict[str, int] = field(default_factory=dict)  # file name in rundir -> MiB
    digests: dict[str, str] = field(default_factory=dict)
    disks: dict[str, DiskRecord] = field(default_factory=dict)  # by name; {} when none


class Verdict(StrEnum):
    """How a (cell, test) of a kernel with a baseline compares with its baseline twin
    (kmatrix.results.attribution), most telling first."""

    label: str  # what the reports call it

    def __new__(cls, value: str, label: str) -> Verdict:
        member = str.__new__(cls, value)
        member._value_ = value
        member.label = label
        return member

    @classmethod
    def named(cls, name: str) -> Verdict:
        """The verdict results.json calls name; ValueError for an unknown one."""
        for v in cls:
            if v.value == name:
                return v
        raise ValueError(f"unknown verdict {name!r}")

    SERIES = "series", "caused by the series"  # fails patched, passes on the baseline
    UNDETERMINED = "undetermined", "undetermined"  # fails; the baseline gave no verdict
    PRE_EXISTING = "pre-existing", "pre-existing"  # fails on both
    FLAKY = "flaky", "flaky"  # one side's samples disagree
    FIXED = "fixed", "fixed by the series"  # passes patched, fails on the baseline
    PASS = "pass", "pass"


@dataclass(frozen=True, kw_only=True)
class TestAttribution(Record):
    """A test of a patched cell against the same test of its baseline cell."""

    __test__ = False  # not a pytest test class

    verdict: Verdict
    reason: str = ""  # why, in a few words ("it passes on the baseline")
    baseline_nodeid: str = ""
    baseline_outcome: Outcome | None = None  # None: the baseline has no result for it
    # metric -> [patched value, baseline value or null]; one run is one sample, no verdict
    metrics: dict[str, list[float | None]] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class CellAttribution(Record):
    """A patched cell's verdict (that of its most telling test) and its tests per verdict."""

    verdict: Verdict
    counts: dict[str, int] = field(default_factory=dict)  # verdict -> tests
    baseline_status: str = ""  # the baseline cell's status, or "did not build", "not run"


@dataclass(frozen=True, kw_only=True)
class FindingRecord(Record):
    """A kernel report found in one of the cell's logs (logparse.Finding plus its log)."""

    kind: str
    title: str  # normalised, stable across runs of the same bug
    line: int = 0  # 1-based line of the report in the log
    timestamp: float | None = None  # printk timestamp of that line
    excerpt: str = ""
    source: str = ""  # the log file (dmesg.log, console.log, ...; kmsg: read by the log guard)
    caller: str | None = None  # printk caller id of the report ("T123", "C1"), if printed
    # Where the log guard (kmatrix.pytest.logguard) charged it; phase "" when it did not see it.
    phase: str = ""  # test | between (two tests) | teardown (after the cell's last test)
    test: str = ""  # phase test: the node id of the test it failed (or that allowed it)
    after: str = ""  # phase between/teardown: the test that ran before it
    allowed: bool = False  # the test declared its kind with kmatrix_allow
    seq: int | None = None  # /dev/kmsg sequence number of its first record


@dataclass(frozen=True, kw_only=True)
class CellResult(Record):
    """One cell of the run: what it is, how it booted, what its kernel log showed, where its
    logs are (paths relative to the run directory) and the colour of its tests."""

    id: str
    kernel: str
    kernel_release: str = ""
    cpu: str
    cpu_model: str = ""
    device: str
    smp: int = 0
    memory_mib: int = 0
    boot: BootRecord = field(default_factory=BootRecord)
    findings: list[FindingRecord] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)  # name -> path in the run dir
    status: CellStatus = CellStatus.NONE
    counts: dict[str, int] = field(default_factory=dict)  # outcome -> tests
    # A kernel with a `baseline:` runs beside its twin: the patched cell names its baseline
    # cell, the baseline cell the patched one; both carry the baseline's label ("vanilla").
    baseline_cell: str = ""
    baseline_of: str = ""
    baseline_label: str = ""
    attribution: CellAttribution | None = None  # on a patched cell

    @classmethod
    def unknown(cls, cell_id: str) -> CellResult:
        """A cell a run names (in a test result) but has no entry for."""
        return cls(id=cell_id, kernel="", cpu="", device="")


@dataclass(kw_only=True)
class TestResult(Record):
    """One test in one cell. Plain, not frozen: the collector adds up its phases."""

    __test__ = False  # not a pytest test class

    cell: str
    test: str = ""  # node id without the parameter part
    nodeid: str
    outcome: Outcome
    duration: float = 0.0  # set-up to teardown, seconds
    message: str = ""
    longrepr: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    attribution: TestAttribution | None = None  # a test of a cell with a baseline


@dataclass(frozen=True, kw_only=True)
class ShardInfo(Record):
    """One input of a merged run."""

    path: str = ""
    shard: str | None = field(default=None, metadata=SHARD_CHECK)  # "I/N"
    run_id: str = ""
    host: str = ""
    started: str = ""
    duration: float = 0.0
    exitstatus: int | None = None
    interrupted: bool = False
    cells: list[str] = field(default_factory=list)


@dataclass(frozen=True, kw_only=True)
class MergeInfo(Record):
    """What a merge found missing."""

    missing_cells: list[str] = field(default_factory=list)  # planned, no result at all
    incomplete_cells: dict[str, str] = field(default_factory=dict)  # cell -> "4 of 6 tests"
    missing_shards: list[int] = field(default_factory=list)
    unassigned_cells: list[str] = field(default_factory=list)  # in no present shard's plan


@dataclass(frozen=True, kw_only=True)
class RunInfo(Record):
    """The "run" section: when, where, with what, and (for sharded runs) the plan."""

    id: str = ""
    started: str = ""  # ISO 8601
    finished: str = ""
    duration: float = 0.0  # seconds
    interrupted: bool = False
    exitstatus: int | None = None  # pytest's; None while the run goes on
    matrix: str = ""  # the matrix file
    matrix_name: str = ""
    kmatrix: str = ""  # version
    qemu: str = ""  # version
    accelerators: list[str] = field(default_factory=list)
    host: str = ""
    host_kernel: str = ""
    python: str = ""
    args: list[str] = field(default_factory=list)  # pytest's arguments
    argv: list[str] = field(default_factory=list)
    # The plan, for `kmatrix merge`: which matrix, which shard, which cells with how many tests.
    matrix_digest: str = ""
    matrix_cells: list[str] = field(default_factory=list)
    shard: str | None = field(default=None, metadata=SHARD_CHECK)  # "I/N"
    # cell id -> selected tests
    planned_cells: dict[str, int] = field(default_factory=dict, metadata={"check": _check_counts})
    # A merged run: its inputs and what was missing.
    shards: list[ShardInfo] = field(default_factory=list)
    merge: MergeInfo | None = None


@dataclass(frozen=True, kw_only=True)
class RunDocument(Record):
    """A whole results.json."""

    run: RunInfo
    cells: list[CellResult]
    results: list[TestResult]

    @classmethod
    def from_json(
        cls, data: object, source: str | Path, where: str = "", strict: bool = True
    ) -> Self:
        """A document of either readable version; the version decides strictness."""
        if not isinstance(data, dict):
            raise InputError(f"{source}: expected an object, got {_show(data)}")
        if "schema" not in data:
            raise InputError(f"{source}: missing key 'schema' (not a kmatrix results file?)")
        schema = data["schema"]
        if schema not in READABLE:
            got = repr(schema) if isinstance(schema, str) else _show(schema)
            raise InputError(f"{source}: schema: expected {SCHEMA!r} (or {SCHEMA_V1!r}), got {got}")
        body = {k: v for k, v in data.items() if k != "schema"}
        if schema == SCHEMA_V1:
            body = _upgrade_v1(body)
        return super().from_json(body, source, where, strict=schema == SCHEMA)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **super().to_json()}


def _upgrade_v1(body: dict[str, Any]) -> dict[str, Any]:
    """A /1 document's shapes that /2 spells differently."""
    run = body.get("run")
    if isinstance(run, dict) and isinstance(run.get("planned_cells"), list):
        # An early plan recorded cell ids only: the test counts are unknown (0).
        planned = run["planned_cells"]
        run = {**run, "planned_cells": {k: 0 for k in planned} if all(
            isinstance(k, str) for k in planned) else planned}  # fmt: skip
        body = {**body, "run": run}
    return body


def dumps(doc: RunDocument) -> str:
    """results.json's text; a non-finite number is an error here, never invalid JSON there."""
    return json.dumps(doc.to_json(), indent=1, allow_nan=False) + "\n"
