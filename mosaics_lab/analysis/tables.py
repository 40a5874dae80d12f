"""Tables as data: rows of dicts written as Markdown and CSV (shared by ``compare`` and sweep summaries)."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


def format_cell(value: Any, digits: int = 5) -> str:
    """Numbers with ``digits`` significant digits, None as empty, everything else as text."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.{digits}g}"
    return str(value)


PARAM_DIGITS = 3  # significant digits of hyperparameter values in labels and tables


def short_value(value: Any) -> str:
    """A hyperparameter value for a label or a table cell: floats with 3 significant digits."""
    return format_cell(value, PARAM_DIGITS)


def columns_of(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """Every key of every row, in first-seen order."""
    return list(dict.fromkeys(k for row in rows for k in row))


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str] | None = None,
    digits: Mapping[str, int] | None = None,
) -> str:
    """A Markdown table; ``digits`` gives some columns their own significant digits (e.g. 3 for
    hyperparameters, whose full-precision floats only hide what differs)."""
    columns = list(columns) if columns is not None else columns_of(rows)
    digits = digits or {}
    if not columns:
        return "(no rows)\n"

    def esc(text: str) -> str:
        return text.replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(esc(c) for c in columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        cells = (format_cell(row.get(c), digits.get(c, 5)) for c in columns)
        lines.append("| " + " | ".join(esc(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> None:
    columns = list(columns) if columns is not None else columns_of(rows)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: ("" if row.get(c) is None else row.get(c)) for c in columns})
