"""Federated training with Flower: every image stays at the site that holds it; only weights and aggregate
metrics travel.

    from meddenoise.federated import run_federated
    run_federated(config)            # FederatedConfig -> the run folder (Flower's simulation engine)

Modules: config (options), sites (who holds which images; partitions), local (a site's training and
evaluation with the engine's step), client (the Flower ClientApp), server (the ServerApp's round loop and the
run folder), strategies (Flower's FedAvg / FedProx / FedAdam / FedYogi), simulation (running it on one
machine), app (the ServerApp / ClientApp objects a SuperLink and SuperNodes load in deployment).
Flower is an optional dependency: `pip install 'meddenoise[federated]'`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meddenoise.errors import MeddenoiseError

if TYPE_CHECKING:
    from pathlib import Path

    from meddenoise.federated.config import FederatedConfig

INSTALL_HINT = (
    "federated training needs Flower with its simulation engine: pip install 'meddenoise[federated]' "
    "(or pip install 'flwr[simulation]'); bash scripts/setup.sh installs it"
)


def require_flower(simulation: bool = True) -> None:
    """Raise a MeddenoiseError that says how to install Flower (and Ray, for simulation) when missing."""
    import importlib.util

    missing = [
        name
        for name in ("flwr", "ray" if simulation else None)
        if name and not importlib.util.find_spec(name)
    ]
    if missing:
        raise MeddenoiseError(f"{' and '.join(missing)} not installed; {INSTALL_HINT}")


def run_federated(config: FederatedConfig) -> Path:
    """Run a federation in Flower's simulation engine and return the run folder."""
    require_flower()
    from meddenoise.federated.simulation import simulate

    return simulate(config)
