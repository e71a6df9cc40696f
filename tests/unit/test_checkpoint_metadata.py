"""`CheckpointMetadata`: one builder for the trainer and the federated server, and a `to_dict()` that is
exactly the JSON checkpoints have always held, so files written before the type existed still load."""

from __future__ import annotations

import ast
import json
import types
from pathlib import Path

import pytest

from meddenoise.config import config_from_mapping, config_to_dict, load_config
from meddenoise.engine import checkpoint as ckpt
from meddenoise.engine.checkpoint import CheckpointMetadata
from meddenoise.engine.config import TrainConfig
from meddenoise.federated.config import FederatedConfig, local_train_config
from meddenoise.federated.server import FederatedServer
from meddenoise.models.spec import ModelSpec
from meddenoise.noise.spec import NoiseSpec

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "meddenoise"
# the trainer's metadata keys as its dict literal wrote them before the type existed
TRAINER_KEYS = [
    "format_version", "kind", "model", "model_spec", "model_options", "noise", "target", "weights", "epoch",
    "epochs_from", "global_step", "step_in_epoch", "val_loss", "strategy", "config", "input_profile",
]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from conftest import write_tiny_prepared
    from meddenoise.engine.train import fit

    root = tmp_path_factory.mktemp("meta")
    data = write_tiny_prepared(root / "data", n=16, size=16, patients=8)
    options = {
        "data": str(data), "out": str(root / "run"), "model": "dncnn", "base_channels": 4,
        "model_options": ["num_layers=3"], "norm": "group", "target": "r2r", "target_options": ["samples=2"],
        "noise_std": 0.2, "epochs": 1, "batch_size": 8, "device": "cpu", "quiet": True,
        "evaluate_test": False, "ema_decay": 0.9,
    }  # fmt: skip
    return fit(config_from_mapping(TrainConfig, options))


@pytest.mark.parametrize("name", ["best", "last"])
def test_a_trained_runs_metadata_round_trips_to_the_dict_in_its_file(tiny_run, name):
    _, written = ckpt.load_weights(tiny_run / "checkpoints" / f"{name}.safetensors")
    assert list(written) == TRAINER_KEYS  # the on-disk layout, in its order
    metadata = CheckpointMetadata.from_dict(written)
    assert metadata.to_dict() == written
    assert json.dumps(metadata.to_dict(), default=str) == json.dumps(written, default=str)
    # what the trainer's dict literal held before the type existed
    config = load_config(TrainConfig, tiny_run / "config.json")
    spec = config.model_spec()
    assert written["kind"] == name and written["format_version"] == ckpt.FORMAT_VERSION
    assert written["model"] == spec.name and written["model_spec"] == spec.to_dict()
    assert written["model_options"] == spec.build_options() and written["noise"] == config.noise.to_dict()
    assert written["target"] == "r2r" and written["weights"] == "ema" and written["epochs_from"] == 1
    assert written["strategy"] == "single" and written["config"]["target_options"] == ["samples=2"]
    assert written["input_profile"] and written["epoch"] == 1
    assert metadata.model_name == "dncnn" and metadata.target_options == ["samples=2"]


def test_load_trained_model_returns_the_metadata_with_the_file_it_read(tiny_run):
    model, metadata = ckpt.load_trained_model(tiny_run)
    assert isinstance(metadata, CheckpointMetadata) and metadata.kind == "best"
    assert metadata.checkpoint == str(tiny_run / "checkpoints" / "best.safetensors")
    assert metadata.noise == NoiseSpec(std=0.2) and metadata.model_spec.options == {"num_layers": 3}
    with pytest.raises(AttributeError):
        metadata.epoch = 7  # frozen


def test_the_federated_server_builds_the_dict_it_always_wrote(tmp_path):
    config = config_from_mapping(
        FederatedConfig, {"out": str(tmp_path / "fed"), "data": "d", "sites": 2, "model": "dncnn"}
    )
    train_config = local_train_config(config, data="d", out=str(tmp_path / "fed"))
    server = types.SimpleNamespace(config=config, train_config=train_config)
    built = FederatedServer._metadata(server, "best", 3, 0.25)
    spec = train_config.model_spec()
    before = {  # the server's dict literal before the type existed
        "format_version": ckpt.FORMAT_VERSION,
        "kind": "best",
        "model": train_config.model,
        "model_spec": spec.to_dict(),
        "model_options": spec.build_options(),
        "epochs_from": 1,
        "noise": train_config.noise.to_dict(),
        "target": train_config.target,
        "weights": "raw",
        "epoch": 3,
        "round": 3,
        "global_step": 3,
        "val_loss": 0.25,
        "strategy": f"federated-{config.strategy}",
        "config": config_to_dict(train_config),
        "federated": config_to_dict(config),
    }
    assert built.to_dict() == before and list(built.to_dict()) == list(before)
    again = CheckpointMetadata.from_dict(json.loads(json.dumps(before, default=str)))
    assert again == built and again.to_dict() == before and again.is_federated


def test_older_metadata_still_reads():
    spec = ModelSpec("unet", base_channels=4, depth=3, norm="group")
    old = {"model": "unet", "model_options": spec.build_options(), "epoch": 1, "noise": {"std": 0.3}}
    metadata = CheckpointMetadata.from_dict(old)
    assert metadata.model_spec == spec and metadata.noise == NoiseSpec(std=0.3)
    assert metadata.epochs_from is None and metadata.counted_from_one().epoch == 2
    assert metadata.target == "clean" and metadata.weights == "raw" and metadata.config == {}


def _src_files():
    for path in sorted(PACKAGE.rglob("*.py")):
        yield path, ast.parse(path.read_text(encoding="utf-8"))


def test_only_the_checkpoint_module_builds_checkpoint_metadata():
    """No second dict literal of checkpoint metadata, and no construction outside `for_run` / `from_dict`."""
    literals, constructions = [], []
    for path, tree in _src_files():
        for node in ast.walk(tree):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if "epochs_from" in keys or {"model_spec", "model_options"} <= keys:
                    literals.append(f"{path.name}:{node.lineno}")
            elif isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if name == "CheckpointMetadata" and path.name != "checkpoint.py":
                    constructions.append(f"{path.name}:{node.lineno}")
    assert len(literals) == 1 and literals[0].startswith("checkpoint.py:"), literals
    assert not constructions, constructions
