"""Federated training through Flower's simulation engine (Ray, one CPU), on tiny data.

- one site, full participation, one local epoch per round ends with the weights of centralized training;
- the server receives weights and per-site aggregates only (every reply is inspected);
- a site reads only its own images (data access is spied on while the real ClientApp answers messages);
- a server killed after a completed round resumes from it and ends where an uninterrupted run ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("ray")

from meddenoise.config import config_from_mapping  # noqa: E402
from meddenoise.engine.checkpoint import load_trained_model, load_weights  # noqa: E402
from meddenoise.federated import run_federated  # noqa: E402
from meddenoise.federated.config import FederatedConfig  # noqa: E402
from time_limits import ANSWER, APPEAR, RUN

# The tiny_fit fixture's network and optimisation (tests/conftest.py), so runs compare with centralized ones.
LOCAL = {
    "model": "dncnn",
    "base_channels": 16,
    "model_options": ["num_layers=5"],
    "norm": "group",
    "noise_std": 0.2,
    "batch_size": 8,
    "lr": 2e-3,
    "device": "cpu",
    "quiet": True,
}


def federated_config(out, **options):
    return config_from_mapping(FederatedConfig, {**LOCAL, "out": str(out), **options})


def last_weights(run_dir):
    return load_weights(run_dir / "checkpoints" / "last.safetensors")[0]


def json_rows(path):
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_one_site_one_local_epoch_per_round_is_centralized_training(make_prepared, tiny_fit, tmp_path):
    data = make_prepared(n=32, patients=8)
    central = tiny_fit(data, tmp_path / "central", epochs=3)
    federated = run_federated(
        federated_config(
            tmp_path / "federated",
            site_data=[str(data)],
            rounds=3,
            local_epochs=1,
            local_optimizer="keep",
            evaluate_test=False,
        )
    )
    central_weights, federated_weights = last_weights(central), last_weights(federated)
    assert central_weights.keys() == federated_weights.keys()
    for name, value in central_weights.items():
        torch.testing.assert_close(federated_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    central_epochs = metrics(central)
    for record, epoch in zip(metrics(federated), central_epochs, strict=True):
        assert record["val_loss"] == pytest.approx(epoch["val_loss"], rel=1e-5)
        assert record["train_loss"] == pytest.approx(epoch["train_loss"], rel=1e-5)
    # Evaluation and the report accept the federated run like any other; the report's federated section
    # sets it against the centralized run: identical weights, so no gap and the same number of steps.
    model, metadata = load_trained_model(federated)
    assert metadata.model_name == "dncnn" and metadata.strategy == "federated-fedavg"
    assert metadata.config["data"] == str(data)
    from meddenoise.evaluation.runs import evaluate_run
    from meddenoise.report.build import build_report

    for run in (central, federated):
        evaluate_run(run, device="cpu", heads=False, quiet=True)
    report = build_report(tmp_path)
    (row,) = [r for r in json_rows(tmp_path / "tables" / "federated.csv")]
    assert abs(float(row["psnr_gap"])) < 1e-3 and row["steps"] == row["centralized_steps"]
    assert row["rounds_within_0_5_db"] != "" and "Federated training" in report.markdown.read_text()


class _ReplyRecorder:
    """Wraps the in-memory Grid's send_and_receive (the ServerApp runs in this process): keeps each reply."""

    def __init__(self, monkeypatch):
        from flwr.superlink.grid.inmemory_grid import InMemoryGrid

        self.replies = []
        original = InMemoryGrid.send_and_receive

        def recording(grid, messages, *, timeout=None):
            replies = list(original(grid, messages, timeout=timeout))
            self.replies += replies
            return replies

        monkeypatch.setattr(InMemoryGrid, "send_and_receive", recording)


