"""`FederatedConfig`: every option of `meddenoise federated`.

The local-training options (model, noise, target, optimizer, batch size, ...) are the same fields as
`meddenoise train`'s, declared here by name from `TrainConfig` so their help texts and defaults stay in step.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from meddenoise.config import option, print_config_option, quiet_option
from meddenoise.engine.config import MODEL_FIELDS, TrainConfig
from meddenoise.errors import ConfigError
from meddenoise.noise.spec import NoiseSpec

PARTITIONS = ("iid", "by-source", "dirichlet")
# The --strategy choices without importing Flower; tests keep them equal to `strategies.STRATEGIES`.
STRATEGY_CHOICES = ("fedavg", "fedprox", "fedadam", "fedyogi")
LOCAL_OPTIMIZER_STATES = ("reset", "keep")

DEPLOYMENT_DATA = "(sites)"
_TRAIN_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}


def _same_as_train(name: str) -> Any:
    """An option declared exactly like `meddenoise train`'s option of the same name."""
    field = _TRAIN_FIELDS[name]
    default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
    return option(
        default, field.metadata["help"], choices=field.metadata.get("choices"), **field.metadata["bounds"]
    )


# The options a site's local training shares with `meddenoise train` (copied into the site's TrainConfig).
LOCAL_TRAIN_FIELDS = (
    *MODEL_FIELDS,
    "noise",
    "target",
    "target_options",
    "batch_size",
    "val_batch_size",
    "lr",
    "optimizer",
    "weight_decay",
    "loss",
    "lr_schedule",
    "warmup_steps",
    "grad_clip",
    "seed",
    "device",
    "amp",
    "limit_train",
    "limit_val",
)


