"""The ServerApp: the round loop around a Flower strategy, and the run folder.

Per round: the strategy samples training sites and builds the train messages (global weights + the recipe)
-> sites train -> the strategy aggregates their weights -> every training site scores the new global model
on its validation images -> image-weighted means are the global validation metrics -> checkpoints. The loop
calls the strategy's configure / aggregate steps itself (rather than `Strategy.start`) so that every round
is checkpointed and a killed server continues from its last completed round.

The server only ever holds weights and per-site aggregates (means and counts); it never receives an image
or a per-image value. Run folder: config.json, sites.json, split.csv, metrics.jsonl (one record per round),
summary.csv, test_summary.json, checkpoints/{best,last}.safetensors and last.state.pt, train.log.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch

from meddenoise.config import config_to_dict, save_config
from meddenoise.engine import checkpoint as ckpt
from meddenoise.engine.identity import check_identity
from meddenoise.engine.run_files import RunLog, csv_text
from meddenoise.errors import MeddenoiseError
from meddenoise.federated.client import (
    ARRAYS_RECORD,
    CONFIG_RECORD,
    METRICS_RECORD,
    RECIPE_KEY,
    WEIGHT_KEY,
)
from meddenoise.federated.config import LOCAL_TRAIN_FIELDS, FederatedConfig, local_train_config
from meddenoise.federated.sites import Site
from meddenoise.federated.strategies import build_strategy, restore_strategy_state, strategy_state
from meddenoise.fileio import atomic_write_json, atomic_write_text, ensure_writable_dir
from meddenoise.rundir import RunDir

# Settings that may change when a run is resumed (the rest must match the original run).
RESUMABLE_FIELDS = (
    "out",  # a run folder moved elsewhere still resumes, as `train --resume` does
    "rounds",
    "resume",
    "quiet",
    "print_config",
    "evaluate_test",
    "sim_cpus",
    "sim_memory_mb",
    "device",
    "flower_app",
)
NODE_WAIT_SECONDS = 600.0
PULL_INTERVAL_SECONDS = 0.01
REPLY_TIMEOUT_SECONDS = 24 * 3600.0


def payload_bytes(content: Any) -> int:
    """Bytes of a message's records (arrays, metrics, configs); transport framing is not counted."""
    return int(sum(record.count_bytes() for record in content.values()))


