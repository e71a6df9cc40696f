"""The ClientApp: a site answering the server's messages with `meddenoise.federated.local.LocalSite`.

Messages a site answers (every one carries the server's recipe as JSON in its config record):
    query     "describe": the site's name and image counts per split, and its noisy-input validation means
    train     the global weights -> the site's weights after one round, its image count and loss mean
    evaluate  the global weights -> loss / PSNR / SSIM means over its validation (or test) images

Which images a site holds comes from the site itself, never from the server: in simulation from the site
table the ClientApp was built with (indexed by Flower's partition id), in deployment from the SuperNode's
`--node-config "data='/path/to/prepared' name='hospital-a'"`.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from meddenoise.federated.local import LocalSite
from meddenoise.federated.sites import Site

# Keys of the messages (shared with the server).
RECIPE_KEY = "recipe"
CONFIG_RECORD = "config"
ARRAYS_RECORD = "arrays"
METRICS_RECORD = "metrics"
WEIGHT_KEY = "num-examples"  # what Flower's strategies weight averages by
OPTIMIZER_STATE_KEY = "meddenoise-optimizer"
# LocalSites kept in this process between rounds (simulation actors and long-lived SuperNode processes), so a
# site reads its images once per run rather than once per message.
_CACHE: dict[tuple[str, str], LocalSite] = {}
_CACHE_LIMIT = 32


def site_from_node_config(node_config: dict[str, Any]) -> Site:
    data = node_config.get("data")
    if not data:
        raise ValueError(
            "this SuperNode has no prepared folder: start it with "
            "`--node-config \"data='/path/to/prepared'\"`"
        )
    name = str(node_config.get("name") or Path(str(data)).resolve().name)
    return Site(name=name, data=str(data))


def _local_site(site: Site, recipe_json: str) -> LocalSite:
    recipe = json.loads(recipe_json)
    role = "test" if recipe.get("test_site") and recipe["test_site"] == site.name else "train"
    site = dataclasses.replace(site, role=role)
    key = (json.dumps(site.to_dict(), sort_keys=True), recipe_json)
    if key not in _CACHE:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.clear()
        _CACHE[key] = LocalSite(site, recipe)
    return _CACHE[key]


def make_client_app(sites: list[Site] | None = None):
    """A Flower ClientApp; `sites` (simulation) maps Flower's partition id to a site, else node config."""
    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    def site_for(message: Message, context: Context) -> LocalSite:
        if sites is not None:
            site = sites[int(context.node_config["partition-id"])]
        else:
            site = site_from_node_config(dict(context.node_config))
        recipe_json = str(message.content[CONFIG_RECORD][RECIPE_KEY])
        return _local_site(site, recipe_json)

    def reply(message: Message, metrics: dict[str, float], arrays: dict | None = None) -> Message:
        content = RecordDict({METRICS_RECORD: MetricRecord({k: float(v) for k, v in metrics.items()})})
        if arrays is not None:
            content[ARRAYS_RECORD] = ArrayRecord(arrays)
        return Message(content, reply_to=message)

    @app.query()
    def describe(message: Message, context: Context) -> Message:
        local = site_for(message, context)
        counts = local.counts()
        metrics = {f"{split}-images": n for split, n in counts.items()}
        metrics[WEIGHT_KEY] = counts["train"]
        if local.site.role == "train" and counts["val"]:
            noisy = local.evaluate("val", noisy_input=True)
            metrics.update({f"noisy-val-{name}": noisy[name] for name in ("loss", "psnr", "ssim")})
        reply_message = reply(message, metrics)
        # The site's name is not a metric; a config record carries it.
        from flwr.app import ConfigRecord

        reply_message.content["site"] = ConfigRecord({"name": local.site.name, "role": local.site.role})
        return reply_message

    @app.train()
    def train(message: Message, context: Context) -> Message:
        local = site_for(message, context)
        config = message.content[CONFIG_RECORD]
        state = message.content[ARRAYS_RECORD].to_torch_state_dict()
        local.load_weights(state)
        keep = json.loads(str(config[RECIPE_KEY])).get("local_optimizer") == "keep"
        saved = None
        if keep and OPTIMIZER_STATE_KEY in context.state:
            saved = context.state[OPTIMIZER_STATE_KEY].to_torch_state_dict()
        metrics, optimizer_state = local.train_round(
            int(config["server-round"]),
            proximal_mu=float(config.get("proximal-mu", 0.0)),
            optimizer_state=saved,
        )
        if keep:  # stays on the site, in its own Flower context
            context.state[OPTIMIZER_STATE_KEY] = ArrayRecord(optimizer_state)
        metrics[WEIGHT_KEY] = local.counts()["train"]
        with torch.no_grad():
            weights = local.weights()
        return reply(message, metrics, weights)

    @app.evaluate()
    def evaluate(message: Message, context: Context) -> Message:
        local = site_for(message, context)
        config = message.content[CONFIG_RECORD]
        split = str(config.get("split", "val"))
        local.load_weights(message.content[ARRAYS_RECORD].to_torch_state_dict())
        means = local.evaluate(split)
        metrics = {name: means[name] for name in ("loss", "psnr", "ssim")}
        metrics["eval_seconds"] = means["seconds"]
        metrics[WEIGHT_KEY] = means["images"]
        return reply(message, metrics)

    return app
