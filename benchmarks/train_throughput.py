"""Benchmark 1: training throughput (images/s) and model FLOP utilisation, the paper's pipeline vs ours.

Same model, batch, optimizer (Adam), loss (L1) and device for every configuration:

  reference_fp32  float32 noisy/clean dataset in host memory, DataLoader (workers, pinned memory), a
                  host-to-device copy and `loss.item()` every step, fp32 (the paper's code's single-GPU mode)
  reference_amp   the same under fp16 autocast + GradScaler (the paper's code's AMP mode)
  ours_bf16_cl    uint8 images resident on the device, batches gathered by index, noise made on the device,
                  bf16 autocast, channels_last (CUDA only), no per-step host synchronisation
  ours_compile    ours_bf16_cl + torch.compile
  ours_fp32       (optional) the fast path in fp32: like for like with reference_fp32 on CPUs without bf16

Warm-up steps (compilation, DataLoader start-up, cuDNN autotuning) are run first and excluded; then `--steps`
steps are timed with CUDA events (GPU) or perf_counter (CPU), all inside one epoch of the loader. FLOPs per
image are counted with torch's FlopCounterMode (forward + backward); MFU = FLOPs/image x images/s / peak,
where the peak is the GPU's bf16 data-sheet figure, or a measured fp32 matmul rate on the CPU.

    python benchmarks/train_throughput.py                         # GPU: 256 x 256, base 64, batch 16
    python benchmarks/train_throughput.py --device cpu --size 64 --base-channels 16 --batch-size 8
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import bench_common as common
from meddenoise.data.cache import load_prepared
from meddenoise.data.loader import DeviceBatches
from meddenoise.engine.losses import build_loss
from meddenoise.engine.reference import ReferenceBatches, build_host_dataset
from meddenoise.engine.runtime import build_runtime
from meddenoise.engine.step import TrainStep, build_optimizer
from meddenoise.engine.targets import TargetBatch, build_target, make_target_batch
from meddenoise.models import build_model
from meddenoise.noise import NoiseSpec, build_noise

CONFIGS = {
    "reference_fp32": {"pipeline": "reference", "amp": "off", "channels_last": False, "compile": False},
    "reference_amp": {"pipeline": "reference", "amp": "fp16", "channels_last": False, "compile": False},
    "ours_bf16_cl": {"pipeline": "fast", "amp": "bf16", "channels_last": True, "compile": False},
    "ours_compile": {"pipeline": "fast", "amp": "bf16", "channels_last": True, "compile": True},
    # Not one of the four targets: the fast path in fp32, the like-for-like comparison on CPUs without bf16.
    "ours_fp32": {"pipeline": "fast", "amp": "off", "channels_last": True, "compile": False},
}
DEFAULT_CONFIGS = ["reference_fp32", "reference_amp", "ours_bf16_cl", "ours_compile"]
TARGETS_IMAGES_PER_S = {"unet": 1400, "unetpp": 450}  # one H100 at 256 x 256 (the target)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda, cuda:N")
    parser.add_argument("--models", nargs="+", default=["unet", "unetpp"], help="models to time")
    parser.add_argument("--configs", nargs="+", default=DEFAULT_CONFIGS, choices=list(CONFIGS))
    parser.add_argument("--size", type=int, default=256, help="image side (default 256)")
    parser.add_argument("--base-channels", type=int, default=64, help="first-level channels (64: the paper)")
    parser.add_argument("--batch-size", type=int, default=16, help="images per step (16: the paper)")
    parser.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps first (compile: 3 more)")
    parser.add_argument("--workers", type=int, default=4, help="reference DataLoader workers (4: the seed)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="sweeps over all configurations; each figure is its best round")  # fmt: skip
    parser.add_argument("--compile-once", action="store_true",
                        help="time ours_compile in round 1 only (slow to compile on CPUs)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=0, help="CPU: torch threads (0: torch's default)")
    parser.add_argument("--out-dir", type=Path, default=None, help="where the JSON goes (default results/)")
    return parser.parse_args(argv)


def time_configuration(
    model_name: str, config_name: str, data: Any, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """Images/s of one (model, configuration) after warm-up; runs the engine's own step and batch sources."""
    settings = CONFIGS[config_name]
    runtime = build_runtime(
        strategy="single",
        device=str(device),
        amp=settings["amp"],
        channels_last=settings["channels_last"],
        compile=settings["compile"],
    )
    torch.manual_seed(0)
    model = runtime.place(build_model(model_name, base_channels=args.base_channels))
    optimizer = build_optimizer(model, "adam", 1e-3, 0.0, runtime.device)
    noise = build_noise("gaussian", mean=0.1, std=0.2)
    target = build_target("clean", noise, seed=0)
    step = TrainStep(runtime.wrap(model), optimizer, runtime, target, build_loss("l1"))
    set_up_started = time.perf_counter()
    if settings["pipeline"] == "reference":
        dataset = build_host_dataset(data, "train", noise, noise_seed=0)
        batches = ReferenceBatches(dataset, args.batch_size, runtime.device, workers=args.workers)
    else:
        batches = DeviceBatches.from_prepared(data, "train", runtime.device, args.batch_size)
    set_up_seconds = time.perf_counter() - set_up_started
    loss_sum = torch.zeros((), device=runtime.device)

    def train_one(batch) -> None:
        nonlocal loss_sum
        if settings["pipeline"] == "reference":
            target_batch = TargetBatch([batch.noisy], batch.clean, batch.image_keys)
            loss_sum += step(target_batch, 1.0, 1e-3).item()  # the paper's code's per-step read
        else:
            target_batch = make_target_batch(
                target,
                runtime.to_device_batch(batch.clean),
                batch.image_keys,
                noise,
                NoiseSpec(seed=0),
                epoch=0,
            )
            loss_sum += step(target_batch, 1.0, 1e-3)  # stays on the device, as in the engine

    warmup = args.warmup + (3 if settings["compile"] else 0)
    model.train()
    batch_iterator = batches.epoch(0)
    warmup_started = time.perf_counter()
    for _ in range(warmup):
        train_one(next(batch_iterator))
    common.synchronize(runtime.device)
    warmup_seconds = time.perf_counter() - warmup_started
    timer = common.DeviceTimer(runtime.device)
    timer.start()
    for _ in range(args.steps):
        train_one(next(batch_iterator))
    seconds = timer.stop()
    final_loss = float(loss_sum) / (warmup + args.steps)
    del batch_iterator  # ends the DataLoader's workers before the next configuration starts
    if settings["compile"]:
        torch._dynamo.reset()
    return {
        "model": model_name,
        "config": config_name,
        "pipeline": settings["pipeline"],
        "amp": runtime.amp,
        "channels_last": runtime.channels_last,
        "compile": runtime.compile,
        "workers": args.workers if settings["pipeline"] == "reference" else 0,
        "timed_steps": args.steps,
        "warmup_steps": warmup,
        "warmup_seconds": round(warmup_seconds, 3),
        "set_up_seconds": round(set_up_seconds, 3),
        "seconds": round(seconds, 4),
        "images_per_second": args.steps * args.batch_size / seconds,
        "ms_per_step": 1000 * seconds / args.steps,
        "mean_loss": round(final_loss, 5),
    }


