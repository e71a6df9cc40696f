"""`ManifestRows` reads like `list(csv.DictReader(...))` while keeping only the text and row offsets."""

from __future__ import annotations

import csv
import io
import tracemalloc

import pytest

from meddenoise.data.manifest_rows import ManifestRows


def manifest_text(count: int, extra: str = "") -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["index", "image_id", "image_key", "split", "source_path"])
    for i in range(count):
        writer.writerow(
            [i, f"img{i:06d}", 1000 + i, ("train", "val", "test")[i % 3], f"dir, with comma/{i}.png"]
        )
    return buffer.getvalue() + extra


@pytest.mark.parametrize("count", [0, 1, 7])
def test_rows_read_like_a_dict_reader(count):
    text = manifest_text(count)
    expected = list(csv.DictReader(io.StringIO(text)))
    rows = ManifestRows(text)
    assert len(rows) == count and list(rows) == expected
    assert [rows[i] for i in range(count)] == expected
    assert rows[:] == expected and rows[1:5:2] == expected[1:5:2]
    if count:
        assert rows[-1] == expected[-1]
    with pytest.raises(IndexError):
        rows[count]
    assert rows.column("split") == [row["split"] for row in expected]


def test_a_quoted_line_break_falls_back_to_plain_rows():
    text = 'index,image_id,note\n0,a,"two\nlines"\n1,b,plain\n'
    rows = ManifestRows(text)
    assert list(rows) == list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["note"] == "two\nlines" and rows[1]["image_id"] == "b"


def test_short_and_long_rows_are_filled_as_the_dict_reader_does():
    text = "a,b,c\n1,2\n1,2,3,4\n"
    assert [ManifestRows(text)[i] for i in range(2)] == list(csv.DictReader(io.StringIO(text)))


def test_rows_take_a_fraction_of_the_memory_of_a_dict_per_row():
    data = manifest_text(20000).encode("utf-8")  # decoded inside: the kept text counts for ManifestRows

    def allocated(build) -> int:
        tracemalloc.start()
        kept = build()
        size = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        del kept
        return size

    dicts = allocated(lambda: list(csv.DictReader(io.StringIO(data.decode("utf-8")))))
    compact = allocated(lambda: ManifestRows(data.decode("utf-8")))
    assert compact < dicts / 4, (compact, dicts)
