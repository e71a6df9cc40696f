"""`meddenoise train` on a CUDA device (opt-in, `pytest -m gpu`): the fast path trains in bf16 and
channels-last, and the checkpoint reloads on the CPU with nearly the same output."""

from __future__ import annotations

import json

import pytest
import torch

from meddenoise.cli import main
from meddenoise.engine.checkpoint import load_trained_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("amp", ["bf16", "off"])
def test_cuda_training_learns_and_its_checkpoint_reloads_on_the_cpu(tmp_path, amp):
    from conftest import write_tiny_prepared

    data = write_tiny_prepared(tmp_path / "prepared", n=96, size=64, patients=24)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--model", "unet", "--base-channels", "16",
            "--depth", "3", "--noise-std", "0.2", "--epochs", "8", "--batch-size", "8", "--lr", "0.005",
            "--device", "cuda", "--amp", amp, "--quiet"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["val_psnr"] > last["noisy_val_psnr"] + 3, (last["val_psnr"], last["noisy_val_psnr"])
    on_gpu, _ = load_trained_model(out, "cuda")
    on_cpu, _ = load_trained_model(out, "cpu")
    noisy = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gpu_out = on_gpu(noisy.cuda()).float().cpu()
        cpu_out = on_cpu(noisy).float()
    # fp32 weights on both devices: TF32/cuDNN kernels differ from the CPU's, so agreement is close, not exact
    assert torch.allclose(gpu_out, cpu_out, atol=2e-2), (gpu_out - cpu_out).abs().max()


def test_dp_sgd_trains_on_cuda(tmp_path):
    """DP-SGD on CUDA with the fast path's channels-last parameters: Opacus writes contiguous gradients,
    which the fused Adam kernel refused on the first step (found by the DP settings sweep on an H200)."""
    pytest.importorskip("opacus")
    from conftest import write_tiny_prepared

    data = write_tiny_prepared(tmp_path / "prepared", n=96, size=64, patients=24)
    out = tmp_path / "run"
    argv = ["train", "--data", str(data), "--out", str(out), "--model", "unet", "--base-channels", "8",
            "--depth", "3", "--norm", "group", "--noise-std", "0.2", "--epochs", "4", "--batch-size", "32",
            "--lr", "0.003", "--dp-epsilon", "8", "--dp-delta", "1e-3", "--device", "cuda",
            "--quiet"]  # fmt: skip
    assert main(argv) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 4 and 0 < records[-1]["dp_epsilon"] <= 8.0 + 1e-6
    assert all(torch.isfinite(torch.tensor(r["train_loss"])) for r in records)