@pytest.mark.slow
def test_server_receives_only_weights_and_site_aggregates(make_prepared, tmp_path, monkeypatch):
    import glob
    import tempfile

    from meddenoise.models import build_model

    data = make_prepared(n=48, patients=12)
    recorder = _ReplyRecorder(monkeypatch)

    def ray_folders():
        temp = tempfile.gettempdir()
        return set(
            glob.glob(os.path.join(temp, "ray", "session_*")) + glob.glob(os.path.join(temp, "mdnray-*"))
        )

    before = ray_folders()
    run = run_federated(federated_config(tmp_path / "run", data=str(data), sites=3, rounds=2, local_steps=2))
    # Ray's session files went to a folder of this run, removed at its end (issue 23: they piled up in
    # /tmp/ray); compared with before, as other runs on the machine may hold their own
    assert ray_folders() <= before

    parameter_shapes = {
        k: tuple(v.shape)
        for k, v in build_model("dncnn", base_channels=16, num_layers=5, norm="group").state_dict().items()
    }
    sites = json.loads((run / "sites.json").read_text())["sites"]
    test_holders = sum(s["test-images"] > 0 for s in sites)
    assert len(recorder.replies) == 3 + 2 * (3 + 3) + test_holders  # describe, 2 x (train, validate), test
    for reply in recorder.replies:
        assert not reply.has_error(), reply.error.reason
        content = reply.content
        for record in content.array_records.values():  # only model weights, shaped like the model
            assert {k: tuple(v.shape) for k, v in record.items()} == parameter_shapes
        for record in content.metric_records.values():  # one number per name: a mean or a count
            assert all(isinstance(v, (int, float)) for v in record.values()), dict(record)
            assert record["num-examples"] >= 1
        for record in content.config_records.values():  # only the describe reply's name and role
            assert set(record.keys()) == {"name", "role"}
            assert all(isinstance(v, str) for v in record.values())

    records = metrics(run)
    assert [r["round"] for r in records] == [1, 2]
    for record in records:
        assert set(record["site_metrics"]) == {"site1", "site2", "site3"}
        assert record["bytes_sent"] > 3 * 4 * sum(np.prod(s) for s in parameter_shapes.values())
        assert record["bytes_received"] > 0 and record["steps"] == 6
        assert np.isfinite([record["val_loss"], record["val_psnr"], record["val_ssim"]]).all()
    test = json.loads((run / "test_summary.json").read_text())
    assert test["images"] == sum(s["images"] for s in test["sites"].values()) > 0
    assert (run / "checkpoints" / "best.safetensors").is_file()
    split = (run / "split.csv").read_text().splitlines()
    assert split[0].endswith(",site") and len(split) == 1 + 48
    # --amp auto on a CPU ran without AMP: the run must not claim it (the report labels setups from this)
    assert json_rows(run / "summary.csv")[0]["amp"] == "off"


def test_a_site_reads_only_its_own_images(make_prepared, tmp_path, monkeypatch):
    """The real ClientApp answers describe / train / evaluate messages for each site in turn while every
    pixel read from the prepared folder is recorded (in simulation the sites run in Ray workers, where a spy
    cannot follow, so the ClientApp is called directly here)."""
    from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from meddenoise.data import cache
    from meddenoise.federated import client as client_module
    from meddenoise.federated.client import make_client_app
    from meddenoise.federated.server import FederatedServer
    from meddenoise.federated.simulation import build_sites

    data = make_prepared(n=48, patients=12)
    config = federated_config(tmp_path / "run", data=str(data), sites=3, rounds=1, local_steps=2)
    sites = build_sites(config)
    reads: list[np.ndarray] = []

    class SpyImages:
        def __init__(self, images):
            self.images, self.shape, self.dtype = images, images.shape, images.dtype

        def __getitem__(self, index):
            reads.append(np.arange(self.shape[0])[index].reshape(-1))
            return self.images[index]

    original_load = cache.load_prepared

    def spying_load(folder):
        loaded = original_load(folder)
        loaded.images = SpyImages(loaded.images)
        return loaded

    monkeypatch.setattr(cache, "load_prepared", spying_load)
    monkeypatch.setattr(client_module, "_CACHE", {})
    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 0)):
        monkeypatch.setattr(TaskIdentity, name, value)
    server = FederatedServer(config, sites, sequential_sites=True)
    weights = ArrayRecord(server.initial_weights())
    app = make_client_app(sites)
    everyone = original_load(data)
    for index, site in enumerate(sites):
        own_rows = {i for i, row in enumerate(everyone.records) if row["group"] in set(site.groups)}
        context = Context(1, 10 + index, {"partition-id": index, "num-partitions": 3}, RecordDict(), {})
        reads.clear()
        messages = [
            (MessageType.QUERY, {}),
            (MessageType.TRAIN, {"server-round": 1}),
            (MessageType.EVALUATE, {"split": "val"}),
        ]
        if any(everyone.splits[r] == "test" for r in own_rows):
            messages.append((MessageType.EVALUATE, {"split": "test"}))
        for kind, extra in messages:
            content = RecordDict({"config": ConfigRecord({"recipe": server.recipe_json, **extra})})
            if kind != MessageType.QUERY:
                content["arrays"] = weights
            reply = app(Message(content, dst_node_id=10 + index, message_type=kind), context)
            assert not reply.has_error(), reply.error.reason
        read_rows = set(np.concatenate(reads).tolist())
        assert read_rows and read_rows <= own_rows, f"{site.name} read images of other sites"


