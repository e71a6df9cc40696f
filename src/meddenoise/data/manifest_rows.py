"""`ManifestRows`: manifest.csv's rows as dicts, parsed when asked for.

A dict of strings per row costs about 1 KB of host memory; for a prepared folder of 100,000 images that is
100 MB that grows with the data set in every process (each DDP rank loads the manifest), even when the images
themselves are streamed from disk. This keeps the file's text and where each row starts instead (about 140
bytes an image) and builds a row's dict on access. A manifest whose quoted fields hold line breaks (possible
in CSV, never written by meddenoise) is kept as plain dicts.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence

import numpy as np


class ManifestRows(Sequence[dict[str, str]]):
    def __init__(self, text: str) -> None:
        self._text = text
        header_end = text.find("\n") + 1 if "\n" in text else len(text)
        self.columns: list[str] = next(csv.reader([text[:header_end]]), [])
        starts = []
        position = header_end
        while position < len(text):
            starts.append(position)
            following = text.find("\n", position)
            position = len(text) if following < 0 else following + 1
        self._starts = np.array([*starts, len(text)], dtype=np.int64)
        self._plain: list[dict[str, str]] | None = None
        rows = csv.DictReader(io.StringIO(text))
        count = sum(1 for _ in rows)
        if count != len(starts):  # a quoted field spans lines: offsets of physical lines would be wrong
            self._plain = list(csv.DictReader(io.StringIO(text)))

    def __len__(self) -> int:
        return len(self._plain) if self._plain is not None else len(self._starts) - 1

    def __getitem__(self, index):  # int -> dict, slice -> list of dicts
        if self._plain is not None:
            return self._plain[index]
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        index = int(index)
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"manifest row {index} out of range ({len(self)} rows)")
        line = self._text[self._starts[index] : self._starts[index + 1]]
        return self._row(next(csv.reader([line])))

    def __iter__(self) -> Iterator[dict[str, str]]:
        if self._plain is not None:
            return iter(self._plain)
        return iter(csv.DictReader(io.StringIO(self._text)))

    def _row(self, values: list[str]) -> dict[str, str]:
        """As csv.DictReader makes it (missing fields None, extra ones under None)."""
        row: dict = dict(zip(self.columns, values))
        if len(values) < len(self.columns):
            row.update({name: None for name in self.columns[len(values) :]})
        elif len(values) > len(self.columns):
            row[None] = values[len(self.columns) :]
        return row

    def column(self, name: str) -> list[str]:
        """One column's values in row order (one pass, no dict per row)."""
        if self._plain is not None:
            return [row[name] for row in self._plain]
        position = self.columns.index(name)
        reader = csv.reader(io.StringIO(self._text))
        next(reader, None)
        return [values[position] if position < len(values) else None for values in reader]