@dataclass
class FederatedConfig:
    # -- sites ---------------------------------------------------------------------------------------------
    out: str = option("", "run folder to create (or to continue with --resume)", required=True)
    site_data: list[str] = option([], "one prepared folder per site (e.g. two hospitals and a public set)")
    data: str = option("", "one prepared folder to partition into --sites sites (instead of --site-data)")
    sites: int = option(0, "with --data: number of sites to partition the folder into")
    partition: str = option(
        "iid",
        "with --data: iid (split groups, i.e. patients, dealt at random), by-source (one site per source), "
        "dirichlet (site shares of each stratum drawn from Dirichlet(alpha); strata are sources, or "
        "brightness quartiles of the groups with one source). A group (patient) is never split across sites",
        choices=PARTITIONS,
    )
    alpha: float = option(
        0.5, "dirichlet partition: concentration (0.1: very uneven sites, 100: near iid)", gt=0
    )
    partition_seed: int = option(0, "seed of the partition")
    test_site: str = option(
        "",
        "hold this site out entirely (name or 1-based number): it never trains, and all its images form the "
        "global test set (default: the union of every site's test split)",
    )
    # -- federation ----------------------------------------------------------------------------------------
    rounds: int = option(10, "federated rounds")
    local_epochs: int = option(1, "local epochs per round at each site (ignored when --local-steps > 0)")
    local_steps: int = option(0, "local optimizer steps per round at each site (0: use --local-epochs)")
    fraction: float = option(1.0, "fraction of the training sites sampled each round")
    strategy: str = option(
        "fedavg",
        "Flower server strategy: fedavg (weighted by site training images), fedprox (adds a proximal "
        "term mu/2 ||w - w_global||^2 to the local loss), fedadam or fedyogi (adaptive server optimizer)",
        choices=STRATEGY_CHOICES,
    )
    proximal_mu: float = option(0.01, "fedprox: weight of the proximal term")
    server_lr: float = option(0.01, "fedadam / fedyogi: server learning rate (eta)")
    server_tau: float = option(1e-3, "fedadam / fedyogi: adaptivity (tau)")
    local_optimizer: str = option(
        "reset",
        "reset: a fresh local optimizer each round (standard); keep: each site keeps its optimizer state "
        "between rounds, on the site (lost when the federation restarts)",
        choices=LOCAL_OPTIMIZER_STATES,
    )
    flower_app: str = option(
        "",
        "deployment: write a Flower App folder here (for `flwr run`, with these options) and exit; sites "
        "then run SuperNodes with their own data (docs/federated.md)",
    )
    # -- simulation ----------------------------------------------------------------------------------------
    sim_cpus: int = option(1, "simulation: CPUs given to Ray (sites run one after another with 1)")
    sim_memory_mb: int = option(0, "simulation: memory limit of Ray's object store in MB (0: Ray's default)")
    # -- local training (the same options as `meddenoise train`) ------------------------------------------
    model: str = _same_as_train("model")
    base_channels: int = _same_as_train("base_channels")
    depth: int = _same_as_train("depth")
    norm: str = _same_as_train("norm")
    deep_supervision: bool = _same_as_train("deep_supervision")
    model_options: list[str] = _same_as_train("model_options")
    noise: NoiseSpec = _same_as_train("noise")
    target: str = _same_as_train("target")
    target_options: list[str] = _same_as_train("target_options")
    batch_size: int = _same_as_train("batch_size")
    val_batch_size: int = _same_as_train("val_batch_size")
    lr: float = _same_as_train("lr")
    optimizer: str = _same_as_train("optimizer")
    weight_decay: float = _same_as_train("weight_decay")
    loss: str = _same_as_train("loss")
    lr_schedule: str = _same_as_train("lr_schedule")
    warmup_steps: int = _same_as_train("warmup_steps")
    grad_clip: float = _same_as_train("grad_clip")
    seed: int = _same_as_train("seed")
    device: str = _same_as_train("device")
    amp: str = _same_as_train("amp")
    limit_train: int = _same_as_train("limit_train")
    limit_val: int = _same_as_train("limit_val")
    # -- outputs -------------------------------------------------------------------------------------------
    evaluate_test: bool = option(
        True, "evaluate the best global model on the global test set at the end (per-site aggregates)"
    )
    resume: bool = option(False, "continue the run in --out from its last completed round")
    quiet: bool = quiet_option()  # also hides Flower's and Ray's own messages
    print_config: bool = print_config_option()

    def check(self) -> None:
        if self.site_data and self.data:
            raise ConfigError(
                "give either site_data (one folder per site) or data with sites, not both", "data"
            )
        if not self.site_data and self.sites < 1:
            raise ConfigError(f"sites must be >= 1 with data (or in deployment); got {self.sites}", "sites")
        if self.site_data and self.sites not in (0, len(self.site_data)):
            raise ConfigError(
                f"sites = {self.sites} does not match the {len(self.site_data)} folders of site_data", "sites"
            )
        for name in ("rounds", "local_epochs", "batch_size", "val_batch_size", "sim_cpus"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1; got {getattr(self, name)}", name)
        for name in ("local_steps", "proximal_mu", "limit_train", "limit_val", "sim_memory_mb"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0; got {getattr(self, name)}", name)
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1]; got {self.fraction}", "fraction")
        if not self.alpha > 0:
            raise ConfigError(f"alpha must be > 0; got {self.alpha}", "alpha")
        for name in ("server_lr", "server_tau"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0; got {getattr(self, name)}", name)
        # The shared fields are checked by TrainConfig's own rules (lr, choices, KEY=VALUE items, ...).
        local_train_config(self, data=self.reference_data, out=self.out)

    @property
    def reference_data(self) -> str:
        """The prepared folder `evaluate` uses by default: the partitioned folder, the held-out or first site
        folder, or "(sites)" in deployment, where the server never sees a folder."""
        if self.data:
            return self.data
        if self.site_data and self.test_site:
            for index, folder in enumerate(self.site_data):
                if self.test_site in (str(index + 1), Path(folder).resolve().name):
                    return folder
        return self.site_data[0] if self.site_data else DEPLOYMENT_DATA

    @property
    def site_count(self) -> int:
        return len(self.site_data) if self.site_data else self.sites


def local_train_config(config: FederatedConfig, *, data: str, out: str) -> TrainConfig:
    """The `TrainConfig` of one site's local training (and of the checkpoint metadata `evaluate` reads)."""
    from meddenoise.config import config_from_mapping

    values = {name: getattr(config, name) for name in LOCAL_TRAIN_FIELDS}
    values["noise"] = config.noise.to_dict()
    values.update(data=data, out=out, evaluate_test=False, patience=0, quiet=True, epochs=config.rounds)
    return config_from_mapping(TrainConfig, values, source="federated options")
