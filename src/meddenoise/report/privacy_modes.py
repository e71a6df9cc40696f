"""The report's "Privacy modes" section, from OUT/privacy_modes/privacy_modes.json (reproduce writes it)."""

from __future__ import annotations

from pathlib import Path

from meddenoise.report.document import Block, BulletList, Heading, Paragraph, Table

SECTION_TITLE = "Privacy modes side by side"


def privacy_modes_section(root: Path) -> list[Block]:
    from meddenoise.privacy import modes
    from meddenoise.privacy.modes_job import FOLDER, load_result

    result = load_result(root)
    if result is None:
        return []
    link = f"{FOLDER}/privacy_modes.md"
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