def record_round(rows: list[dict[str, Any]], measured: dict[str, Any], flops: float, peak: float) -> dict:
    """Add one measurement to its (model, configuration) row, which shows the best round (highest img/s)."""
    row = next(
        (r for r in rows if (r["model"], r["config"]) == (measured["model"], measured["config"])), None
    )
    rounds = ([] if row is None else row["images_per_second_rounds"]) + [measured["images_per_second"]]
    if row is None or measured["images_per_second"] > row["images_per_second"]:
        best = {
            **measured,
            "gflops_per_image": flops / 1e9,
            "mfu": flops * measured["images_per_second"] / peak,
        }
        if row is None:
            rows.append(best)
        else:
            rows[rows.index(row)] = best
        row = best
    row["images_per_second_rounds"] = rounds
    row["images_per_second_median"] = statistics.median(rounds)
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    for row in rows:
        reference = next(
            (r for r in rows if r["model"] == row["model"] and r["config"] == "reference_fp32"), None
        )
        if reference:
            row["speedup_vs_reference_fp32"] = row["images_per_second"] / reference["images_per_second"]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    device = common.resolve_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.backends.cudnn.benchmark = device.type == "cuda"  # both pipelines get autotuned kernels
    compile_steps = 3 if "ours_compile" in args.configs else 0
    train_count = (args.warmup + compile_steps + args.steps) * args.batch_size
    settings = {key: value for key, value in vars(args).items() if key != "out_dir"}
    settings["image"] = f"{args.size}x{args.size} uint8 synthetic (throughput does not depend on content)"
    settings["train_images"] = train_count
    rows: list[dict[str, Any]] = []
    payload = {
        "benchmark": "train_throughput",
        "environment": common.environment(device),
        "settings": settings,
        "peak": common.peak_flops(device),
        "targets_images_per_second_h100_256px": TARGETS_IMAGES_PER_S,
        "complete": False,
        "results": rows,
    }
    peak = payload["peak"]
    with tempfile.TemporaryDirectory(prefix="throughput-") as scratch:
        folder = common.write_synthetic_prepared(Path(scratch) / "data", {"train": train_count}, args.size)
        data = load_prepared(folder)
        flops = {}
        for model_name in args.models:
            model = build_model(model_name, base_channels=args.base_channels).to(device)
            flops[model_name] = common.training_flops_per_image(model, build_loss("l1"), args.size, device)
            del model
        # Rounds interleave the configurations in time, so a burst of other work on a shared machine does not
        # hit one configuration only; the best round of each is the least disturbed one.
        for round_index in range(args.rounds):
            for model_name in args.models:
                for config_name in args.configs:
                    if round_index and args.compile_once and CONFIGS[config_name]["compile"]:
                        continue
                    measured = time_configuration(model_name, config_name, data, args, device)
                    row = record_round(rows, measured, flops[model_name], peak["flops"])
                    add_speedups(rows)
                    # Written after every measurement: a run stopped by a time limit keeps what it measured.
                    common.write_result("train_throughput", payload, device, args.out_dir)
                    print(
                        f"round {round_index + 1}: {model_name:>7} {config_name:<15} "
                        f"{measured['images_per_second']:10.1f} img/s (best {row['images_per_second']:.1f}, "
                        f"MFU {100 * row['mfu']:5.1f}%)",
                        flush=True,
                    )
    payload["complete"] = True
    columns = [
        ("model", "model"),
        ("config", "configuration"),
        ("amp", "amp"),
        ("images_per_second", "img/s"),
        ("ms_per_step", "ms/step"),
        ("gflops_per_image", "GFLOP/img"),
        ("mfu", "MFU"),
        ("speedup_vs_reference_fp32", "x ref fp32"),
    ]
    print(common.format_table(rows, columns))
    note = f"peak used for MFU: {peak['what']} = {peak['flops'] / 1e12:.2f} TFLOP/s; "
    common.finish("train_throughput", payload, device, args.out_dir, note)
    return payload


if __name__ == "__main__":
    main()
