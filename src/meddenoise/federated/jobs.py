"""A federated run inside a grid of centralized runs (`meddenoise reproduce`): the same local-training
settings as the grid's one-device run of that model, one local epoch per round and as many rounds as that
run has epochs, so the sites together take as many optimizer steps as the centralized run."""

from __future__ import annotations

import dataclasses
from typing import Any

from meddenoise.federated.config import FederatedConfig


def federated_config(
    train_values: dict[str, Any], spec: dict[str, Any], *, data: str, out: str, **extra: Any
) -> FederatedConfig:
    """`train_values`: TrainConfig values of the centralized run (epochs become rounds; options that do not
    apply to a federation, such as patience or the DDP strategy, are left out); `spec`: the federation
    (sites, partition, alpha, strategy, ...); `extra`: noise, device, quiet, resume, ..."""
    from meddenoise.config import config_from_mapping

    known = {f.name for f in dataclasses.fields(FederatedConfig)}
    values = {k: v for k, v in train_values.items() if k in known and k not in ("strategy", "resume")}
    values.update(rounds=int(train_values.get("epochs", 1)), local_epochs=1, sim_cpus=1)
    values.update(spec)
    values.update(extra)
    values.update(data=data, out=out)
    return config_from_mapping(FederatedConfig, values, source="federated job")


def job_name(spec: dict[str, Any]) -> str:
    """A short name of a federation for folders and tables, e.g. `fedavg-iid3`, `fedprox-dirichlet0.1x3`."""
    partition = spec.get("partition", "iid")
    if partition == "dirichlet":
        partition += f"{spec.get('alpha', 0.5):g}x"
    return f"{spec.get('strategy', 'fedavg')}-{partition}{spec.get('sites', 3)}"
