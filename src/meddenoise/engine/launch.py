"""Start DDP training in worker processes on this node (torchrun), from a `TrainConfig`.

The workers rebuild the config from `meddenoise train` options: the command line is the one format torchrun
can hand to every worker. `--nproc` is left out: the workers do not need it, and torchrun's own parser would
take it for an abbreviation of its --nproc-per-node.
"""

from __future__ import annotations

from meddenoise.config import config_to_argv
from meddenoise.engine.config import TrainConfig


def worker_argv(config: TrainConfig) -> list[str]:
    """`meddenoise train` options that rebuild `config` (options left at their default are omitted)."""
    return ["train", *config_to_argv(config, skip=("nproc",))]


def fit_with_torchrun(config: TrainConfig, nproc: int) -> int:
    """Train `config` with DDP in `nproc` local worker processes; returns torchrun's exit status."""
    from meddenoise.engine import distributed

    return distributed.launch_torchrun(nproc, worker_argv(config))
