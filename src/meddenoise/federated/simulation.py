"""Running a federation on one machine with Flower's simulation engine (Ray underneath).

Sites are virtual SuperNodes whose ClientApp runs in Ray worker processes; the ServerApp runs in this
process. Ray gets `--sim-cpus` CPUs (one site trains at a time with 1) and is always shut down afterwards.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path

from meddenoise.federated.config import FederatedConfig
from meddenoise.federated.sites import Site, choose_test_site, partition_folder, sites_from_folders


def build_sites(config: FederatedConfig) -> list[Site]:
    if config.site_data:
        sites = sites_from_folders(config.site_data)
    else:
        from meddenoise.data.cache import load_prepared

        data = load_prepared(config.data)
        sites = partition_folder(
            data, config.data, config.sites, config.partition, alpha=config.alpha, seed=config.partition_seed
        )
    return choose_test_site(sites, config.test_site)


def backend_config(config: FederatedConfig) -> dict:
    import torch

    use_gpu = config.device != "cpu" and torch.cuda.is_available()
    init_args: dict = {
        "num_cpus": config.sim_cpus,
        "num_gpus": 1 if use_gpu else 0,
        "include_dashboard": False,
        "logging_level": logging.ERROR if config.quiet else logging.WARNING,
        "log_to_driver": not config.quiet,
    }
    if config.sim_memory_mb:
        init_args["object_store_memory"] = config.sim_memory_mb * 2**20
    # One CPU per site process; on a GPU, sites share it one after another.
    resources = {"num_cpus": 1, "num_gpus": 1.0 if use_gpu else 0.0}
    return {"client_resources": resources, "init_args": init_args}


def simulate(config: FederatedConfig) -> Path:
    from flwr.simulation import run_simulation

    from meddenoise.fileio import ensure_writable_dir
    from meddenoise.locking import folder_lock

    # one writer per run folder, as `train`: a second federation aimed at it stops before starting
    with folder_lock(ensure_writable_dir(config.out, what="run folder", parameter="out")):
        return _simulate(config, run_simulation)


def _simulate(config: FederatedConfig, run_simulation) -> Path:
    from meddenoise.federated.client import make_client_app
    from meddenoise.federated.server import make_server_app

    sites = build_sites(config)
    server_app = make_server_app(config, sites, sequential_sites=config.sim_cpus == 1)
    client_app = make_client_app(sites)
    flower_logger = logging.getLogger("flwr")
    level = flower_logger.level
    # Flower logs every message exchange at INFO; --quiet also hides its warnings (errors still show).
    flower_logger.setLevel(logging.ERROR if config.quiet else logging.WARNING)
    # Ray's workers inherit the environment: one intra-op thread each unless the user asked otherwise.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # Devices are chosen by --device (and the GPUs Ray is given), not by Ray hiding them from its workers.
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    # Ray's session files (logs, sockets, spilled objects) go to a folder of this run, removed afterwards,
    # instead of piling up in Ray's shared default. Short and under the system's temporary folder: Ray's
    # unix sockets live there, and a socket path may not exceed about 100 characters.
    # Named after the run folder: a federation killed before its cleanup leaves its folder, and resuming
    # that run (or starting it again) removes it first.
    digest = hashlib.sha1(str(Path(config.out).resolve()).encode("utf-8")).hexdigest()[:12]
    ray_temp = Path(tempfile.gettempdir()) / f"mdnray-{digest}"
    remove_when_released(ray_temp, seconds=0.0)
    ray_temp.mkdir(parents=True, exist_ok=True)
    ray_temp = str(ray_temp)
    settings = backend_config(config)
    settings["init_args"]["_temp_dir"] = ray_temp
    try:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=len(sites),
            backend_config=settings,
        )
    finally:
        flower_logger.setLevel(level)
        shutdown_ray()
        remove_when_released(Path(ray_temp))
    return Path(config.out)


def remove_when_released(folder: Path, seconds: float = 15.0) -> None:
    """Remove Ray's session folder; its helper processes may still write logs for a moment after
    `ray.shutdown()` returns, so removal is retried until the folder stays gone (or `seconds` pass)."""
    deadline = time.monotonic() + seconds
    while True:
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists() or time.monotonic() > deadline:
            return
        time.sleep(0.2)


def shutdown_ray() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()
