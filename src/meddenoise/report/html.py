"""The HTML twin of the Markdown report: same blocks, figures embedded so the page is one
self-contained file."""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Sequence
from pathlib import Path

from meddenoise.report.document import Block, BulletList, Figure, Heading, Paragraph, Table
from meddenoise.report.summary import anchor

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; }
td:first-child, th:first-child { text-align: left; }
caption { font-weight: bold; text-align: left; padding-bottom: 0.4em; }
figure { margin: 1.5em 0; }
figure img { max-width: 100%; }
figcaption { font-style: italic; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 0.2em; }
.note { font-size: 0.85em; color: #555; }
.wide { overflow-x: auto; max-width: 100%; }
"""

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\[([^\]]+)\]\(([^)]+)\)")


def inline_html(text: str) -> str:
    """Escape `text` and turn the inline Markdown subset of `Paragraph` into tags."""
    out, position = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[position : match.start()]))
        code, bold, label, link = match.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<strong>{html.escape(bold)}</strong>")
        else:
            out.append(f'<a href="{html.escape(link, quote=True)}">{html.escape(label)}</a>')
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


def _table_html(table: Table) -> str:
    lines = ['<div class="wide">', "<table>"]
    if table.caption:
        lines.append(f"<caption>{inline_html(table.caption)}</caption>")
    lines.append("<tr>" + "".join(f"<th>{inline_html(c)}</th>" for c in table.columns) + "</tr>")
    for row in table.rows:
        lines.append("<tr>" + "".join(f"<td>{inline_html(cell)}</td>" for cell in row) + "</tr>")
    lines.append("</table>")
    lines.append("</div>")  # a table wider than the page scrolls inside its box
    lines += [f'<p class="note">{inline_html(note)}</p>' for note in table.notes]
    return "\n".join(lines)


def _figure_html(figure: Figure, base_dir: Path) -> str:
    image_path = base_dir / figure.path
    if image_path.is_file():
        encoded = base64.b64encode(image_path.read_bytes()).decode("ascii")
        source = f"data:image/png;base64,{encoded}"
    else:  # keep the link so a figure added later still shows
        source = html.escape(figure.path, quote=True)
    caption = inline_html(figure.caption)
    return f'<figure><img src="{source}" alt="{html.escape(figure.caption, quote=True)}">' + (
        f"<figcaption>{caption}</figcaption></figure>"
    )


def render_html(blocks: Sequence[Block], title: str, base_dir: Path) -> str:
    body: list[str] = []
    for block in blocks:
        if isinstance(block, Heading):
            level = min(max(block.level, 1), 6)
            ident = html.escape(anchor(block.text), quote=True)
            body.append(f'<h{level} id="{ident}">{inline_html(block.text)}</h{level}>')
        elif isinstance(block, Paragraph):
            body.append(f"<p>{inline_html(block.text)}</p>")
        elif isinstance(block, BulletList):
            body.append("<ul>" + "".join(f"<li>{inline_html(item)}</li>" for item in block.items) + "</ul>")
        elif isinstance(block, Table):
            body.append(_table_html(block))
        elif isinstance(block, Figure):
            body.append(_figure_html(block, base_dir))
        else:  # pragma: no cover - a new block type must get a renderer
            raise TypeError(f"no HTML renderer for {type(block).__name__}")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_STYLE}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
