"""YAML read node by node, so every error names the file, line and key.

`NodeReader` is the validator every kmatrix YAML file goes through (matrices, device
profiles, known issues, the guest image recipe): it checks a mapping's keys, the type and
range of each value, and raises MatrixError pointing at the offending line.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import Composer
from yaml.constructor import SafeConstructor
from yaml.resolver import Resolver

from kmatrix.errors import MatrixError
from kmatrix.host.paths import FileRefused, file_kind, read_text

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]?)i?B?$", re.IGNORECASE)

_constructor = yaml.constructor.SafeConstructor()


class NodeReader:
    """Carries the file path so every check can name it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, node: yaml.Node | None, key: str | None, msg: str) -> MatrixError:
        line = node.start_mark.line + 1 if node is not None else None
        return MatrixError(self.path, line, key, msg)

    def mapping(
        self,
        node: yaml.Node,
        key: str,
        allowed: Iterable[str],
        required: Iterable[str] = (),
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        """Checks a mapping's keys; returns key -> (key node, value node)."""
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, f"expected a mapping, got {kind_of(node)}")
        allowed_set = set(allowed)
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.err(knode, key, "keys must be plain strings")
            k = str(knode.value)
            full = f"{key}.{k}" if key else k
            if k in out:
                raise self.err(knode, full, "duplicate key")
            if k not in allowed_set:
                valid = ", ".join(sorted(allowed_set))
                raise self.err(knode, full, f"unknown key (valid keys: {valid})")
            out[k] = (knode, vnode)
        for r in required:
            if r not in out:
                raise self.err(node, f"{key}.{r}" if key else r, "required key is missing")
        return out

    def value(self, node: yaml.Node) -> Any:
        return _constructor.construct_object(node, deep=True)

    def string(self, node: yaml.Node, key: str, pattern: re.Pattern[str] | None = None) -> str:
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(v, str) or not v:
            raise self.err(node, key, f"expected a non-empty string, got {describe(self, node)}")
        if "\x00" in v:
            raise self.err(node, key, "a NUL character is not allowed in a string")
        if pattern is not None and not pattern.fullmatch(v):
            raise self.err(node, key, f"{v!r} does not match {pattern.pattern}")
        return v

    def choice(self, node: yaml.Node, key: str, choices: Iterable[str]) -> str:
        v = self.string(node, key)
        options = tuple(choices)
        if v not in options:
            raise self.err(node, key, f"{v!r} is not one of {', '.join(options)}")
        return v

    def number(self, node: yaml.Node, key: str, lo: float, hi: float, integer: bool) -> float:
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        ok_types: tuple[type, ...] = (int,) if integer else (int, float)
        if isinstance(v, bool) or not isinstance(v, ok_types):
            want = "an integer" if integer else "a number"
            raise self.err(node, key, f"expected {want}, got {describe(self, node)}")
        assert isinstance(v, int | float)
        if not lo <= v <= hi:
            raise self.err(node, key, f"{v} is out of range [{lo:g}, {hi:g}]")
        return float(v)

    def boolean(self, node: yaml.Node, key: str) -> bool:
        v = self.value(node) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(v, bool):
            raise self.err(node, key, f"expected true or false, got {describe(self, node)}")
        return v

    def strings(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        """A list of strings; a single string is accepted as a one-item list."""
        if isinstance(node, yaml.ScalarNode):
            return (self.string(node, key),)
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, f"expected a list of strings, got {kind_of(node)}")
        return tuple(self.string(item, f"{key}[{i}]") for i, item in enumerate(node.value))

    def args(self, node: yaml.Node, key: str) -> tuple[str, ...]:
        """Kernel arguments: a string (split on whitespace) or a list."""
        return tuple(a for s in self.strings(node, key) for a in s.split())

    def prop_items(self, node: yaml.Node, key: str) -> list[tuple[yaml.Node, yaml.Node, str, str]]:
        """A mapping of scalar values as (key node, value node, key, value as text);
        booleans become QEMU's on/off."""
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, f"expected a mapping, got {kind_of(node)}")
        out: list[tuple[yaml.Node, yaml.Node, str, str]] = []
        seen: set[str] = set()
        for knode, vnode in node.value:
            if not isinstance(knode, yaml.ScalarNode):
                raise self.err(knode, key, "keys must be plain strings")
            k = str(knode.value)
            if k in seen:
                raise self.err(knode, f"{key}.{k}", "duplicate key")
            seen.add(k)
            v = self.value(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if v is None or isinstance(v, list | dict):
                raise self.err(vnode, f"{key}.{k}", "expected a scalar value")
            if isinstance(v, bool):
                v = "on" if v else "off"
            if "\x00" in k + str(v):
                raise self.err(vnode, f"{key}.{k}", "a NUL character is not allowed")
            out.append((knode, vnode, k, str(v)))
        return out

    def props(self, node: yaml.Node, key: str) -> tuple[tuple[str, str], ...]:
        return tuple((k, v) for _, _, k, v in self.prop_items(node, key))

    def seq(self, node: yaml.Node, key: str, nonempty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, f"expected a list, got {kind_of(node)}")
        if nonempty and not node.value:
            raise self.err(node, key, "must not be empty")
        return list(node.value)

    def file(self, node: yaml.Node, key: str, must_exist: bool = True) -> Path:
        """A path relative to this file; when it must exist, a regular file or a directory
        (a FIFO or a device would block or misbehave when read)."""
        raw = self.string(node, key)
        p = Path(raw).expanduser()
        if not p.is_absolute():
            try:
                p = (self.path.parent / p).resolve()
            except (RuntimeError, OSError):  # a symbolic link loop
                raise self.err(node, key, f"{raw}: a symbolic link loop") from None
        if must_exist:
            try:
                st = os.stat(p)
            except OSError as e:
                if e.errno == errno.ELOOP:
                    raise self.err(node, key, f"{p}: a symbolic link loop") from None
                raise self.err(node, key, f"file not found: {p}") from None
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
                raise self.err(node, key, f"{p} is {file_kind(st.st_mode)}, not a file")
        return p


def kind_of(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return "a scalar"


def describe(ctx: NodeReader, node: yaml.Node) -> str:
    if not isinstance(node, yaml.ScalarNode):
        return kind_of(node)
    v = ctx.value(node)
    return f"{type(v).__name__} {v!r}"


# Limits on a YAML file, far above any real matrix, profile or known-issues file (the
# default matrix is 3 KiB and ~300 nodes) and low enough that a hostile one is refused
# within a second with little memory: parsing is ~25,000 nodes/s on a loaded 2-core host.
MAX_YAML_BYTES = 1 << 20
MAX_YAML_NODES = 10_000  # counting each alias as the nodes it stands for
MAX_YAML_DEPTH = 64
# The tags the safe loader resolves plain YAML to; anything else (!!python/..., a custom
# !tag, !!binary, !!set) is refused rather than constructed or silently read as a string.
_TAG = "tag:yaml.org,2002:"
ALLOWED_TAGS = frozenset(
    _TAG + t for t in ("str", "int", "float", "bool", "null", "timestamp", "map", "seq")
)

try:  # libyaml's parser is ~10x faster; the composing (with the guards) stays in Python
    from yaml._yaml import CParser as _Parser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    from yaml.parser import Parser as _Parser  # type: ignore[assignment]


class _GuardExceeded(Exception):
    def __init__(self, line: int | None, message: str) -> None:
        self.line = line
        super().__init__(message)


class _GuardedLoader(Composer, _Parser, SafeConstructor, Resolver):
    """Composes nodes like SafeLoader, refusing disallowed tags, deep nesting, too many
    nodes (aliases counted as what they expand to) and aliases to an unfinished anchor
    (a node that contains itself), each before it costs time or memory."""

    def __init__(self, stream: str) -> None:
        _Parser.__init__(self, stream)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)
        self.depth = 0
        self.nodes = 0
        self.sizes: dict[str, int] = {}  # anchor -> nodes in it, once composed

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        event = self.peek_event()
        mark = getattr(event, "start_mark", None)
        line = mark.line + 1 if mark is not None else None
        if isinstance(event, yaml.AliasEvent):
            alias = str(event.anchor)
            if alias in self.anchors and alias not in self.sizes:
                raise _GuardExceeded(line, f"alias *{alias} refers to a node that contains it")
            self._count(self.sizes.get(alias, 1), line)
            return super().compose_node(parent, index)
        self.depth += 1
        if self.depth > MAX_YAML_DEPTH:
            raise _GuardExceeded(line, f"nested deeper than {MAX_YAML_DEPTH} levels")
        anchor = getattr(event, "anchor", None)
        if anchor is not None:
            self.sizes.pop(anchor, None)  # redefined: unfinished again until composed
        before = self.nodes
        self._count(1, line)
        node = super().compose_node(parent, index)
        self.depth -= 1
        if node is not None and node.tag not in ALLOWED_TAGS:
            tag = str(node.tag).replace(_TAG, "!!", 1)
            raise _GuardExceeded(line, f"tag {tag} is not allowed (plain YAML only)")
        if anchor is not None:
            self.sizes[anchor] = self.nodes - before
        return node

    def _count(self, n: int, line: int | None) -> None:
        self.nodes += n
        if self.nodes > MAX_YAML_NODES:
            raise _GuardExceeded(line, f"more than {MAX_YAML_NODES} YAML nodes")


def compose_file(path: Path) -> yaml.Node:
    """The node tree of a YAML file, through the guards above: a missing, non-regular
    (FIFO, device, directory), oversized or non-UTF-8 file, a syntax error, a disallowed
    tag, deep nesting or too many nodes is one MatrixError naming the file (and line)."""
    try:
        text = read_text(path, MAX_YAML_BYTES)
    except FileRefused as e:
        raise MatrixError(path, None, None, e.reason) from None
    loader = _GuardedLoader(text)
    try:
        node = loader.get_single_node()
    except _GuardExceeded as e:
        raise MatrixError(path, e.line, None, str(e)) from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise MatrixError(path, line, None, f"YAML syntax error: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise MatrixError(path, None, None, f"YAML error: {e}") from None
    finally:
        loader.dispose()
    if node is None:
        raise MatrixError(path, None, None, "file is empty")
    assert isinstance(node, yaml.Node)
    return node


def size(r: NodeReader, node: yaml.Node, key: str, lo: int, hi: int) -> int:
    """A byte size: an integer, or a number with a binary suffix (64G, 512M, 1T)."""
    v = r.value(node) if isinstance(node, yaml.ScalarNode) else None
    if isinstance(v, int) and not isinstance(v, bool):
        n = v
    else:
        mt = SIZE_RE.match(str(v)) if isinstance(v, str) else None
        if mt is None:
            raise r.err(node, key, f"expected a size such as 1G or 512M, got {describe(r, node)}")
        n = int(mt.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30, "T": 40}[mt.group(2).upper()]
    if not lo <= n <= hi:
        raise r.err(node, key, f"{fmt_size(n)} is out of range [{fmt_size(lo)}, {fmt_size(hi)}]")
    return n


def fmt_size(n: int) -> str:
    for shift, unit in ((40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift} {unit}"
    return f"{n} bytes"


def unique(r: NodeReader, seen: dict[str, int], name: str, node: yaml.Node, key: str) -> None:
    if name in seen:
        raise r.err(node, key, f"duplicate name {name!r} (first defined on line {seen[name]})")
    seen[name] = node.start_mark.line + 1
