"""`meddenoise federated`: federated training with Flower; images never leave the site that holds them."""

from __future__ import annotations

import argparse

from meddenoise.config import add_config_arguments, command_config
from meddenoise.federated.config import FederatedConfig

DESCRIPTION = """Train one denoiser across sites without moving images: each site trains the global model on
its own training images with the same engine as `meddenoise train`, and only weights and aggregate metrics
(means and counts) go to the server, which combines them with a Flower strategy (FedAvg, FedProx, FedAdam,
FedYogi). Runs in Flower's simulation engine on this machine; for sites on separate machines (a SuperLink
and one SuperNode per site) see docs/federated.md.

Sites: one prepared folder each (--site-data A B C), or one prepared folder partitioned by patient
(--data DIR --sites K --partition iid|by-source|dirichlet [--alpha A]). Each site trains on its train split
and validates on its val split; the global test set is every site's test split, or a held-out --test-site.

The run folder is like `meddenoise train`'s (config.json, metrics.jsonl with one record per round,
summary.csv, checkpoints/{best,last}.safetensors), so `evaluate`, `denoise`, `privacy-audit` and `report`
accept it. Needs the optional dependency: pip install 'meddenoise[federated]'."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "federated",
        help="federated training across sites with Flower (images stay at their site)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_arguments(parser, FederatedConfig)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meddenoise.errors import ConfigError
    from meddenoise.federated import require_flower, run_federated

    config = command_config(FederatedConfig, args)  # --print-config prints it and exits here
    if config.flower_app:
        from meddenoise.federated import require_flower
        from meddenoise.federated.deployment import write_flower_app

        require_flower(simulation=False)
        path = write_flower_app(config, config.flower_app)
        print(
            f"wrote {path}; start the SuperLink and one SuperNode per site, then: flwr run {path.parent} "
            "CONNECTION --stream (docs/federated.md)"
        )
        return 0
    if not (config.data or config.site_data):
        raise ConfigError("give --site-data A B ... (one prepared folder per site) or --data DIR --sites K")
    require_flower()
    out = run_federated(config)
    print(f"federated run finished: {out}", flush=True)
    return 0
