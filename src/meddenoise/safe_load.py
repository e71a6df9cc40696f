"""`torch.load` that only ever reads tensors and plain values, with errors that do not advise otherwise.

torch's own message for a refused file suggests `weights_only=False`, which would run whatever code the file
carries. meddenoise never does that, so the message names what was refused and says to use a file written by
meddenoise instead.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

from meddenoise.errors import MeddenoiseError

_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def load_plain(path: str | Path, what: str, map_location: Any = "cpu") -> Any:
    """`torch.load(path, weights_only=True)`; a failure is a MeddenoiseError naming `what` and `path`."""
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or foreign files
        raise MeddenoiseError(f"cannot read {what} {path}: {describe_failure(exc)}") from None


def describe_failure(exc: BaseException) -> str:
    text = str(exc)
    if isinstance(exc, pickle.UnpicklingError) and "weights only" in text.lower():
        found = _GLOBAL.search(text)
        thing = f"the Python object {found.group(1)}" if found else "Python objects other than tensors"
        return (
            f"it asks to load {thing}, which meddenoise refuses (it reads only tensors and plain values, "
            "so a file cannot run code); use a file written by meddenoise"
        )
    lines = [line.strip() for line in text.splitlines() if line.strip() and "weights_only" not in line]
    first = lines[0][:300] if lines else "unreadable"
    return f"{type(exc).__name__}: {first} (corrupt, or not written by meddenoise?)"
