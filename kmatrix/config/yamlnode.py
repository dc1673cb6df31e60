"""YAML read node by node, so every error names the file, line and key.

`NodeReader` is the validator every kmatrix YAML file goes through (matrices, device
profiles, known issues, the guest image recipe): it checks a mapping's keys, the type and
range of each value, and raises MatrixError pointing at the offending line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from kmatrix.errors import MatrixError

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
        if pattern is not None and not pattern.match(v):
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

    def props(self, node: yaml.Node, key: str) -> tuple[tuple[str, str], ...]:
        if not isinstance(node, yaml.MappingNode):
            raise self.err(node, key, f"expected a mapping, got {kind_of(node)}")
        out: list[tuple[str, str]] = []
        seen: set[str] = set()
        for knode, vnode in node.value:
            k = str(knode.value)
            if k in seen:
                raise self.err(knode, f"{key}.{k}", "duplicate key")
            seen.add(k)
            v = self.value(vnode) if isinstance(vnode, yaml.ScalarNode) else None
            if v is None or isinstance(v, list | dict):
                raise self.err(vnode, f"{key}.{k}", "expected a scalar value")
            if isinstance(v, bool):
                v = "on" if v else "off"
            out.append((k, str(v)))
        return tuple(out)

    def seq(self, node: yaml.Node, key: str, nonempty: bool = False) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.err(node, key, f"expected a list, got {kind_of(node)}")
        if nonempty and not node.value:
            raise self.err(node, key, "must not be empty")
        return list(node.value)

    def file(self, node: yaml.Node, key: str, must_exist: bool = True) -> Path:
        raw = self.string(node, key)
        p = Path(raw).expanduser()
        if not p.is_absolute():
            p = (self.path.parent / p).resolve()
        if must_exist and not p.exists():
            raise self.err(node, key, f"file not found: {p}")
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


def compose_file(path: Path) -> yaml.Node:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MatrixError(path, None, None, "file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MatrixError(path, None, None, f"cannot read: {e}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark is not None else None
        raise MatrixError(path, line, None, f"YAML syntax error: {e.problem or e}") from None
    except yaml.YAMLError as e:
        raise MatrixError(path, None, None, f"YAML error: {e}") from None
    if node is None:
        raise MatrixError(path, None, None, "file is empty")
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
