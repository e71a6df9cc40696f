"""A report as a list of blocks, rendered to Markdown here and to HTML in `meddenoise.report.html`.

Building blocks instead of Markdown text keeps the two renderings the same content: every table, figure and
sentence goes through both renderers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence


@dataclasses.dataclass
class Heading:
    level: int
    text: str


@dataclasses.dataclass
class Paragraph:
    """Text with a small inline subset: `code`, **bold** and [label](link)."""

    text: str


@dataclasses.dataclass
class BulletList:
    items: list[str]


@dataclasses.dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)

    def column(self, name: str) -> list[str]:
        index = self.columns.index(name)
        return [row[index] for row in self.rows]


@dataclasses.dataclass
class Figure:
    path: str  # relative to the report's folder
    caption: str


Block = Heading | Paragraph | BulletList | Table | Figure


def _escape_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    lines = []
    if table.caption:
        lines += [f"**{table.caption}**", ""]
    lines.append("| " + " | ".join(_escape_cell(c) for c in table.columns) + " |")
    lines.append("|" + "|".join("---" for _ in table.columns) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(_escape_cell(cell) for cell in row) + " |")
    for note in table.notes:
        lines += ["", note]
    return "\n".join(lines)


def render_markdown(blocks: Sequence[Block]) -> str:
    parts: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            parts.append("#" * block.level + " " + block.text)
        elif isinstance(block, Paragraph):
            parts.append(block.text)
        elif isinstance(block, BulletList):
            parts.append("\n".join(f"- {item}" for item in block.items))
        elif isinstance(block, Table):
            parts.append(table_markdown(block))
        elif isinstance(block, Figure):
            name = block.path.rsplit("/", 1)[-1]
            parts.append(f"![{name}]({block.path})\n\n*{block.caption}*")
        else:  # pragma: no cover - a new block type must get a renderer
            raise TypeError(f"no Markdown renderer for {type(block).__name__}")
    return "\n\n".join(parts) + "\n"


def find_table(blocks: Sequence[Block], caption_prefix: str) -> Table:
    """The first table whose caption starts with `caption_prefix` (for tests and tools)."""
    for block in blocks:
        if isinstance(block, Table) and block.caption.startswith(caption_prefix):
            return block
    raise KeyError(caption_prefix)
