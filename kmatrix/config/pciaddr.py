"""PCI addresses as a matrix writes them (DDDD:BB:SS.F or BB:SS.F), canonicalised."""

from __future__ import annotations

import re

# Domain: 4 hex digits normally, more on hosts with VMD (0x10000+). Slot 00-1f, function 0-7.
_ADDRESS = re.compile(
    r"(?:(?P<domain>[0-9a-f]{4,8}):)?(?P<bus>[0-9a-f]{2}):(?P<slot>[01][0-9a-f])\.(?P<fn>[0-7])"
)
_EXPECTED = (
    "expected a PCI address DDDD:BB:SS.F or BB:SS.F in hex (slot 00-1f, function 0-7), "
    "e.g. 0000:01:00.0"
)


def parse_address(text: object) -> str:
    """Canonical lower-case `DDDD:BB:SS.F`; a missing domain means 0000.

    Raises ValueError saying which form is expected. A number is called out on its own: YAML
    1.1 reads unquoted `01:00.0` and `0000:01:00.0` as the sexagesimal float 60.0.
    """
    if isinstance(text, int | float) and not isinstance(text, bool):
        raise ValueError(
            f"got the number {text!r}, not a PCI address (YAML reads unquoted 01:00.0 as a "
            f"number; quote it); {_EXPECTED}"
        )
    if not isinstance(text, str):
        raise ValueError(f"got {text!r}, not a PCI address; {_EXPECTED}")
    m = _ADDRESS.fullmatch(text.strip().lower())
    if m is None:
        raise ValueError(f"{text!r} is not a PCI address; {_EXPECTED}")
    domain = m["domain"] or "0000"
    return f"{domain}:{m['bus']}:{m['slot']}.{m['fn']}"
