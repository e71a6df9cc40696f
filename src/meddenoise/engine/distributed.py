"""Everything that touches `torch.distributed` lives here (the rest of the package imports these helpers).

A process is part of a distributed run when torchrun (or SLURM via torchrun, or a test) set the usual
environment variables: RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT. We initialise with
`init_method="env://"`, which works for single-node `--standalone` runs and multi-node c10d rendezvous alike
(torchrun fills in MASTER_ADDR/PORT from the rendezvous endpoint).
"""

from __future__ import annotations

import contextlib
import datetime
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

from meddenoise.errors import MeddenoiseError

TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
DEFAULT_TIMEOUT_SECONDS = 600.0
# Words in the RuntimeErrors gloo and NCCL raise when a peer is gone or silent (they carry no exception type).
_FAILURE_MARKERS = ("gloo", "nccl", "timed out", "connection reset", "connection closed", "broken pipe")
_timeout_seconds = DEFAULT_TIMEOUT_SECONDS


@dataclass(frozen=True)
class ProcessPlace:
    rank: int
    local_rank: int
    world_size: int


def launched_by_torchrun() -> bool:
    """True when any torchrun variable is set (a half-set environment is reported by `place_from_env`)."""
    return any(name in os.environ for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))


def place_from_env() -> ProcessPlace:
    """Read rank / local rank / world size from the environment, or explain what is missing."""
    missing = [name for name in TORCHRUN_VARIABLES if not os.environ.get(name)]
    if missing:
        raise MeddenoiseError(
            f"the ddp strategy needs the torchrun environment but {', '.join(missing)} "
            "is not set; launch with `torchrun --nproc_per_node=K -m meddenoise train ...` "
            "or let meddenoise launch it: `meddenoise train --strategy ddp --nproc K ...`",
            parameter="strategy",
        )
    try:
        rank, local_rank, world_size = (int(os.environ[n]) for n in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    except ValueError:
        values = {n: os.environ[n] for n in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
        raise MeddenoiseError(f"torchrun variables must be integers; got {values}") from None
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise MeddenoiseError(
            f"inconsistent torchrun environment: RANK={rank} LOCAL_RANK={local_rank} WORLD_SIZE={world_size}"
        )
    return ProcessPlace(rank, local_rank, world_size)


def init_process_group(
    device: torch.device, place: ProcessPlace, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> None:
    """NCCL between GPUs, gloo on CPU; a failing rendezvous becomes a message naming the address to check.

    `timeout_seconds` bounds the rendezvous and every later collective: a peer that died or hangs makes the
    others stop with an error (see `explain_failure`) instead of waiting forever.
    """
    global _timeout_seconds
    if dist.is_initialized():
        return
    _timeout_seconds = float(timeout_seconds)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl" and not dist.is_nccl_available():
        raise MeddenoiseError(
            "this torch build has no NCCL; DDP on GPUs needs it (or use device cpu for gloo)",
            parameter="device",
        )
    kwargs: dict = {"device_id": device} if device.type == "cuda" else {}
    timeout = datetime.timedelta(seconds=_timeout_seconds)
    try:
        if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
            kwargs["store"] = _round_store(place, timeout)
        else:
            kwargs["init_method"] = "env://"
        dist.init_process_group(
            backend=backend, rank=place.rank, world_size=place.world_size, timeout=timeout, **kwargs
        )
    except (RuntimeError, ValueError, TimeoutError, dist.DistError) as exc:
        address = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
        raise MeddenoiseError(
            f"could not join the process group at {address} as rank {place.rank}/{place.world_size} within "
            f"{_timeout_seconds:g} s (dist_timeout) ({_first_line(exc)}); check that every node uses the "
            "same torchrun `--rdzv-endpoint` and `--nnodes`, that the port is reachable and the other "
            "processes started",
            parameter="dist_timeout",
        ) from None


def _round_store(place: ProcessPlace, timeout: datetime.timedelta) -> dist.Store:
    """A key space of torchrun's shared store that belongs to this round of workers alone.

    torchrun's c10d rendezvous lets the workers use the agent's TCPStore (MASTER_ADDR:MASTER_PORT), which
    lives as long as the agents: after a restart it still holds the previous round's keys, e.g. the
    addresses of dead gloo pairs, and torch separates rounds by TORCHELASTIC_RESTART_COUNT, which each node
    counts for itself (a node restarted because another one failed does not count). Restarted workers then
    read stale addresses ("Gloo connectFullMesh failed") or wait for keys written under another count.

    Here rank 0 draws a fresh round id and hands it to every other rank through a handshake that stale
    keys cannot satisfy: a rank posts a fresh nonce and waits for an answer under a key containing it; it
    then confirms under a key containing the round id. The process group's keys all carry that id.
    """
    host, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
    store = dist.TCPStore(host, port, place.world_size, is_master=False, timeout=timeout)
    base = dist.PrefixStore(f"meddenoise/{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}", store)
    deadline = time.monotonic() + timeout.total_seconds()
    if place.rank == 0:
        session = secrets.token_hex(8)
        answered: dict[int, str] = {}
        waiting = set(range(1, place.world_size))
        while waiting:
            for rank in sorted(waiting):
                if base.check([f"ready/{session}/{rank}"]):
                    waiting.discard(rank)
                elif base.check([f"hello/{rank}"]):
                    nonce = base.get(f"hello/{rank}").decode()
                    if answered.get(rank) != nonce:  # a stale nonce gets an answer nobody reads
                        base.set(f"answer/{rank}/{nonce}", session)
                        answered[rank] = nonce
            if waiting and time.monotonic() > deadline:
                raise TimeoutError(f"rank(s) {sorted(waiting)} did not join this round")
            if waiting:
                time.sleep(0.02)
    else:
        nonce = secrets.token_hex(8)
        base.set(f"hello/{place.rank}", nonce)
        base.wait([f"answer/{place.rank}/{nonce}"], timeout)
        session = base.get(f"answer/{place.rank}/{nonce}").decode()
        base.set(f"ready/{session}/{place.rank}", "1")
    return dist.PrefixStore(f"meddenoise/session/{session}", store)


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__


def explain_failure(exc: BaseException) -> MeddenoiseError | None:
    """A clear error for a collective that failed because a peer died, hung or became unreachable; None when
    `exc` is not such a failure (or this process is not part of a group)."""
    if isinstance(exc, MeddenoiseError) or not is_initialized():
        return None
    text = str(exc).lower()
    if not (isinstance(exc, getattr(dist, "DistError", ())) or any(m in text for m in _FAILURE_MARKERS)):
        return None
    return MeddenoiseError(
        f"rank {dist.get_rank()} of {dist.get_world_size()}: communication with the other training "
        f"processes failed or got no answer within {_timeout_seconds:g} s (--dist-timeout): "
        f"{_first_line(exc)}. Another process probably stopped (its own error is in its log) or its node "
        "became unreachable; with `--resume auto` a restart (torchrun --max-restarts, SLURM requeue) "
        "continues from the last checkpoint"
    )


@contextlib.contextmanager
def _collective() -> Iterator[None]:
    try:
        yield
    except RuntimeError as exc:
        failure = explain_failure(exc)
        if failure is None:
            raise
        raise failure from None


def barrier() -> None:
    if is_initialized():
        with _collective():
            dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (returns the tensor); a no-op in a single process."""
    if is_initialized():
        with _collective():
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    if is_initialized():
        with _collective():
            dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_object(value: object, source: int = 0) -> object:
    if not is_initialized():
        return value
    holder = [value]
    with _collective():
        dist.broadcast_object_list(holder, src=source)
    return holder[0]


def teardown(clean: bool = True) -> None:
    """Leave the process group (a destroyed group lets the interpreter exit without aborting in C++).

    After a failure (`clean=False`) there is no closing barrier: the peers may be gone, and waiting for them
    would turn an error into a wait of --dist-timeout.
    """
    if is_initialized():
        if clean:
            with contextlib.suppress(RuntimeError, MeddenoiseError):
                barrier()
        with contextlib.suppress(RuntimeError):
            dist.destroy_process_group()


def torchrun_command(
    nproc: int, argv: Sequence[str], nnodes: int = 1, module: str = "meddenoise"
) -> list[str]:
    """The command that runs `python -m <module> <argv>` under torchrun with `nproc` processes on this
    node."""
    command = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}"]
    if nnodes == 1:
        command.append("--standalone")  # a free local port, no rendezvous server to configure
    return [*command, "-m", module, *argv]


def launch_torchrun(nproc: int, argv: Sequence[str], module: str = "meddenoise") -> int:
    """Run `python -m torch.distributed.run --nproc_per_node nproc -m MODULE ARGV` and wait for it."""
    command = torchrun_command(nproc, argv, module=module)
    environment = dict(os.environ)
    # One thread per worker unless the user chose otherwise: K workers on K cores, not K x cores threads.
    environment.setdefault("OMP_NUM_THREADS", "1")
    from meddenoise.engine.termination import Terminated, TerminationSignal

    process = subprocess.Popen(command, env=environment)
    # A SIGTERM to this launcher goes on to torchrun, which passes it to the workers: they stop at the same
    # step, write their last checkpoint and exit, and the run folder's lock goes with rank 0's process.
    with TerminationSignal() as termination:
        termination.on_signal = lambda: process.send_signal(signal.SIGTERM)
        try:
            returncode = process.wait()
        except KeyboardInterrupt:
            process.send_signal(signal.SIGINT)
            process.wait()
            return 130
    if termination.received:
        raise Terminated(
            f"terminated (SIGTERM): the {nproc} torchrun worker(s) were asked to stop and exited with status "
            f"{returncode}; their last checkpoint is kept: run the same command with resume to continue",
            parameter="resume",
        )
    if returncode != 0:
        raise MeddenoiseError(
            f"the {nproc} torchrun worker(s) failed (exit status {returncode}); their messages are above"
        )
    return 0
