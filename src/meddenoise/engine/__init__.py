"""The training engine: runtime (device, rank, precision), one loop for single / DP / DDP, checkpoints.

    from meddenoise.engine.train import fit                      # fit(TrainConfig) -> run folder
    from meddenoise.engine.checkpoint import load_trained_model  # (model in eval mode, CheckpointMetadata)
    from meddenoise.engine.validation import evaluate_split      # per-image PSNR / SSIM of a split

Submodules import torch; this package itself does not, so `import meddenoise` stays fast.
"""
