"""SIGTERM as a clean stop: what a scheduler's preemption, `kill` or a launcher shutting down sends.

Inside `fit`, the first SIGTERM only sets a flag; the loop stops at the next step it checks (under DDP every
rank stops at the same step), validates the partial epoch, writes the last checkpoint and raises
`Terminated`, so the run continues with `--resume`. A second SIGTERM ends the process at once, as it would
without this. The handler is installed only in the main thread, and the previous one is restored after.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

from meddenoise.errors import MeddenoiseError

EXIT_STATUS = 128 + signal.SIGTERM  # what a shell reports for a process ended by SIGTERM


class Terminated(MeddenoiseError):
    """Training stopped on SIGTERM after saving its last checkpoint; the message says how to continue."""

    exit_code = EXIT_STATUS


class TerminationSignal:
    """`with TerminationSignal() as signal_: ... signal_.received` (False until a SIGTERM arrives)."""

    def __init__(self) -> None:
        self.received = False
        self.on_signal: Any = None  # called from the handler, e.g. to pass the signal on to a child
        self._previous: Any = None
        self._installed = False

    def __enter__(self) -> TerminationSignal:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.getsignal(signal.SIGTERM)
            signal.signal(signal.SIGTERM, self._handle)
            self._installed = True
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = True
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM is not caught
        if self.on_signal is not None:
            self.on_signal()

    def __exit__(self, *exc: Any) -> None:
        if self._installed:
            previous = self._previous if self._previous is not None else signal.SIG_DFL
            signal.signal(signal.SIGTERM, previous)
