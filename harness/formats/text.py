"""How figures and tables are written for people: durations in the unit their size calls for
(us, ms, s), counts with thousands separators, columns as wide as their content."""

from __future__ import annotations

import json
import math
from typing import Sequence

#: The word for a figure measured on an emulator (qemu-user wall time, QEMU -icount counts):
#: it says how the emulator ran, not how fast a device would be.
EMULATED = "emulated"


def duration(us: float | None) -> str:
    """A duration given in microseconds, in us below 1 ms, ms below 1 s, else s, with three
    significant figures: 0.271 us, 9.8 us, 254 us, 2.59 ms, 2.59 s, 125 s, 1000 s."""
    if us is None:
        return "-"
    for scale, unit in ((1.0, "us"), (1e3, "ms"), (1e6, "s")):
        value = float(f"{us / scale:.3g}")  # rounded first: 999.7 us is 1 ms, not 1e+03 us
        if abs(value) < 1000 or unit == "s":
            break
    return f"{value:.3g} {unit}" if abs(value) < 1000 else f"{value:.0f} {unit}"


def ratio(value: float | None) -> str:
    """A ratio with three significant figures, like durations: 1.45, 13.6, 0.0237 (two decimals
    wrote a 40x speedup as 0.02 and a 60x one as 0.02 too)."""
    return "-" if value is None else f"{value:.3g}"


def count(value: float | None, unit: str = "") -> str:
    """A count with thousands separators: "1,141,720 emulated instructions"."""
    if value is None:
        return "-"
    return f"{value:,.0f}" + (f" {unit}" if unit else "")


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = (),
          indent: str = "") -> str:
    """Rows under a header, each column as wide as its widest cell (the last one unpadded);
    columns whose index is in `right` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers]] + [["-" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = []
        for i, cell in enumerate(row):
            last = i == len(row) - 1
            if i in right:
                parts.append(cell.rjust(widths[i]))
            else:
                parts.append(cell if last else cell.ljust(widths[i]))
        lines.append((indent + "  ".join(parts)).rstrip())
    return "\n".join(lines)


def json_safe(value: object) -> object:
    """`value` with every non-finite float written as the string "nan", "inf" or "-inf": JSON
    has no such numbers, and Python's json module would emit bare NaN/Infinity that strict
    parsers (jq, browsers, other languages) refuse."""
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else "inf" if value > 0 else "-inf"
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def json_text(value: object, **kwargs: object) -> str:
    """json.dumps of json_safe(value), refusing anything else that is not JSON."""
    return json.dumps(json_safe(value), allow_nan=False, **kwargs)  # type: ignore[arg-type]
