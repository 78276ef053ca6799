"""Tables for people that never cut a value: operators copy ids, chat ids, accounts and outcomes
from them, and grep them in a pipe.

Every column prints its values whole on one line, except ``prose`` columns (a detail, a reason),
which wrap between words. A table is printed when it fits the console's width so; when it does
not, each row becomes one line of ``header: value`` pairs. Rich's own fitting would end a value
that does not fit with an ellipsis.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from rich import box as boxes
from rich.box import Box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.measure import Measurement
from rich.table import Column, Table
from rich.text import Text

# A prose column narrower than this would wrap into a column of single words.
PROSE_MIN = 24


@dataclass(frozen=True)
class Col:
    header: str
    prose: bool = False  # may wrap between words (and fold a word longer than the column)
    justify: JustifyMethod = "left"


def _text(value: object) -> Text:
    # A plain str is not rich markup here either: a chat id may hold "[/]".
    return value if isinstance(value, Text) else Text(str(value))


def _width(text: Text) -> int:
    return max((cell_len(line) for line in text.plain.splitlines()), default=0)


def _table(
    columns: Sequence[Col], widths: Sequence[int], title: str | None, box: Box | None
) -> Table:
    return Table(
        *(
            Column(
                c.header,
                justify=c.justify,
                width=w,
                no_wrap=not c.prose,
                overflow="fold",
            )
            for c, w in zip(columns, widths, strict=True)
        ),
        title=title,
        box=box,
    )


def print_table(
    console: Console,
    columns: Sequence[Col | str],
    rows: Iterable[Sequence[object]],
    *,
    title: str | None = None,
    box: Box | None = boxes.HEAVY_HEAD,
) -> None:
    """Print ``rows`` under ``columns`` (a str is a column whose values stay whole)."""
    cols = [c if isinstance(c, Col) else Col(c) for c in columns]
    cells = [[_text(value) for value in row] for row in rows]
    needed = [
        max([cell_len(c.header), *(_width(row[n]) for row in cells)]) for n, c in enumerate(cols)
    ]
    least = [
        min(w, max(PROSE_MIN, cell_len(c.header))) if c.prose else w
        for c, w in zip(cols, needed, strict=True)
    ]
    # Borders and padding, as rich counts them, with every column at its least width.
    smallest = Measurement.get(
        console, console.options.update_width(10**6), _table(cols, least, title, box)
    ).maximum
    if smallest <= console.width:
        spare = console.width - smallest
        widths = list(least)
        for n, c in enumerate(cols):
            if c.prose and spare > 0:
                grow = min(spare, needed[n] - least[n])
                widths[n] += grow
                spare -= grow
        table = _table(cols, widths, title, box)
        for row in cells:
            table.add_row(*row)
        console.print(table)
        return
    if title:
        console.out(title, highlight=False)
    for row in cells:
        line = Text("  ").join(
            Text.assemble(f"{c.header}: ", value) for c, value in zip(cols, row, strict=True)
        )
        console.print(line, soft_wrap=True, highlight=False)
