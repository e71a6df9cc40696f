"""The report's "Privacy modes" section, from OUT/privacy_modes/privacy_modes.json (reproduce writes it)."""

from __future__ import annotations

from pathlib import Path

from meddenoise.report.document import Block, BulletList, Heading, Paragraph, Table
from meddenoise.reprodir import ReproDir

SECTION_TITLE = "Privacy modes side by side"


def privacy_modes_section(root: Path) -> list[Block]:
    from meddenoise.privacy import modes

    layout = ReproDir(root)
    result = layout.read_privacy_modes()
    if result is None:
        return []
    link = layout.modes_markdown.relative_to(layout.root).as_posix()
    return [
        Heading(2, SECTION_TITLE),
        Paragraph(
            f"Every training mode at noise std {result['noise_std']:g}: quality against supervised training "
            "on the same test images, what the receiving site holds and what leaks "
            f"(full text: [{link}]({link}))."
        ),
        Table(
            list(modes.COLUMNS),
            [modes.table_cells(row) for row in result["rows"]],
            "Privacy modes",
            list(result.get("notes", [])),
        ),
        Paragraph("Verdict, stated from the numbers above:"),
        BulletList(list(result["verdict"])),
    ]
