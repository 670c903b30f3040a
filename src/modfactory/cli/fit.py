"""Tables that read in any terminal: no header, state, id or number is ever split.

Each column says how it may give way when the terminal is narrow: ``keep`` (never cut),
``shorten`` (cut with an ellipsis, down to ``least`` characters) or ``wrap`` (wrapped
between words, never inside one). Columns of priority 0 are always shown; the others
join, the lowest number first, while they fit at their narrowest; the room left widens
the columns that gave way. The table names the columns it left out.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Literal

from rich import box
from rich.table import Table
from rich.text import Text

Fit = Literal["keep", "shorten", "wrap"]
_GAP = 2  # between two columns: a space of padding and the (blank) rule
_ELLIPSIS = "…"


@dataclass(frozen=True)
class Column:
    header: str
    priority: int = 0  # 0: always shown; else the lowest shown first
    fit: Fit = "keep"
    least: int = 8  # ``shorten``: the narrowest it is cut to (header included)
    justify: Literal["left", "right"] = "left"


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: max(0, width - 1)] + _ELLIPSIS


def wrapped(text: str, width: int) -> str:
    """``text`` wrapped between words to ``width`` (a console that soft-wraps would not)."""
    return "\n".join(
        "\n".join(textwrap.wrap(line, width, break_long_words=False) or [""])
        for line in text.split("\n")
    )


def _plain(cell: str) -> str:
    return Text.from_markup(cell).plain


def _widths(column: Column, cells: list[str]) -> tuple[int, int]:
    """(narrowest, natural) width of a column."""
    plain = [_plain(c) for c in cells]
    natural = max([len(column.header), *map(len, plain)])
    if column.fit == "keep":
        return natural, natural
    if column.fit == "wrap":
        words = [len(word) for text in plain for word in text.split()]
        return max([len(column.header), *words]), natural
    return min(natural, max(len(column.header), column.least)), natural


def fitted_table(
    columns: list[Column],
    rows: list[list[str]],
    width: int,
    title: str | None = None,
) -> Table:
    """A rich Table of ``rows`` (cells with rich markup) no wider than ``width``."""
    cells = [[row[i] for row in rows] for i in range(len(columns))]
    sizes = [_widths(c, cells[i]) for i, c in enumerate(columns)]

    def needed(indices: list[int]) -> int:
        return sum(sizes[i][0] for i in indices) + _GAP * (len(indices) - 1)

    shown = [i for i, c in enumerate(columns) if c.priority == 0]
    for i in sorted(set(range(len(columns))) - set(shown), key=lambda i: (columns[i].priority, i)):
        if needed(sorted([*shown, i])) <= width:  # the most wanted first, while they fit
            shown = sorted([*shown, i])
    room = width - needed(shown)
    given = {i: sizes[i][0] for i in shown}
    for i in shown:  # widen what gave way, left to right, up to its natural width
        extra = min(room, sizes[i][1] - given[i])
        given[i] += extra
        room -= extra

    left_out = [columns[i].header for i in range(len(columns)) if i not in shown]
    said = f"not shown at this width: {', '.join(left_out)} (--json has all)"
    table = Table(
        title=wrapped(title, width) if title else None,
        title_justify="left",
        box=box.SIMPLE_HEAD,
        padding=(0, 1, 0, 0),
        pad_edge=False,
        show_edge=False,
        caption=wrapped(said, width) if left_out else None,
        caption_justify="left",
    )
    for i in shown:
        column = columns[i]
        table.add_column(
            column.header,
            justify=column.justify,
            width=given[i],
            no_wrap=column.fit != "wrap",
            overflow="fold" if column.fit == "wrap" else "ellipsis",
        )
    for row in rows:
        table.add_row(*(_cell(row[i], columns[i], given[i]) for i in shown))
    return table


def _cell(cell: str, column: Column, width: int) -> str | Text:
    if column.fit != "shorten" or len(_plain(cell)) <= width:
        return cell
    text = Text.from_markup(cell)
    text.truncate(width, overflow="ellipsis")
    return text