class SiteGrid:
    """The Grid as the strategy sees it: only the training sites' nodes, in a fixed order (by site name),
    with every message's payload counted."""

    def __init__(self, grid: Any, node_ids: list[int]) -> None:
        self.grid, self.node_ids = grid, list(node_ids)
        self.sent = self.received = 0
        # The simulation's in-memory grid looks for replies every 0.1 s (its `pull_interval`); polling more
        # often costs nothing next to a round and takes most of that wait off every exchange.
        if isinstance(getattr(grid, "pull_interval", None), float):
            grid.pull_interval = min(grid.pull_interval, PULL_INTERVAL_SECONDS)

    def get_node_ids(self) -> list[int]:
        return list(self.node_ids)

    def send_and_receive(self, messages: list[Any], timeout: float = REPLY_TIMEOUT_SECONDS) -> list[Any]:
        messages = list(messages)
        self.sent += sum(payload_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        self.received += sum(payload_bytes(r.content) for r in replies if not r.has_error())
        return replies


class FederatedServer:
    def __init__(self, config: FederatedConfig, sites: list[Site] | None, sequential_sites: bool) -> None:
        self.config = config
        self.sites = sites  # known in simulation; in deployment the sites describe themselves
        self.sequential_sites = sequential_sites
        self.out = Path(config.out)
        self.run_dir = RunDir(self.out)
        self.paths = ckpt.checkpoint_paths(self.out)
        self._check_fresh_or_resumable()
        ensure_writable_dir(self.out, what="run folder", parameter="out")
        self.log = RunLog(self.run_dir.log_file, True)
        self.train_config = local_train_config(config, data=config.reference_data, out=str(self.out))
        self.recipe_json = json.dumps(self._recipe(), sort_keys=True)
        self.history: list[dict[str, Any]] = []
        self.best_val_loss, self.best_round, self.start_round = math.inf, 0, 1

    # -- set-up ---------------------------------------------------------------------------------------------
    def _check_fresh_or_resumable(self) -> None:
        has_state = self.paths["last_state"].is_file()
        if self.config.resume and not has_state:
            raise MeddenoiseError(
                f"resume: {self.out} has no completed round to continue from", parameter="resume"
            )
        if not self.config.resume and has_state:
            raise MeddenoiseError(
                f"{self.out} already holds a run; turn resume on to continue it or choose another output "
                "folder (out)",
                parameter="resume",
            )

    def _recipe(self) -> dict[str, Any]:
        """What every site is told: the local-training settings (no data locations: sites know their own)."""
        config = self.config
        train = {name: getattr(config, name) for name in LOCAL_TRAIN_FIELDS}
        train["noise"] = config.noise.to_dict()
        return {
            "train": json.loads(json.dumps(train)),
            "local_epochs": config.local_epochs,
            "local_steps": config.local_steps,
            "rounds": config.rounds,
            "local_optimizer": config.local_optimizer,
            "test_site": self._test_site_name(),
        }

    def _test_site_name(self) -> str:
        if not self.config.test_site or self.sites is None:
            return self.config.test_site
        held_out = [s.name for s in self.sites if s.role == "test"]
        return held_out[0] if held_out else ""

    def _identity(self) -> dict[str, Any]:
        values = config_to_dict(self.config)
        return {k: v for k, v in values.items() if k not in RESUMABLE_FIELDS}

    def _message(self, grid: Any, node_id: int, kind: str, arrays: Any = None, **config: Any) -> Any:
        from flwr.app import ConfigRecord, Message, RecordDict

        content = RecordDict({CONFIG_RECORD: ConfigRecord({RECIPE_KEY: self.recipe_json, **config})})
        if arrays is not None:
            content[ARRAYS_RECORD] = arrays
        return Message(content=content, dst_node_id=node_id, message_type=kind)

    def describe_sites(self, grid: Any) -> dict[int, dict[str, Any]]:
        """Ask every node which site it is and what it holds (counts and noisy-input validation means)."""
        from flwr.app import MessageType

        expected = self.config.site_count
        waited = time.perf_counter()
        while len(node_ids := sorted(grid.get_node_ids())) < expected:
            if time.perf_counter() - waited > NODE_WAIT_SECONDS:
                raise MeddenoiseError(
                    f"only {len(node_ids)} of {expected} sites connected within {NODE_WAIT_SECONDS:.0f} s"
                )
            time.sleep(1.0)
        replies = grid.send_and_receive(
            [self._message(grid, n, MessageType.QUERY) for n in node_ids], timeout=REPLY_TIMEOUT_SECONDS
        )
        described = {}
        for reply in replies:
            self._raise_on_error(reply, "describe")
            site = reply.content["site"]
            metrics = dict(reply.content[METRICS_RECORD])
            described[reply.metadata.src_node_id] = {
                "name": str(site["name"]),
                "role": str(site["role"]),
                **metrics,
            }
        names = [d["name"] for d in described.values()]
        if len(set(names)) < len(names):
            raise MeddenoiseError(
                f"two sites have the same name ({', '.join(sorted(names))}); name them apart"
            )
        for info in described.values():
            if info["role"] == "train" and (info["train-images"] < 1 or info["val-images"] < 1):
                raise MeddenoiseError(
                    f"site {info['name']} has {int(info['train-images'])} training and "
                    f"{int(info['val-images'])} validation images; every training site needs both"
                )
        if self.config.test_site and not any(d["role"] == "test" for d in described.values()):
            raise MeddenoiseError(
                f"test_site {self.config.test_site!r} is not among the connected sites", parameter="test_site"
            )
        return described

    def _raise_on_error(self, reply: Any, stage: str) -> None:
        if reply.has_error():
            raise MeddenoiseError(
                f"a site failed during {stage} (node {reply.metadata.src_node_id}): {reply.error.reason}"
            )

    # -- weights and checkpoints ---------------------------------------------------------------------------
    def initial_weights(self) -> dict[str, torch.Tensor]:
        torch.manual_seed(self.config.seed)  # the same initial weights as `meddenoise train --seed`
        model = self.train_config.model_spec().build()
        return ckpt.plain_state_dict(model)

    def _metadata(self, kind: str, server_round: int, val_loss: float | None) -> ckpt.CheckpointMetadata:
        # a round stands for an epoch (from 1) in evaluate and the report, and for the step count
        return ckpt.CheckpointMetadata.for_run(
            kind,
            self.train_config,
            epoch=server_round,
            global_step=server_round,
            val_loss=val_loss,
            strategy=f"federated-{self.config.strategy}",
            federated=self.config,
        )

    def _weights_payload(self, state: dict[str, torch.Tensor], metadata: ckpt.CheckpointMetadata) -> bytes:
        model = metadata.model_spec.build()
        ckpt.load_state_into(model, state, "the aggregated global model")
        return ckpt.weights_payload(model, metadata)

    def save_round(
        self, server_round: int, state: dict[str, torch.Tensor], strategy: Any, val_loss: float
    ) -> None:
        files = []
        if val_loss < self.best_val_loss:
            self.best_val_loss, self.best_round = val_loss, server_round
            metadata = self._metadata("best", server_round, val_loss)
            files.append((self.paths["best_weights"], self._weights_payload(state, metadata)))
        last = self._weights_payload(state, self._metadata("last", server_round, val_loss))
        files.append((self.paths["last_weights"], last))
        # The state file is the commit point of a round (written last); metrics.jsonl follows from it.
        server_state = {
            "round": server_round,
            "model": {k: v.contiguous() for k, v in state.items()},
            "strategy": strategy_state(strategy),
            "best_val_loss": self.best_val_loss,
            "best_round": self.best_round,
            "history": json.dumps(self.history),
            "identity": json.dumps(self._identity(), sort_keys=True),
        }
        files.append((self.paths["last_state"], ckpt.training_state_payload(server_state)))
        ckpt.write_checkpoint_files(self.out, files)
        self.run_dir.write_metrics(self.history)

    def restore(self, strategy: Any) -> dict[str, torch.Tensor]:
        source = self.paths["last_state"]
        state = ckpt.load_training_state(source)
        check_identity(json.loads(state["identity"]), self._identity(), source)
        restore_strategy_state(strategy, state["strategy"])
        self.best_val_loss, self.best_round = float(state["best_val_loss"]), int(state["best_round"])
        self.start_round = int(state["round"]) + 1
        self.history = json.loads(state["history"])
        self.log.info(f"resumed from {source}: round {self.start_round} of {self.config.rounds}")
        return state["model"]

    # -- the rounds -----------------------------------------------------------------------------------------
    def run(self, grid: Any) -> None:
        from flwr.app import ArrayRecord, ConfigRecord

        config = self.config
        save_config(config, self.run_dir.config_file)
        described = self.describe_sites(grid)
        self._write_sites(described)
        train_nodes = sorted(
            (n for n, d in described.items() if d["role"] == "train"), key=lambda n: described[n]["name"]
        )
        strategy = build_strategy(
            config.strategy,
            fraction=config.fraction,
            train_sites=len(train_nodes),
            proximal_mu=config.proximal_mu if config.strategy == "fedprox" else 0.0,
            server_lr=config.server_lr,
            server_tau=config.server_tau,
        )
        state = self.restore(strategy) if config.resume else self.initial_weights()
        noisy = _weighted(
            [described[n] for n in train_nodes],
            "val-images",
            ("noisy-val-loss", "noisy-val-psnr", "noisy-val-ssim"),
        )
        site_grid = SiteGrid(grid, train_nodes)
        for server_round in range(self.start_round, config.rounds + 1):
            started = time.perf_counter()
            sent, received = site_grid.sent, site_grid.received
            # Flower samples sites with Python's `random`; seeding it per round makes the choice reproducible.
            random.seed(config.seed * 1_000_003 + server_round)
            arrays = ArrayRecord(state)
            messages = strategy.configure_train(
                server_round, arrays, ConfigRecord({RECIPE_KEY: self.recipe_json}), site_grid
            )
            replies = self._sorted(site_grid.send_and_receive(messages), described, "training")
            train_wall = time.perf_counter() - started
            new_arrays, _ = strategy.aggregate_train(server_round, replies)
            if new_arrays is None:
                raise MeddenoiseError(f"round {server_round}: no site returned weights")
            state = {k: v.clone() for k, v in new_arrays.to_torch_state_dict().items()}
            eval_started = time.perf_counter()
            evaluate = strategy.configure_evaluate(
                server_round,
                ArrayRecord(state),
                ConfigRecord({RECIPE_KEY: self.recipe_json, "split": "val"}),
                site_grid,
            )
            eval_replies = self._sorted(site_grid.send_and_receive(evaluate), described, "validation")
            validation = strategy.aggregate_evaluate(server_round, eval_replies)
            eval_wall = time.perf_counter() - eval_started
            record = self._round_record(
                server_round, replies, eval_replies, dict(validation), described, noisy
            )
            round_seconds = time.perf_counter() - started  # checkpoint writing not included
            record.update(self._timing(record, round_seconds, train_wall, eval_wall))
            record.update(bytes_sent=site_grid.sent - sent, bytes_received=site_grid.received - received)
            self.history.append(record)
            self.save_round(server_round, state, strategy, record["val_loss"])
            self.log.info(_round_line(record, config.rounds))
        test = self.evaluate_test(grid, described) if config.evaluate_test else None
        self._write_summary(noisy, test)

    def _sorted(self, replies: list[Any], described: dict, stage: str) -> list[Any]:
        for reply in replies:
            self._raise_on_error(reply, stage)
        # A fixed order makes the floating-point sums of the aggregation the same on every run.
        return sorted(replies, key=lambda r: described[r.metadata.src_node_id]["name"])

    def _round_record(
        self,
        server_round: int,
        replies: list,
        eval_replies: list,
        validation: dict,
        described: dict,
        noisy: dict,
    ) -> dict[str, Any]:
        per_site: dict[str, dict[str, float]] = {}
        for reply in replies:
            metrics = dict(reply.content[METRICS_RECORD])
            per_site[described[reply.metadata.src_node_id]["name"]] = {
                "train_loss": metrics["train_loss"],
                "train_images": int(metrics[WEIGHT_KEY]),
                "steps": int(metrics["steps"]),
                "train_seconds": metrics["train_seconds"],
            }
        for reply in eval_replies:
            metrics = dict(reply.content[METRICS_RECORD])
            entry = per_site.setdefault(described[reply.metadata.src_node_id]["name"], {})
            entry.update({f"val_{k}": metrics[k] for k in ("loss", "psnr", "ssim")})
            entry["val_images"] = int(metrics[WEIGHT_KEY])
            entry["eval_seconds"] = metrics["eval_seconds"]
        trained = [s for s in per_site.values() if "train_loss" in s]
        images = sum(s["train_images"] for s in trained)
        return {
            "round": server_round,
            "epoch": server_round,
            "sites": sorted(s for s, v in per_site.items() if "train_loss" in v),
            "train_loss": sum(s["train_loss"] * s["train_images"] for s in trained) / max(1, images),
            "train_images": images,
            "steps": sum(s["steps"] for s in trained),
            "val_loss": validation["loss"],
            "val_psnr": validation["psnr"],
            "val_ssim": validation["ssim"],
            "val_images": sum(s.get("val_images", 0) for s in per_site.values()),
            "noisy_val_psnr": noisy.get("noisy-val-psnr"),
            "noisy_val_ssim": noisy.get("noisy-val-ssim"),
            "site_metrics": per_site,
        }

    def _timing(self, record: dict, round_seconds: float, train_wall: float, eval_wall: float) -> dict:
        """Wall times of the round and its two exchanges, the sites' own compute, and the rest (Flower's
        messaging, serialisation and aggregation, and Ray's scheduling in simulation)."""
        sites = record["site_metrics"].values()
        # Sites run one after another in a one-CPU simulation (their times add up), else side by side.
        combine = sum if self.sequential_sites else max
        local_train = combine(s.get("train_seconds", 0.0) for s in sites)
        local_eval = combine(s.get("eval_seconds", 0.0) for s in sites)
        return {
            "round_seconds": round_seconds,
            "train_seconds": train_wall,
            "val_seconds": eval_wall,
            "local_train_seconds": local_train,
            "local_eval_seconds": local_eval,
            "flower_overhead_seconds": max(0.0, round_seconds - local_train - local_eval),
        }

    # -- after the rounds -----------------------------------------------------------------------------------
    def evaluate_test(self, grid: Any, described: dict) -> dict[str, Any]:
        """Score the best global model on the global test set: each holding site reports its means."""
        from flwr.app import ArrayRecord, MessageType

        tensors, _ = ckpt.load_weights(self.paths["best_weights"])
        holders = [n for n, d in described.items() if d["test-images"] > 0]
        if any(d["role"] == "test" for d in described.values()):
            holders = [n for n in holders if described[n]["role"] == "test"]
        messages = [
            self._message(grid, n, MessageType.EVALUATE, ArrayRecord(tensors), split="test") for n in holders
        ]
        replies = self._sorted(
            list(grid.send_and_receive(messages, timeout=REPLY_TIMEOUT_SECONDS)), described, "test"
        )
        per_site = {}
        for reply in replies:
            metrics = dict(reply.content[METRICS_RECORD])
            per_site[described[reply.metadata.src_node_id]["name"]] = {
                "images": int(metrics[WEIGHT_KEY]),
                **{k: metrics[k] for k in ("loss", "psnr", "ssim")},
            }
        pooled = _weighted(list(per_site.values()), "images", ("loss", "psnr", "ssim"))
        result = {
            "best_round": self.best_round,
            "images": sum(s["images"] for s in per_site.values()),
            **pooled,
            "sites": per_site,
        }
        atomic_write_json(self.out / "test_summary.json", result)
        self.log.info(
            f"test ({result['images']} images at {len(per_site)} site(s), best round {self.best_round}): "
            f"PSNR {pooled['psnr']:.2f} dB, SSIM {pooled['ssim']:.4f}"
        )
        return result

    def _write_sites(self, described: dict[int, dict[str, Any]]) -> None:
        table = sorted(described.values(), key=lambda d: d["name"])
        atomic_write_json(self.out / "sites.json", {"sites": table})
        if self.sites is not None:
            atomic_write_text(self.run_dir.split_file, _split_table(self.sites))

    def _amp_used(self) -> str:
        """The mixed precision the sites ran: simulated sites share this machine, so "auto" resolves here as
        in `train` (off on a CPU); deployed sites resolve it on their own hardware, so it stays as asked."""
        if self.sites is None or self.train_config.amp != "auto":
            return self.train_config.amp
        from meddenoise.engine.runtime import resolve_amp, resolve_device

        return resolve_amp("auto", resolve_device(self.train_config.device))

    def _write_summary(self, noisy: dict[str, float], test: dict[str, Any] | None) -> None:
        best = next((r for r in self.history if r["round"] == self.best_round), {})
        row = {
            "model": self.train_config.model,
            "strategy": f"federated-{self.config.strategy}",
            "world_size": "",
            "device": self.train_config.device,
            "amp": self._amp_used(),
            "target": self.train_config.target,
            "noise_std": self.train_config.noise.std,
            "noise_mean": self.train_config.noise.mean,
            "sites": len({s for r in self.history for s in r["sites"]}),
            "rounds_run": len(self.history),
            "best_round": self.best_round,
            "best_val_loss": best.get("val_loss"),
            "best_val_psnr": best.get("val_psnr"),
            "best_val_ssim": best.get("val_ssim"),
            "noisy_val_psnr": noisy.get("noisy-val-psnr"),
            "noisy_val_ssim": noisy.get("noisy-val-ssim"),
            "test_psnr": test["psnr"] if test else None,
            "test_ssim": test["ssim"] if test else None,
            "test_images": test["images"] if test else None,
            "train_seconds": sum(r["train_seconds"] for r in self.history),
            "val_seconds": sum(r["val_seconds"] for r in self.history),
            "flower_overhead_seconds": sum(r["flower_overhead_seconds"] for r in self.history),
            "megabytes_sent": sum(r["bytes_sent"] for r in self.history) / 1e6,
            "megabytes_received": sum(r["bytes_received"] for r in self.history) / 1e6,
        }
        atomic_write_text(self.run_dir.summary_file, csv_text([row]))


def _weighted(rows: list[dict[str, Any]], weight: str, names: tuple[str, ...]) -> dict[str, float]:
    total = sum(float(r.get(weight, 0)) for r in rows)
    if not total:
        return {}
    return {
        name: sum(float(r[name]) * float(r[weight]) for r in rows) / total
        for name in names
        if all(name in r for r in rows)
    }


def _split_table(sites: list[Site]) -> str:
    """split.csv of the run: every image a site holds, with the site and the split it plays there."""
    from meddenoise.data.cache import load_prepared
    from meddenoise.federated.sites import site_rows
    from meddenoise.rundir import SPLIT_COLUMNS

    rows = []
    for site in sites:
        data = load_prepared(site.data)
        for split in ("train", "val", "test"):
            for r in site_rows(site, data.records, data.splits, split):
                record = data.records[r]
                rows.append(
                    {**{c: record.get(c, "") for c in SPLIT_COLUMNS}, "split": split, "site": site.name}
                )
    return csv_text(rows, [*SPLIT_COLUMNS, "site"])


def _round_line(record: dict[str, Any], rounds: int) -> str:
    return (
        f"round {record['round']}/{rounds} ({len(record['sites'])} site(s)): "
        f"train loss {record['train_loss']:.5f}, val loss {record['val_loss']:.5f}, "
        f"val PSNR {record['val_psnr']:.2f} dB, SSIM {record['val_ssim']:.4f}, "
        f"{record['round_seconds']:.1f} s (Flower {record['flower_overhead_seconds']:.1f} s), "
        f"{(record['bytes_sent'] + record['bytes_received']) / 1e6:.2f} MB"
    )


def make_server_app(
    config: FederatedConfig, sites: list[Site] | None = None, *, sequential_sites: bool = False
):
    from flwr.serverapp import ServerApp

    app = ServerApp()

    @app.main()
    def main(grid: Any, context: Any) -> None:
        FederatedServer(config, sites, sequential_sites).run(grid)

    return app