@pytest.mark.slow
def test_killed_server_resumes_from_its_last_round(make_prepared, tmp_path):
    data = make_prepared(n=48, patients=12)
    options = {
        "data": str(data),
        "sites": 3,
        "rounds": 4,
        "local_steps": 2,
        "fraction": 0.67,
        "strategy": "fedadam",
        "server_lr": 0.01,
        "evaluate_test": False,
    }
    reference = run_federated(federated_config(tmp_path / "reference", **options))

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "meddenoise", "federated", "--config", str(tmp_path / "run.toml")]
    toml = "\n".join(f"{k} = {json.dumps(v)}" for k, v in {**LOCAL, **options, "out": str(killed)}.items())
    (tmp_path / "run.toml").write_text(toml + "\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=environment, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    metrics_file = killed / "metrics.jsonl"
    deadline = time.monotonic() + APPEAR
    while not (metrics_file.is_file() and metrics_file.read_text().count("\n") >= 1):
        assert process.poll() is None, process.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "the first round never finished"
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)  # the server and every Ray process it started
    process.wait()
    process.stderr.close()
    completed_rounds = len(metrics(killed))
    assert 1 <= completed_rounds < 4, "the run finished before it could be killed"

    resume = subprocess.run(
        [*command, "--resume"], env=environment, capture_output=True, text=True, timeout=RUN
    )
    assert resume.returncode == 0, resume.stderr[-3000:]
    assert f"round {completed_rounds + 1} of 4" in resume.stdout
    assert [r["round"] for r in metrics(killed)] == [1, 2, 3, 4]
    reference_weights, resumed_weights = last_weights(reference), last_weights(killed)
    for name, value in reference_weights.items():
        torch.testing.assert_close(resumed_weights[name], value, rtol=1e-5, atol=1e-6, msg=name)
    for resumed, uninterrupted in zip(metrics(killed), metrics(reference), strict=True):
        assert resumed["sites"] == uninterrupted["sites"]  # the same sites sampled each round
        assert resumed["val_loss"] == pytest.approx(uninterrupted["val_loss"], rel=1e-5)
    # A second start without --resume refuses to overwrite.
    again = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=ANSWER)
    assert again.returncode == 2 and "--resume" in again.stderr


def test_a_second_federation_on_the_same_folder_stops_at_once(make_prepared, tmp_path):
    import subprocess
    import sys

    from meddenoise.errors import MeddenoiseError

    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(  # another meddenoise process writing the folder
        [sys.executable, "-c", "import sys, time\nfrom meddenoise.locking import folder_lock\n"
         f"with folder_lock({str(out)!r}):\n    print('locked', flush=True)\n    time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(MeddenoiseError, match="another meddenoise process"):
            run_federated(federated_config(out, data=str(make_prepared()), sites=2, rounds=1))
    finally:
        holder.kill()
        holder.wait()
