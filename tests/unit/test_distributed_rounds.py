"""Workers restarted by torchrun agree on a fresh key space of the agent's long-lived store, whatever the
previous round left in it."""

from __future__ import annotations

import datetime
import threading

import pytest
import torch.distributed as dist

from meddenoise.engine import distributed
from time_limits import IN_PROCESS


def run_round(monkeypatch, port: int, world_size: int, label: str) -> list[str]:
    """Every rank's `_round_store` in a thread; each rank writes `label:rank` into the key space it got and
    returns what it reads back from rank 0 there."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    results: list = [None] * world_size
    errors: list[BaseException] = []

    def one(rank: int) -> None:
        try:
            place = distributed.ProcessPlace(rank, 0, world_size)
            store = distributed._round_store(place, datetime.timedelta(seconds=IN_PROCESS))
            store.set(f"from/{rank}", f"{label}:{rank}")  # visible to the other ranks under the same prefix
            store.wait([f"from/{r}" for r in range(world_size)], datetime.timedelta(seconds=IN_PROCESS))
            results[rank] = store.get("from/0").decode()
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=IN_PROCESS)
    assert not errors, errors
    return results


@pytest.mark.parametrize("world_size", [2, 3])
def test_restarted_ranks_find_each_other_despite_the_previous_rounds_keys(monkeypatch, world_size):
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    base = dist.PrefixStore("meddenoise/job", server)
    first = run_round(monkeypatch, server.port, world_size, "first")
    assert first == ["first:0"] * world_size
    # The session each rank read in round one, captured before round two starts. Round two's rank 0 may
    # later answer a stale round-one nonce under the same key (an answer nobody reads), so reading this key
    # after round two would not tell what round one used.
    old = {}
    for rank in range(1, world_size):
        nonce = base.get(f"hello/{rank}").decode()
        old[rank] = (nonce, base.get(f"answer/{rank}/{nonce}").decode())
    # The second round starts on top of everything the first one wrote (hello, answer and ready keys).
    second = run_round(monkeypatch, server.port, world_size, "second")
    # Had any rank joined round one's key space, it would read "first:0" there.
    assert second == ["second:0"] * world_size, "each round gets its own key space"
    sessions_two = set()
    for rank, (old_nonce, old_session) in old.items():
        new_nonce = base.get(f"hello/{rank}").decode()
        assert new_nonce != old_nonce, "each round posts fresh nonces"
        new_session = base.get(f"answer/{rank}/{new_nonce}").decode()
        assert new_session != old_session, "the answer a rank reads in round two is not round one's"
        sessions_two.add(new_session)
    assert len(sessions_two) == 1, "every rank of round two got the same session"
