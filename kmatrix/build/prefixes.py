"""Prefixes of a kernel's patch series: what a `baseline:` and each `kmatrix bisect` step build.

A build applies the patches of its series that its `skip:` globs do not leave out, in
order; prefix k is the first k of those. Prefix specs are canonical, so that the baseline of
a run, the steps of a bisection, and a bisection of another kernel with the same series and
inputs share one cached build (the build key hashes the skip list as written):

* no patch at all is the spec with no series (`patches: None`), like a kernel declared
  without one;
* a proper prefix names every patch of the series it leaves out, exactly and in series
  order, whatever globs the kernel's own `skip:` used;
* the whole series is the kernel's own spec, so the patched kernel's build is reused.
"""

from __future__ import annotations

import dataclasses
import re

from kmatrix.build.patches import Patch, Series, load_series
from kmatrix.config.specs import BuildSpec
from kmatrix.errors import InputError

VANILLA = "vanilla"  # the baseline without any patch of the series


class PrefixError(InputError):
    """A patch name that names no patch (or more than one) of a build's series."""


def applicable(spec: BuildSpec, series: Series) -> tuple[Patch, ...]:
    """The patches the build applies, in order: the series without its skip globs."""
    skipped = series.select(spec.skip)
    return tuple(p for p in series.patches if p.name not in skipped)


def prefix_spec(spec: BuildSpec, series: Series, k: int) -> BuildSpec:
    """The spec that builds the first k applicable patches of spec's series (canonical)."""
    patches = applicable(spec, series)
    if not 0 <= k <= len(patches):
        raise ValueError(f"prefix {k} of a series of {len(patches)} applicable patches")
    if k == len(patches):
        return dataclasses.replace(spec, baseline=None)
    if k == 0:
        return dataclasses.replace(spec, patches=None, skip=(), baseline=None)
    kept = {p.name for p in patches[:k]}
    left_out = tuple(p.name for p in series.patches if p.name not in kept)
    return dataclasses.replace(spec, skip=left_out, baseline=None)


def _stem(name: str) -> str:
    return re.sub(r"\.(patch|diff)$", "", name)


def find_patch(patches: tuple[Patch, ...], name: str, what: str) -> int:
    """The prefix length that ends with the patch called name: its exact file name, the name
    without .patch, or a unique leading part of it ("0003"). PrefixError otherwise."""
    exact = [i for i, p in enumerate(patches, 1) if name in (p.name, _stem(p.name))]
    found = exact or [i for i, p in enumerate(patches, 1) if p.name.startswith(name)]
    if len(found) == 1:
        return found[0]
    names = ", ".join(p.name for p in patches) or "none"
    if not found:
        raise PrefixError(f"{name!r} names no patch {what} (patches: {names})")
    many = ", ".join(patches[i - 1].name for i in found)
    raise PrefixError(f"{name!r} is ambiguous {what}: it could be {many}")


def upto_length(spec: BuildSpec, series: Series, upto: str) -> int:
    """How many applicable patches a build "through upto" has: 0 for vanilla."""
    if upto == VANILLA:
        return 0
    patches = applicable(spec, series)
    try:
        return find_patch(patches, upto, f"of the series {series.path}")
    except PrefixError as e:
        try:
            i = find_patch(series.patches, upto, "")
        except PrefixError:
            raise e from None
        raise PrefixError(
            f"{series.patches[i - 1].name} is left out of this build by its skip list"
        ) from None


def baseline_spec(spec: BuildSpec) -> tuple[BuildSpec, str]:
    """The spec of spec's baseline and its label ("vanilla", "through 0002-x.patch")."""
    if spec.baseline is None or spec.patches is None:
        raise ValueError("the spec has no baseline or no series")
    series = load_series(spec.patches)
    k = upto_length(spec, series, spec.baseline)
    if k == len(applicable(spec, series)):
        raise PrefixError(
            f"{spec.baseline!r} is the last patch the build applies: the baseline would be "
            "the patched kernel itself"
        )
    label = VANILLA if k == 0 else f"through {applicable(spec, series)[k - 1].name}"
    return prefix_spec(spec, series, k), label
