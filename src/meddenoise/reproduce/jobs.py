"""Running one job of the reproduction: prepare the data, train, evaluate, the robustness evaluations, and
the one-line account of a failure."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from pathlib import Path

from meddenoise.config import save_config
from meddenoise.errors import ConfigError, MeddenoiseError
from meddenoise.evaluation import files
from meddenoise.fileio import atomic_write_text, ensure_writable_dir
from meddenoise.locking import folder_lock
from meddenoise.noise.spec import NoiseSpec
from meddenoise.reprodir import ReproDir
from meddenoise.reproduce.plan import Job
from meddenoise.reproduce.presets import ReproduceConfig
from meddenoise.rundir import RunDir


def prepare_data(settings: ReproduceConfig) -> Path:
    """The prepared folder: --data as given, else OUT/data prepared with the preset's options (reused
    if valid)."""
    if settings.data:
        return Path(settings.data)
    from meddenoise.config import config_from_mapping
    from meddenoise.data.cache import prepare
    from meddenoise.data.prepare_config import PrepareConfig
    from meddenoise.data.sources import build_source

    options = dict(settings.grid.prepare)
    if options.get("source") in ("nih", "folder") and not settings.data_root:
        raise ConfigError(
            f"the {settings.grid.name} preset reads {options['source']} images: give a prepared folder "
            "(data) or the folder of the images (data_root)",
            "data_root",
        )
    folder = ReproDir(settings.folder).data_dir
    values = {**options, "out": str(folder), "quiet": True}
    if settings.data_root:
        values["root"] = settings.data_root
    config = config_from_mapping(PrepareConfig, values, source=f"preset {settings.grid.name}")
    ensure_writable_dir(folder, what="prepared folder")
    with folder_lock(folder):
        result = prepare(build_source(config), config)
        save_config(config, folder / "config.json")
    state = "reused" if result.reused else f"prepared in {result.seconds:.1f} s"
    print(f"data: {result.info['shape'][0]} images in {folder} ({state})", flush=True)
    return folder.resolve()  # absolute, as every run records it: the report matches runs by their folder


def _train_config(job: Job, data_dir: Path, settings: ReproduceConfig, resume: bool):
    from meddenoise.config import config_from_mapping
    from meddenoise.engine.config import TrainConfig

    values = {
        **job.train_overrides,
        "data": str(data_dir),
        "out": str(job.folder),
        "noise": job_noise(job, settings).to_dict(),
        "resume": resume,
        "quiet": settings.quiet,
    }
    if settings.epochs:
        values["epochs"] = settings.epochs
    if settings.device != "auto" and values.get("device", "auto") == "auto":
        values["device"] = settings.device
    return config_from_mapping(TrainConfig, values, source=f"preset {settings.grid.name}")


def job_noise(job: Job, settings: ReproduceConfig) -> NoiseSpec:
    """The paper's obfuscation at the job's level: Gaussian, the preset's mean, clamped, fixed, seed 0."""
    return NoiseSpec(mean=settings.grid.noise_mean, std=job.noise_std)


def run_network_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    train_job(job, data_dir, settings)
    _evaluate(job, settings)


def _evaluate(job: Job, settings: ReproduceConfig) -> None:
    from meddenoise.evaluation.runs import evaluate_run

    evaluate_run(
        job.folder,
        device=settings.device,
        keep_samples=settings.grid.samples,
        lpips_weights=settings.lpips_weights or None,
        quiet=settings.quiet,
    )


def train_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    resume = RunDir(job.folder).resume_or_start_clean()
    config = _train_config(job, data_dir, settings, resume)
    from meddenoise.engine.launch import train

    train(dataclasses.replace(config, nproc=job.nproc) if config.strategy == "ddp" else config)


def run_federated_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    from meddenoise.config import config_to_dict
    from meddenoise.federated import run_federated
    from meddenoise.federated.jobs import federated_config

    resume = RunDir(
        job.folder
    ).resume_or_start_clean()  # a federation killed before its first round ended starts again
    train = config_to_dict(_train_config(job, data_dir, settings, resume))
    config = federated_config(train, job.federation, data=str(data_dir), out=str(job.folder), resume=resume)
    run_federated(config)
    _evaluate(job, settings)


def run_baseline_job(job: Job, data_dir: Path, settings: ReproduceConfig) -> None:
    from meddenoise.evaluation.runs import evaluate_baseline

    evaluate_baseline(
        job.method,
        data_dir,
        job.folder,
        noise=job_noise(job, settings),
        device="cpu",
        keep_samples=settings.grid.samples,
        lpips_weights=settings.lpips_weights or None,
        limit=settings.grid.baseline_limits.get(job.method, 0),
        tune_limit=settings.grid.tune_limit,
        quiet=settings.quiet,
    )


RAY_MEMORY_SIGNS = ("OutOfMemoryError", "running low on memory", "memory monitor")


def failure_line(exc: BaseException, folder: Path) -> str:
    """One line for the plan and the report's "Failed jobs": our own messages as they are; for anything else
    (a Ray or Flower traceback can run to kilobytes) its first line, with the whole text kept in
    FOLDER/failure.txt. A site Ray stopped for lack of memory gets its cause and fix."""
    if isinstance(exc, MeddenoiseError):
        return str(exc)
    text = f"{type(exc).__name__}: {exc}"
    if "\n" not in text.strip() and len(text) <= 300:
        return text
    kept = ""
    with contextlib.suppress(OSError):
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "failure.txt", text + "\n")
        kept = f" (full text: {folder / 'failure.txt'})"
    if any(sign in text for sign in RAY_MEMORY_SIGNS):
        return (
            "Ray stopped a federated site for lack of memory: give the simulation more memory or fewer "
            f"parallel sites (--sim-cpus 1, a smaller --batch-size or fewer images){kept}"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return (first if len(first) <= 300 else first[:297] + "...") + kept


def run_robustness(jobs: list[Job], settings: ReproduceConfig) -> str | None:
    """Test the one-device U-Net trained at `robustness_from` at the grid's other noise levels (each an
    evaluation folder `test-std<s>` of that run, kept out of the tables of trained levels). Returns why it
    failed, or None."""
    from meddenoise.evaluation.runs import evaluate_run

    grid = settings.grid
    source = getattr(grid, "robustness_from", None)
    if source is None:
        return None
    run = next(
        (
            j.folder
            for j in jobs
            if j.kind == "network" and j.method == "unet" and j.strategy == "single" and j.seed == 0
            and math.isclose(j.noise_std, source) and files.is_done(j.folder)
        ),
        None,
    )  # fmt: skip
    if run is None:
        return None
    for level in grid.noise_stds:
        if math.isclose(level, source):
            continue
        folder = RunDir(run).evaluation_dir(f"test-std{level:g}")
        if (folder / "evaluation.json").is_file():
            continue
        print(f"robustness: {run.name} tested at noise std {level:g}", flush=True)
        try:
            evaluate_run(
                run,
                split="test",
                device=settings.device,
                out_dir=folder,
                lpips_weights=settings.lpips_weights or None,
                quiet=settings.quiet,
                noise_std=level,
            )
        except MeddenoiseError as exc:
            return f"{run.name} at noise std {level:g}: {exc}"
    return None
