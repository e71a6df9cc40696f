"""DDP on CPU with gloo, 2 processes: same weights as one process with the same global batch, disjoint shards,
only rank 0 writes, and resume under DDP.

The models use GroupNorm here (`--norm group`): SyncBatchNorm refuses CPU tensors in torch, and plain
BatchNorm normalises each rank's half-batch with its own statistics, which legitimately differs from one
process normalising the whole global batch. The training split (11 images, global batch 4) ends with an
uneven step (1 + 2 images on the two ranks), which the loss weighting by each rank's share must get right.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

from meddenoise.engine.checkpoint import load_weights
from time_limits import RUN

pytestmark = pytest.mark.slow

COMMON = [
    "--quiet",
    "--base-channels",
    "8",
    "--depth",
    "3",
    "--norm",
    "group",
    "--epochs",
    "2",
    "--lr",
    "0.003",
    "--no-evaluate-test",
    "--device",
    "cpu",
]


def command(data, out, *extra):
    return [
        sys.executable,
        "-m",
        "meddenoise",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        *COMMON,
        *extra,
    ]


def environment(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def check(completed):
    assert completed.returncode == 0, (completed.stdout[-2000:], completed.stderr[-4000:])
    return completed


def weights(run_dir):
    return load_weights(run_dir / "checkpoints" / "last.safetensors")[0]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One uninterrupted 2-rank run (launched with --nproc 2), one single-process run with the same global
    batch, and a 2-rank run started by hand (rank 1 pointed at another --out) that stops after 4 steps."""
    from conftest import write_tiny_prepared

    root = tmp_path_factory.mktemp("ddp")
    data = write_tiny_prepared(root / "prepared", n=22, size=32)  # 11 training images
    runs = {name: root / name for name in ("ddp", "ddp_stream", "single", "manual", "manual_rank1")}
    started = [
        subprocess.Popen(
            command(data, runs["ddp"], "--strategy", "ddp", "--nproc", "2", "--batch-size", "2"),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            command(
                data,
                runs["ddp_stream"],
                *("--strategy", "ddp", "--nproc", "2", "--batch-size", "2", "--data-placement", "stream"),
            ),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            command(data, runs["single"], "--batch-size", "4"),
            env=environment(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    port = str(free_port())
    manual = []
    for rank, out in ((0, runs["manual"]), (1, runs["manual_rank1"])):
        env = environment(
            RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        manual.append(
            subprocess.Popen(
                command(data, out, "--strategy", "ddp", "--batch-size", "2", "--max-steps", "4"),
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    for process in started + manual:
        stdout, stderr = process.communicate(timeout=RUN)
        check(subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return data, runs


def test_ddp_weights_equal_one_process_with_the_same_global_batch(ddp_runs):
    data, runs = ddp_runs
    distributed_weights, single_weights = weights(runs["ddp"]), weights(runs["single"])
    from meddenoise.data.cache import load_prepared

    train_count = len(load_prepared(data).indices("train"))
    assert train_count % 4 == 3, (
        "the split should end with an uneven global batch (1 + 2 images on the ranks)"
    )
    steps = metrics(runs["ddp"])[-1]["global_step"]
    assert steps == metrics(runs["single"])[-1]["global_step"] == 2 * ((train_count + 3) // 4)
    redundant = biases_cancelled_by_a_norm()
    assert redundant, "the model should have conv biases in front of per-channel GroupNorm"
    for name, value in single_weights.items():
        if value.is_floating_point() and name not in redundant:
            assert torch.allclose(distributed_weights[name], value, atol=1e-5, rtol=0), name
    # The excluded biases do not change what the network computes: its outputs agree too.
    images = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [tiny_model(w)(images) for w in (distributed_weights, single_weights)]
    assert torch.allclose(*outputs, atol=1e-5, rtol=0)


def tiny_model(weights=None):
    from meddenoise.models import build_model

    model = build_model("unet", base_channels=8, depth=3, norm="group").eval()
    if weights is not None:
        model.load_state_dict(weights)
    return model


def biases_cancelled_by_a_norm() -> set[str]:
    """Conv biases directly followed by a GroupNorm with one channel per group: the norm subtracts them again,
    so their true gradient is zero and Adam turns the float noise of that zero (which differs between a sum
    over ranks and a sum in one process) into full-size steps. They are left out of the weight comparison."""
    names = set()
    for prefix, module in tiny_model().named_modules():
        children = list(module.named_children())
        for (name, layer), (_, following) in zip(children, children[1:]):
            if (
                isinstance(layer, torch.nn.Conv2d)
                and isinstance(following, torch.nn.GroupNorm)
                and following.num_groups == following.num_channels
            ):
                names.add(f"{prefix}.{name}.bias" if prefix else f"{name}.bias")
    return names


def test_every_training_image_is_used_once_per_epoch_across_ranks(ddp_runs):
    data, runs = ddp_runs
    from meddenoise.data.cache import load_prepared

    train_count = len(load_prepared(data).indices("train"))
    for record in metrics(runs["ddp"]):
        # the ranks' per-image use counts are summed at the end of each epoch; every count must be exactly 1
        assert record["train_images_each_once"] and record["train_images"] == train_count


def test_only_rank_zero_writes_files(ddp_runs):
    _, runs = ddp_runs
    assert not runs["manual_rank1"].exists(), sorted(p.name for p in runs["manual_rank1"].rglob("*"))
    written = {p.relative_to(runs["manual"]).as_posix() for p in runs["manual"].rglob("*") if p.is_file()}
    assert written == {
        "config.json",
        "split.csv",
        "metrics.jsonl",
        "summary.csv",
        "train.log",
        "checkpoints/last.safetensors",
        "checkpoints/last.state.pt",
        "checkpoints/best.safetensors",
    }


def test_resume_under_ddp_matches_the_uninterrupted_ddp_run(ddp_runs):
    data, runs = ddp_runs
    resumed = check(
        subprocess.run(
            command(
                data, runs["manual"], "--strategy", "ddp", "--nproc", "2", "--batch-size", "2", "--resume"
            ),
            env=environment(),
            capture_output=True,
            text=True,
            timeout=RUN,
        )
    )
    assert "resumed from" in resumed.stdout
    reference, continued = weights(runs["ddp"]), weights(runs["manual"])
    for name, value in reference.items():
        assert torch.equal(continued[name], value), name
    # The run stopped inside epoch 2 (step 4 of 3 + 3): the resumed epoch's loss and coverage must be the
    # uninterrupted run's exactly, which needs every rank's sums in the checkpoint, not rank 0's alone.
    resumed_metrics, reference_metrics = (
        metrics_without_timings(runs["manual"]),
        metrics_without_timings(runs["ddp"]),
    )
    assert [r["epoch"] for r in resumed_metrics] == [1, 2]
    assert resumed_metrics == reference_metrics
    assert all(r["train_images_each_once"] for r in resumed_metrics)


TIMING_KEYS = {
    "train_seconds",
    "val_seconds",
    "images_per_second",
    "peak_memory_mb",
    "cpu_seconds",
    "load_average",
}


def metrics_without_timings(run_dir):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in metrics(run_dir)]


def test_streamed_ddp_equals_resident_ddp_bitwise(ddp_runs):
    _, runs = ddp_runs
    resident, streamed = weights(runs["ddp"]), weights(runs["ddp_stream"])
    assert resident.keys() == streamed.keys()
    for name, value in resident.items():
        assert torch.equal(streamed[name], value), name
    assert metrics_without_timings(runs["ddp_stream"]) == metrics_without_timings(runs["ddp"])
    assert "data placement: stream" in (runs["ddp_stream"] / "train.log").read_text()
