"""Deployment: the Flower App folder that `flwr run` submits to a SuperLink.

`write_flower_app(config, folder)` writes `folder/pyproject.toml`, which names the ServerApp and ClientApp
objects of `meddenoise.federated.app` and carries the federation's settings (this command's options, as
JSON) in the run config key `meddenoise-config`. The folder holds no code: every machine that runs a part
(SuperLink, SuperNodes) has meddenoise installed. See docs/federated.md for the commands.
"""

from __future__ import annotations

import json
from pathlib import Path

from meddenoise.config import config_to_dict
from meddenoise.federated.config import FederatedConfig
from meddenoise.fileio import atomic_write_text, ensure_writable_dir

RUN_CONFIG_KEY = "meddenoise-config"
APP_NAME = "meddenoise-federated"
# Options that make no sense on the server of a deployment (it never sees a folder; `flwr run` runs it).
LOCAL_ONLY = ("site_data", "data", "flower_app", "sim_cpus", "sim_memory_mb", "resume")


def deployment_settings(config: FederatedConfig) -> dict:
    values = config_to_dict(config)
    values["sites"] = config.site_count  # the server waits for this many SuperNodes
    for name in LOCAL_ONLY:
        values.pop(name, None)
    return values


def write_flower_app(config: FederatedConfig, folder: str | Path) -> Path:
    from meddenoise import __version__

    folder = ensure_writable_dir(folder, what="Flower App folder", parameter="flower_app")
    settings = json.dumps(deployment_settings(config), sort_keys=True)
    text = f"""# A Flower App for `flwr run`: meddenoise's ServerApp and ClientApp, with its settings.
# Written by `meddenoise federated --flower-app`; see docs/federated.md.
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "{APP_NAME}"
version = "{__version__}"
description = "meddenoise federated training (ServerApp and ClientApp from the installed package)"
license = "MIT"
dependencies = []

[tool.hatch.build.targets.wheel]
packages = ["."]

[tool.flwr.app]
publisher = "meddenoise"

[tool.flwr.app.components]
serverapp = "meddenoise.federated.app:server_app"
clientapp = "meddenoise.federated.app:client_app"

[tool.flwr.app.config]
{RUN_CONFIG_KEY} = {json.dumps(settings)}
"""
    path = folder / "pyproject.toml"
    atomic_write_text(path, text)
    return path
