"""`train(config)`: the one entry point that trains with any strategy.

Single device and DataParallel train in this process. DDP, when this process was not itself started by
torchrun, launches `nproc` torchrun workers on this node; the launcher writes the run's config into the run
folder (`launch_config.json`) and every worker reads it there (`python -m meddenoise.worker FILE`),
so no option travels through a command line. Under torchrun (a user's own `torchrun -m meddenoise train`,
multi-node) it trains in this process, as one rank.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from meddenoise.config import save_config
from meddenoise.engine.config import TrainConfig
from meddenoise.fileio import ensure_writable_dir
from meddenoise.locking import folder_lock
from meddenoise.rundir import RunDir

WORKER_MODULE = "meddenoise.worker"


def workers_to_launch(config: TrainConfig) -> int:
    """How many torchrun workers `train` starts for `config` (0: it trains in this process)."""
    from meddenoise.engine import distributed
    from meddenoise.engine.runtime import default_process_count

    if config.strategy != "ddp" or distributed.launched_by_torchrun():
        return 0
    return config.nproc or default_process_count(config.device)


def train(config: TrainConfig, say: Callable[[str], None] | None = None) -> Path:
    """Train as configured, with any strategy, and return the run folder; `say` hears about a launch."""
    if nproc := workers_to_launch(config):
        if say is not None:
            say(f"launching {nproc} DDP worker(s) with torchrun")
        return fit_with_torchrun(config, nproc)
    from meddenoise.engine.train import fit

    return fit(config)


def fit_with_torchrun(config: TrainConfig, nproc: int) -> Path:
    """Train `config` with DDP in `nproc` local worker processes that read it from the run folder."""
    from meddenoise.engine import distributed

    out = Path(config.out)
    handoff = RunDir(out).launch_config_file
    # Under the run folder's lock: a run already training there keeps its files (the workers would then
    # stop at the same lock with its message).
    with folder_lock(ensure_writable_dir(out, what="run folder", parameter="out")):
        save_config(config, handoff)
    try:
        distributed.launch_torchrun(nproc, [str(handoff.resolve())], module=WORKER_MODULE)
    finally:
        handoff.unlink(missing_ok=True)
    return out
