"""A minimal terminal model for checking what a terminal shows after a program's output:
printable text, CR, LF, erase to end of line (ESC [ K), cursor up (ESC [ n A), cursor right
(ESC [ n C); colour codes are dropped. Enough for pytest's output and kmatrix's status line."""

from __future__ import annotations

import re

_TOKEN = re.compile(r"\x1b\[([0-9;]*)([A-Za-z])|\r|\n|[^\x1b\r\n]")


def render(data: str, width: int = 150) -> list[str]:
    """The screen's lines (scrollback included), trailing blanks stripped."""
    lines: list[list[str]] = [[]]
    row = col = 0
    for m in _TOKEN.finditer(data):
        t = m.group(0)
        if t == "\r":
            col = 0
        elif t == "\n":
            row, col = row + 1, 0
        elif t.startswith("\x1b"):
            n = int(m.group(1) or 1) if m.group(1) and ";" not in m.group(1) else 1
            code = m.group(2)
            if code == "K":
                del lines[row][col:]
            elif code == "A":
                row = max(0, row - n)
            elif code == "C":
                col = min(width - 1, col + n)
            continue
        else:
            if col >= width:  # autowrap
                row, col = row + 1, 0
            while len(lines) <= row:
                lines.append([])
            line = lines[row]
            line.extend(" " * (col - len(line)))
            if col < len(line):
                line[col] = t
            else:
                line.append(t)
            col += 1
        while len(lines) <= row:
            lines.append([])
    return ["".join(ln).rstrip() for ln in lines]
