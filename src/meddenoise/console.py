"""Progress bars for every command that can take more than a few seconds, one spelling for all of them."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def progress(
    iterable: Iterable[Any] | None = None, *, quiet: bool, desc: str, unit: str, **options: Any
) -> Any:
    """A tqdm bar over `iterable` (or a manual one with `total=`), off with `--quiet` and when stderr is not a
    terminal (logs stay free of bar redraws)."""
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, unit=unit, disable=True if quiet else None, leave=False, **options)
