"""The ServerApp and ClientApp objects a Flower deployment loads by name (`meddenoise.federated.app:...`).

server_app   the federation's settings come from the run config key `meddenoise-config` (JSON of a
             `meddenoise federated` config, written by `meddenoise federated --flower-app DIR`)
client_app   a site: its prepared folder and name come from the SuperNode's node config,
             `--node-config "data='/path/to/prepared' name='hospital-a'"`
"""

from __future__ import annotations

import json
from typing import Any

from flwr.serverapp import ServerApp

from meddenoise.federated.client import make_client_app

client_app = make_client_app(None)
server_app = ServerApp()


@server_app.main()
def main(grid: Any, context: Any) -> None:
    from meddenoise.config import config_from_mapping
    from meddenoise.errors import ConfigError
    from meddenoise.federated.config import FederatedConfig
    from meddenoise.federated.deployment import RUN_CONFIG_KEY
    from meddenoise.federated.server import FederatedServer

    text = str(context.run_config.get(RUN_CONFIG_KEY, ""))
    if not text:
        raise ConfigError(
            f"the run config has no {RUN_CONFIG_KEY}; write the Flower App with `meddenoise federated "
            "--flower-app DIR ...` and run that folder"
        )
    config = config_from_mapping(FederatedConfig, json.loads(text), source=f"run config {RUN_CONFIG_KEY}")
    FederatedServer(config, None, sequential_sites=False).run(grid)
