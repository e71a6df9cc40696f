"""Every limit a test waits under comes from tests/time_limits.py, so that one number (or
MEDDENOISE_TEST_TIME_SCALE) makes the whole suite more patient on a slow or loaded machine."""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
# A literal number of seconds given to a wait: timeout=120, deadline = time.monotonic() + 60,
# thread.join(timeout=5), timedelta(seconds=20); not torchrun's own options inside strings (join_timeout=15).
LITERAL_WAIT = re.compile(r"(?<![\w\"'])timeout=\d|monotonic\(\) \+ \d|timedelta\(seconds=\d")


def test_no_test_waits_under_a_literal_limit():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        if path.name in ("time_limits.py", Path(__file__).name):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if LITERAL_WAIT.search(line):
                offenders.append(f"{path.relative_to(TESTS)}:{number}: {line.strip()}")
    assert not offenders, "use a limit from tests/time_limits.py:\n" + "\n".join(offenders)


def test_the_pattern_catches_what_it_is_meant_to():
    assert LITERAL_WAIT.search("subprocess.run(cmd, timeout=120)")
    assert LITERAL_WAIT.search("deadline = time.monotonic() + 60")
    assert not LITERAL_WAIT.search('("--rdzv-conf", "join_timeout=15")')
    assert not LITERAL_WAIT.search("subprocess.run(cmd, timeout=RUN)")
