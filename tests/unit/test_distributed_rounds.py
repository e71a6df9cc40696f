"""Workers restarted by torchrun agree on a fresh key space of the agent's long-lived store, whatever the
previous round left in it."""

from __future__ import annotations

import datetime
import threading

import pytest
import torch.distributed as dist

from meddenoise.engine import distributed


def run_round(monkeypatch, port: int, world_size: int) -> list[str]:
    """Every rank's `_round_store` in a thread; returns the key prefix each rank got."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(port))
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job")
    results: list = [None] * world_size
    errors: list[BaseException] = []

    def one(rank: int) -> None:
        try:
            place = distributed.ProcessPlace(rank, 0, world_size)
            store = distributed._round_store(place, datetime.timedelta(seconds=20))
            store.set(f"from/{rank}", str(rank))  # visible to the other ranks under the same prefix
            store.wait([f"from/{r}" for r in range(world_size)], datetime.timedelta(seconds=20))
            results[rank] = store.get("from/0").decode()
        except BaseException as error:  # reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=one, args=(rank,)) for rank in range(world_size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("world_size", [2, 3])
def test_restarted_ranks_find_each_other_despite_the_previous_rounds_keys(monkeypatch, world_size):
    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    first = run_round(monkeypatch, server.port, world_size)
    assert first == ["0"] * world_size
    base = dist.PrefixStore("meddenoise/job", server)
    old_nonces = {rank: base.get(f"hello/{rank}").decode() for rank in range(1, world_size)}
    # The second round starts on top of everything the first one wrote (hello, answer and ready keys).
    second = run_round(monkeypatch, server.port, world_size)
    assert second == ["0"] * world_size
    for rank, nonce in old_nonces.items():
        assert base.get(f"hello/{rank}").decode() != nonce, "each round posts fresh nonces"
        session_one = base.get(f"answer/{rank}/{nonce}").decode()
        session_two = base.get(f"answer/{rank}/{base.get(f'hello/{rank}').decode()}").decode()
        assert session_one != session_two, "each round gets its own key space"
