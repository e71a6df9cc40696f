"""Flower's server strategies by name: FedAvg (weighted by site training images), FedProx, FedAdam, FedYogi.

The server state a strategy carries between rounds (FedAdam's / FedYogi's moments) is read and restored
here, so a killed server resumes with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from meddenoise.federated.client import ARRAYS_RECORD, CONFIG_RECORD, WEIGHT_KEY
from meddenoise.registry import Registry

MOMENT_ATTRIBUTES = ("m_t", "v_t")

# (Flower's strategy module, the options every strategy shares, proximal_mu, server_lr, server_tau)
StrategyBuilder = Callable[[Any, dict[str, Any], float, float, float], Any]
STRATEGIES: Registry[StrategyBuilder] = Registry("federated strategy", parameter="strategy")
STRATEGIES.add("fedavg", lambda flower, common, mu, lr, tau: flower.FedAvg(**common))
STRATEGIES.add("fedprox", lambda flower, common, mu, lr, tau: flower.FedProx(**common, proximal_mu=mu))
STRATEGIES.add("fedadam", lambda flower, common, mu, lr, tau: flower.FedAdam(**common, eta=lr, tau=tau))
STRATEGIES.add("fedyogi", lambda flower, common, mu, lr, tau: flower.FedYogi(**common, eta=lr, tau=tau))


def build_strategy(
    name: str, *, fraction: float, train_sites: int, proximal_mu: float, server_lr: float, server_tau: float
) -> Any:
    builder = STRATEGIES.get(name)  # before importing Flower: an unknown name is a config error either way
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
    return builder(flower, common, proximal_mu, server_lr, server_tau)


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
