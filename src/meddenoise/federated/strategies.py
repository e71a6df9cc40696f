"""Flower's server strategies by name: FedAvg (weighted by site training images), FedProx, FedAdam, FedYogi.

The server state a strategy carries between rounds (FedAdam's / FedYogi's moments) is read and restored
here, so a killed server resumes with it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from meddenoise.federated.client import ARRAYS_RECORD, CONFIG_RECORD, WEIGHT_KEY

MOMENT_ATTRIBUTES = ("m_t", "v_t")


def build_strategy(
    name: str, *, fraction: float, train_sites: int, proximal_mu: float, server_lr: float, server_tau: float
) -> Any:
    from flwr.serverapp import strategy as flower

    common = {
        "fraction_train": fraction,
        "fraction_evaluate": 1.0,  # every training site reports validation metrics every round
        "min_train_nodes": 1,
        "min_evaluate_nodes": train_sites,
        "min_available_nodes": train_sites,
        "weighted_by_key": WEIGHT_KEY,
        "arrayrecord_key": ARRAYS_RECORD,
        "configrecord_key": CONFIG_RECORD,
    }
    if name == "fedavg":
        return flower.FedAvg(**common)
    if name == "fedprox":
        return flower.FedProx(**common, proximal_mu=proximal_mu)
    if name == "fedadam":
        return flower.FedAdam(**common, eta=server_lr, tau=server_tau)
    if name == "fedyogi":
        return flower.FedYogi(**common, eta=server_lr, tau=server_tau)
    raise ValueError(f"unknown strategy {name!r}")


def strategy_state(strategy: Any) -> dict[str, Any]:
    """The strategy's moments as tensors (empty for FedAvg / FedProx)."""
    import torch

    state = {}
    for name in MOMENT_ATTRIBUTES:
        value = getattr(strategy, name, None)
        if value:
            state[name] = {key: torch.from_numpy(np.array(array)) for key, array in value.items()}
    return state


def restore_strategy_state(strategy: Any, state: dict[str, Any]) -> None:
    for name, arrays in state.items():
        setattr(strategy, name, {key: tensor.numpy() for key, tensor in arrays.items()})
