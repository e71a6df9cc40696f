"""How long a test waits on another process before it calls the wait a hang: every such limit, in one place.

These bound waiting, never speed. Each is several times what the wait takes on a 2-core machine running a
CPU-bound process beside the suite, so a loaded CI machine does not fail a test that would pass on an idle
one. A test never asserts that something was fast; where it checks that a failure is reported "in bounded
time" (instead of never), the bound is STOPS_WITHIN, far above the timeout it tests. On a machine slower
still, MEDDENOISE_TEST_TIME_SCALE=3 (say) multiplies every limit here.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("MEDDENOISE_TEST_TIME_SCALE", "1") or 1)


def _scaled(seconds: float) -> float:
    return seconds * SCALE


# A whole CLI run in a subprocess: a tiny train, federated run, prepare or reproduce job.
RUN = _scaled(480)
# A command that should answer at once: --help, a refusal, a lock that is already held.
ANSWER = _scaled(180)
# Polling for something another process writes (a checkpoint, a log line, a finished round).
APPEAR = _scaled(300)
# A process that was told to stop (or whose peer died) exits within this; also the "bounded time" bound.
STOPS_WITHIN = _scaled(240)
# --dist-timeout for tests whose ranks must join and exchange before a fault is injected: two ranks that
# import torch on a loaded machine can start seconds apart, so 2-3 s here made the join itself time out.
PEER_DIST_TIMEOUT = _scaled(20)
# A store wait or thread join inside one process.
IN_PROCESS = _scaled(60)
